"""Contrastive losses, called by name with the model's output: ``get_loss(name)(**model(image, text))``.

Every loss takes ``image_features``, ``text_features``, ``logit_scale`` (exp'd) and ``logit_bias`` (None
for models without one) — never the model. :data:`LOSSES` is the one registry the recipe's
``train.loss`` is validated against; :data:`LOSS_MODEL_DEFAULTS` holds what a loss needs the model to
have (SigLIP: a learnable bias).

``clip_loss`` is CLIP's symmetric InfoNCE: the mean of the image→text and text→image cross-entropies
over the ``N × N`` similarity matrix scaled by ``logit_scale``; pair ``i`` is the positive of row ``i``.

``tiled_clip_loss`` computes exactly the same value and gradients without ever holding the ``N × N``
matrix: it walks over blocks of image rows, keeps the row log-sum-exps and an online (running max +
rescaled sum) log-sum-exp per column, and recomputes each block in backward (:class:`TiledInfoNCE`).
Extra memory is ``O(N·d + block·N)`` instead of ``O(N²)``.

``siglip_loss`` is SigLIP's pairwise sigmoid loss ``Σ_ij softplus(−z_ij (s·I_i·T_j + b)) / N`` (``z`` = +1 on
the diagonal, −1 elsewhere), streamed the same way (:class:`TiledSigLIP`): row blocks of the logits are
built once, their loss and gradients accumulated, and backward only rescales the saved ``O(N·d)``
gradients — no ``N × N`` buffer, three matmuls in all.

``gather_features`` all-gathers features across processes *with gradients* (as open_clip's
``gather_with_grad``), so every rank computes the loss over the global batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .errors import ConfigError

# Elements of one (block × N) similarity block in the tiled loss: 2**23 floats = 32 MiB per temporary.
TILE_ELEMENTS = 2 ** 23


def clip_logits(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor):
    """Image→text and text→image logits ``(N, N)`` from L2-normalised features."""
    logits_per_image = logit_scale * image_features @ text_features.T
    return logits_per_image, logits_per_image.T


def _check_pair(image_features: torch.Tensor, text_features: torch.Tensor) -> None:
    if image_features.ndim != 2 or image_features.shape != text_features.shape:
        raise ValueError(f"image and text features must both be (N, D) with the same shape, got "
                         f"{tuple(image_features.shape)} and {tuple(text_features.shape)}")


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
              logit_bias: torch.Tensor | None = None, text_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of paired, L2-normalised features.

    Args:
        image_features: ``(N, D)`` image embeddings.
        text_features: ``(N, D)`` text embeddings, row ``i`` paired with image ``i``.
        logit_scale: scalar ``exp(log_scale)`` (the model's ``logit_scale`` output).
        logit_bias: ignored: a bias added to every logit cancels in both softmaxes.
        text_ids: optional ``(N,)`` integer ids of the normalised report texts: pairs with equal ids are
            masked out of each other's denominators (identical reports are not negatives); the paired item
            stays the only positive.

    Returns:
        Scalar loss ``(CE(image→text) + CE(text→image)) / 2``.
    """
    _check_pair(image_features, text_features)
    logits_per_image, logits_per_text = clip_logits(image_features, text_features, logit_scale)
    mask = duplicate_mask(text_ids, 0, image_features.shape[0])
    if mask is not None:
        logits_per_image = logits_per_image.masked_fill(mask, float("-inf"))
        logits_per_text = logits_per_image.T
    labels = torch.arange(image_features.shape[0], device=image_features.device)
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2


def duplicate_mask(text_ids: torch.Tensor | None, start: int, end: int) -> torch.Tensor | None:
    """``(end - start, N)`` True where row ``i``'s text id equals column ``j``'s and ``i != j`` (None: no ids
    or no duplicates in the batch)."""
    if text_ids is None:
        return None
    ids = text_ids.reshape(-1)
    if ids.unique().numel() == ids.numel():
        return None
    mask = ids[start:end, None] == ids[None, :]
    mask[torch.arange(end - start, device=mask.device), torch.arange(start, end, device=mask.device)] = False
    return mask


