"""CLIP's text Transformer, written for speed on real report lengths and for prompt tuning.

Compared with open_clip's tower it computes the same function, with three differences that matter:

* **separate q/k/v projections** (``q_proj``, ``k_proj``, ``v_proj``) so peft's LoRA can target each;
* a batch runs only up to its **longest real sequence**, and can be split into **length buckets**
  (:func:`plan_length_buckets`). Under the causal mask a token never attends to later positions, so
  the EOS embedding does not depend on the padding after it: trimmed and bucketed runs equal the
  77-token run (tested);
* :meth:`CLIPTextTransformer.forward_embeds` takes token *embeddings* plus a mask, which CoOp uses to
  feed learnable context vectors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import TextConfig


class QuickGELU(nn.Module):
    """OpenAI CLIP's activation, ``x * sigmoid(1.702 x)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def make_activation(name: str) -> nn.Module:
    """``gelu`` or ``quick_gelu`` as a module."""
    return QuickGELU() if name == "quick_gelu" else nn.GELU()


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with separate q/k/v projections and SDPA."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        shape = (batch, length, self.heads, width // self.heads)
        q, k, v = (proj(x).view(shape).transpose(1, 2) for proj in (self.q_proj, self.k_proj, self.v_proj))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, width))

    def forward_last(self, x: torch.Tensor, eos: torch.Tensor) -> torch.Tensor:
        """Attention output ``(B, W)`` at the EOS positions only (keys and values at every position ≤ EOS).

        Equal to ``forward(x)[arange(B), eos]`` — the causal mask becomes a key mask ``position ≤ eos`` —
        while computing one query per row instead of ``L``.
        """
        batch, length, width = x.shape
        head_dim = width // self.heads
        rows = torch.arange(batch, device=x.device)
        q = self.q_proj(x[rows, eos]).view(batch, self.heads, 1, head_dim)
        k, v = (proj(x).view(batch, length, self.heads, head_dim).transpose(1, 2)
                for proj in (self.k_proj, self.v_proj))
        keep = torch.arange(length, device=x.device) <= eos[:, None]  # (B, L): the causal row of each EOS
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])
        return self.out_proj(out.reshape(batch, width))


class ResidualBlock(nn.Module):
    """Pre-norm Transformer block: ``x + attn(ln_1(x))`` then ``x + mlp(ln_2(x))``."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, act: str):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.ln_1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, hidden))
        self.mlp.add_module("act", make_activation(act))
        self.mlp.add_module("c_proj", nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))

    def forward_last(self, x: torch.Tensor, eos: torch.Tensor) -> torch.Tensor:
        """The block's output ``(B, W)`` at the EOS positions only (what EOS pooling reads after the last block)."""
        x_eos = x[torch.arange(x.shape[0], device=x.device), eos] + self.attn.forward_last(self.ln_1(x), eos)
        return x_eos + self.mlp(self.ln_2(x_eos))


