"""CoOp (Zhou et al., 2022): learn the prompt's context words as vectors, keep CLIP frozen.

A prompt is ``[SOS] ctx_1 ... ctx_M <class name> . [EOS]`` in token-embedding space. The M context
vectors are the only parameters; they pass through the frozen text tower via
``model.encode_text_embeds(embeds, attention_mask)`` (positional embeddings are added inside). Image
features come from the :class:`~adapters.cache.FeatureCache`, so an epoch runs the text tower once per
batch and never the image tower.

Defaults follow CoOp: 16 context vectors drawn from N(0, 0.02²) (or ``ctx_init`` such as
"a chest x-ray of a", whose token embeddings initialise as many vectors as it has tokens); one shared
context (``csc: false``) or one per class (CSC); class token at the ``end``, ``middle`` or ``front``;
SGD lr 0.002 (momentum 0.9, weight decay 5e-4), cosine decay, one warm-up epoch at a constant 1e-5,
batch 32, epochs by shots 50/100/100/200/200 for 1/2/4/8/16 (``epochs`` overrides).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from medclip.errors import ConfigError

from .base import FewShotMethod, register_method
from .loop import Schedule, optimise, steps_for_epochs

COOP_EPOCHS = {1: 50, 2: 100, 4: 100, 8: 200, 16: 200}


def epochs_for_shots(shots: int) -> int:
    """CoOp's epochs for ``shots`` (the schedule of the nearest smaller shot count; 200 above 16)."""
    known = [s for s in sorted(COOP_EPOCHS) if s <= max(shots, 1)]
    return COOP_EPOCHS[known[-1]]


def token_mask(tokenizer, ids: torch.Tensor) -> torch.Tensor:
    """1 for real tokens: up to the EOS (the highest id) for CLIP's BPE, non-pad tokens for HF tokenizers."""
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is not None:
        return (ids != pad).long()
    return (torch.arange(ids.shape[1])[None] <= ids.argmax(dim=-1)[:, None]).long()


def n_tokens(tokenizer, text: str) -> int:
    """Number of tokens of ``text`` between the start token (SOS/CLS) and the end token (EOS/SEP)."""
    return int(token_mask(tokenizer, tokenizer([text])).sum()) - 2


class PromptLearner(nn.Module):
    """Learnable context vectors plus the frozen embeddings of SOS, class names, period and EOS.

    Args:
        model: the CLIP model (its token embedding is read once, not trained).
        tokenizer: the model's tokenizer (CLIP BPE, or an HF WordPiece tokenizer for HF text towers).
        names: one class text per target.
        n_ctx: context length (ignored with ``ctx_init``).
        ctx_init: a phrase initialising the context, or None for random init.
        csc: class-specific context (one context per target).
        position: where the class token goes: ``end``, ``middle`` or ``front``.
        generator: random generator of the initialisation.
    """

    def __init__(self, model, tokenizer, names: list[str], n_ctx: int = 16, ctx_init: str | None = None,
                 csc: bool = False, position: str = "end", generator: torch.Generator | None = None):
        super().__init__()
        if position not in ("end", "middle", "front"):
            raise ConfigError(f"coop class_token_position must be end, middle or front, got '{position}'")
        if not hasattr(model.text, "forward_embeds"):
            raise ConfigError("CoOp needs a text tower with forward_embeds (medclip's CLIP or HF text towers)")
        embedding = model.text.token_embedding
        width = embedding.weight.shape[1]
        n_targets = len(names)
        with torch.no_grad():
            if ctx_init:
                n_ctx = n_tokens(tokenizer, ctx_init)
                init_ids = tokenizer([ctx_init])[0, 1:1 + n_ctx].to(embedding.weight.device)
                vectors = embedding(init_ids).float().cpu()
                ctx = vectors.expand(n_targets, -1, -1).clone() if csc else vectors.clone()
                prefix_text = ctx_init
            else:
                shape = (n_targets, n_ctx, width) if csc else (n_ctx, width)
                ctx = torch.randn(shape, generator=generator) * 0.02
                prefix_text = " ".join(["X"] * n_ctx)
            ids = tokenizer([f"{prefix_text} {name}." for name in names])
            embedded = embedding(ids.to(embedding.weight.device)).float().cpu()
        self.n_ctx, self.position = n_ctx, position
        self.ctx = nn.Parameter(ctx)
        self.register_buffer("token_prefix", embedded[:, :1], persistent=False)
        self.register_buffer("token_suffix", embedded[:, 1 + n_ctx:], persistent=False)
        self.name_lens = [n_tokens(tokenizer, name) for name in names]
        self.register_buffer("attention_mask", token_mask(tokenizer, ids), persistent=False)

    def forward(self) -> torch.Tensor:
        """Prompt embeddings ``(T, L, width)``."""
        ctx = self.ctx if self.ctx.dim() == 3 else self.ctx.expand(self.token_prefix.shape[0], -1, -1)
        prefix, suffix = self.token_prefix, self.token_suffix
        if self.position == "end":
            return torch.cat([prefix, ctx, suffix], dim=1)
        rows = []
        half = self.n_ctx // 2
        for i, name_len in enumerate(self.name_lens):
            name, rest = suffix[i:i + 1, :name_len], suffix[i:i + 1, name_len:]
            if self.position == "middle":
                parts = [prefix[i:i + 1], ctx[i:i + 1, :half], name, ctx[i:i + 1, half:], rest]
            else:
                parts = [prefix[i:i + 1], name, ctx[i:i + 1], rest]
            rows.append(torch.cat(parts, dim=1))
        return torch.cat(rows, dim=0)


