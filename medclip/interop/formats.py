"""One entry point for every model format medclip reads: detect it, load it exactly, or refuse in one line.

:func:`detect_format` looks at a path (nothing is downloaded; only local files are read):

============== ==============================================================================
format          what is looked for
============== ==============================================================================
medclip         a folder with ``config.json`` (``"model"`` section) + ``model.safetensors``
open-clip-hub   a folder with ``open_clip_config.json`` (+ ``open_clip_model.safetensors`` or
                ``open_clip_pytorch_model.bin``); BiomedCLIP is one (``--from biomedclip`` is an alias)
hf-clip         a folder with a Hugging Face ``config.json`` of ``model_type: clip``
siglip          a folder with a Hugging Face ``config.json`` of ``model_type: siglip`` (SigLIP, MedSigLIP)
pmc-clip        a PMC-CLIP checkpoint (``visual.attnpool`` + ``text_encoder`` + ``text_projection`` keys; found
                inside a bare file by its keys) or its three-file release folder; needs ``text_model``
unimed-clip     a UniMed-CLIP checkpoint (OpenAI ViT ``visual.*`` + ``text_encoder.*``; found by its keys);
                needs ``text_model``
medclip-resnet  MedCLIP (Wang et al.) ResNet: ``pytorch_model.bin`` (folder or file; only with ``--from``)
medclip-vit     MedCLIP (Wang et al.) Swin-tiny: ``pytorch_model.bin`` (folder or file; only with ``--from``)
open-clip       a bare OpenAI / open_clip state dict file (CheXzero): needs ``model_name``
============== ==============================================================================

:func:`load_model` returns a :class:`Loaded` (the model plus what ``medclip convert`` writes into the
model card: source format, weights files, preprocessing, license).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field

from ..errors import CheckpointError, ConfigError, MissingFileError
from ..paths import resolve_path

FORMATS = ("medclip", "open-clip-hub", "biomedclip", "hf-clip", "siglip", "pmc-clip", "unimed-clip", "medclip-resnet",
           "medclip-vit", "open-clip")
_ALIASES = {"biomedclip": "open-clip-hub"}
_WEIGHT_FILE = (".safetensors", ".pt", ".pth", ".bin")


@dataclass
class Loaded:
    """A model read from a foreign (or medclip) format, with its provenance.

    Attributes:
        model: our CLIP, in eval mode.
        format: the format name (see :data:`FORMATS`).
        source: the path given.
        weights: the weights files read (hashed into the model card).
        preprocess: the source's preprocessing settings (mean, std, interpolation, resize mode), if any.
        tokenizer_dir: a folder whose tokenizer files the converted folder's ``text/`` should carry.
        license: the license named by the source (README front matter), or None.
    """

    model: object
    format: str
    source: str
    weights: list = field(default_factory=list)
    preprocess: dict = field(default_factory=dict)
    tokenizer_dir: str | None = None
    license: str | None = None


def detect_format(path: str) -> str:
    """The format of ``path`` (a folder or a weights file).

    Raises:
        MissingFileError: nothing at ``path``.
        ConfigError: a folder or file in no known format (what was looked for is listed).
    """
    path = resolve_path(path)
    if not os.path.exists(path):
        raise MissingFileError(f"model not found: {path} (check the path; nothing is downloaded at run time)")
    if os.path.isfile(path):
        if path.endswith(_WEIGHT_FILE):
            return "open-clip"
        raise ConfigError(f"{path}: unknown model format (a weights file ends in {', '.join(_WEIGHT_FILE)}); "
                          f"pass a model folder or --from NAME ({', '.join(FORMATS)})")
    if os.path.isfile(os.path.join(path, "open_clip_config.json")):
        return "open-clip-hub"
    from .pmc_clip import THREE_FILES

    if os.path.isfile(os.path.join(path, THREE_FILES[0])):
        return "pmc-clip"
    config = _json(os.path.join(path, "config.json"))
    if isinstance(config, dict) and isinstance(config.get("model"), dict):
        return "medclip"
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type in ("clip", "siglip"):
        return {"clip": "hf-clip", "siglip": "siglip"}[model_type]
    what = f"a Hugging Face '{model_type}' model" if model_type else "no config.json or open_clip_config.json"
    raise ConfigError(f"{path}: unknown model format ({what}); medclip reads {', '.join(FORMATS)} "
                      f"(see the README model zoo); force one with --from NAME")


def load_model(path: str, fmt: str | None = None, model_name: str = "", text_model: str | None = None) -> Loaded:
    """Load any supported model from local files, exactly, or raise a one-line error.

    Args:
        path: a folder or weights file.
        fmt: force a format (see :data:`FORMATS`); default: :func:`detect_format`.
        model_name: for bare state dicts, the open_clip name (``ViT-B-32-quickgelu``): sets the activation.
        text_model: a local Hugging Face encoder folder for models whose config names it by hub id.

    Returns:
        A :class:`Loaded`.
    """
    path = resolve_path(path)
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise ConfigError(f"--from {fmt}: unknown format; choose one of {', '.join(FORMATS)}")
    fmt = _ALIASES.get(fmt, fmt)
    if fmt == "medclip":
        from ..model import CLIP, WEIGHTS_NAME

        return Loaded(CLIP.from_pretrained(path).eval(), fmt, path, [os.path.join(path, WEIGHTS_NAME)])
    if fmt == "open-clip-hub":
        from .open_clip_hub import from_open_clip_hub

        model, info = from_open_clip_hub(path, text_model)
        return Loaded(model, fmt, path, [info["weights"]], info["preprocess"], tokenizer_dir=path,
                      license=read_license(path))
    if fmt == "siglip":
        from .siglip import from_hf_siglip

        model, preprocess = from_hf_siglip(path)
        return Loaded(model, fmt, path, _files_like(path, "model"), preprocess, tokenizer_dir=path,
                      license=read_license(path))
    if fmt == "hf-clip":
        from .hf_clip import from_hf_clip

        return Loaded(from_hf_clip(path), fmt, path, _files_like(path, "model"), license=read_license(path))
    return _load_checkpoint(path, fmt, model_name, text_model)


def _load_checkpoint(path: str, fmt: str, model_name: str, text_model: str | None) -> Loaded:
    """The checkpoint formats (a weights file, or a release folder); bare files are told apart by their keys."""
    if fmt in ("medclip-resnet", "medclip-vit"):
        from .medclip_ryanwang import WEIGHTS, from_medclip_resnet, from_medclip_vit

        load = from_medclip_resnet if fmt == "medclip-resnet" else from_medclip_vit
        model, preprocess = load(path, text_model)
        files = [os.path.join(path, WEIGHTS) if os.path.isdir(path) else path]
        return Loaded(model, fmt, path, files, preprocess, tokenizer_dir=text_model)
    from .pmc_clip import THREE_FILES, from_pmc_clip, is_pmc_clip

    if fmt == "open-clip" and not os.path.isdir(path):
        from .checkpoints import read_state_dict
        from .unimed_clip import is_unimed_clip

        state = read_state_dict(path, "weights file")  # the formats are told apart by their keys
        fmt = "pmc-clip" if is_pmc_clip(state) else "unimed-clip" if is_unimed_clip(state) else fmt
    if fmt == "unimed-clip":
        from .unimed_clip import from_unimed_clip

        model, preprocess = from_unimed_clip(path, text_model)
        return Loaded(model, fmt, path, [path], preprocess, tokenizer_dir=text_model)
    if fmt == "pmc-clip":
        model, preprocess = from_pmc_clip(path, text_model)
        files = [os.path.join(path, n) for n in THREE_FILES] if os.path.isdir(path) else [path]
        return Loaded(model, fmt, path, files, preprocess, tokenizer_dir=text_model)
    if os.path.isdir(path):
        raise CheckpointError(f"{path} is a folder; --from open-clip reads a bare state dict file")
    from .open_clip import from_open_clip

    return Loaded(from_open_clip(path, model_name), fmt, path, [path])


def read_license(folder: str) -> str | None:
    """The ``license:`` of a model card's YAML front matter (``README.md``), if any."""
    card = os.path.join(folder, "README.md")
    if not os.path.isfile(card):
        return None
    with open(card, encoding="utf-8", errors="replace") as f:
        text = f.read(20000)
    match = re.match(r"---\s*\n(.*?)\n---", text, re.S)
    found = re.search(r"^license:\s*(\S+)", match.group(1), re.M) if match else None
    return found.group(1).strip("'\"") if found else None


def _json(path: str):
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None


def _files_like(folder: str, stem: str) -> list[str]:
    return sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.startswith(stem) and
                  n.endswith(_WEIGHT_FILE))
