"""The one inner training loop of the few-shot methods (CoOp, CLIP-Adapter, Tip-Adapter-F, LoRA).

Each method brings its optimiser, a learning-rate schedule and a ``loss(indices)`` over a batch of
training items; the loop draws the batches (a seeded permutation per epoch, the last batch of an
epoch possibly smaller), steps the optimiser and records the loss per epoch or per step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch


@dataclass
class Schedule:
    """How long and how the learning rate moves.

    Attributes:
        steps: optimiser steps in all.
        batch_size: items per step.
        scheduler: a ``torch.optim.lr_scheduler`` stepped after every optimiser step (or None).
        epoch_lr: ``epoch -> lr`` set at the start of every epoch (CoOp's warm-up + cosine), or None.
        history: ``epoch`` (mean loss per epoch) or ``step`` (every step's loss).
    """

    steps: int
    batch_size: int
    scheduler: object | None = None
    epoch_lr: Callable[[int], float] | None = None
    history: str = "epoch"


def steps_for_epochs(n_items: int, batch_size: int, epochs: int) -> int:
    """Optimiser steps of ``epochs`` passes over ``n_items`` in batches of ``batch_size``."""
    return epochs * math.ceil(n_items / batch_size)


def batches(n_items: int, batch_size: int, generator: torch.Generator) -> Iterator[tuple[int, torch.Tensor]]:
    """``(epoch, indices)`` forever: a fresh seeded permutation of the items per epoch, cut into batches."""
    epoch = 0
    while True:
        order = torch.randperm(n_items, generator=generator)
        for start in range(0, n_items, batch_size):
            yield epoch, order[start:start + batch_size]
        epoch += 1


def optimise(method, optimizer: torch.optim.Optimizer, n_items: int, loss: Callable[[torch.Tensor], torch.Tensor],
          schedule: Schedule) -> None:
    """Run ``schedule.steps`` optimiser steps of ``loss(indices)``; losses go to ``method.history``."""
    from tqdm.auto import tqdm

    epoch_losses: list[float] = []
    current = -1
    draws = batches(n_items, schedule.batch_size, method.generator())
    for _ in tqdm(range(schedule.steps), desc=method.name, disable=not method.progress, leave=False):
        epoch, idx = next(draws)
        if epoch != current:
            if epoch_losses:
                method.history.append(sum(epoch_losses) / len(epoch_losses))
            current, epoch_losses = epoch, []
            if schedule.epoch_lr is not None:
                for group in optimizer.param_groups:
                    group["lr"] = schedule.epoch_lr(epoch)
        value = loss(idx)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
        if schedule.scheduler is not None:
            schedule.scheduler.step()
        if schedule.history == "step":
            method.history.append(float(value.detach()))
        else:
            epoch_losses.append(float(value.detach()))
    if epoch_losses:
        method.history.append(sum(epoch_losses) / len(epoch_losses))
