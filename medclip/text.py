"""CLIP's text Transformer, written for speed on real report lengths and for prompt tuning.

Compared with open_clip's tower it computes the same function, with three differences that matter:

* **separate q/k/v projections** (``q_proj``, ``k_proj``, ``v_proj``) so peft's LoRA can target each
  (while none is wrapped they still run as one GEMM, as open_clip's fused ``in_proj``);
* **no work on padding** (the one fast path, :meth:`CLIPTextTransformer.forward`). Under the causal
  mask a token never attends to later positions, so the EOS embedding does not depend on the padding
  after it. The real tokens of the whole batch are **packed** into one ``(tokens, width)`` matrix
  (:class:`Packing`): layer norms, q/k/v/out projections and the MLP (~95% of the FLOPs) run on real
  tokens only, as one GEMM per layer, and only attention scatters them into a ``(B, L_max)`` grid;
  the **last block computes only the EOS rows** (the only ones EOS pooling reads);
* :meth:`CLIPTextTransformer.forward_embeds` takes token *embeddings* plus a mask, which CoOp uses to
  feed learnable context vectors.

:meth:`CLIPTextTransformer.forward_reference` is the plain path (every position of the padded batch
through every block, as open_clip computes it): the reference the fast path is tested against.
"""

from __future__ import annotations

from typing import NamedTuple

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


