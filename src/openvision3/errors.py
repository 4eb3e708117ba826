"""Errors a user can fix from the command line.

``ConfigError`` is raised after the command line is applied, with a message that names the
flag (``--data.path is required for source 'webdataset'``); ``ov3`` prints it as one line and
exits with status 2, as for tyro's own parse errors. The others (``MissingWeightsError``,
``MissingExtraError``, ``CheckpointError``, ``TrainingDivergedError``, ``DataNotFoundError``)
are printed as one line too, with exit status 1. ``OV3_DEBUG=1`` shows their tracebacks.
"""


class ConfigError(ValueError):
    """A missing or inconsistent setting; the message names the flag to set."""


class MissingWeightsError(FileNotFoundError):
    """Pretrained weights that are neither on disk nor downloadable; the message says what to
    fetch and where to put it."""


class CheckpointError(RuntimeError):
    """A training checkpoint that is incomplete, corrupted or unreadable; the message names the
    file and the ``--train.resume`` choices."""


class TrainingDivergedError(FloatingPointError):
    """The loss became NaN or infinite; the message names the step and the terms."""


class DataNotFoundError(FileNotFoundError):
    """A data path that does not exist; the message names the flag and the path."""


class MissingExtraError(ImportError):
    """An optional dependency group is not installed; the message names the pip extra."""

    def __init__(self, extra: str, module: str, feature: str):
        super().__init__(
            f"{feature} needs the '{extra}' extra ({module} is not installed): "
            f'pip install "openvision3[{extra}]"'
        )
        self.extra = extra


# What ``ov3`` prints as one line (no traceback) and exits with status 2 (ConfigError) or 1.
USER_ERRORS = (
    ConfigError,
    MissingWeightsError,
    MissingExtraError,
    CheckpointError,
    TrainingDivergedError,
    DataNotFoundError,
)


def require(module: str, extra: str, feature: str):
    """Import ``module`` or raise ``MissingExtraError`` naming the extra that provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name is not None and module.split(".")[0] != err.name.split(".")[0]:
            raise
        raise MissingExtraError(extra, module, feature) from err
