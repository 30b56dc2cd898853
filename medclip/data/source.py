"""Data sources the trainer takes (like open_clip's ``DataInfo``): batches per epoch, an epoch hook, validation.

A :class:`DataSource` has ``batches`` (``len()`` = batches per epoch on this rank; ``set_epoch(epoch, start)``),
``epoch_loader(epoch, start)`` (this rank's batches ``start..`` of an epoch), ``val`` (the validation loader
or None) and ``len()`` (samples). Two implementations: :class:`CsvSource`, a manifest's rows through
:class:`~medclip.data.dataset.ImageReportDataset` and :class:`~medclip.data.sampling.ShardedBatchSampler`, and
:class:`ShardSource`, WebDataset tar shards written by ``medclip data shard``. Both give every rank
``N // (batch × world)`` batches per epoch of the same samples: over one epoch the ranks together see each
sample at most once, and the same multiset. :func:`build_source` picks one from a recipe.

How shards are read (every rank computes the same plan from ``shards.json``; nothing is exchanged):

1. epoch ``e``: the shard order is a permutation seeded by ``(seed, e)``; the samples in that order are
   cut into ``world`` equal contiguous ranges (the remainder dropped), one per rank;
2. each rank's range is cut into contiguous blocks of whole batches, one per DataLoader worker (so a
   worker reads only its own shard segments), shuffled through a seeded buffer of ``shuffle_buffer``
   samples; the loader interleaves the workers' batches round-robin, a fixed order;
3. resume after ``k`` batches of an epoch: each worker replays its stream and skips its first batches
   without decoding them, so the continued epoch equals the uninterrupted one exactly.
"""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from ..errors import ConfigError, DataError
from ..loss import text_id
from .sampling import SeededSamples, ShardedBatchSampler, mixed_seed
from .stored import STORED_DTYPES, dequantize
from .transforms import _one_thread as one_thread

logger = logging.getLogger("medclip.train")


def expand_shards(pattern: str, allow_pipe: bool = False) -> list[str]:
    """``DIR/{000000..000377}.tar`` → the shard URLs; local paths only, ``pipe:`` only with ``allow_pipe``."""
    from braceexpand import braceexpand

    urls = [u for part in pattern.split("::") for u in braceexpand(part.strip())]
    for url in urls:
        if url.startswith("pipe:") and not allow_pipe:
            raise ConfigError(f"data.shards: '{url}' runs a shell command; set data.allow_pipe: true to allow it")
        if "://" in url and not url.startswith("file://"):
            raise ConfigError(f"data.shards: '{url}' is not a local path (use a local path, or pipe: with "
                              "data.allow_pipe: true)")
    return [u.removeprefix("file://") for u in urls]


def _seed(*keys: int) -> int:
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


