"""Errors a user can fix from the command line.

``ConfigError`` is raised after the command line is applied, with a message that names the
flag (``--data.path is required for source 'webdataset'``); ``ov3`` prints it as one line and
exits with status 2, as for tyro's own parse errors. ``MissingWeightsError`` says which file
to download and where to put it; ``ov3`` prints it without a traceback and exits with 1.
"""


class ConfigError(ValueError):
    """A missing or inconsistent setting; the message names the flag to set."""


class MissingWeightsError(FileNotFoundError):
    """Pretrained weights that are neither on disk nor downloadable; the message says what to
    fetch and where to put it."""
