"""Hugging Face ``SiglipModel`` folders (SigLIP, MedSigLIP) → our :class:`~medclip.model.CLIP`.

Tower decisions:

* **Image: HF weights mapped onto timm's SigLIP ViT** (``vit_*_siglip_*``: no class token, ``gelu_tanh``,
  LayerNorm eps 1e-6, MAP attention-pool head). timm has exactly this architecture, so the image tower is the
  same timm trunk as every other medclip model (LoRA ``qkv`` targets, grad checkpointing, ``in_chans``
  adaptation); HF's separate q/k/v are fused into timm's ``qkv`` and the pooling head's packed
  ``in_proj`` is split into timm's ``q`` / ``kv``. The pooled output is the embedding (``proj: identity``).
* **Text: the HF ``SiglipTextModel`` is wrapped** (``text.hf_model_dir`` = its config + SentencePiece
  tokenizer, copied into the converted folder): medclip's own text tower is causal and pools at the EOS
  token, SigLIP's is bidirectional and pools the **last position** through its ``head``; wrapping keeps that
  exact. It is fed the padded-to-max ids without an attention mask (``text.attention_mask: false``), as
  SigLIP was trained and as ``SiglipModel.get_text_features(input_ids)`` computes.
* ``logit_scale`` and ``logit_bias`` are kept (the clamp is raised to at least the stored scale). Scoring:
  multi-label conditions use ``sigmoid(scale · sim + bias)``; single-label tasks the softmax over classes of
  the same logits (the bias cancels).
"""

from __future__ import annotations

import os

import torch

from ..errors import CheckpointError, ConfigError, MissingFileError
from .checkpoints import reject_unknown
from .clip_common import build_and_load, hf_text_entry
from .hf_clip import _read_weights

_TIMM_SIGLIP = {(768, 12, 12): "base", (1024, 24, 16): "large", (1152, 27, 16): "so400m"}


def from_hf_siglip(folder: str) -> tuple:
    """Load a transformers ``SiglipModel`` folder; returns ``(model, preprocess)``.

    The wrapped text tower's folder (a standalone ``siglip_text_model`` config + the source's tokenizer
    files) is written to a temporary folder (the source is never modified); ``medclip convert`` copies it
    into the converted folder's ``text/``. ``preprocess`` is the source's ``preprocessor_config.json``.

    Raises:
        ConfigError: settings medclip cannot reproduce (named); CheckpointError: tensors that do not fit.
    """
    import json

    from transformers import AutoConfig

    from ..config import check_foreign_config

    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
        check_foreign_config(json.load(f), os.path.join(folder, "config.json"))  # before transformers parses it
    hf = AutoConfig.from_pretrained(folder, local_files_only=True)
    v, t = hf.vision_config, hf.text_config
    for part, where in ((v, "vision_config"), (t, "text_config")):
        if part.hidden_act != "gelu_pytorch_tanh" or abs(part.layer_norm_eps - 1e-6) > 1e-12:
            raise ConfigError(f"{folder}/config.json: {where} hidden_act {part.hidden_act} / layer_norm_eps "
                              f"{part.layer_norm_eps}: medclip reproduces SigLIP's gelu_pytorch_tanh and 1e-6")
    if getattr(v, "vision_use_head", True) is False:
        raise ConfigError(f"{folder}/config.json: vision_use_head false (no pooling head) is not supported")
    if t.projection_size != v.hidden_size:
        raise ConfigError(f"{folder}/config.json: text projection_size {t.projection_size} differs from the image "
                          f"width {v.hidden_size}")
    text_dir = _text_folder(t, folder)
    config = {"embed_dim": v.hidden_size, "vision": _vision_config(v),
              "text": {"hf_model_dir": text_dir, "pooling": "pooler", "proj": "none", "attention_mask": False,
                       "context_length": t.max_position_embeddings},
              "name": os.path.basename(os.path.normpath(folder))}
    preprocess = _preprocess(folder, config["vision"])
    state = convert_siglip_state(_read_weights(folder), f"{folder} (HF SiglipModel)")
    return build_and_load(config, state, f"{folder} (HF SiglipModel)"), preprocess


def _vision_config(v) -> dict:
    size = _TIMM_SIGLIP.get((v.hidden_size, v.num_hidden_layers, v.num_attention_heads), "base")
    name = f"vit_{size}_patch16_siglip_224"
    ratio = v.intermediate_size / v.hidden_size
    kwargs = {"embed_dim": v.hidden_size, "depth": v.num_hidden_layers, "num_heads": v.num_attention_heads,
              "mlp_ratio": ratio, "patch_size": v.patch_size, "act_layer": "gelu_tanh"}  # timm defaults to exact GELU
    if int(v.hidden_size * ratio) != v.intermediate_size:
        raise ConfigError(f"vision intermediate_size {v.intermediate_size} is not a whole multiple timm can build "
                          f"from hidden_size {v.hidden_size}")
    return {"timm_model": name, "image_size": v.image_size, "in_chans": v.num_channels, "proj": "identity",
            "timm_kwargs": kwargs, "mean": [0.5] * v.num_channels, "std": [0.5] * v.num_channels}


