"""Errors that users cause and can fix: bad config, bad data, bad run directory, a missing extra.

Entry scripts print these as one line (no traceback) and exit with code 2; anything
else is a bug and keeps its traceback.
"""


class BrainMRIError(Exception):
    """Base class for user-facing errors that need no traceback."""


class ConfigError(BrainMRIError):
    """A recipe, override or sweep file is wrong (unknown key, bad type, bad value)."""


class DatasetError(BrainMRIError):
    """The dataset folder cannot be used as given (missing split, unknown class, bad images)."""


class RunDirError(BrainMRIError):
    """The output directory holds something that a run must not clobber or cannot resume."""


class CheckpointError(BrainMRIError):
    """A checkpoint or weights file is missing, incomplete or unsafe to load."""


class MissingExtra(BrainMRIError):
    """An optional dependency (DICOM, NIfTI, ONNX) is not installed."""


def require(module: str, extra: str, purpose: str):
    """Import an optional dependency, or one line naming the extra that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(f'{purpose} needs {module.split(".")[0]}: pip install "brainmri[{extra}]"') from None