def coop_lr(epoch: int, epochs: int, lr: float, warmup_epochs: int, warmup_lr: float) -> float:
    """CoOp's learning rate at ``epoch``: constant ``warmup_lr`` first, then cosine decay of ``lr``."""
    if epoch < warmup_epochs:
        return warmup_lr
    return 0.5 * lr * (1 + math.cos(math.pi * epoch / epochs))


@dataclass
class SGDConfig:
    """CoOp's optimiser, shared by CLIP-Adapter: SGD (momentum 0.9), one warm-up epoch at ``warmup_lr``,
    cosine decay per epoch; ``epochs`` None follows the shots (:func:`epochs_for_shots`)."""

    lr: float = 0.002
    weight_decay: float = 5e-4
    batch_size: int = 32
    epochs: int | None = None
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5


def train_sgd(method: FewShotMethod, params: list, n_items: int, loss: Callable[[torch.Tensor], torch.Tensor],
              epochs: int) -> None:
    """CoOp's optimisation (see :class:`SGDConfig`) through the shared loop; ``loss(indices)`` is the batch loss."""
    hp = method.config
    optimizer = torch.optim.SGD(params, lr=hp.lr, momentum=0.9, weight_decay=hp.weight_decay)
    schedule = Schedule(steps_for_epochs(n_items, hp.batch_size, epochs), hp.batch_size,
                        epoch_lr=lambda epoch: coop_lr(epoch, epochs, hp.lr, hp.warmup_epochs, hp.warmup_lr))
    optimise(method, optimizer, n_items, loss, schedule)
    method.budget = {"epochs": epochs}


@dataclass
class CoOpConfig(SGDConfig):
    """CoOp's options: context length, its initialising phrase, class-specific contexts, class token place."""

    n_ctx: int = 16
    ctx_init: str | None = None
    csc: bool = False
    class_token_position: str = "end"


@register_method
class CoOp(FewShotMethod):
    """Context optimisation over the frozen text tower, with cached image features."""

    name = "coop"
    summary = "few-shot CoOp prompt learning over the frozen text tower"
    config_class = CoOpConfig

    def empty_module(self, state=None) -> PromptLearner:
        hp = self.config
        return PromptLearner(self.model, self.tokenizer, list(self.task.names), hp.n_ctx, hp.ctx_init, hp.csc,
                             hp.class_token_position, self.generator())

    @property
    def learner(self) -> PromptLearner:
        return self.module

    def target_features(self) -> torch.Tensor:
        """Normalised text features ``(T, D)`` of the learned prompts (differentiable in the context)."""
        device = self.model.logit_scale.device
        embeds = self.learner().to(device)
        return self.model.encode_text_embeds(embeds.to(self.model.text.token_embedding.weight.dtype),
                                             self.learner.attention_mask.to(device))

    def _fit(self, train, val) -> None:
        y = torch.as_tensor(self.task.labels(train))
        features = self.image_features(train)
        self.train_prompts(lambda idx: features[idx], y)

    def train_prompts(self, batch_features: Callable[[torch.Tensor], torch.Tensor], y: torch.Tensor) -> None:
        """Optimise the context; ``batch_features(indices)`` gives the (cached or re-encoded) image features."""
        self.module = self.empty_module()
        scale = self.model.get_logit_scale().detach()

        def loss(idx: torch.Tensor) -> torch.Tensor:
            text = self.target_features()
            scores = self.task.combine(scale * batch_features(idx).to(text) @ text.t())
            return self.task.loss(scores.float(), y[idx])

        train_sgd(self, [self.learner.ctx], len(y), loss,
                  self.config.epochs or epochs_for_shots(self.task.shots(y.numpy())))

    def _scores(self, test) -> torch.Tensor:
        text = self.target_features()
        return self.task.combine(self.logit_scale() * self.image_features(test).to(text) @ text.t())