class CLIPTextTransformer(nn.Module):
    """CLIP's text tower: token + position embeddings, causal blocks, final norm, EOS pooling, projection.

    Args:
        config: sizes and activation.
        embed_dim: output (joint embedding) size.
    """

    def __init__(self, config: TextConfig, embed_dim: int):
        super().__init__()
        self.config = config
        self.context_length = config.context_length
        self.token_embedding = nn.Embedding(config.vocab_size, config.width)
        self.positional_embedding = nn.Parameter(torch.empty(config.context_length, config.width))
        self.blocks = nn.ModuleList(
            ResidualBlock(config.width, config.heads, config.mlp_ratio, config.act) for _ in range(config.layers)
        )
        self.ln_final = nn.LayerNorm(config.width)
        self.text_projection = nn.Linear(config.width, embed_dim, bias=config.proj_bias)
        self.grad_checkpointing = False
        self.max_buckets = 1
        self.eos_only_last_block = True
        self.init_weights()

    def init_weights(self) -> None:
        """CLIP's initialisation (std scaled by width and depth)."""
        width, layers = self.config.width, self.config.layers
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        proj_std, attn_std, fc_std = (width**-0.5) * ((2 * layers) ** -0.5), width**-0.5, (2 * width) ** -0.5
        for block in self.blocks:
            for proj in (block.attn.q_proj, block.attn.k_proj, block.attn.v_proj):
                nn.init.normal_(proj.weight, std=attn_std)
                nn.init.zeros_(proj.bias)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.zeros_(block.attn.out_proj.bias)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection.weight, std=width**-0.5)

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        """Embed token ids ``(B, L)`` (zero padded, EOS = highest id) into ``(B, embed_dim)``.

        Each batch is trimmed to its longest sequence; with ``max_buckets > 1`` it is also split into
        length buckets (see :func:`plan_length_buckets`). Both are exact under the causal mask.
        """
        eos = text.argmax(dim=-1)
        lengths = eos + 1
        if self.max_buckets <= 1 or text.shape[0] < 2:
            return self._encode_ids(text[:, : int(lengths.max())], eos)
        out = None
        for index in plan_length_buckets(lengths, self.max_buckets):
            part = self._encode_ids(text[index, : int(lengths[index].max())], eos[index])
            out = part.new_empty(text.shape[0], part.shape[1]) if out is None else out
            out[index] = part
        return out

    def _encode_ids(self, ids: torch.Tensor, eos: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(ids) + self.positional_embedding[: ids.shape[1]]
        return self._encode(x, eos)

    def forward_embeds(self, embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Embed token *embeddings* ``(B, L, width)``; the EOS is the last position where the mask is 1.

        Positional embeddings are added here, so ``embeds`` are raw token embeddings (CoOp's context
        vectors concatenated with ``token_embedding`` outputs).
        """
        eos = attention_mask.long().sum(dim=1) - 1
        length = int(eos.max()) + 1
        x = embeds[:, :length] + self.positional_embedding[:length]
        return self._encode(x, eos)

    def _encode(self, x: torch.Tensor, eos: torch.Tensor) -> torch.Tensor:
        ckpt = self.grad_checkpointing and torch.is_grad_enabled()
        for index, block in enumerate(self.blocks):
            if self.eos_only_last_block and index == len(self.blocks) - 1:
                # EOS pooling reads one row per sequence: the last block computes just those rows
                x = checkpoint(block.forward_last, x, eos, use_reentrant=False) if ckpt else block.forward_last(x, eos)
                return self.text_projection(self.ln_final(x))
            x = checkpoint(block, x, use_reentrant=False) if ckpt else block(x)
        x = self.ln_final(x)
        return self.text_projection(x[torch.arange(x.shape[0], device=x.device), eos])

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable


def plan_length_buckets(lengths: torch.Tensor, max_buckets: int) -> list[torch.Tensor]:
    """Split a batch into at most ``max_buckets`` groups of similar length, minimising padded tokens.

    Sorting by length and cutting the sorted order into contiguous groups is optimal for a fixed number
    of groups; an exact dynamic programme over the (≤ a few hundred) sorted lengths picks the cuts that
    minimise ``sum(group_size * group_max_length)``. A new bucket must save at least 8 tokens per row
    of the bucket on average, so near-uniform batches stay in one piece.

    Args:
        lengths: ``(B,)`` real lengths (EOS position + 1).
        max_buckets: the most groups to return.

    Returns:
        Index tensors (into the batch), one per non-empty group.
    """
    order = torch.argsort(lengths)
    sorted_lengths = lengths[order].tolist()
    n = len(sorted_lengths)
    bucket_cost = 8 * n / max(max_buckets, 1)  # tokens a cut must save to pay for an extra small GEMM
    inf = float("inf")
    # best[k][i]: min cost of covering the first i sorted rows with k buckets; cut[k][i]: start of last bucket
    best = [[inf] * (n + 1) for _ in range(max_buckets + 1)]
    cut = [[0] * (n + 1) for _ in range(max_buckets + 1)]
    best[0][0] = 0.0
    for k in range(1, max_buckets + 1):
        for i in range(1, n + 1):
            for j in range(k - 1, i):
                cost = best[k - 1][j] + (i - j) * sorted_lengths[i - 1] + bucket_cost
                if cost < best[k][i]:
                    best[k][i], cut[k][i] = cost, j
    k = min(range(1, max_buckets + 1), key=lambda b: best[b][n])
    bounds, i = [], n
    while k > 0:
        bounds.append((cut[k][i], i))
        i, k = cut[k][i], k - 1
    return [order[start:stop] for start, stop in reversed(bounds) if stop > start]
