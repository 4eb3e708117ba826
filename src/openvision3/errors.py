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


class MissingExtraError(ImportError):
    """An optional dependency group is not installed; the message names the pip extra."""

    def __init__(self, extra: str, module: str, feature: str):
        super().__init__(
            f"{feature} needs the '{extra}' extra ({module} is not installed): "
            f'pip install "openvision3[{extra}]"'
        )
        self.extra = extra


def require(module: str, extra: str, feature: str):
    """Import ``module`` or raise ``MissingExtraError`` naming the extra that provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name is not None and module.split(".")[0] != err.name.split(".")[0]:
            raise
        raise MissingExtraError(extra, module, feature) from err