def epoch_plan(counts: list[int], batch_size: int, seed: int, epoch: int, rank: int, world: int,
               workers: int) -> tuple[int, list[list[tuple[int, int, int]]]]:
    """``(batches per rank, per worker: [(shard index, first sample, end sample), ...])`` of one epoch."""
    order = np.random.default_rng(_seed(seed, epoch)).permutation(len(counts))
    starts = np.concatenate([[0], np.cumsum([counts[i] for i in order])])
    per_rank = int(starts[-1]) // world
    batches = per_rank // batch_size
    workers = max(1, workers)
    sizes = [batches // workers + (w < batches % workers) for w in range(workers)]
    plans, position = [], rank * per_rank
    for size in sizes:
        lo, hi = position, position + size * batch_size
        segments = []
        for k, shard in enumerate(order):
            a, b = max(lo, int(starts[k])), min(hi, int(starts[k + 1]))
            if a < b:
                segments.append((int(shard), a - int(starts[k]), b - int(starts[k])))
        plans.append(segments)
        position = hi
    return batches, plans


class ShardStream(torch.utils.data.IterableDataset):
    """Batches (dicts as the CSV path's) of one rank and epoch from tar shards (see the module docstring)."""

    def __init__(self, urls: list[str], counts: list[int], transform, tokenizer, labels: list[str],
                 batch_size: int, info: dict):
        super().__init__()
        self.urls, self.counts, self.transform, self.tokenizer = urls, counts, transform, tokenizer
        self.labels, self.batch_size, self.info = labels, batch_size, dict(info)

    def __iter__(self):
        worker = torch.utils.data.get_worker_info()
        wid, nw = (worker.id, worker.num_workers) if worker else (0, 1)
        i = self.info
        _, plans = epoch_plan(self.counts, self.batch_size, i["seed"], i["epoch"], i["rank"], i["world"], nw)
        start = i.get("start", 0)
        wid = (wid + start) % nw  # the loader's round robin starts at its worker 0: give it batch `start`
        skip = max(0, -(-(start - wid) // nw)) * self.batch_size  # this worker's batches before `start`
        stream = self._shuffled(plans[wid], _seed(i["seed"], i["epoch"], i["rank"], wid))
        batch = []
        for n, raw in enumerate(stream):
            if n < skip:
                continue
            batch.append(self._item(raw))
            if len(batch) == self.batch_size:
                with one_thread():  # small stacks: intra-op threads only spin on a busy CPU (20x slower here)
                    collated = torch.utils.data.default_collate(batch)
                yield collated
                batch = []

    def _shuffled(self, segments, seed: int):
        rng, buffer = np.random.default_rng(seed), []
        for raw in self._samples(segments):
            if len(buffer) < self.info.get("shuffle_buffer", 1000):
                buffer.append(raw)
                continue
            k = int(rng.integers(len(buffer)))
            buffer[k], raw = raw, buffer[k]
            yield raw
        while buffer:
            yield buffer.pop(int(rng.integers(len(buffer))))

    def _samples(self, segments):
        for shard, first, end in segments:
            n = 0
            for n, sample in enumerate(read_shard(self.urls[shard]), start=1):
                if n > first:
                    yield sample
                if n == end:
                    break
            if n < end:
                raise DataError(f"{self.urls[shard]}: truncated shard ({n} samples, shards.json says "
                                f"{self.counts[shard]}); write it again with 'medclip data shard'")

    def _item(self, raw: dict) -> dict:
        meta = json.loads(raw["json"])
        stored = np.load(io.BytesIO(raw["npy"]), allow_pickle=False)
        want = (self.info["in_chans"], self.info["image_size"], self.info["image_size"])
        if stored.dtype not in STORED_DTYPES or stored.shape != want:
            raise DataError(f"{raw['__url__']}: sample {raw['__key__']} holds {stored.dtype} {stored.shape}, "
                            f"expected uint8/uint16 {want} (a shard of another image size?)")
        with torch.random.fork_rng(devices=[]):  # augmentation seeded by (seed, epoch, row): as the CSV path
            torch.manual_seed(_seed(self.info["seed"], self.info["epoch"], meta["line"]))
            image = self.transform.finish(dequantize(stored))
        text = raw["txt"].decode("utf-8")
        item = {"image": image, "text": self.tokenizer([text])[0], "text_id": text_id(text),
                "patient_id": meta["patient_id"], "path": meta["image"]}
        if self.labels:
            item["labels"] = torch.tensor([np.nan if meta["labels"].get(k) is None else meta["labels"][k]
                                           for k in self.labels], dtype=torch.float32)
        return item


def read_shard(url: str):
    """The samples of one tar shard (``webdataset``'s tar iterator), truncation as a one-line error."""
    import tarfile

    from webdataset.tariterators import group_by_keys, tar_file_iterator

    try:
        if url.startswith("pipe:"):
            from webdataset.gopen import gopen

            stream = gopen(url, "rb")
        else:
            stream = open(url, "rb")
    except OSError as exc:
        raise DataError(f"{url}: cannot open shard ({exc.strerror or exc})") from None
    try:
        files = ({**f, "__url__": url} for f in tar_file_iterator(stream))
        yield from group_by_keys(files)
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        why = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise DataError(f"{url}: truncated or corrupt shard ({why}); write it again with medclip data shard") from None
    finally:
        stream.close()


class ShardSource:
    """The shard implementation of the trainer's data source: ``batches`` (length, epoch hook) and loaders."""

    def __init__(self, data_config, vision_config, tokenizer, batch_size: int, seed: int, rank: int, world: int):
        from .shards import INDEX, read_index
        from .transforms import build_image_transform

        self.urls = expand_shards(data_config.shards, data_config.allow_pipe)
        index_path = data_config.shards_index or str(Path(self.urls[0]).parent / INDEX)
        if self.urls[0].startswith("pipe:") and not data_config.shards_index:
            raise ConfigError("data.shards with pipe: URLs needs data.shards_index (the shards.json file)")
        index = read_index(index_path)
        by_name = {s["name"]: s["samples"] for s in index["shards"]}
        missing = [u for u in self.urls if os.path.basename(u.split()[-1]) not in by_name]
        if missing:
            raise DataError(f"{missing[0]}: not listed in {index_path}; shards and index must come from one "
                            "'medclip data shard' run")
        if (index["image_size"], index["in_chans"]) != (vision_config.image_size, vision_config.in_chans):
            raise DataError(f"{index_path}: shards hold {index['in_chans']}x{index['image_size']}² images, the model "
                            f"wants {vision_config.in_chans}x{vision_config.image_size}²; shard again")
        self.counts = [by_name[os.path.basename(u.split()[-1])] for u in self.urls]
        self.transform = build_image_transform(vision_config, train=True, augment=data_config.augment)
        self.tokenizer, self.labels = tokenizer, list(index.get("labels", []))
        self.batch_size, self.num_workers = batch_size, data_config.num_workers
        self.info = {"seed": seed, "rank": rank, "world": world, "image_size": index["image_size"],
                     "in_chans": index["in_chans"], "shuffle_buffer": data_config.shuffle_buffer}
        self.batches = ShardBatches(self)
        self.val = None  # set by shard_source: validation from data.manifest

    def __len__(self) -> int:
        return sum(self.counts)

    def epoch_loader(self, epoch: int, start: int = 0, pin_memory: bool = False):
        """Batches ``start..`` of ``epoch`` for this rank."""
        self.batches.set_epoch(epoch, start)
        stream = ShardStream(self.urls, self.counts, self.transform, self.tokenizer, self.labels, self.batch_size,
                             {**self.info, "epoch": epoch, "start": start})
        return torch.utils.data.DataLoader(stream, batch_size=None, num_workers=self.num_workers,
                                           pin_memory=pin_memory, persistent_workers=False)


class ShardBatches:
    """What the trainer's loop asks of its sampler: batches per epoch and the epoch hook."""

    def __init__(self, source: ShardSource):
        self.source, self.epoch, self.start = source, 0, 0

    def __len__(self) -> int:
        i = self.source.info
        return epoch_plan(self.source.counts, self.source.batch_size, i["seed"], 0, i["rank"], i["world"], 1)[0]

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start


class DataSource(Protocol):
    """What the trainer takes from the data layer (both :class:`CsvSource` and :class:`ShardSource` are one).

    Attributes:
        batches: ``len()`` is the batches per epoch on this rank; ``set_epoch(epoch, start)`` is the epoch hook.
        val: the validation loader (non-shuffled; ``dataset.texts`` are its reports), or None.
    """

    batches: ShardedBatchSampler | ShardBatches
    val: torch.utils.data.DataLoader | None

    def __len__(self) -> int: ...

    def epoch_loader(self, epoch: int, start: int = 0, pin_memory: bool = False):
        """This rank's batches ``start..`` of ``epoch`` (an iterable of dict batches)."""


class CsvSource:
    """The CSV implementation: a manifest's checked training rows, cut into per-rank batches.

    Global batch ``k`` of an epoch is the ``k``-th slice of a permutation seeded by (seed, epoch), each rank
    taking its contiguous part (:class:`~medclip.data.sampling.ShardedBatchSampler`); each sample's
    augmentation is seeded by (seed, epoch, index), so workers, ranks and a mid-epoch resume see the same draws.

    Args:
        dataset: the training rows (an :class:`~medclip.data.dataset.ImageReportDataset`).
        batch_size: rows per batch on this rank.
        seed: shuffle and augmentation seed.
        rank: this process's rank.
        world: number of processes.
        num_workers: DataLoader worker processes.
        val: the validation loader, or None.
    """

    def __init__(self, dataset, batch_size: int, seed: int, rank: int = 0, world: int = 1, num_workers: int = 0,
                 val=None):
        self.dataset, self.seed, self.num_workers, self.val = dataset, seed, num_workers, val
        self.batches = ShardedBatchSampler(len(dataset), batch_size, seed, rank, world)

    def __len__(self) -> int:
        return len(self.dataset)

    def epoch_loader(self, epoch: int, start: int = 0, pin_memory: bool = False):
        """Batches ``start..`` of ``epoch`` for this rank (earlier batches are skipped, never loaded)."""
        self.batches.set_epoch(epoch, start)
        generator = torch.Generator().manual_seed(mixed_seed(self.seed, epoch))  # worker base seeds
        samples = SeededSamples(self.dataset, self.seed, epoch)
        return torch.utils.data.DataLoader(samples, batch_sampler=self.batches, num_workers=self.num_workers,
                                           generator=generator, pin_memory=pin_memory)


def build_source(recipe, model_config, tokenizer, rank: int = 0, world: int = 1, out_dir=None) -> DataSource:
    """The recipe's data source: :class:`ShardSource` when ``data.shards`` is set, else :class:`CsvSource`.

    Args:
        recipe: the training recipe (``data`` and ``train`` sections).
        model_config: a :class:`medclip.config.ModelConfig` (or its ``vision`` config).
        tokenizer: ``medclip.get_tokenizer(model_config)``.
        rank: this process's rank.
        world: number of processes.
        out_dir: where the CSV path writes ``quarantine.csv``/``splits.csv`` (the run folder, rank 0 only).

    Raises:
        DataError: no training rows, or fewer than one global batch (``train.batch_size`` × processes).
    """
    data, cfg = recipe.data, recipe.train
    if data.shards:
        source = ShardSource(data, getattr(model_config, "vision", model_config), tokenizer, cfg.batch_size,
                             cfg.seed, rank, world)
        if len(source.batches) == 0:
            raise DataError(f"{data.shards}: {len(source)} samples, fewer than one global batch "
                            f"({cfg.batch_size} x {world} processes); lower train.batch_size")
        if Path(data.manifest).exists():  # validation from data.manifest when there is one
            from .dataset import build_dataloaders

            source.val = _capped(build_dataloaders(data, model_config, tokenizer, seed=cfg.seed).get("val"), cfg)
        return source
    return _csv_source(recipe, model_config, tokenizer, rank, world, out_dir)


def _csv_source(recipe, model_config, tokenizer, rank: int, world: int, out_dir) -> CsvSource:
    from .dataset import build_dataloaders

    data, cfg = recipe.data, recipe.train
    loaders = build_dataloaders(data, model_config, tokenizer, seed=cfg.seed, out_dir=out_dir,
                                train_batch_size=cfg.batch_size)
    if "train" not in loaders:
        raise DataError(f"{data.manifest}: no training rows (check the split column)")
    dataset = loaders["train"].dataset
    if len(dataset) < cfg.batch_size * world:
        raise DataError(f"{data.manifest}: {len(dataset)} training rows, fewer than one global batch "
                        f"({cfg.batch_size} x {world} processes); lower train.batch_size")
    if "val" not in loaders:
        logger.warning("no validation rows (data.val is 0, or too few patients): no validation metrics and no "
                       "best/; test rows are never used for validation")
    return CsvSource(dataset, cfg.batch_size, cfg.seed, rank, world, data.num_workers, _capped(loaders.get("val"), cfg))


def _capped(loader, train_config):
    """``loader``, or a loader over a seeded, fixed subset of ``train.val_max_pairs`` of its pairs (the same at
    every validation) when it holds more."""
    n = train_config.val_max_pairs
    if loader is None or not n or len(loader.dataset) <= n:
        return loader
    from .dataset import ImageReportDataset

    full = loader.dataset
    keep = np.sort(np.random.default_rng(train_config.seed).choice(len(full), size=n, replace=False))
    logger.info("validation on a fixed subset of %d of %d pairs (train.val_max_pairs)", n, len(full))
    subset = ImageReportDataset(full.df.iloc[keep], full.image_transform, full.tokenizer, full.label_columns)
    return torch.utils.data.DataLoader(subset, batch_size=loader.batch_size, shuffle=False,
                                       num_workers=loader.num_workers)
