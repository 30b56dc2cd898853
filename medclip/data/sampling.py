"""Seeded, resumable sampling of a map-style dataset over ranks: the CSV data source's batches.

:class:`ShardedBatchSampler` cuts a per-epoch permutation into global batches (one slice per rank) and
:class:`SeededSamples` seeds each sample's augmentation by (seed, epoch, index), so that workers, ranks and
a resume in the middle of an epoch all see the same pairs and the same draws.
"""

from __future__ import annotations

import numpy as np
import torch


def mixed_seed(*keys: int) -> int:
    """A 64-bit seed from integer keys through NumPy's ``SeedSequence`` (distinct keys, independent streams)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0])


class ShardedBatchSampler(torch.utils.data.Sampler):
    """Seeded per-epoch shuffle cut into global batches; each rank takes its contiguous slice.

    Global batch ``k`` is ``perm[k·G : (k+1)·G]`` with ``G = batch_size × world_size``; rank ``r`` takes
    the ``r``-th ``batch_size`` slice, so gathering features in rank order rebuilds exactly the batch a
    single process with batch ``G`` would see. Incomplete last batches are dropped. ``start`` skips
    batches already trained on (resume mid-epoch without loading them).
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's permutation and the first batch to yield."""
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return self.n // (self.batch_size * self.world_size)

    def __iter__(self):
        if self.shuffle:
            perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(mixed_seed(self.seed, self.epoch)))
        else:
            perm = torch.arange(self.n)
        global_batch = self.batch_size * self.world_size
        for k in range(self.start, len(self)):
            offset = k * global_batch + self.rank * self.batch_size
            yield perm[offset:offset + self.batch_size].tolist()


class SeededSamples(torch.utils.data.Dataset):
    """A dataset view whose sample ``i`` of epoch ``e`` is drawn under torch seed ``f(seed, e, i)``.

    The data layer's augmentation takes its randomness from torch's RNG. Seeding it per sample makes
    the augmented pair a function of (seed, epoch, index) only: the same in a DataLoader worker or in the
    main process, on any rank, and after a resume in the middle of an epoch (worker RNG streams would
    otherwise restart at the resume point). The caller's RNG is left untouched (dropout keeps its stream).
    """

    def __init__(self, dataset, seed: int, epoch: int):
        self.dataset, self.seed, self.epoch = dataset, seed, epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(mixed_seed(self.seed, self.epoch, int(index)))
            return self.dataset[index]
