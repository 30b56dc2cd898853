"""User-facing errors.

Everything a user can fix (a bad config key, a missing file, a wrong shape) raises a subclass of
:class:`MedclipError` with a one-line message naming the culprit and the fix. The CLI prints such
errors as one line and exits with status 2 instead of showing a traceback.
"""


class MedclipError(Exception):
    """Base class of errors caused by user input (configs, files, data)."""


class ConfigError(MedclipError, ValueError):
    """A config or recipe is invalid (unknown key, wrong type, impossible value)."""


class CheckpointError(MedclipError, ValueError):
    """A weights file or model folder is missing, corrupt or does not match the model."""


class DataError(MedclipError, ValueError):
    """A manifest, image or report cannot be used."""


class MissingFileError(MedclipError, FileNotFoundError):
    """A file the user pointed at does not exist."""


def require_file(path, what: str = "file") -> None:
    """Raise :class:`MissingFileError` naming ``path`` when it does not exist.

    Args:
        path: the path to check.
        what: a short description used in the message ("model config", "weights file", ...).
    """
    import os

    if not os.path.exists(path):
        raise MissingFileError(f"{what} not found: {path} (check the path; nothing is downloaded at run time)")
