"""The CLIP model: an image tower, a text tower and a learnable temperature.

``forward(image, text)`` returns a dict (``image_features``, ``text_features``, ``logit_scale`` and, for
models with one, ``logit_bias``) as open_clip does; the loss lives in :mod:`medclip.loss` and is called
with that dict (``loss(**out)``). A model folder written by
:meth:`CLIP.save_pretrained` holds ``config.json`` and ``model.safetensors`` — no pickles.
"""

from __future__ import annotations

import json
import os

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig, check_weights_match, from_dict, to_dict
from .errors import CheckpointError, require_file
from .text import CLIPTextTransformer
from .version import __version__
from .vision import VisionTower

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TEXT_DIR = "text"  # a model folder's copy of its Hugging Face text encoder's config and tokenizer files


class CLIP(nn.Module):
    """Contrastive image-text model.

    Args:
        config: the full architecture (see :class:`~medclip.config.ModelConfig`).
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.visual = VisionTower(config.vision, config.embed_dim)
        if config.text.hf_model_dir:
            from .hf_text import HFTextTower

            self.text = HFTextTower(config.text, config.embed_dim)
        else:
            self.text = CLIPTextTransformer(config.text, config.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.init_logit_scale)))
        self.logit_bias = None
        if config.init_logit_bias is not None:
            self.logit_bias = nn.Parameter(torch.tensor(float(config.init_logit_bias)))

    def encode_image(self, image: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Image embeddings ``(B, embed_dim)``, L2-normalised by default."""
        features = self.visual(image)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, text: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Text embeddings ``(B, embed_dim)`` from token ids (see :func:`medclip.get_tokenizer`)."""
        features = self.text(text)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text_embeds(self, embeds: torch.Tensor, attention_mask: torch.Tensor,
                           normalize: bool = True) -> torch.Tensor:
        """Text embeddings from token *embeddings* plus mask (prompt tuning, e.g. CoOp)."""
        features = self.text.forward_embeds(embeds, attention_mask)
        return F.normalize(features, dim=-1) if normalize else features

    def get_logit_scale(self) -> torch.Tensor:
        """``exp`` of the log temperature, clamped at ``exp(max_logit_scale)`` (100)."""
        return self.logit_scale.clamp(max=self.config.max_logit_scale).exp()

    def logit_params(self) -> dict:
        """The scalar outputs: ``logit_scale`` (exp'd, clamped) and ``logit_bias`` where the model has one."""
        out = {"logit_scale": self.get_logit_scale()}
        if self.logit_bias is not None:
            out["logit_bias"] = self.logit_bias
        return out

    def forward(self, image: torch.Tensor | None = None, text: torch.Tensor | None = None) -> dict:
        """Encode whichever of ``image`` / ``text`` is given.

        Returns:
            dict with ``image_features`` and/or ``text_features`` (normalised), ``logit_scale`` and, for
            models with a bias (SigLIP), ``logit_bias``: the keyword arguments of every loss.
        """
        out = self.logit_params()
        if image is not None:
            out["image_features"] = self.encode_image(image)
        if text is not None:
            out["text_features"] = self.encode_text(text)
        return out

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute activations of both towers in backward to save memory."""
        self.visual.set_grad_checkpointing(enable)
        self.text.set_grad_checkpointing(enable)

    def save_pretrained(self, folder: str, extra: dict | None = None) -> None:
        """Write ``config.json`` (architecture, medclip version, ``extra``) and ``model.safetensors``."""
        from .paths import save_safetensors

        os.makedirs(folder, exist_ok=True)
        config = to_dict(self.config)
        if self.config.text.hf_model_dir:  # self-contained: the encoder's config + tokenizer travel inside
            config["text"]["hf_model_dir"] = copy_text_files(self.config.text.hf_model_dir, folder)
        meta = {"model": config, "medclip_version": __version__, **(extra or {})}
        with open(os.path.join(folder, CONFIG_NAME), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_safetensors(state, os.path.join(folder, WEIGHTS_NAME), metadata={"format": "pt", "medclip": __version__})

    @classmethod
    def from_pretrained(cls, folder: str, map_location: str | torch.device = "cpu") -> CLIP:
        """Load a folder written by :meth:`save_pretrained`.

        Raises:
            MissingFileError: when ``config.json`` or ``model.safetensors`` is missing.
            CheckpointError: on a corrupt file or weights that do not match the config.
        """
        config_path = os.path.join(folder, CONFIG_NAME)
        require_file(config_path, "model config")
        with open(config_path, encoding="utf-8") as f:
            try:
                meta = json.load(f)
            except json.JSONDecodeError as exc:
                raise CheckpointError(f"{config_path}: not valid JSON ({exc})") from None
        model_dict = meta.get("model", meta)
        text = model_dict.get("text") if isinstance(model_dict, dict) else None
        if isinstance(text, dict) and text.get("hf_model_dir") == TEXT_DIR:  # relative to this folder
            model_dict = {**model_dict, "text": {**text, "hf_model_dir": os.path.join(folder, TEXT_DIR)}}
        config = from_dict(ModelConfig, model_dict, "model")  # ranges + size estimate checked
        check_weights_match(cls, config, os.path.join(folder, WEIGHTS_NAME))  # before any real allocation
        model = cls(config)
        load_weights(model, os.path.join(folder, WEIGHTS_NAME), map_location)
        return model


def load_weights(model: nn.Module, path: str, map_location="cpu", strict: bool = True) -> None:
    """Load a safetensors file into ``model``, naming missing, unexpected and mis-shaped keys.

    Raises:
        MissingFileError: the file does not exist.
        CheckpointError: the file is corrupt or does not match ``model`` (first few keys listed).
    """
    from safetensors.torch import load_file

    require_file(path, "weights file")
    try:
        state = load_file(path, device=str(map_location))
    except Exception as exc:  # safetensors raises its own error types for truncated/corrupt headers
        raise CheckpointError(f"{path}: cannot read weights ({exc}); the file is corrupt or not safetensors") from None
    check_state_dict(model, state, path, strict=strict)
    model.load_state_dict(state, strict=strict)


def check_state_dict(model: nn.Module, state: dict, source: str, strict: bool = True) -> None:
    """Raise :class:`CheckpointError` listing the first few missing/unexpected/mis-shaped keys."""
    expected = model.state_dict()
    shape_errors = [f"{k} {tuple(state[k].shape)} vs model {tuple(v.shape)}"
                    for k, v in expected.items() if k in state and state[k].shape != v.shape]
    missing = [k for k in expected if k not in state] if strict else []
    unexpected = [k for k in state if k not in expected] if strict else []
    problems = []
    for label, keys in (("shape mismatch", shape_errors), ("missing keys", missing), ("unexpected keys", unexpected)):
        if keys:
            problems.append(f"{label} ({len(keys)}): {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}")
    if problems:
        raise CheckpointError(f"{source} does not match the model: {'; '.join(problems)}")


def copy_text_files(source: str, folder: str) -> str:
    """Copy a Hugging Face text encoder's config and tokenizer files (not its weights: the model folder
    holds them) into ``folder/text``; return the relative name written to ``config.json``."""
    import shutil

    from .hf_text import WEIGHT_SUFFIXES
    from .paths import resolve_path

    source, target = resolve_path(source), os.path.join(folder, TEXT_DIR)
    if os.path.abspath(source) == os.path.abspath(target):
        return TEXT_DIR
    os.makedirs(target, exist_ok=True)
    for name in os.listdir(source):
        path = os.path.join(source, name)
        if os.path.isfile(path) and not name.endswith(WEIGHT_SUFFIXES) and not name.startswith("."):
            shutil.copyfile(path, os.path.join(target, name))
    return TEXT_DIR
