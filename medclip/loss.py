"""Contrastive losses, called by name with the model's output: ``get_loss(name)(**model(image, text))``.

Every loss takes ``image_features``, ``text_features``, ``logit_scale`` (exp'd) and ``logit_bias`` (None
for models without one) — never the model. :data:`LOSSES` is the one registry the recipe's
``train.loss`` is validated against; :data:`LOSS_MODEL_DEFAULTS` holds what a loss needs the model to
have (SigLIP: a learnable bias).

``clip_loss`` is CLIP's symmetric InfoNCE: the mean of the image→text and text→image cross-entropies
over the ``N × N`` similarity matrix scaled by ``logit_scale``; pair ``i`` is the positive of row ``i``.

``tiled_clip_loss`` computes exactly the same value and gradients without ever holding the ``N × N``
matrix (:class:`TiledInfoNCE`): pass 1 walks over blocks of image rows and keeps the row log-sum-exps and
an online (running max + rescaled sum) log-sum-exp per column; pass 2 rebuilds each block once and turns
it into both feature gradients, in forward, so backward only rescales them. Four ``N × N × d`` matmuls
(open_clip's dense ``ClipLoss``: six) and extra memory ``O(N·d + block·N)`` instead of ``O(N²)``.

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

# Elements of one (block × N) similarity block in the tiled losses: 2**23 floats = 32 MiB per temporary.
TILE_ELEMENTS = 2 ** 23
# The InfoNCE's blocks are twice that (64 MiB): bigger blocks keep its matmuls closer to peak (measured on
# 2 cores: 1024 rows at N = 16384 took 7% less CPU time than 512), and it holds only two such buffers.
INFONCE_TILE_ELEMENTS = 2 ** 24


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


def _blocks(n: int, block: int | None, elements: int = TILE_ELEMENTS):
    block = block or max(1, min(n, elements // max(n, 1)))
    return [(start, min(start + block, n)) for start in range(0, n, block)]


# One exp per block serves both softmaxes while the shifts involved lie within this spread of each other, well
# inside exp's range (fp32 underflows below e^-87, fp64 below e^-708): every term that can change a sum is
# then a normal float; past it the passes take the two-exp branch, exact for any spread.
_EXP_SPREAD = {torch.float32: 40.0, torch.float64: 300.0}


class TiledInfoNCE(torch.autograd.Function):
    """Symmetric InfoNCE, streamed over row blocks; exact loss and gradients (at least fp32 inside).

    With ``S = s · I Tᵀ`` (``s`` folded into ``I``), the loss is
    ``(Σ_i r_i + Σ_j c_j) / 2N − s Σ_i I_i·T_i / N`` with the row and column log-sum-exps ``r``, ``c``, and
    ``∂L/∂S = (softmax_rows(S) + softmax_cols(S)) / 2N − Id / N``. The column log-sum-exps need every row,
    so there are two passes over the row blocks: pass 1 (:func:`_lse_pass`) computes ``r`` and ``c`` (one
    matmul per block), pass 2 (:func:`_grad_pass`) rebuilds each block once and turns it into both feature
    gradients (three matmuls per block). The loss is a scalar, so the gradients are computed here, in
    forward, and backward only multiplies them by the incoming gradient: four ``N × N × d`` matmuls in all
    (open_clip's dense loss does six) and never an ``N × N`` buffer.
    """

    @staticmethod
    def forward(ctx, image_features, text_features, logit_scale, block, text_ids, need_grad):
        dtype = torch.promote_types(image_features.dtype, torch.float32)  # fp32 (or fp64) inside
        img, txt, scale = image_features.to(dtype), text_features.to(dtype), logit_scale.to(dtype)
        n = img.shape[0]
        blocks = _blocks(n, block, INFONCE_TILE_ELEMENTS)
        buffers = img.new_empty(2, blocks[0][1], n)  # two (block × N) buffers, reused by every block
        # S_ij − a_i = [s·I_i, −a_i] · [T_j, 1]: the scale and a per-row shift folded into the (N, d + 1)
        # operands, so the matmul itself returns the shifted block (a = 0 in pass 1, a = r in pass 2)
        lhs = torch.cat([img * scale, img.new_zeros(n, 1)], dim=1)
        rhs = torch.cat([txt, img.new_ones(n, 1)], dim=1)
        row_lse, col_lse = _lse_pass(lhs, rhs, blocks, text_ids, buffers)
        positives = torch.dot(img.reshape(-1), txt.reshape(-1))
        loss = (row_lse.sum() + col_lse.sum()) / (2 * n) - scale * positives / n
        if need_grad:
            # P T and Pᵀ I with P = 2N · ∂L/∂S without the −Id/N diagonal (added below)
            grad_img, grad_txt = _grad_pass(lhs, rhs, img, txt, (row_lse, col_lse), blocks, text_ids, buffers)
            # Σ_ij P_ij (I_i·T_j) = Σ_i (P T)_i · I_i: the scale's gradient without another (b, N) pass
            grad_scale = torch.dot(grad_img.reshape(-1), img.reshape(-1)) / (2 * n) - positives / n
            grad_img = grad_img.div_(2 * n).sub_(txt, alpha=1 / n).mul_(scale)
            grad_txt = grad_txt.div_(2 * n).sub_(img, alpha=1 / n).mul_(scale)
            ctx.save_for_backward(grad_img, grad_txt, grad_scale)
        ctx.dtypes = (image_features.dtype, text_features.dtype, logit_scale.dtype)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grads = [g * grad_loss for g in ctx.saved_tensors]
        return (*(g.to(dt) for g, dt in zip(grads, ctx.dtypes)), None, None, None)


def _lse_pass(lhs, rhs, blocks, text_ids, buffers):
    """Pass 1: row log-sum-exps ``r`` (each block holds whole rows) and column log-sum-exps ``c`` (online:
    a running column max and a sum rescaled whenever the max grows), one matmul per block."""
    n = rhs.shape[0]
    row_lse = rhs.new_empty(n)
    col_max = rhs.new_full((n,), float("-inf"))
    col_sum = rhs.new_zeros(n)
    spread = _EXP_SPREAD[rhs.dtype]
    for start, end in blocks:
        sims = _mask_(torch.mm(lhs[start:end], rhs.T, out=buffers[0, : end - start]), text_ids, start, end)
        row_max = sims.amax(dim=1)
        # a column masked in every row of the block has max −inf: clamp it so that −inf − max stays −inf
        blk_max = sims.amax(dim=0).clamp_min_(torch.finfo(sims.dtype).min)
        top = row_max.max()
        if top - blk_max.min() < spread:
            # one exp for both: E_ij = exp(S_ij − m_i) gives the row sums, and the column sums shifted by the
            # block's column max M_j are Σ_i E_ij · exp(m_i − top) · exp(top − M_j) (a vector-matrix product)
            exps = sims.sub_(row_max[:, None]).exp_()
            row_sum = exps.sum(dim=1)
            blk_sum = torch.mv(exps.T, (row_max - top).exp_()).mul_((top - blk_max).exp_())
        else:  # maxima too far apart for that factorisation: two exps
            blk_sum = torch.sub(sims, blk_max, out=buffers[1, : end - start]).exp_().sum(dim=0)
            row_sum = sims.sub_(row_max[:, None]).exp_().sum(dim=1)
        row_lse[start:end] = row_max + row_sum.log_()
        new_max = torch.maximum(col_max, blk_max)
        col_sum = col_sum.mul_((col_max - new_max).exp_()).add_(blk_sum.mul_((blk_max - new_max).exp_()))
        col_max = new_max
    return row_lse, col_max + col_sum.log()


def _grad_pass(lhs, rhs, img, txt, lse, blocks, text_ids, buffers):
    """Pass 2: ``P = softmax_rows(S) + softmax_cols(S)`` block by block from the log-sum-exps, and the
    unscaled feature gradients ``P T`` (rows of the block) and ``Pᵀ I`` (accumulated)."""
    row_lse, col_lse = lse
    top, spread = row_lse.max(), _EXP_SPREAD[rhs.dtype]
    # one exp per block: softmax_cols = exp(S_ij − c_j) = softmax_rows ⊙ exp(r_i − c_j), and exp(r_i − c_j) =
    # u_i v_j is an outer product, while r and c lie close enough for u, v (and that product) to stay in range
    one_exp = bool(top - col_lse.min() < spread and col_lse.max() - row_lse.min() < spread)
    lhs[:, -1] = -row_lse if one_exp else 0  # the matmul returns S − r (one exp) or S
    u, v = (row_lse - top).exp(), (top - col_lse).exp()
    grad_img, grad_txt = torch.empty_like(img), torch.zeros_like(txt)
    for start, end in blocks:
        sims = _mask_(torch.mm(lhs[start:end], rhs.T, out=buffers[0, : end - start]), text_ids, start, end)
        other = buffers[1, : end - start]
        if one_exp:  # masked pairs: exp(−inf) = 0 in both terms
            probs = sims.exp_()
            probs.addcmul_(probs, torch.outer(u[start:end], v, out=other))
        else:
            probs = torch.sub(sims, col_lse, out=other).exp_().add_(sims.sub_(row_lse[start:end, None]).exp_())
        torch.mm(probs, txt, out=grad_img[start:end])
        grad_txt.addmm_(probs.T, img[start:end])
    return grad_img, grad_txt


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
        block: image rows per block; default keeps each of the two ``block × N`` buffers at 64 MiB.

    Returns:
        Scalar fp32 loss.
    """
    _check_pair(image_features, text_features)
    logit_scale = _scalar(logit_scale, image_features)
    need_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (image_features, text_features, logit_scale))
    with torch.autocast(image_features.device.type, enabled=False):  # the Function keeps its own precision
        return TiledInfoNCE.apply(image_features, text_features, logit_scale, block, text_ids, need_grad)


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
