"""Up-front checks of command-line values, so that a bad flag is one line before any image is scored.

Every function raises :class:`~medclip.errors.ConfigError` naming the flag, the value and the fix.
"""

from __future__ import annotations

import os

from ..errors import ConfigError


def in_range(flag: str, value, low=None, high=None, low_open: bool = False, high_open: bool = False) -> None:
    """Refuse ``value`` outside ``[low, high]`` (``(low`` / ``high)`` when open); None bounds are unbounded."""
    if value is None:
        return
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and (value >= high if high_open else value > high)
    if below or above:
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        interval = f"{'(' if low_open else '['}{lo}, {hi}{')' if high_open else ']'}"
        raise ConfigError(f"{flag} must be in {interval}, got {value}")


def device(flag_value: str | None) -> str:
    """The torch device to use: ``flag_value`` checked (CUDA must exist), or cuda when available else cpu."""
    import torch

    if not flag_value:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(flag_value)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device '{flag_value}' is not a torch device (use cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {flag_value}: CUDA is not available on this machine; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {flag_value}: only {torch.cuda.device_count()} CUDA device(s) here")
    return flag_value


def output_folder(flag: str, path: str | None, create: bool = True) -> None:
    """Refuse a file or an unwritable place as the output folder, before any work is done.

    Args:
        flag: the flag named in the message.
        path: the folder (None: nothing to check).
        create: create the folder now; False only checks that it could be created (the nearest
            existing parent folder is writable), leaving nothing behind when a later check fails.
    """
    if not path:
        return
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"{flag} {path} is an existing file; give a folder (it will hold several files)")
    target = path
    if not create:
        while not os.path.isdir(target):
            parent = os.path.dirname(os.path.abspath(target))
            if os.path.exists(target) or parent == target:
                break
            target = parent
    problem = _unwritable(target)
    if problem:
        raise ConfigError(f"{flag} {path}: {problem}; choose a writable folder")


def output_file(flag: str, path: str | None) -> None:
    """Refuse an output CSV path that is a folder or lies in a folder that cannot be written."""
    if not path:
        return
    if os.path.isdir(path):
        raise ConfigError(f"{flag} {path} is a folder; give a file name, e.g. {os.path.join(path, 'split.csv')}")
    parent = os.path.dirname(os.path.abspath(path))
    output_folder(f"{flag} (its folder)", parent)


def cache_folder(path: str, what: str) -> None:
    """Make sure a cache folder can be created and written; otherwise name the cache and MEDCLIP_CACHE_DIR."""
    if _unwritable(path):
        raise ConfigError(f"the {what} cache folder {path} cannot be created or written (e.g. a read-only HOME); "
                          "set MEDCLIP_CACHE_DIR to a writable folder (or pass --cache-dir / --no-cache)")


def _unwritable(path: str) -> str:
    """Why files cannot be written into folder ``path`` (created when missing), or ``""``."""
    import tempfile

    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        return f"cannot write there ({exc.strerror or type(exc).__name__})"
    return ""
