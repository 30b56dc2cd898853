"""MedCLIP (Wang et al., EMNLP 2022) ResNet checkpoints → our :class:`~medclip.model.CLIP` (``--from medclip-resnet``).

Read from the upstream code (github.com/RyanWangZf/MedCLIP, ``medclip/modeling_medclip.py`` and
``constants.py`` at commit 9c3396f20d5d54e4fae241b8cb06ca45848e98c9). Never install PyPI's ``medclip``
package for it: it has this project's import name.

* image: ``torchvision.models.resnet50`` whose ``fc`` is replaced by ``Linear(2048, 512, bias=False)``. timm's
  ``resnet50`` is the same network with the same parameter names, so the weights map onto the timm trunk
  unchanged and ``fc`` becomes our linear head (a 1-channel input is repeated to 3 channels, as upstream);
* text: Bio_ClinicalBERT called with its attention mask, but pooled **without** it: the mean over all
  positions (padding included) of hidden layers 1, 2 and the last, then ``Linear(768, 512, bias=False)``.
  Upstream pads to the longest text of the batch, so an embedding depends on its batch; medclip's HF tower
  trims padding to the batch's longest text the same way (``text.pooling: medclip``);
* ``logit_scale`` clamped at 4.6052; images normalised with mean 0.5863 / std 0.2795 (one value, all channels).

The weights file is upstream's ``pytorch_model.bin`` (a plain state dict, read with ``weights_only=True``); the
BERT config and vocabulary come from ``--text-model DIR`` (a local Bio_ClinicalBERT copy).
"""

from __future__ import annotations

import os

from ..errors import CheckpointError
from .checkpoints import read_state_dict, reject_unknown
from .clip_common import build_and_load, count_layers, require_text_model

WEIGHTS = "pytorch_model.bin"
MEAN, STD = 0.5862785803043838, 0.27950088968644304
PREPROCESS = {"mean": [MEAN] * 3, "std": [STD] * 3, "size": 224}


def from_medclip_resnet(path: str, text_model: str | None) -> tuple:
    """Load MedCLIP-ResNet (a folder with ``pytorch_model.bin``, or the file). Returns ``(model, preprocess)``."""
    weights = os.path.join(path, WEIGHTS) if os.path.isdir(path) else path
    source = f"{weights} (MedCLIP-ResNet)"
    state = read_state_dict(weights, "MedCLIP weights")
    if "vision_model.model.fc.weight" not in state or "text_model.projection_head.weight" not in state:
        raise CheckpointError(f"{source}: not a MedCLIP-ResNet state dict (needs vision_model.model.fc.weight and "
                              f"text_model.projection_head.weight)")
    require_text_model(text_model, weights, "MedCLIP", "emilyalsentzer/Bio_ClinicalBERT")
    depths = [count_layers(state, f"vision_model.model.layer{i}.") for i in range(1, 5)]
    embed_dim = int(state["vision_model.model.fc.weight"].shape[0])
    vision = {"timm_model": "resnet50", "image_size": 224, "in_chans": 3, "proj": "linear",
              "timm_kwargs": {} if depths == [3, 4, 6, 3] else {"layers": depths},
              "mean": PREPROCESS["mean"], "std": PREPROCESS["std"]}
    text = {"hf_model_dir": text_model, "pooling": "medclip", "context_length": 77}
    config = {"embed_dim": embed_dim, "vision": vision, "text": text, "max_logit_scale": 4.6052,
              "name": "medclip-resnet"}
    return build_and_load(config, convert_medclip_state(state, source), source), dict(PREPROCESS)


def convert_medclip_state(state: dict, source: str) -> dict:
    """Upstream keys → ours: torchvision/timm ResNet names kept, ``fc`` → head, BERT under the HF tower."""
    out, unknown = {}, []
    for key, value in state.items():
        if key == "vision_model.model.fc.weight":
            out["visual.head.weight"] = value
        elif key.startswith("vision_model.model."):
            out["visual.trunk." + key[len("vision_model.model."):]] = value
        elif key.startswith("text_model.model."):
            rest = key[len("text_model.model."):]
            if not (rest.startswith("pooler.") or rest.endswith("position_ids")):  # BERT's unused NSP pooler
                out["text.model." + rest] = value
        elif key == "text_model.projection_head.weight":
            out["text.text_projection.weight"] = value
        elif key == "logit_scale":
            out[key] = value
        else:
            unknown.append(key)
    reject_unknown(unknown, source, "MedCLIP-ResNet")
    return out
