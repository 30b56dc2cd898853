"""WebDataset shards (``medclip data shard`` + ``data.shards``): over an epoch the ranks see the same multiset as the
CSV path, a fixed batch gives the same loss, resume is exact, truncation is a one-line error, pipe: is opt-in."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import corpus_replicas as R
import pandas as pd
import pytest
import torch
from conftest import demo_recipe_dict
from torchrun import torchrun

from medclip.cli import main
from medclip.config import VisionConfig
from medclip.data.config import DataConfig
from medclip.data.prepare import read_prepared
from medclip.data.source import ShardSource, expand_shards
from medclip.errors import ConfigError, DataError

pytestmark = pytest.mark.usefixtures("one_thread")
HERE = Path(__file__).resolve().parent
VISION = VisionConfig(image_size=64, in_chans=1)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> Path:
    """A prepared 48-row manifest (40 train rows) and its train split in shards of 7 (6 shards, the last 5)."""
    root = tmp_path_factory.mktemp("sharded")
    rows = []
    for i in range(48):
        R.write_image(root / "img" / f"{i}.png", i)
        rows.append({"image": f"img/{i}.png", "report": f"FINDINGS: finding {i}. IMPRESSION: impression {i % 5}.",
                     "patient_id": f"P{i // 2}", "opacity": i % 2, "split": "train" if i < 40 else "val"})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    assert main(["data", "prepare", str(root / "manifest.csv"), "--output", str(root / "prep"), "--column",
                 "labels=opacity"]) == 0
    assert main(["data", "shard", str(root / "prep"), "--output", str(root / "shards"), "--image-size", "64",
                 "--shard-size", "7", "--workers", "1"]) == 0
    return root


def _source(root: Path, rank=0, world=1, workers=0, batch=4, **data) -> ShardSource:
    config = DataConfig(manifest=str(root / "prep"), shards=str(root / "shards" / "{000000..000005}.tar"),
                        num_workers=workers, augment=False, shuffle_buffer=6, **data)
    import medclip

    return ShardSource(config, VISION, medclip.get_tokenizer("tiny-vit"), batch, 0, rank, world)


def _epoch_paths(source: ShardSource, epoch=0, start=0) -> list[list[str]]:
    return [list(b["path"]) for b in source.epoch_loader(epoch, start)]


@pytest.mark.slow
def test_two_ranks_see_the_csv_paths_multiset_and_the_same_batch_count(sharded):
    from medclip.data.sampling import ShardedBatchSampler

    rows, _ = read_prepared(sharded / "prep")
    train = rows[rows["split"] == "train"].reset_index(drop=True)
    rel = [os.path.relpath(p, sharded / "prep") for p in train["image"]]
    for epoch in (0, 1):
        csv, shards = Counter(), Counter()
        for rank in (0, 1):
            sampler = ShardedBatchSampler(len(train), 4, 0, rank, 2)
            sampler.set_epoch(epoch)
            csv.update(rel[i] for batch in sampler for i in batch)
            batches = _epoch_paths(_source(sharded, rank, 2), epoch)
            assert len(batches) == len(sampler) == len(_source(sharded, rank, 2).batches) == 5
            shards.update(p for b in batches for p in b)
        assert shards == csv and len(shards) == len(train) == 40 and max(shards.values()) == 1
    assert _epoch_paths(_source(sharded, 0, 2), 0) != _epoch_paths(_source(sharded, 0, 2), 1)  # reshuffled


def test_loader_workers_keep_the_multiset_and_resume_is_exact(sharded):
    one = _epoch_paths(_source(sharded, 1, 2, workers=0), 3)
    two = _epoch_paths(_source(sharded, 1, 2, workers=2), 3)
    assert Counter(p for b in two for p in b) == Counter(p for b in one for p in b) and len(two) == 5
    assert _epoch_paths(_source(sharded, 1, 2, workers=2), 3, start=3) == two[3:]  # resume after 3 batches
    assert _epoch_paths(_source(sharded, 1, 2, workers=0), 3, start=2) == one[2:]


def test_a_fixed_batch_gives_the_same_loss_as_the_csv_path(sharded, tiny_model):
    import medclip
    from medclip.data.dataset import ImageReportDataset
    from medclip.data.transforms import build_image_transform
    from medclip.loss import clip_loss

    batch = next(iter(_source(sharded).epoch_loader(0)))
    rows, _ = read_prepared(sharded / "prep")
    rows = rows.set_index(rows["image"].map(lambda p: os.path.relpath(p, sharded / "prep"))).loc[list(batch["path"])]
    tf = build_image_transform(VISION, train=True, augment=False)
    csv = ImageReportDataset(rows.reset_index(drop=True), tf, medclip.get_tokenizer("tiny-vit"), ["opacity"])
    items = torch.utils.data.default_collate([csv[i] for i in range(len(csv))])
    torch.testing.assert_close(batch["image"], items["image"], rtol=0, atol=0)  # bit-identical pixels
    for key in ("text", "text_id", "labels"):
        assert torch.equal(batch[key], items[key]), key
    with torch.no_grad():
        losses = [clip_loss(**tiny_model(b["image"], b["text"])).item() for b in (batch, items)]
    assert losses[0] == losses[1]


def test_truncated_shard_is_a_one_line_error(sharded, tmp_path):
    import shutil

    shutil.copytree(sharded / "shards", tmp_path / "shards")
    tar = tmp_path / "shards" / "000002.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2 + 100])
    config = DataConfig(shards=str(tmp_path / "shards" / "{000000..000005}.tar"), augment=False)
    import medclip

    for world in (1, 2):
        for rank in range(world):
            source = ShardSource(config, VISION, medclip.get_tokenizer("tiny-vit"), 4, 0, rank, world)
            try:
                _epoch_paths(source)
            except DataError as exc:
                assert "000002.tar: truncated" in str(exc) and "\n" not in str(exc)
                return
    pytest.fail("a truncated shard was read without an error")


def test_pipe_and_remote_urls_need_opt_in():
    with pytest.raises(ConfigError, match="allow_pipe"):
        expand_shards("pipe:cat /x/{000000..000001}.tar")
    assert expand_shards("pipe:cat /x/{000000..000001}.tar", allow_pipe=True)[1] == "pipe:cat /x/000001.tar"
    with pytest.raises(ConfigError, match="not a local path"):
        expand_shards("https://host/{0..1}.tar")


@pytest.mark.slow
def test_recipe_trains_from_shards(sharded, tmp_path):
    from medclip.train.config import recipe_from_dict
    from medclip.train.loop import train

    recipe = demo_recipe_dict(sharded / "prep", max_steps=2, batch_size=4, eval_every=0)
    recipe["data"].update(shards=str(sharded / "shards" / "{000000..000005}.tar"), augment=False,
                          sections=["findings", "impression"])
    result = train(recipe_from_dict(recipe), str(tmp_path / "run"))
    assert result["step"] == 2 and torch.isfinite(torch.tensor(result["last_loss"]))


def test_build_source_gives_csv_and_shards_one_interface_and_a_capped_validation(sharded, tmp_path):
    import medclip
    from medclip.data.source import CsvSource, build_source
    from medclip.train.config import recipe_from_dict

    def rel(path):
        return os.path.relpath(path, sharded / "prep") if os.path.isabs(path) else path

    sources, seen = {}, {}
    for kind in ("csv", "shards"):
        spec = demo_recipe_dict(sharded / "prep", batch_size=4, val_max_pairs=5)
        spec["data"].update(augment=False, sections=["findings", "impression"])
        if kind == "shards":
            spec["data"]["shards"] = str(sharded / "shards" / "{000000..000005}.tar")
        source = sources[kind] = build_source(recipe_from_dict(spec), medclip.get_model_config("tiny-vit"),
                                              medclip.get_tokenizer("tiny-vit"), out_dir=tmp_path / kind)
        assert len(source) == 40 and len(source.batches) == 10 and len(source.val.dataset) == 5  # 5 of 8 val rows
        whole = [[rel(p) for p in b["path"]] for b in source.epoch_loader(1)]
        resumed = [[rel(p) for p in b["path"]] for b in source.epoch_loader(1, start=7)]
        assert resumed == whole[7:] and (source.batches.epoch, source.batches.start) == (1, 7)  # the epoch hook
        seen[kind] = Counter(p for b in whole for p in b)
    assert isinstance(sources["csv"], CsvSource) and isinstance(sources["shards"], ShardSource)
    assert seen["csv"] == seen["shards"] and len(seen["csv"]) == 40
    assert sources["csv"].val.dataset.paths == sources["shards"].val.dataset.paths  # the same fixed subset


@pytest.mark.slow  # ~40 s: two torchrun processes import torch
def test_two_process_gloo_run_from_shards_sees_the_csv_multiset(sharded, tmp_path):
    proc = torchrun([str(HERE / "shards_ddp_worker.py"), str(sharded), str(tmp_path)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = {kind: Counter() for kind in ("csv", "shards")}
    for kind in seen:
        for rank in (0, 1):
            seen[kind].update((tmp_path / f"{kind}{rank}.txt").read_text().split())
    assert seen["shards"] == seen["csv"] and sum(seen["csv"].values()) == 40


@pytest.mark.slow  # two training processes from shards, then a resume: ~2 min on 2 busy cores
@pytest.mark.timeout(900)
def test_kill_mid_shard_and_resume_from_shards_is_bit_identical(sharded, tmp_path):
    from test_train_resume import kill_and_resume

    spec = demo_recipe_dict(sharded / "prep", batch_size=4, epochs=2, checkpoint_every=3, keep_last_k=2, log_every=1,
                            eval_every=1, warmup=3)
    spec["data"].update(shards=str(sharded / "shards" / "{000000..000005}.tar"), sections=["findings", "impression"],
                        num_workers=2, augment=True)  # 10 steps per epoch; the kill lands after step 6 of epoch 1
    kill_and_resume(spec, tmp_path, 6, 20)
