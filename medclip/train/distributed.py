"""Multi-process training helpers: process-group setup from ``torchrun`` variables, gathers, barriers.

``torchrun --nproc-per-node N -m medclip pretrain ...`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``;
:func:`init_distributed` then joins the group (NCCL on CUDA, gloo on CPU). Without those variables
everything runs as one process and these helpers are no-ops. The resumable sharded sampler of the CSV
path is :mod:`medclip.data.sampling`.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size``, and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, validates and writes checkpoints."""
        return self.rank == 0


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group named by ``torchrun``'s environment (or run as a single process).

    Args:
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.

    Raises:
        ConfigError: ``device="cuda"`` on a machine without a usable CUDA GPU.
    """
    if device == "cuda" and not torch.cuda.is_available():
        from ..errors import ConfigError

        raise ConfigError("train.device=cuda but no CUDA GPU is available here; run on a GPU machine, or "
                          "--set train.device=cpu (very slow for full-size models)")
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank, world_size, local_rank, dev)


def cleanup_distributed() -> None:
    """Leave the process group (if any)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the joined process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Concatenate every process's ``(n_r, ...)`` tensor in rank order (the ``n_r`` may differ); no autograd."""
    rank, world = rank_and_world()
    if world == 1:
        return t
    sizes = [torch.zeros(1, dtype=torch.long, device=t.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([t.shape[0]], device=t.device))
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[:t.shape[0]] = t
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:int(s.item())] for p, s in zip(parts, sizes)])


def barrier() -> None:
    """Wait for all processes (no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def no_sync(model, sync: bool):
    """DDP's ``no_sync()`` for accumulation micro-batches that must not all-reduce yet."""
    return contextlib.nullcontext() if sync or not hasattr(model, "no_sync") else model.no_sync()
