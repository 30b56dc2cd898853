"""Training: recipe validation, optimizer rule, schedule, precision choice, GradCache parity, NaN stop, checkpoints."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import yaml
from conftest import demo_recipe_dict

import medclip
from medclip.cli import main as cli_main
from medclip.errors import ConfigError
from medclip.eval.retrieval import chance_recall
from medclip.train.build import resolve_precision
from medclip.train.config import TrainConfig, load_recipe, recipe_from_dict
from medclip.train.loop import TrainingDiverged, forward_backward, train
from medclip.train.optim import build_scheduler, param_groups


def _batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    reports = ["no acute cardiopulmonary process", "right lower lobe opacity", "small left pleural effusion",
               "the heart is enlarged", "opacity in the left upper zone with effusion"]
    tokens = medclip.get_tokenizer("tiny-vit")([reports[i % len(reports)] + f" {i}" for i in range(n)])
    return {"image": torch.randn(n, 1, 64, 64, generator=g), "text": tokens}


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_grads_close(a, b, rtol=1e-5):
    """Per-parameter relative error; gradients that are zero in exact arithmetic (e.g. attention key biases)
    are compared against 1e-3 of the whole gradient's norm instead of their own float noise."""
    assert a.keys() == b.keys() and len(a) > 10
    total = torch.cat([g.flatten() for g in b.values()]).norm()
    for name in a:
        err = (a[name] - b[name]).norm() / torch.maximum(b[name].norm(), 1e-3 * total)
        assert err < rtol, f"{name}: relative error {err:.2e}"


def test_bad_recipe_key_is_one_line_cli_error(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"model": "tiny-vit", "train": {"lr": 1e-3, "learning_rate": 1}}))
    assert cli_main(["pretrain", "--recipe", str(recipe), "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train.learning_rate" in err and "Traceback" not in err
    with pytest.raises(ConfigError, match="unknown section 'optim'"):
        recipe_from_dict({"model": "tiny-vit", "optim": {}})
    with pytest.raises(ConfigError, match="train.loss"):
        TrainConfig(loss="sparse")


def test_recipe_overrides_and_model_forms(tmp_path, caplog):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"model": {"name": "tiny-vit", "embed_dim": 32}, "train": {}}))
    recipe = load_recipe(path, ["train.lr=3e-4", "train.batch_size=4", "data.eval_batch_size=6"])
    assert recipe.train.lr == pytest.approx(3e-4) and (recipe.train.batch_size, recipe.data.eval_batch_size) == (4, 6)
    assert "deprecated" not in caplog.text
    # the old data.batch_size key still works: it sets both batch sizes where they are not given
    old = load_recipe(path, ["data.batch_size=5", "data.eval_batch_size=7"])
    assert (old.train.batch_size, old.data.eval_batch_size) == (5, 7) and "data.batch_size is deprecated" in caplog.text
    assert recipe.model.embed_dim == 32 and recipe.model.vision.in_chans == 1
    # the resolved recipe round-trips (as written to runs and checkpoints)
    again = recipe_from_dict(recipe.to_dict())
    assert again.to_dict() == recipe.to_dict()


def test_open_clip_weight_decay_rule(tiny_model):
    no_decay, decay = param_groups(tiny_model, 0.2)
    names = {id(p): n for n, p in tiny_model.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    decay_names = {names[id(p)] for p in decay["params"]}
    assert "logit_scale" in no_decay_names and "text.token_embedding.weight" in no_decay_names
    assert all(p.ndim >= 2 for p in decay["params"])
    assert all(p.ndim < 2 for p in no_decay["params"] if "embed" not in names[id(p)] and "token" not in names[id(p)])
    assert "text.blocks.0.attn.q_proj.weight" in decay_names and decay["weight_decay"] == 0.2
    assert len(no_decay_names) + len(decay_names) == len(list(tiny_model.parameters()))


def test_cosine_schedule_with_warmup():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, warmup=4, total_steps=14)
    lrs = []
    for _ in range(14):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[4] == pytest.approx(1.0) and lrs[9] == pytest.approx(0.5) and lrs[-1] < 0.03
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))


def test_precision_choice(monkeypatch, caplog):
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "fp32"
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        resolve_precision("fp16", cpu)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    with pytest.raises(ConfigError, match="no native bf16"):
        resolve_precision("bf16", cpu)
    assert resolve_precision("bf16", cpu, allow_slow_bf16=True) == "bf16"
    assert "very slow" in caplog.text


@pytest.mark.parametrize("loss", ["dense", "tiled"])
@pytest.mark.slow
def test_gradcache_equals_one_big_batch(tiny_model, loss):
    model = copy.deepcopy(tiny_model).train()
    batch = _batch(8)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    big = forward_backward(model, batch, TrainConfig(loss=loss), torch.device("cpu"), "fp32", scaler)
    reference = _grads(model)
    model.zero_grad(set_to_none=True)
    cached = forward_backward(model, batch, TrainConfig(loss=loss, gradcache_chunk=3), torch.device("cpu"),
                              "fp32", scaler)
    assert cached == pytest.approx(big, rel=1e-6)
    _assert_grads_close(_grads(model), reference)
    assert "logit_scale" in reference and reference["logit_scale"].abs() > 0


def test_chance_recall_counts_duplicates():
    assert chance_recall(["a", "b", "c", "d"], 1) == pytest.approx(0.25)
    assert chance_recall(["a", "a", "b", "c"], 1) == pytest.approx((0.5 + 0.5 + 0.25 + 0.25) / 4)
    assert chance_recall(["a", "b"], 10) == pytest.approx(1.0)


@pytest.mark.slow
def test_demo_run_outputs(demo_run):
    """The shared demo run wrote a loadable model, logs, a loss curve and checkpoints with the recipe."""
    model = medclip.from_pretrained(str(demo_run / "model"))
    assert model.config.embed_dim == 64
    result = json.loads((demo_run / "result.json").read_text())
    assert result["last_loss"] < result["first_loss"]
    header = (demo_run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[:5] == ["step", "epoch", "loss", "lr", "logit_scale"] and "val_i2t_R@1" in header
    assert (demo_run / "loss_curve.png").stat().st_size > 1000
    assert any((demo_run / "tensorboard").iterdir())
    ckpt = sorted((demo_run / "checkpoints").iterdir())[-1]
    state = json.loads((ckpt / "state.json").read_text())
    assert state["recipe"]["train"]["lr"] == pytest.approx(2e-3) and state["medclip_version"] == medclip.__version__
    assert (demo_run / "best" / "model.safetensors").exists()
    reloaded = load_recipe(demo_run / "recipe.yaml")
    assert reloaded.to_dict() == state["recipe"]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(demo_corpus, tmp_path):
    recipe = recipe_from_dict(demo_recipe_dict(demo_corpus, lr=1e30, warmup=0, checkpoint_every=1, clip_grad=0,
                                               eval_every=0))
    with pytest.raises(TrainingDiverged, match="loss is nan") as info:
        train(recipe, str(tmp_path))
    ckpts = sorted((tmp_path / "checkpoints").glob("step-*"))
    assert ckpts and str(ckpts[-1]) in str(info.value)
    from safetensors.torch import load_file

    weights = load_file(str(ckpts[-1] / "model" / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())
    assert not (tmp_path / "model").exists()