class Packing(NamedTuple):
    """Where the real tokens of a zero-padded batch ``(B, L)`` sit once packed into ``(T, W)`` rows.

    Attributes:
        index: ``(T,)`` flat grid positions ``b * L + t`` of the real tokens, in batch order.
        pad: flat grid positions of the padding (zeroed when a grid is filled).
        ends: ``(B,)`` row of each sequence's EOS token in the packed matrix.
        eos: ``(B,)`` EOS position of each sequence in the grid.
        batch: ``B``.
        length: ``L`` (the longest sequence).
    """

    index: torch.Tensor
    pad: torch.Tensor
    ends: torch.Tensor
    eos: torch.Tensor
    batch: int
    length: int

    @classmethod
    def from_eos(cls, eos: torch.Tensor, length: int) -> Packing:
        """The packing of sequences that end at ``eos`` (every position ``<= eos`` is real)."""
        real = torch.arange(length, device=eos.device) <= eos[:, None]
        index, pad = real.flatten().nonzero().squeeze(1), (~real).flatten().nonzero().squeeze(1)
        ends = torch.cumsum(eos + 1, dim=0) - 1
        return cls(index, pad, ends, eos, eos.shape[0], length)

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, L, W)`` grid → ``(T, W)`` real tokens."""
        return _Gather.apply(x.reshape(self.batch * self.length, x.shape[-1]), self.index, self.pad)

    def to_grid(self, x: torch.Tensor, heads: int) -> torch.Tensor:
        """``(T, W)`` → ``(B, heads, L, W // heads)`` with zeros at the padding (which no real query sees)."""
        grid = _Scatter.apply(x, self.index, self.pad)
        return grid.view(self.batch, self.length, heads, x.shape[1] // heads).transpose(1, 2)

    def from_grid(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, heads, L, head_dim)`` attention output → ``(T, W)`` at the real tokens."""
        batch, heads, length, head_dim = x.shape
        return _Gather.apply(x.transpose(1, 2).reshape(batch * length, heads * head_dim), self.index, self.pad)


def _scatter_rows(x: torch.Tensor, index: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
    """A ``(len(index) + len(pad), W)`` grid: rows of ``x`` at ``index``, zeros at ``pad`` (each row written once)."""
    grid = x.new_empty(index.shape[0] + pad.shape[0], x.shape[1]).index_copy_(0, index, x)
    return grid.index_fill_(0, pad, 0.0)


class _Gather(torch.autograd.Function):
    """``grid[index]`` for unique row indices; its backward is a plain row copy (no scatter-add)."""

    @staticmethod
    def forward(ctx, grid: torch.Tensor, index: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(index, pad)
        return grid.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        index, pad = ctx.saved_tensors
        return _scatter_rows(grad.contiguous(), index, pad), None, None


class _Scatter(torch.autograd.Function):
    """Rows of ``x`` placed at unique ``index`` rows of a zero ``(rows, W)`` grid; backward gathers them."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, index: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(index)
        return _scatter_rows(x, index, pad)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (index,) = ctx.saved_tensors
        return grad.reshape(-1, grad.shape[-1]).index_select(0, index), None, None


def _joint_linear(x: torch.Tensor, projs: tuple[nn.Module, ...]) -> torch.Tensor:
    """``torch.cat([proj(x) for proj in projs], -1)``, as one GEMM when every projection is a plain ``nn.Linear``.

    One ``(T, W) x (W, n W)`` product (as open_clip's fused ``in_proj``) is faster on CPU than ``n`` of
    ``(W, W)``, forward and backward; the weights stay separate modules, so projections wrapped by peft's
    LoRA (no longer plain ``nn.Linear``) are simply called one by one.
    """
    if all(type(proj) is nn.Linear and proj.bias is not None for proj in projs):
        return F.linear(x, torch.cat([proj.weight for proj in projs]), torch.cat([proj.bias for proj in projs]))
    return torch.cat([proj(x) for proj in projs], dim=-1)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with separate q/k/v projections and SDPA."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, packing: Packing, last: bool = False) -> torch.Tensor:
        """Attention over packed real tokens ``(T, W)``: projections on ``T`` rows, attention on the grid.

        Returns ``(T, W)``, or with ``last`` only the ``(B, W)`` rows at each EOS: the causal mask becomes a
        key mask ``position <= eos`` and one query per sequence is computed instead of one per token.
        The projections that read every row run as one GEMM (:func:`_joint_linear`) and fill one grid.
        """
        if not last:
            qkv = packing.to_grid(_joint_linear(x, (self.q_proj, self.k_proj, self.v_proj)), 3 * self.heads)
            out = F.scaled_dot_product_attention(*qkv.chunk(3, dim=1), is_causal=True)
            return self.out_proj(packing.from_grid(out))
        batch, width = packing.ends.shape[0], x.shape[1]
        q = self.q_proj(x[packing.ends]).view(batch, self.heads, 1, width // self.heads)
        k, v = packing.to_grid(_joint_linear(x, (self.k_proj, self.v_proj)), 2 * self.heads).chunk(2, dim=1)
        keep = torch.arange(packing.length, device=x.device) <= packing.eos[:, None]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])
        return self.out_proj(out.reshape(batch, width))

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """Plain causal attention over a padded batch ``(B, L, W)`` (every position)."""
        batch, length, width = x.shape
        shape = (batch, length, self.heads, width // self.heads)
        q, k, v = (proj(x).view(shape).transpose(1, 2) for proj in (self.q_proj, self.k_proj, self.v_proj))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, width))


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

    def forward(self, x: torch.Tensor, packing: Packing, last: bool = False) -> torch.Tensor:
        """The block on packed real tokens ``(T, W)``; with ``last`` only its ``(B, W)`` output at each EOS
        (all that EOS pooling reads after the last block)."""
        if not last:
            x = x + self.attn(self.ln_1(x), packing)
            return x + self.mlp(self.ln_2(x))
        x_eos = x[packing.ends] + self.attn(self.ln_1(x), packing, last=True)
        return x_eos + self.mlp(self.ln_2(x_eos))

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """The block on a padded batch ``(B, L, W)``, every position."""
        x = x + self.attn.forward_reference(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


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

        Only real tokens are computed (packed, EOS-only last block; see the module docstring): exact
        under the causal mask, equal to :meth:`forward_reference`.
        """
        eos = text.argmax(dim=-1)
        ids = text[:, : int(eos.max()) + 1]
        return self._encode(self.token_embedding(ids) + self.positional_embedding[: ids.shape[1]], eos)

    def forward_embeds(self, embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Embed token *embeddings* ``(B, L, width)``; the EOS is the last position where the mask is 1.

        Positional embeddings are added here, so ``embeds`` are raw token embeddings (CoOp's context
        vectors concatenated with ``token_embedding`` outputs).
        """
        eos = attention_mask.long().sum(dim=1) - 1
        length = int(eos.max()) + 1
        x = embeds[:, :length] + self.positional_embedding[:length]
        return self._encode(x, eos)

    def forward_reference(self, text: torch.Tensor) -> torch.Tensor:
        """The plain path: every position of the padded ``(B, L)`` batch through every block, EOS pooling.

        What open_clip computes (no packing, no trimming, all rows in the last block); slower, kept as
        the reference the fast :meth:`forward` is tested against.
        """
        eos = text.argmax(dim=-1)
        x = self.token_embedding(text) + self.positional_embedding[: text.shape[1]]
        for block in self.blocks:
            x = block.forward_reference(x)
        x = self.ln_final(x)
        return self.text_projection(x[torch.arange(x.shape[0], device=x.device), eos])

    def _encode(self, x: torch.Tensor, eos: torch.Tensor) -> torch.Tensor:
        """Blocks, final norm and projection of a padded batch ``(B, L, W)``, real tokens packed into ``(T, W)``."""
        packing = Packing.from_eos(eos, x.shape[1])
        x = packing.pack(x)
        ckpt = self.grad_checkpointing and torch.is_grad_enabled()
        for index, block in enumerate(self.blocks):
            last = index == len(self.blocks) - 1
            x = checkpoint(block, x, packing, last, use_reentrant=False) if ckpt else block(x, packing, last)
        return self.text_projection(self.ln_final(x))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def compile_blocks(self, **kwargs) -> None:
        """``torch.compile`` each block in place with dynamic shapes (``train.compile``).

        The packing (a data-dependent ``nonzero``) stays eager, so a batch with other report lengths
        reuses the compiled blocks instead of recompiling (``kwargs`` go to ``nn.Module.compile``).
        """
        for block in self.blocks:
            block.compile(dynamic=True, **kwargs)
