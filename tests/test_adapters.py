"""Contract tests: every few-shot method over the same table of cases (single- and multi-label).

Each case fits on the tiny random ViT CLIP and a handful of real PNG files, then checks probabilities
(shape, range, rows summing to 1 for single-label), save → load → identical predictions, and that
training left the model's towers bit-identical.
"""

from __future__ import annotations

import os

import medclip_adapters as ma
import numpy as np
import pandas as pd
import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")


# method -> tiny budgets (1-2 epochs / iterations) so the whole table runs in seconds on a CPU
CASES = {
    "zeroshot": {},
    "probe": {"search_steps": 2},
    "coop": {"epochs": 2, "n_ctx": 4},
    "clip-adapter": {"epochs": 2},
    "tip-adapter": {"finetune": True, "epochs": 2, "grid": 3},
    "lora": {"max_iters": 2},  # tiny-vit is a ViT: LoRA on text q/k/v and the image tower's fused qkv
}
KINDS = ("single", "multi")


def write_images(folder, n: int, seed: int = 0) -> list[str]:
    """n small grayscale PNGs; even ones bright on the left, odd ones bright on the right."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        pixels = rng.integers(0, 60, size=(40, 40)).astype(np.uint8)
        pixels[:, :20] += 150 if i % 2 == 0 else 0
        pixels[:, 20:] += 150 if i % 2 == 1 else 0
        path = folder / f"img{i:02d}.png"
        Image.fromarray(pixels).save(path)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    """train / val / test frames over real image files, with single- and multi-label columns."""
    paths = write_images(tmp_path_factory.mktemp("images"), 16)
    y = np.arange(16) % 2
    df = pd.DataFrame({"image": paths, "label": y, "patient_id": [f"p{i}" for i in range(16)],
                       "label/opacity": y.astype(float), "label/effusion": ((np.arange(16) // 2) % 2).astype(float)})
    df.loc[3, "label/effusion"] = np.nan  # an unknown label is left out of the multi-label loss
    return {"train": df.iloc[:8].reset_index(drop=True), "val": df.iloc[8:12].reset_index(drop=True),
            "test": df.iloc[12:].reset_index(drop=True)}


def make_task(kind: str) -> ma.Task:
    if kind == "single":
        return ma.Task(classes=["normal", "pneumonia"], kind="single",
                              prompts=[["no acute process", "clear lungs"], ["pneumonia", "consolidation"]])
    return ma.Task(classes=["opacity", "effusion"], kind="multi")


@pytest.fixture(scope="module")
def cache():
    return ma.FeatureCache()


def test_registry_lists_every_method():
    assert set(CASES) == set(ma.list_methods())
    with pytest.raises(ma.base.ConfigError, match="unknown few-shot method"):
        ma.create_method("nope", None, make_task("single"))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_method_contract(name, kind, tiny_model, frames, cache, tmp_path):
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    task = make_task(kind)
    method = ma.create_method(name, tiny_model, task, cache=cache, seed=3, **CASES[name])
    method.fit(frames["train"], frames["val"])
    probs = method.predict_proba(frames["test"])

    assert probs.shape == (len(frames["test"]), len(task.classes))
    assert np.isfinite(probs).all() and (probs >= 0).all() and (probs <= 1).all()
    if kind == "single":
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)

    method.save(str(tmp_path / "adapter"))
    reloaded = ma.load_method(str(tmp_path / "adapter"), tiny_model, cache=cache)
    np.testing.assert_array_equal(reloaded.predict_proba(frames["test"]), probs)
    mask = os.umask(0)
    os.umask(mask)
    for path in (tmp_path / "adapter").iterdir():  # saved weights follow the umask like every other file
        assert path.stat().st_mode & 0o777 == 0o666 & ~mask, path.name

    after = tiny_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "training changed the frozen model"
    assert all(p.requires_grad for p in tiny_model.parameters())  # flags restored too
    if name not in ("zeroshot", "probe", "tip-adapter"):
        assert method.history, "a trained method records its loss"


def test_load_refuses_another_method_or_task(tiny_model, frames, cache, tmp_path):
    method = ma.create_method("tip-adapter", tiny_model, make_task("single"), cache=cache, search=False)
    method.fit(frames["train"]).save(str(tmp_path / "tip"))
    with pytest.raises(ma.base.ConfigError, match="holds a 'tip-adapter' adapter"):
        ma.create_method("coop", tiny_model, make_task("single"), cache=cache).load(str(tmp_path / "tip"))
    with pytest.raises(ma.base.ConfigError, match="was trained for"):
        ma.create_method("tip-adapter", tiny_model, make_task("multi"), cache=cache).load(str(tmp_path / "tip"))
    with pytest.raises(ma.base.ConfigError, match="unknown option"):
        ma.create_method("coop", tiny_model, make_task("single"), n_ctxx=3)


def test_feature_cache_encodes_each_image_once_and_persists(tiny_model, frames, tmp_path):
    paths = frames["train"]["image"].tolist()
    cache = ma.FeatureCache(str(tmp_path / "cache"))
    first = cache.features(tiny_model, paths)
    again = cache.features(tiny_model, paths[::-1])
    assert cache.encoded == len(paths)
    torch.testing.assert_close(again, first.flip(0), rtol=0, atol=0)
    with torch.no_grad():  # the cached features are the model's own normalised image embeddings
        fn, _ = cache._transform_for(tiny_model)
        direct = tiny_model.encode_image(torch.stack([fn(p) for p in paths]))
    torch.testing.assert_close(first, direct, rtol=1e-5, atol=1e-5)

    fresh = ma.FeatureCache(str(tmp_path / "cache"))  # a new process: read from the safetensors shards
    torch.testing.assert_close(fresh.features(tiny_model, paths), first, rtol=0, atol=0)
    assert fresh.encoded == 0
    assert all(p.suffix == ".safetensors" for p in (tmp_path / "cache").rglob("*") if p.is_file())

    other = medclip_model_copy(tiny_model)
    assert fresh.key(other) != fresh.key(tiny_model)  # different weights -> different cache namespace


def medclip_model_copy(model):
    import copy

    other = copy.deepcopy(model)
    with torch.no_grad():
        other.visual.head.weight.add_(1e-3)
    return other


def test_unreadable_image_is_a_one_line_error(tiny_model, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ma.base.DataError, match="could not be read"):
        ma.FeatureCache().features(tiny_model, [str(bad)])


def test_command_list_comes_from_the_registry(capsys):
    from medclip_adapters.cli import command_help

    from medclip.cli import main

    assert set(command_help()) == set(ma.list_methods()) - {"zeroshot"}
    assert main([]) == 2
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps long help lines
    for name, summary in command_help().items():
        assert name in out and summary and summary in out


@pytest.mark.parametrize("options, match", [
    ({"lr": "abc"}, "coop.lr must be float, got 'abc'"),
    ({"csc": 3}, "coop.csc must be bool"),
    ({"n_ctx": 2.5}, "coop.n_ctx must be int"),
])
def test_method_options_are_typed(options, match):
    with pytest.raises(ma.base.ConfigError, match=match) as info:
        ma.create_method("coop", None, make_task("single"), **options)
    assert "\n" not in str(info.value)
    assert ma.create_method("coop", None, make_task("single"), lr=1, n_ctx=4.0).config.lr == 1.0


def test_set_grammar_is_pretrains(tmp_path):
    import argparse

    from medclip_adapters.cli import method_hparams

    args = argparse.Namespace(set=["lr=0.01", "coop.n_ctx=4", "probe.search_steps=1", "grid=3"], epochs=None,
                              max_iters=None, fewshot_command="fewshot", ratio=0.6)
    assert method_hparams(args, "coop") == {"lr": 0.01, "n_ctx": 4}
    assert method_hparams(args, "probe") == {"search_steps": 1}
    assert method_hparams(args, "tip-adapter") == {"lr": 0.01, "grid": 3}
    assert method_hparams(args, "clip-adapter") == {"lr": 0.01, "ratio": 0.6}
    with pytest.raises(ma.base.ConfigError, match="must look like"):
        method_hparams(argparse.Namespace(set=["lr"], fewshot_command="coop"), "coop")


def test_loop_visits_every_item_once_per_epoch_and_sets_epoch_lr():
    from medclip_adapters.loop import Schedule, batches, optimise, steps_for_epochs

    draws = batches(10, 4, torch.Generator().manual_seed(0))
    first = [next(draws) for _ in range(steps_for_epochs(10, 4, 2))]
    assert [e for e, _ in first] == [0, 0, 0, 1, 1, 1] and [len(i) for _, i in first] == [4, 4, 2] * 2
    assert sorted(torch.cat([i for e, i in first if e == 1]).tolist()) == list(range(10))

    class Holder:
        name, progress, history = "test", False, []

        def generator(self):
            return torch.Generator().manual_seed(0)

    weight = torch.nn.Parameter(torch.tensor([3.0]))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    seen = []
    holder = Holder()
    optimise(holder, optimizer, 10, lambda idx: (seen.append(optimizer.param_groups[0]["lr"]) or weight ** 2).sum(),
             Schedule(6, 4, epoch_lr=lambda epoch: 0.1 / (epoch + 1)))
    assert seen == [0.1] * 3 + [0.05] * 3 and len(holder.history) == 2
    assert holder.history[1] < holder.history[0] and float(weight.detach()) < 3.0


def test_a_saved_state_that_does_not_fit_the_config_is_one_line(tiny_model, frames, cache, tmp_path):
    ma.create_method("coop", tiny_model, make_task("single"), cache=cache, epochs=1, n_ctx=4).fit(
        frames["train"]).save(str(tmp_path / "coop"))
    import json

    meta = json.loads((tmp_path / "coop" / "method.json").read_text())
    meta["hparams"]["n_ctx"] = 6
    (tmp_path / "coop" / "method.json").write_text(json.dumps(meta))
    with pytest.raises(ma.base.ConfigError, match="does not fit this coop config") as info:
        ma.load_method(str(tmp_path / "coop"), tiny_model, cache=cache)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("argv, match", [
    (["clip-adapter", "--ratio", "1.5"], "--ratio must be in [0, 1], got 1.5"),
    (["coop", "--val-shots", "-2"], "--val-shots must be in [0, inf], got -2"),
    (["coop", "--set", "lr=abc"], "coop.lr must be float, got 'abc'"),  # before any shot is drawn
    (["fewshot", "--methods", "probe,nope"], "unknown few-shot method 'nope'"),
])
def test_bad_values_are_one_line_before_any_data_is_read(tmp_path, capsys, argv, match):
    from medclip.cli import main

    classes = tmp_path / "c.yaml"
    classes.write_text("classes:\n  normal: [normal lungs]\n  pneumonia: [pneumonia]\n")
    code = main([*argv, "--model", "tiny-vit", "--manifest", str(tmp_path / "missing.csv"), "--classes", str(classes),
                 "--output", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and match in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