def _text_folder(t, folder: str) -> str:
    """A temporary folder with a standalone ``siglip_text_model`` config and the source's tokenizer files."""
    import shutil
    import tempfile

    from ..hf_text import WEIGHT_SUFFIXES

    text_dir = tempfile.mkdtemp(prefix="medclip-siglip-text-")
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if os.path.isfile(path) and not name.endswith(WEIGHT_SUFFIXES) and name != "config.json":
            shutil.copyfile(path, os.path.join(text_dir, name))
    t.save_pretrained(text_dir)
    if not any(os.path.exists(os.path.join(text_dir, n)) for n in ("spiece.model", "tokenizer.json")):
        raise MissingFileError(f"{folder}: no tokenizer (spiece.model or tokenizer.json); copy the model's "
                               f"tokenizer files next to its config.json")
    return text_dir


def _preprocess(folder: str, vision: dict) -> dict:
    """The source's image preprocessing (``preprocessor_config.json``); its mean/std become the model's."""
    import json

    path = os.path.join(folder, "preprocessor_config.json")
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    for ours, theirs in (("mean", "image_mean"), ("std", "image_std")):
        if isinstance(data.get(theirs), list) and len(data[theirs]) == vision["in_chans"]:
            vision[ours] = [float(x) for x in data[theirs]]
    return {k: data[k] for k in ("image_mean", "image_std", "size", "resample", "rescale_factor") if k in data}


_BLOCK = (("layer_norm1.", "norm1."), ("layer_norm2.", "norm2."), ("self_attn.out_proj.", "attn.proj."),
          ("mlp.fc1.", "mlp.fc1."), ("mlp.fc2.", "mlp.fc2."))


def convert_siglip_state(state: dict, source: str) -> dict:
    """HF ``SiglipModel`` keys → ours (vision onto timm's SigLIP ViT, text under the wrapped HF model)."""
    out, unknown = {}, []
    qkv: dict = {}
    for key, value in state.items():
        if key.startswith("text_model."):
            out.update(hf_text_entry(key[len("text_model."):], value))
        elif key in ("logit_scale", "logit_bias"):
            out[key] = value.reshape(())
        elif key.startswith("vision_model."):
            mapped = _vision_key(key[len("vision_model."):], value, qkv)
            if mapped is None:
                unknown.append(key)
            out.update(mapped or {})
        else:
            unknown.append(key)
    for block, parts in qkv.items():
        for kind in ("weight", "bias"):
            pieces = [parts.get(f"{n}.{kind}") for n in "qkv"]
            if any(p is None for p in pieces):
                raise CheckpointError(f"{source}: layer {block} q/k/v {kind}s incomplete")
            out[f"visual.trunk.blocks.{block}.attn.qkv.{kind}"] = torch.cat(pieces, dim=0)
    reject_unknown(unknown, source, "a SiglipModel")
    return out


def _vision_key(key: str, value: torch.Tensor, qkv: dict) -> dict | None:
    trunk = "visual.trunk."
    if key.startswith("encoder.layers."):
        block, rest = key[len("encoder.layers."):].split(".", 1)
        for n in "qkv":
            if rest.startswith(f"self_attn.{n}_proj."):
                qkv.setdefault(block, {})[f"{n}.{rest.rsplit('.', 1)[1]}"] = value
                return {}
        for old, new in _BLOCK:
            if rest.startswith(old):
                return {f"{trunk}blocks.{block}.{new}{rest[len(old):]}": value}
        return None
    simple = {"embeddings.patch_embedding.weight": "patch_embed.proj.weight",
              "embeddings.patch_embedding.bias": "patch_embed.proj.bias", "post_layernorm.weight": "norm.weight",
              "post_layernorm.bias": "norm.bias", "head.attention.out_proj.weight": "attn_pool.proj.weight",
              "head.attention.out_proj.bias": "attn_pool.proj.bias", "head.layernorm.weight": "attn_pool.norm.weight",
              "head.layernorm.bias": "attn_pool.norm.bias"}
    if key in simple:
        return {trunk + simple[key]: value}
    if key == "embeddings.position_embedding.weight":
        return {trunk + "pos_embed": value.unsqueeze(0)}
    if key == "embeddings.position_ids":
        return {}
    if key == "head.probe":
        return {trunk + "attn_pool.latent": value}
    if key.startswith("head.mlp."):
        return {trunk + "attn_pool.mlp." + key[len("head.mlp."):]: value}
    if key.startswith("head.attention.in_proj_"):  # packed q, k, v of nn.MultiheadAttention
        kind = key.rsplit("_", 1)[1]
        width = value.shape[0] // 3
        return {f"{trunk}attn_pool.q.{kind}": value[:width].contiguous(),
                f"{trunk}attn_pool.kv.{kind}": value[width:].contiguous()}
    return None
