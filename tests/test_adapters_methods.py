"""Method-level checks: learning on a separable task, and each method against its definition/reference."""

from __future__ import annotations

import medclip_adapters as ma
import numpy as np
import pandas as pd
import pytest
import torch
from medclip_adapters.coop import PromptLearner, coop_lr, epochs_for_shots
from medclip_adapters.lora import lora_target_regex

pytestmark = pytest.mark.usefixtures("one_thread")



def synthetic(model, cache, kind: str, seed: int = 0):
    """A separable task in feature space: class means + noise, put straight into the feature cache."""
    g = torch.Generator().manual_seed(seed)
    dim = model.config.embed_dim
    means = torch.randn(2, dim, generator=g)

    def make(n: int, prefix: str):
        y = np.arange(n) % 2
        feats = means[y] + 0.9 * torch.randn(n, dim, generator=g)
        frame = pd.DataFrame({"image": [f"/synthetic/{kind}/{prefix}{i}.png" for i in range(n)], "label": y})
        if kind == "multi":  # condition a = class 1; condition b = class 0
            frame["label/a"], frame["label/b"] = y.astype(float), 1.0 - y
        cache.put(model, frame["image"].tolist(), feats)
        return frame

    task = ma.Task(classes=["normal", "abnormal"], kind="single") if kind == "single" else \
        ma.Task(classes=["a", "b"], kind="multi")
    return task, make(32, "train"), make(8, "val"), make(120, "test")


def nll(task, probs, frame) -> float:
    y = task.labels(frame)
    p = np.clip(probs, 1e-7, 1 - 1e-7)
    if task.kind == "single":
        return float(-np.log(p[np.arange(len(y)), y]).mean())
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


# each method, with a CPU-sized budget that still learns this easy task
LEARNERS = {
    "probe": {"search_steps": 2},
    "coop": {"epochs": 30, "n_ctx": 4, "lr": 0.05},
    "clip-adapter": {"epochs": 30, "lr": 0.5, "ratio": 0.6},
    "tip-adapter": {"grid": 6},
    "lora": {"max_iters": 30, "lr": 1e-2, "encoder": "text", "dropout": 0.0},
}


@pytest.mark.parametrize("kind", ["single", "multi"])
@pytest.mark.parametrize("name", sorted(LEARNERS))
@pytest.mark.slow
def test_trained_method_beats_its_untrained_start(name, kind, tiny_model):
    """Untrained start: uniform probabilities for the probe, the zero-shot classifier for the others
    (LoRA's B=0 init and Tip's alpha=0 are exactly zero-shot)."""
    cache = ma.FeatureCache()
    task, train, val, test = synthetic(tiny_model, cache, kind)
    if name == "probe":
        start = np.full((len(test), 2), 0.5)
    else:
        start = ma.create_method("zeroshot", tiny_model, task, cache=cache).fit(train).predict_proba(test)
    method = ma.create_method(name, tiny_model, task, cache=cache, seed=0, **LEARNERS[name]).fit(train, val)
    probs = method.predict_proba(test)
    assert nll(task, probs, test) < nll(task, start, test) - 0.05
    y = task.labels(test)
    correct = (probs.argmax(1) == y) if kind == "single" else ((probs > 0.5) == (y > 0.5))
    assert correct.mean() >= 0.9
    if len(method.history) > 1:
        assert method.history[-1] < method.history[0]