def _blocks(n: int, block: int | None):
    block = block or max(1, min(n, TILE_ELEMENTS // max(n, 1)))
    return [(start, min(start + block, n)) for start in range(0, n, block)]


class TiledInfoNCE(torch.autograd.Function):
    """Symmetric InfoNCE, streamed over row blocks; exact forward and backward (at least fp32 inside).

    With ``S = s · I Tᵀ``, the loss is ``(Σ_i lse_j S_ij + Σ_j lse_i S_ij) / 2N − s Σ_i I_i·T_i / N``, and
    ``∂L/∂S = (softmax_rows(S) + softmax_cols(S)) / 2N − I/N``; backward rebuilds ``S`` block by block
    from the saved features and the row/column log-sum-exps.
    """

    @staticmethod
    def forward(ctx, image_features, text_features, logit_scale, block, text_ids=None):
        dtype = torch.promote_types(image_features.dtype, torch.float32)  # fp32 (or fp64) inside
        img, txt, scale = image_features.to(dtype), text_features.to(dtype), logit_scale.to(dtype)
        n = img.shape[0]
        row_lse = img.new_empty(n)
        col_max = img.new_full((n,), float("-inf"))
        col_sum = img.new_zeros(n)
        scaled = img * scale  # the scale folded into the (N, d) side: no (b, N) multiply
        for start, end in _blocks(n, block):
            sims = scaled[start:end] @ txt.T  # (b, N), the only O(b·N) buffers
            _mask_(sims, text_ids, start, end)
            row_lse[start:end] = torch.logsumexp(sims, dim=1)
            new_max = torch.maximum(col_max, sims.amax(dim=0))
            col_sum = col_sum * torch.exp(col_max - new_max) + sims.sub_(new_max).exp_().sum(dim=0)
            col_max = new_max
        col_lse = col_max + col_sum.log()
        positives = (img * txt).sum()
        loss = (row_lse.sum() + col_lse.sum()) / (2 * n) - scale * positives / n
        ctx.save_for_backward(img, txt, scale, row_lse, col_lse)
        ctx.block, ctx.positives, ctx.text_ids = block, positives, text_ids
        ctx.dtypes = (image_features.dtype, text_features.dtype, logit_scale.dtype)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        img, txt, scale, row_lse, col_lse = ctx.saved_tensors
        n = img.shape[0]
        grad_img, grad_txt = torch.empty_like(img), torch.zeros_like(txt)
        scaled = img * scale
        for start, end in _blocks(n, ctx.block):
            sims = _mask_(scaled[start:end] @ txt.T, ctx.text_ids, start, end)  # masked pairs: probability 0
            probs = torch.sub(sims, row_lse[start:end, None]).exp_().add_(sims.sub_(col_lse[None, :]).exp_())
            grad_img[start:end] = probs @ txt  # 2N · ∂L/∂S without the −I/N diagonal (added below)
            grad_txt.addmm_(probs.T, img[start:end])
        # Σ_ij P_ij (I_i·T_j) = Σ_i (P T)_i · I_i: the scale's gradient without another (b, N) pass
        grad_scale = ((grad_img * img).sum() / (2 * n) - ctx.positives / n) * grad_loss
        grad_img = (grad_img / (2 * n) - txt / n) * (scale * grad_loss)
        grad_txt = (grad_txt / (2 * n) - img / n) * (scale * grad_loss)
        dtype_i, dtype_t, dtype_s = ctx.dtypes
        return grad_img.to(dtype_i), grad_txt.to(dtype_t), grad_scale.to(dtype_s), None, None


def _mask_(sims: torch.Tensor, text_ids, start: int, end: int) -> torch.Tensor:
    """Set identical-report pairs of a row block to −inf in place (no-op without duplicates)."""
    mask = duplicate_mask(text_ids, start, end)
    return sims.masked_fill_(mask, float("-inf")) if mask is not None else sims


def tiled_clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale,
                    logit_bias: torch.Tensor | None = None, block: int | None = None,
                    text_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Memory-lean symmetric InfoNCE, equal to :func:`clip_loss` (values and gradients, fp32 inside).

    Args:
        image_features: ``(N, D)`` image embeddings (normalised).
        text_features: ``(N, D)`` text embeddings, row ``i`` paired with image ``i``.
        logit_scale: scalar ``exp(log_scale)``, a tensor (may require grad) or a float.
        logit_bias: ignored (cancels in the softmaxes).
        text_ids: optional report-text ids: identical reports are masked out of each other's denominators
            (as :func:`clip_loss`), exactly, in forward and backward.
        block: image rows per block; default keeps each ``block × N`` buffer at 32 MiB.

    Returns:
        Scalar fp32 loss.
    """
    _check_pair(image_features, text_features)
    logit_scale = _scalar(logit_scale, image_features)
    with torch.autocast(image_features.device.type, enabled=False):  # the Function keeps its own precision
        return TiledInfoNCE.apply(image_features, text_features, logit_scale, block, text_ids)


def _scalar(value, like: torch.Tensor) -> torch.Tensor:
    """A 0-d tensor from a float or a (1-element) tensor."""
    if not torch.is_tensor(value):
        return torch.tensor(float(value), device=like.device)
    return value.reshape(())


class TiledSigLIP(torch.autograd.Function):
    """SigLIP's sigmoid loss over row blocks, exact, with its gradients computed in the same pass.

    With ``L = s · I Tᵀ + b``: ``loss = (Σ_ij softplus(L_ij) − Σ_i L_ii) / N`` (``softplus(−x) = softplus(x) − x``
    turns the positive pairs into a diagonal correction) and ``∂loss/∂L = (σ(L) − Id) / N``. Each block of
    ``L`` is used once for the loss and the four gradients, which are saved (``O(N·d)``) for backward.
    """

    @staticmethod
    def forward(ctx, image_features, text_features, logit_scale, logit_bias, block, need_grad):
        dtype = torch.promote_types(image_features.dtype, torch.float32)
        img, txt = image_features.to(dtype), text_features.to(dtype)
        scale, bias = logit_scale.to(dtype), logit_bias.to(dtype)
        n = img.shape[0]
        positives = (img * txt).sum(dim=1)  # the diagonal's cosine similarities
        total = -(scale * positives + bias).sum()
        grad_img, grad_txt = (torch.empty_like(img), torch.zeros_like(txt)) if need_grad else (None, None)
        scaled, sig_sum = img * scale, img.new_zeros(())
        for start, end in _blocks(n, block):
            logits = torch.addmm(bias, scaled[start:end], txt.T)  # (b, N): the only O(b·N) buffers
            total = total + F.softplus(logits).sum()
            if need_grad:
                sig = logits.sigmoid_()
                grad_img[start:end] = sig @ txt
                grad_txt.addmm_(sig.T, img[start:end])
                sig_sum = sig_sum + sig.sum()
        if need_grad:  # Σ_ij σ_ij I_i·T_j = Σ_i (σ T)_i · I_i: the scale's gradient without another N² pass
            sig_dot = (grad_img * img).sum()
            grads = ((grad_img - txt) * scale / n, (grad_txt - img) * scale / n,
                     (sig_dot - positives.sum()) / n, (sig_sum - n) / n)
            ctx.save_for_backward(*grads)
        ctx.dtypes = (image_features.dtype, text_features.dtype, logit_scale.dtype, logit_bias.dtype)
        return total / n

    @staticmethod
    def backward(ctx, grad_loss):
        grads = [g * grad_loss for g in ctx.saved_tensors]
        return (*(g.to(dt) for g, dt in zip(grads, ctx.dtypes)), None, None)


def siglip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale,
                logit_bias=None, block: int | None = None) -> torch.Tensor:
    """SigLIP's sigmoid loss, equal to open_clip's ``SigLipLoss`` on one process (values and gradients).

    ``Σ_ij −log σ(z_ij (s · I_i·T_j + b)) / N`` with ``z`` = +1 for the pair and −1 otherwise; every
    image-text pair is its own binary problem, so over gathered features the loss of the global batch
    is the sum over all ``N²`` pairs. Memory: ``O(N·d + block·N)``, never the ``N × N`` logits.

    Args:
        image_features: ``(N, D)`` image embeddings (normalised).
        text_features: ``(N, D)`` text embeddings, row ``i`` paired with image ``i``.
        logit_scale: scalar ``exp(log_scale)`` (tensor or float).
        logit_bias: the learnable bias ``b`` (required: SigLIP models have one; see LOSS_MODEL_DEFAULTS).
        block: image rows per block; default keeps each ``block × N`` buffer at 32 MiB.

    Returns:
        Scalar fp32 (or fp64) loss.
    """
    _check_pair(image_features, text_features)
    if logit_bias is None:
        raise ConfigError("the siglip loss needs a model with a logit_bias (model.init_logit_bias; recipes with "
                          "train.loss: siglip add one, initialised at -10)")
    scale, bias = _scalar(logit_scale, image_features), _scalar(logit_bias, image_features)
    need_grad = torch.is_grad_enabled() and any(
        t.requires_grad for t in (image_features, text_features, scale, bias))
    with torch.autocast(image_features.device.type, enabled=False):
        return TiledSigLIP.apply(image_features, text_features, scale, bias, block, need_grad)


# name -> loss(image_features, text_features, logit_scale, logit_bias=None); train.loss is checked against it
LOSSES = {"dense": clip_loss, "tiled": tiled_clip_loss, "siglip": siglip_loss}
# what a loss needs the model to have (applied to a recipe's model config when it has no logit_bias):
# open_clip's SigLIP defaults, log scale ln 10 and bias -10
LOSS_MODEL_DEFAULTS = {"siglip": {"init_logit_scale": math.log(10), "init_logit_bias": -10.0}}


def get_loss(name: str):
    """The loss registered as ``name``; call it with the model's output, ``loss(**out)``.

    Raises:
        ConfigError: ``name`` is not in :data:`LOSSES`.
    """
    if name not in LOSSES:
        raise ConfigError(f"train.loss must be one of {', '.join(LOSSES)}; got '{name}'")
    return LOSSES[name]


def gather_features(image_features: torch.Tensor, text_features: torch.Tensor):
    """Concatenate every rank's features in rank order, keeping gradients (no-op without a process group).

    The backward of the gather sums the gradients that all ranks send to each slice, so with DDP's
    gradient *averaging* the parameter gradients equal those of one process on the global batch.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return image_features, text_features
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(image_features), dim=0), torch.cat(all_gather(text_features), dim=0)


def text_id(text: str) -> int:
    """A stable signed 64-bit id of a report's normalised text (whitespace collapsed, lower case): equal ids
    mark identical reports (``text_ids`` of the InfoNCE losses)."""
    import hashlib

    digest = hashlib.blake2b(" ".join(str(text).lower().split()).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def gather_ids(ids: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``(B,)`` ids in rank order (as :func:`gather_features`; no gradients)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return ids
    parts = [torch.empty_like(ids) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, ids.contiguous())
    return torch.cat(parts)
