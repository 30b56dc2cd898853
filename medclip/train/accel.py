"""Speed and reproducibility switches of a training run: what each does on CUDA, and on CPU.

| setting | on CUDA | on CPU (the fallback, tested) |
|---|---|---|
| ``train.compile`` | ``torch.compile`` of both towers | the same (inductor's C++ backend) |
| ``train.channels_last`` | NHWC weights for CNN image towers (tensor-core convolutions) | same layout, same result |
| ``train.tf32`` | TF32 matmuls and cuDNN convolutions (off: exact fp32, parity holds) | no effect |
| ``train.deterministic`` | ``CUBLAS_WORKSPACE_CONFIG``, deterministic algorithms | deterministic algorithms |
| fused AdamW | on when the parameters are on CUDA | torch's default AdamW |
| pinned memory, ``non_blocking`` | pinned loader batches, asynchronous host→device copies | plain batches and copies |

:func:`configure_backends` runs first in :func:`medclip.train.loop.train`, before anything touches CUDA
(cuBLAS reads ``CUBLAS_WORKSPACE_CONFIG`` once, when it starts); :func:`accelerate_model` runs on the
built model before DDP wraps it.
"""

from __future__ import annotations

import logging
import os

import torch
from torch import nn

logger = logging.getLogger("medclip.train")

CUBLAS_WORKSPACE = ":4096:8"  # what PyTorch's reproducibility notes ask for (or ":16:8")


def configure_backends(deterministic: bool, tf32: bool) -> None:
    """Process-wide numerics: deterministic algorithms and the TF32 setting (explicit either way).

    Args:
        deterministic: set ``CUBLAS_WORKSPACE_CONFIG`` (unless already set), turn on
            ``torch.use_deterministic_algorithms`` and turn off cuDNN's autotuner.
        tf32: allow TF32 in CUDA float32 matmuls and convolutions; ``False`` makes them exact fp32
            (PyTorch's own default allows TF32 in cuDNN convolutions).
    """
    if deterministic:
        if "CUBLAS_WORKSPACE_CONFIG" not in os.environ and torch.cuda.is_initialized():
            logger.warning("train.deterministic: CUDA was started before CUBLAS_WORKSPACE_CONFIG was set; "
                           "cuBLAS may not be deterministic in this process")
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    set_tf32(tf32)


def set_tf32(enabled: bool) -> None:
    """Allow (or forbid) TF32 in CUDA float32 matmuls and cuDNN convolutions; CPU math is untouched."""
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):  # torch >= 2.9: the legacy allow_tf32 flags must not be mixed in
        matmul.fp32_precision = "tf32" if enabled else "ieee"
        torch.backends.cudnn.conv.fp32_precision = "tf32" if enabled else "ieee"
    else:
        matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


def tf32_enabled() -> bool:
    """Whether CUDA float32 matmuls may use TF32 (as :func:`set_tf32` left it)."""
    matmul = torch.backends.cuda.matmul
    return matmul.fp32_precision == "tf32" if hasattr(matmul, "fp32_precision") else bool(matmul.allow_tf32)


def is_cnn(tower: nn.Module) -> bool:
    """True for a convolutional image tower (more than a patch-embedding convolution)."""
    return sum(isinstance(m, nn.Conv2d) for m in tower.modules()) > 1


def accelerate_model(model: nn.Module, channels_last: bool, compile_towers: bool) -> nn.Module:
    """Apply ``train.channels_last`` (CNN image towers only) and ``train.compile`` to a built model, in place.

    Compilation is in place (``nn.Module.compile``), so parameter names, ``state_dict`` and checkpoints are
    unchanged. The CLIP text tower compiles its blocks with dynamic shapes and keeps the packing (a
    data-dependent ``nonzero``) eager, so a batch with other report lengths reuses the compiled code.
    """
    if channels_last and is_cnn(model.visual):
        model.visual.to(memory_format=torch.channels_last)
    if compile_towers:
        model.visual.compile()
        compile_text = getattr(model.text, "compile_blocks", None)
        if compile_text is not None:
            compile_text()
        else:
            model.text.compile(dynamic=True)
    return model


def pin_memory(device: torch.device) -> bool:
    """Pinned (page-locked) loader batches, which only help host→CUDA copies."""
    return device.type == "cuda"


def fused_adamw(model: nn.Module) -> bool | None:
    """``fused=True`` for AdamW when the parameters live on CUDA; None (torch's default) elsewhere."""
    return True if next(model.parameters()).is_cuda else None


def to_device(batch: dict, device: torch.device, keys: tuple[str, ...] = ("image", "text")) -> tuple:
    """The batch's ``keys`` on ``device``; copies from pinned memory are asynchronous (``non_blocking``)."""
    return tuple(batch[key].to(device, non_blocking=True) for key in keys)
