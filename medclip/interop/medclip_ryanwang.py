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
from .clip_common import build_and_load, count_layers, hf_text_entry, require_text_model

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
        if key in ("vision_model.model.fc.weight", "vision_model.projection_head.weight"):
            out["visual.head.weight"] = value
        elif key.startswith("vision_model.model."):
            out["visual.trunk." + key[len("vision_model.model."):]] = value
        elif key.startswith("text_model.model."):
            out.update(hf_text_entry(key[len("text_model.model."):], value))
        elif key == "text_model.projection_head.weight":
            out["text.text_projection.weight"] = value
        elif key == "logit_scale":
            out[key] = value
        else:
            unknown.append(key)
    reject_unknown(unknown, source, "MedCLIP-ResNet")
    return out


def from_medclip_vit(path: str, text_model: str | None) -> tuple:
    """Load MedCLIP-ViT (HF Swin-tiny + Bio_ClinicalBERT; folder with ``pytorch_model.bin`` or the file).

    The Swin is wrapped (``vision.hf_config``), not mapped onto timm's: timm's patch merging concatenates the
    2×2 neighbours in another channel order, so HF's own module keeps the forward exact. Its config is read off
    the tensors (patch size, widths, depths, heads, window, MLP ratio); the image size is MedCLIP's 224.
    """
    weights = os.path.join(path, WEIGHTS) if os.path.isdir(path) else path
    source = f"{weights} (MedCLIP-ViT)"
    state = read_state_dict(weights, "MedCLIP weights")
    prefix = "vision_model.model."
    if prefix + "embeddings.patch_embeddings.projection.weight" not in state:
        raise CheckpointError(f"{source}: not a MedCLIP-ViT state dict (needs {prefix}embeddings.patch_embeddings.*)")
    require_text_model(text_model, weights, "MedCLIP", "emilyalsentzer/Bio_ClinicalBERT")
    vision = {"hf_config": swin_config(state, prefix), "image_size": 224, "in_chans": 3, "proj": "linear",
              "mean": PREPROCESS["mean"], "std": PREPROCESS["std"]}
    text = {"hf_model_dir": text_model, "pooling": "medclip", "context_length": 77}
    config = {"embed_dim": int(state["vision_model.projection_head.weight"].shape[0]), "vision": vision,
              "text": text, "max_logit_scale": 4.6052, "name": "medclip-vit"}
    renamed = {}
    for key, value in state.items():
        key = _swin_key(key) if key.startswith("vision_model.") else key
        if key is not None:
            renamed[key.replace("vision_model.model.", "vision_model.model.model.", 1)] = value
    return build_and_load(config, convert_medclip_state(renamed, source), source), dict(PREPROCESS)


def swin_config(state: dict, prefix: str) -> dict:
    """A transformers ``SwinConfig`` dict read off Swin weights."""
    patch = state[prefix + "embeddings.patch_embeddings.projection.weight"]
    depths = [count_layers(state, f"{prefix}encoder.layers.{i}.blocks.")
              for i in range(count_layers(state, f"{prefix}encoder.layers."))]
    state = {_swin_key(k): v for k, v in state.items() if k.startswith(prefix)}
    block = "encoder.layers.{}.blocks.0."
    heads = [int(state[prefix + block.format(i) + _TABLE].shape[1]) for i in range(len(depths))]
    table = state[prefix + block.format(0) + _TABLE].shape[0]
    hidden = state[prefix + block.format(0) + "mlp.fc1.weight"].shape[0]
    return {"model_type": "swin", "image_size": 224, "patch_size": int(patch.shape[-1]), "num_channels": 3,
            "embed_dim": int(patch.shape[0]), "depths": depths, "num_heads": heads,
            "window_size": (round(table ** 0.5) + 1) // 2, "mlp_ratio": hidden / patch.shape[0]}


_TABLE = "attention.relative_position_bias.relative_position_bias_table"
# transformers 4.x Swin names (how MedCLIP's checkpoint was saved) -> the installed 5.x names
_SWIN_V4 = ((".attention.self.relative_position_bias_table", "." + _TABLE),
            (".attention.self.query.", ".attention.q_proj."), (".attention.self.key.", ".attention.k_proj."),
            (".attention.self.value.", ".attention.v_proj."), (".attention.output.dense.", ".attention.o_proj."),
            (".intermediate.dense.", ".mlp.fc1."), (".output.dense.", ".mlp.fc2."))


def _swin_key(key: str) -> str | None:
    """A Swin key in the installed transformers' naming (None: a buffer rebuilt from the config)."""
    if key.endswith("relative_position_index"):
        return None
    for old, new in _SWIN_V4:
        key = key.replace(old, new)
    return key