def test_coop_ctx_init_starts_at_the_hand_written_prompt(tiny_model, tokenizer):
    """With ctx_init, the untrained prompts are exactly the token embeddings of 'ctx_init name.'."""
    names = ["pneumonia", "no finding"]
    learner = PromptLearner(tiny_model, tokenizer, names, ctx_init="a chest x-ray of a")
    assert learner.n_ctx == 7 and learner.ctx.shape == (7, tiny_model.config.text.width)  # a chest x - ray of a
    with torch.no_grad():
        via_embeds = tiny_model.encode_text_embeds(learner(), learner.attention_mask)
        via_ids = tiny_model.encode_text(tokenizer([f"a chest x-ray of a {n}." for n in names]))
    torch.testing.assert_close(via_embeds, via_ids, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("position", ["middle", "front"])
def test_coop_class_token_positions_keep_every_token(tiny_model, tokenizer, position):
    names = ["pleural effusion", "edema"]
    end = PromptLearner(tiny_model, tokenizer, names, n_ctx=4, csc=True, generator=torch.Generator().manual_seed(0))
    moved = PromptLearner(tiny_model, tokenizer, names, n_ctx=4, csc=True, position=position,
                          generator=torch.Generator().manual_seed(0))
    a, b = end().detach(), moved().detach()
    assert a.shape == b.shape
    torch.testing.assert_close(a.sort(dim=1).values, b.sort(dim=1).values)  # same vectors, other order
    assert not torch.equal(a, b)
    assert moved.ctx.shape == (2, 4, tiny_model.config.text.width)  # class-specific contexts


def test_coop_schedule_and_epochs_follow_the_paper():
    assert [epochs_for_shots(k) for k in (1, 2, 4, 8, 16)] == [50, 100, 100, 200, 200]
    assert coop_lr(0, 50, 0.002, 1, 1e-5) == 1e-5
    assert coop_lr(1, 50, 0.002, 1, 1e-5) == pytest.approx(0.001 * (1 + np.cos(np.pi / 50)))
    assert coop_lr(49, 50, 0.002, 1, 1e-5) < 1e-5


def test_probe_matches_sklearn_at_the_selected_c(tiny_model):
    from sklearn.linear_model import LogisticRegression

    cache = ma.FeatureCache()
    task, train, val, test = synthetic(tiny_model, cache, "single", seed=1)
    probe = ma.create_method("probe", tiny_model, task, cache=cache, search_steps=2).fit(train, val)
    ref = LogisticRegression(C=probe.selected["C"], max_iter=1000).fit(
        cache.features(tiny_model, train["image"]).double().numpy(), task.labels(train))
    expected = ref.predict_proba(cache.features(tiny_model, test["image"]).double().numpy())
    np.testing.assert_allclose(probe.predict_proba(test), expected, atol=1e-6)


def test_tip_adapter_is_the_formula(tiny_model):
    cache = ma.FeatureCache()
    task, train, val, test = synthetic(tiny_model, cache, "single", seed=2)
    tip = ma.create_method("tip-adapter", tiny_model, task, cache=cache, alpha=1.5, beta=5.0, search=False).fit(train)
    f, keys = cache.features(tiny_model, test["image"]), cache.features(tiny_model, train["image"])
    w = ma.create_method("zeroshot", tiny_model, task).text_features()
    values = torch.nn.functional.one_hot(torch.as_tensor(task.labels(train)), 2).float()
    logits = tiny_model.get_logit_scale() * f @ w.t() + 1.5 * torch.exp(-5.0 * (1 - f @ keys.t())) @ values
    np.testing.assert_allclose(tip.predict_proba(test), logits.softmax(-1).detach().numpy(), atol=1e-5)
    zero = ma.create_method("tip-adapter", tiny_model, task, cache=cache, alpha=0.0, search=False).fit(train)
    np.testing.assert_allclose(zero.predict_proba(test),
                               ma.create_method("zeroshot", tiny_model, task, cache=cache).predict_proba(test),
                               atol=1e-6)


def test_zeroshot_equals_the_eval_zero_shot_classifier(tiny_model):
    from medclip.eval.prompts import parse_class_file
    from medclip.eval.zeroshot import ZeroShotClassifier

    cf = parse_class_file({"task": "multi", "templates": ["{}", "chest x-ray showing {}"],
                           "classes": {"effusion": ["pleural effusion"], "edema": ["pulmonary edema"]}})
    cache = ma.FeatureCache()
    task, _, _, test = synthetic(tiny_model, cache, "multi", seed=3)
    task = ma.Task.from_class_file(cf)
    ours = ma.create_method("zeroshot", tiny_model, task, cache=cache).predict_proba(test)
    ref = ZeroShotClassifier(tiny_model, cf).predict_proba(cache.features(tiny_model, test["image"]))
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_lora_targets_per_tower_kind_and_saves_only_the_adapter(tiny_model, tmp_path):
    import medclip

    regex, vision = lora_target_regex(tiny_model, "auto")
    assert vision and "qkv" in regex and "q_proj" in regex
    cnn = medclip.create_model("tiny-rn")
    regex, vision = lora_target_regex(cnn, "auto")
    assert not vision and "qkv" not in regex
    with pytest.raises(ma.base.ConfigError, match="CNN image towers"):
        lora_target_regex(cnn, "both")

    cache = ma.FeatureCache()
    task, train, val, test = synthetic(tiny_model, cache, "single", seed=4)
    lora = ma.create_method("lora", tiny_model, task, cache=cache, encoder="text", max_iters=3).fit(train)
    lora.save(str(tmp_path))
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert saved and all("lora_" in k for k in saved)
    assert len(saved) == 2 * 3 * tiny_model.config.text.layers  # A and B for q, k, v in every block
    assert (tmp_path / "adapter_config.json").exists() and not (tmp_path / "weights.safetensors").exists()
