"""GradCache: a contrastive batch larger than memory, with the same loss and gradients as one big batch.

Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup":

1. embed the batch chunk by chunk **without** an autograd graph (remembering each chunk's RNG state);
2. compute the loss over the whole batch (gathered over processes) and its gradient w.r.t. the
   *features* and the model's scalar outputs (``logit_scale``, ``logit_bias``) only;
3. re-run each chunk **with** a graph under the replayed RNG state (same dropout masks) and
   back-propagate the cached feature gradients into the towers.

Parameter gradients equal those of one big batch (float rounding aside) for towers without batch
statistics. Towers with BatchNorm (e.g. ResNet trunks) see per-chunk statistics and so differ by design.
Memory: activations of one chunk plus ``O(B·d)`` features.
"""

from __future__ import annotations

import contextlib

import torch

from ..loss import gather_features
from .distributed import no_sync


class RngState:
    """Snapshot of the CPU (and current CUDA device's) RNG, restorable as a context manager."""

    def __init__(self, device: torch.device):
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        self.device = device

    @contextlib.contextmanager
    def replay(self):
        """Run the block from the snapshot's RNG state (the global RNG is left where the block leaves it)."""
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)
        yield


def gradcache_backward(model, images: torch.Tensor, texts: torch.Tensor, chunk: int, loss_fn, autocast,
                       backward, sync: bool = True) -> torch.Tensor:
    """Accumulate into ``.grad`` the gradients of ``loss_fn`` over the whole batch, chunk by chunk.

    Args:
        model: the CLIP model, possibly DDP-wrapped (its forward returns the feature dict).
        images: ``(B, C, H, W)`` batch on the model's device.
        texts: ``(B, L)`` token ids.
        chunk: samples per forward pass.
        loss_fn: called with the model's output dict (``loss_fn(**out)``) over the whole batch.
        autocast: zero-argument callable returning the autocast context of the run's precision.
        backward: called with the whole-batch loss to back-propagate it (the run's GradScaler scaling and
            accumulation divisor: ``scaler.scale(loss / accumulation).backward()``).
        sync: let DDP all-reduce during the last chunk's backward (False inside accumulation).

    Returns:
        The detached loss over the whole (global) batch.
    """
    device = images.device
    starts = list(range(0, images.shape[0], chunk))
    states, image_chunks, text_chunks = [], [], []
    with torch.no_grad():
        for s in starts:
            states.append(RngState(device))
            with autocast():
                out = model(images[s:s + chunk], texts[s:s + chunk])
            image_chunks.append(out["image_features"].float())
            text_chunks.append(out["text_features"].float())
    image_features = torch.cat(image_chunks).requires_grad_()
    text_features = torch.cat(text_chunks).requires_grad_()
    scalars = {k: v.detach().float().requires_grad_() for k, v in out.items() if v.ndim == 0}
    all_image, all_text = gather_features(image_features, text_features)
    loss = loss_fn(image_features=all_image, text_features=all_text, **scalars)
    backward(loss)  # only to features and temperature: no tower graph exists
    for k, (s, state) in enumerate(zip(starts, states)):
        last = k == len(starts) - 1
        with no_sync(model, sync and last), state.replay():
            with autocast():
                out = model(images[s:s + chunk], texts[s:s + chunk])
            surrogate = (out["image_features"].float() * image_features.grad[s:s + chunk]).sum() \
                + (out["text_features"].float() * text_features.grad[s:s + chunk]).sum() \
                + sum(out[k] * (g.grad if last and g.grad is not None else 0.0) for k, g in scalars.items())
            surrogate.backward()
    return loss.detach()
