"""PMC-CLIP checkpoints → our :class:`~medclip.model.CLIP`.

Read from the upstream code (github.com/WeixiongLin/PMC-CLIP, ``src/pmc_clip/model/pmc_clip.py`` and
``blocks.py`` at commit 419c147a77a77cbb06f58de6838eec050ddc3475):

* image: OpenAI's ModifiedResNet (RN50, 3-conv stem, attention pool projecting to ``embed_dim`` 768), the
  same keys as OpenAI's ``visual.*`` → mapped onto timm's ``resnet50_clip`` like any OpenAI ResNet;
* text: PubMedBERT ("abstract-fulltext"), called with the padded-to-77 ids and **no attention mask**; the
  feature is the hidden state at the position of token id 2 ([CLS], position 0) times the ``768 × 768``
  ``text_projection`` → our wrapped HF encoder (``pooling: cls``, ``attention_mask: false``, linear
  projection = ``text_projection.T``);
* the fusion module, ``img_special_token``, ``mlm_projection`` and the unused CLIP-text leftovers
  (``positional_embedding``, ``ln_final``) are dropped;
* preprocessing: OpenAI mean/std, bicubic resize + center crop (``transform.py``).

Layouts: one training checkpoint (``{"state_dict": {"module.visual...", "module.text_encoder...", ...}}``), or
the three-file release (``image_encoder(resnet50).pth``, ``text_encoder.pth``, ``text_projection_layer.pth``).
The BERT config and vocabulary come from ``--text-model DIR`` (the checkpoint names it by hub id).
"""

from __future__ import annotations

import logging
import math
import os

import torch

from ..errors import CheckpointError, MissingFileError
from .checkpoints import read_state_dict, reject_unknown
from .clip_common import build_and_load, hf_text_entry, require_text_model
from .open_clip import _resnet_config, visual_to_timm

logger = logging.getLogger("medclip.interop")
THREE_FILES = ("image_encoder(resnet50).pth", "text_encoder.pth", "text_projection_layer.pth")
_DROPPED = ("fusion_module.", "img_special_token", "mlm_projection", "positional_embedding", "ln_final.",
            "attn_mask")
PREPROCESS = {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711],
              "interpolation": "bicubic", "resize_mode": "shortest + center crop"}


def is_pmc_clip(state: dict) -> bool:
    """A PMC-CLIP state dict: OpenAI ResNet image keys + a BERT ``text_encoder`` + ``text_projection``."""
    return "visual.attnpool.c_proj.weight" in state and "text_projection" in state and \
        "text_encoder.embeddings.word_embeddings.weight" in state


def read_pmc_clip(path: str) -> dict:
    """The full state dict of either published layout (``path``: the checkpoint file or the 3-file folder)."""
    if not os.path.isdir(path):
        return read_state_dict(path, "PMC-CLIP checkpoint")
    missing = [n for n in THREE_FILES if not os.path.isfile(os.path.join(path, n))]
    if missing:
        raise MissingFileError(f"{path}: a PMC-CLIP folder needs {', '.join(THREE_FILES)}; missing {missing[0]}")
    state = {f"visual.{k}": v for k, v in read_state_dict(os.path.join(path, THREE_FILES[0])).items()}
    state.update({f"text_encoder.{k}": v for k, v in read_state_dict(os.path.join(path, THREE_FILES[1])).items()})
    state["text_projection"] = _single_tensor(os.path.join(path, THREE_FILES[2]))
    # the release has no temperature: CLIP's initial 1/0.07 (model card and log say so)
    logger.warning("%s: the three-file PMC-CLIP release has no logit_scale; using CLIP's initial 1/0.07", path)
    state["logit_scale"] = torch.tensor(math.log(1 / 0.07))
    return state


def _single_tensor(path: str) -> torch.Tensor:
    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot load with weights_only=True ({type(exc).__name__}); the file is "
                              f"corrupt or not a tensor") from None
    if isinstance(value, dict):
        tensors = [v for v in value.values() if isinstance(v, torch.Tensor)]
        value = tensors[0] if len(tensors) == 1 else None
    if not isinstance(value, torch.Tensor) or value.ndim != 2:
        raise CheckpointError(f"{path}: expected the (768, 768) text projection tensor")
    return value


def from_pmc_clip(path: str, text_model: str | None) -> tuple:
    """Load PMC-CLIP (either layout); ``text_model`` is the local PubMedBERT folder. Returns ``(model, preprocess)``."""
    source = f"{path} (PMC-CLIP)"
    state = read_pmc_clip(path)
    if not is_pmc_clip(state):
        raise CheckpointError(f"{source}: not a PMC-CLIP checkpoint (needs visual.attnpool.*, text_encoder.* and "
                              f"text_projection)")
    require_text_model(text_model, path, "PMC-CLIP", "microsoft/BiomedNLP-PubMedBERT-base-uncased-abstract-fulltext")
    vision = _resnet_config(state, {}, source)
    vision.update(mean=PREPROCESS["mean"], std=PREPROCESS["std"])
    projection = state["text_projection"]
    config = {"embed_dim": int(projection.shape[1]), "vision": vision, "name": "pmc-clip",
              "text": {"hf_model_dir": text_model, "pooling": "cls", "attention_mask": False, "context_length": 77}}
    return build_and_load(config, convert_pmc_clip_state(state, source), source), dict(PREPROCESS)


def convert_pmc_clip_state(state: dict, source: str) -> dict:
    """PMC-CLIP keys → ours; the fusion/MLM parts are dropped, anything else unknown is refused."""
    visual = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
    out = {f"visual.trunk.{k}": v for k, v in visual_to_timm(visual, is_resnet=True).items()}
    unknown = []
    for key, value in state.items():
        if key.startswith("visual.") or key.startswith(_DROPPED):
            continue
        if key.startswith("text_encoder."):
            out.update(hf_text_entry(key[len("text_encoder."):], value))
        elif key == "text_projection":
            out["text.text_projection.weight"] = value.t().contiguous()
        elif key == "logit_scale":
            out[key] = value
        else:
            unknown.append(key)
    reject_unknown(unknown, source, "PMC-CLIP")
    return out
