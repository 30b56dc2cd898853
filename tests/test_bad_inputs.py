"""Issue 14's bad-input table: every case exits as it should, in one line, and good rows survive.

Run it alone with ``pytest tests/test_bad_inputs.py``. Row cases share one ``medclip data check`` run
(and one zero-shot / retrieval run that must give data check's exact reasons); error cases run
``medclip.cli.main(argv)`` in-process, a few as real subprocesses.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import crafted
import pandas as pd
import pytest
import torch
from bad_inputs_cases import N_GOOD, ROW_CASES, build_world

from medclip.cli import main


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model_dir):
    return build_world(tmp_path_factory.mktemp("bad_inputs"), tiny_model_dir)


@pytest.fixture(autouse=True)
def _cache_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDCLIP_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def checked(world):
    """One ``data check`` over the manifest holding every row case: (exit code, stdout+stderr, quarantine)."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["data", "check", str(world.manifest), "--output", str(world.root / "check")])
    return rc, out.getvalue() + err.getvalue(), pd.read_csv(world.root / "check" / "quarantine.csv")


@pytest.mark.parametrize("kind", list(ROW_CASES))
def test_row_case_is_quarantined_and_good_rows_survive(kind, world, checked):
    rc, output, quarantine = checked
    assert rc == 0 and "Traceback" not in output
    assert f"{len(world.kinds_by_line) + N_GOOD} rows, {N_GOOD} ok, {len(world.kinds_by_line)} quarantined" in output
    line = next(n for n, k in world.kinds_by_line.items() if k == kind)
    row = quarantine[quarantine["line"] == line]
    assert len(row) == 1, quarantine  # quarantined, at its own file line (after a 3-line quoted report)
    reason = row["reason"].iat[0]
    assert "\n" not in reason and re.search(ROW_CASES[kind][1], reason), reason
    assert "no decoder installed" not in reason and "applying transform" not in reason


def test_headings_without_sections_are_used_whole_and_counted(checked, world):
    rc, output, _ = checked
    assert "of which whole report used (none of the sections)" in output
    good, _ = _check_with(world, ["--sections-missing", "quarantine"])
    assert "report has none of the sections FINDINGS, IMPRESSION" in good


def _check_with(world, extra):
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["data", "check", str(world.manifest), "--output", str(world.root / "q2"), "--no-decode",
                     *extra]) == 0
    return pd.read_csv(world.root / "q2" / "quarantine.csv")["reason"].tolist(), out.getvalue()


def test_phi_and_formulas_never_reach_output(checked, world):
    _, output, _ = checked
    for secret in (crafted.FAKE_NAME, "Zzfakename", crafted.FAKE_ID, crafted.FAKE_BIRTH):
        assert secret not in output
    raw = (world.root / "check" / "quarantine.csv").read_text()
    assert "\n=" not in raw and ",=" not in raw and ",+" not in raw and ",@" not in raw


@pytest.mark.parametrize("command", ["zeroshot", "retrieve"])
def test_eval_quarantine_reasons_are_data_checks(command, world, checked, capsys):
    """Zero-shot and retrieval keep going past every bad image, with data check's exact reasons."""
    _, _, quarantine = checked
    out = world.root / f"out_{command}"
    argv = [command, "--model", str(world.model), "--manifest", str(world.manifest), "--output", str(out)]
    argv += ["--classes", str(world.classes), "--bootstrap", "20", "--no-figures", "--no-cache"] \
        if command == "zeroshot" else ["--ks", "1", "5"]
    assert main(argv) == 0
    theirs = pd.read_csv(out / "quarantine.csv")
    expected = {os.path.basename(str(i)): r for i, r in zip(quarantine["image"], quarantine["reason"])}
    got = {os.path.basename(str(i)): r for i, r in zip(theirs["image"], theirs["reason"])}
    image_reasons = {k: v for k, v in got.items() if k in expected and k.startswith(("bomb", "j2k", "rle", "slope",
                                                                                     "icpt", "ts", "tj2k", "one"))}
    assert len(image_reasons) >= 8
    assert image_reasons == {k: expected[k] for k in image_reasons}
    assert "Traceback" not in capsys.readouterr().err


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
ZS = ["zeroshot", "--model", "{model}", "--manifest", "{good}", "--classes", "{classes}", "--no-figures"]
RT = ["retrieve", "--model", "{model}", "--manifest", "{good}"]
FS = ["--model", "{model}", "--manifest", "{good}", "--classes", "{classes}", "--output", "{root}/fs"]

# kind -> (argv template, pattern of the one-line error); {good}, {root}, ... are filled from the world
ERROR_CASES = {
    "data check: a folder as manifest": (["data", "check", "{root}"], r"is a folder; this command needs a manifest"),
    "retrieve: a folder as manifest": (RT[:4] + ["{root}"], r"is a folder"),
    "semicolon-separated CSV": (["data", "check", "{root}/semicolon.csv"], r"semicolon-separated \(';'\)"),
    "tab-separated CSV": (["data", "check", "{root}/tab.csv"], r"tab-separated"),
    "header-only manifest (data check)": (["data", "check", "{root}/header_only.csv"], r"header but no rows"),
    "header-only manifest (zeroshot)": (ZS[:4] + ["{root}/header_only.csv"] + ZS[5:], r"header but no rows"),
    "header-only manifest (data split)": (["data", "split", "{root}/header_only.csv"], r"header but no rows"),
    "empty manifest file": (["data", "check", "{root}/empty.csv"], r"empty manifest"),
    "missing manifest": (["data", "check", "{root}/nope.csv"], r"manifest not found"),
    "non-UTF-8 manifest": (["data", "check", "{root}/latin1.csv"], r"not a readable UTF-8 CSV"),
    "no image column": (["data", "check", "{root}/no_image_col.csv"], r"no image column 'image'.*--column"),
    "reserved column": (["data", "check", "{root}/reserved.csv"], r"reserved"),
    "unknown split value": (["data", "check", "{root}/bad_split.csv"], r"unknown value\(s\) 'holdout'"),
    "--column without =": (["data", "check", "{good}", "--column", "image"], r"must look like KEY=NAME"),
    "missing label column": (["data", "check", "{good}", "--column", "labels=opacity"], r"opacity not found"),
    "data split --val 1.5": (["data", "split", "{good}", "--val", "1.5"], r"--val must be in \[0, 1\), got 1.5"),
    "data split --test -0.2": (["data", "split", "{good}", "--test", "-0.2"], r"--test must be in"),
    "data split fractions sum >= 1": (["data", "split", "{good}", "--val", "0.6", "--test", "0.5"], r"--val \+ --test"),
    "data split --output a directory": (["data", "split", "{good}", "--output", "{root}/outdir"], r"is a folder"),
    "data check --output an existing file": (["data", "check", "{good}", "--output", "{root}/a_file.txt"],
                                             r"--output .*a_file.txt is an existing file"),
    "data check --output unwritable": (["data", "check", "{good}", "--output", "/proc/medclip_out"],
                                       r"--output /proc/medclip_out: cannot write there"),
    "zeroshot --output an existing file": (ZS + ["--output", "{root}/a_file.txt"], r"--output .* is an existing file"),
    "zeroshot --output unwritable": (ZS + ["--output", "/proc/medclip_out"], r"--output /proc/medclip_out"),
    "retrieve --output an existing file": (RT + ["--output", "{root}/a_file.txt"], r"is an existing file"),
    "retrieve --output unwritable": (RT + ["--output", "/proc/medclip_out"], r"cannot write there"),
    "zeroshot --threshold 2": (ZS + ["--threshold", "2"], r"--threshold must be in \(0, 1\), got 2.0"),
    "zeroshot --threshold 0": (ZS + ["--threshold", "0"], r"--threshold must be in"),
    "zeroshot --bootstrap 0": (ZS + ["--bootstrap", "0"], r"--bootstrap must be in \[10, inf\]"),
    "zeroshot --batch-size 0": (ZS + ["--batch-size", "0"], r"--batch-size must be in \[1"),
    "retrieve --batch-size 0": (RT + ["--batch-size", "0"], r"--batch-size must be in \[1"),
    "retrieve --ks 0": (RT + ["--ks", "0"], r"--ks must be in"),
    "zeroshot --val-fraction 1.5": (ZS + ["--val-fraction", "1.5"], r"--val-fraction must be in"),
    "zeroshot --max-images 0": (ZS + ["--max-images", "0"], r"--max-images must be in"),
    "zeroshot --workers -1": (ZS + ["--workers", "-1"], r"--workers must be in"),
    "zeroshot --device nonsense": (ZS + ["--device", "gpu7"], r"is not a torch device"),
    "probe --shots -1": (["probe", *FS, "--shots", "-1"], r"--shots must be in \[1, inf\], got -1"),
    "fewshot --shots 0,1": (["fewshot", *FS, "--shots", "0,1"], r"--shots must be in"),
    "coop --set lr=abc": (["coop", *FS, "--shots", "1", "--set", "lr=abc"], r"lr.*abc"),
    "coop --set with a YAML tag": (["coop", *FS, "--set", "lr=!!python/object/apply:os.system [echo]"],
                                   r"not plain YAML"),
    "coop --output an existing file": (["coop", *FS[:-1], "{root}/a_file.txt"], r"is an existing file"),
    "pretrain --set with a YAML tag": (["pretrain", "--recipe", "recipes/demo.yaml", "--set",
                                        "train.lr=!!python/name:os.system"], r"not plain YAML"),
    "demo-data onto an existing file": (["demo-data", "{root}/a_file.txt"], r"OUT_DIR .* is an existing file"),
    "demo-data --patients 0": (["demo-data", "{root}/demo", "--patients", "0"], r"--patients must be in"),
    "zeroshot --model missing": (ZS[:2] + ["{root}/no_model"] + ZS[3:], r"not found"),
    "zeroshot --classes missing": (ZS[:6] + ["{root}/none.yaml"] + ZS[7:], r"not found"),
    "config.json layers: 1e9": (ZS[:2] + ["{root}/model_layers"] + ZS[3:], r"text.layers must be an integer"),
    "config.json vocab_size: 1e7": (ZS[:2] + ["{root}/model_vocab"] + ZS[3:], r"text.vocab_size must be in"),
    "config.json heads: 0": (ZS[:2] + ["{root}/model_heads"] + ZS[3:], r"text.heads must be in \[1, 256\], got 0"),
    "config.json does not match the weights": (ZS[:2] + ["{root}/model_mismatch"] + ZS[3:],
                                               r"shape mismatch with its config.json.*refused before building"),
    "config.json not JSON": (ZS[:2] + ["{root}/model_notjson"] + ZS[3:], r"not valid JSON"),
    "truncated weights": (ZS[:2] + ["{root}/model_truncated"] + ZS[3:], r"corrupt or not safetensors"),
    "pretrain into a used run folder": (["pretrain", "--recipe", "recipes/demo.yaml", "--output", "{root}/used_run"],
                                        r"already holds a run.*--resume.*--overwrite"),
    "pretrain into a folder a live run holds": (["pretrain", "--recipe", "recipes/demo.yaml", "--output",
                                                 "{root}/locked_run"], r"in use by a running medclip process"),
    "pretrain --resume --overwrite": (["pretrain", "--recipe", "recipes/demo.yaml", "--output", "{root}/used_run",
                                       "--resume", "--overwrite"], r"exclude each other"),
    "pretrain --output an existing file": (["pretrain", "--recipe", "recipes/demo.yaml", "--output",
                                           "{root}/a_file.txt"], r"--output .*a_file.txt is an existing file"),
    "pretrain --output unwritable": (["pretrain", "--recipe", "recipes/demo.yaml", "--output", "/proc/medclip_run"],
                                     r"--output /proc/medclip_run: cannot write there"),
    "pretrain --max-steps 0": (["pretrain", "--recipe", "recipes/demo.yaml", "--max-steps", "0"],
                               r"--max-steps must be in \[1"),
    "convert a malicious pickle (.pt)": (["convert", "{root}/evil.pt", "--output", "{root}/conv"],
                                         r"weights_only=True.*not loaded"),
    "convert a malicious pickle (.bin)": (["convert", "{root}/evil.bin", "--from", "open-clip", "--output",
                                          "{root}/conv"], r"weights_only=True.*not loaded"),
    "convert: HF config.json num_hidden_layers 1e9": (["convert", "{root}/hf_layers", "--output", "{root}/c1"],
                                                      r"num_hidden_layers must be an integer in \[1, 256\]"),
    "convert: HF config.json num_attention_heads 0": (["convert", "{root}/hf_heads", "--output", "{root}/c2"],
                                                      r"num_attention_heads must be in \[1, 256\], got 0"),
    "convert: HF config.json vocab_size 1e7": (["convert", "{root}/hf_vocab", "--output", "{root}/c3"],
                                               r"vocab_size must be in"),
    "convert: HF vision num_hidden_layers 1e9": (["convert", "{root}/hf_vlayers", "--output", "{root}/c4"],
                                                 r"vision_config: num_hidden_layers must be in"),
    "convert: open_clip hub layers 1e9": (["convert", "{root}/hub_layers", "--output", "{root}/c5"],
                                          r"layers must be an integer"),
    "label value 2": (ZS[:4] + ["{root}/label2.csv"] + ZS[5:] + ["--no-cache", "--bootstrap", "20"], r"label"),
}
ERROR_CASES_CUDA = {
    "zeroshot --device cuda without CUDA": (ZS + ["--device", "cuda"], r"CUDA is not available.*--device cpu"),
    "retrieve --device cuda without CUDA": (RT + ["--device", "cuda"], r"CUDA is not available"),
}
SUBPROCESS = {"data split --val 1.5", "demo-data onto an existing file", "config.json heads: 0"}


def _fill(argv, world):
    keys = dict(root=world.root, good=world.root / "good.csv", model=world.model, classes=world.classes)
    return [a.format(**keys) for a in argv]


def _assert_one_line_error(rc, err, command, pattern):
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2 and "Traceback" not in err, err[-3000:]
    assert lines and lines[-1].startswith(f"medclip {command}: error: "), err[-3000:]
    assert re.search(pattern, lines[-1]), lines[-1]


@pytest.mark.parametrize("kind", [pytest.param(k, marks=pytest.mark.slow) if k in SUBPROCESS else k  # subprocesses
                                  for k in ERROR_CASES] + [pytest.param(k, marks=NO_CUDA) for k in ERROR_CASES_CUDA])
def test_error_case_is_one_line(kind, world, capsys, monkeypatch):
    template, pattern = {**ERROR_CASES, **ERROR_CASES_CUDA}[kind]
    argv = _fill(template, world)
    command = argv[0]
    if kind in SUBPROCESS:
        run = subprocess.run([sys.executable, "-m", "medclip", *argv], capture_output=True, text=True, timeout=300)
        rc, err = run.returncode, run.stderr
    else:
        rc = main(argv)
        err = capsys.readouterr().err
    _assert_one_line_error(rc, err, command, pattern)


def test_no_pickle_was_ever_run(world, capsys):
    """After the table's malicious-pickle cases (run first or not), their payload has never executed."""
    for name in ("evil.pt", "evil.bin"):
        assert main(["convert", str(world.root / name), "--output", str(world.root / "conv2")]) == 2
    assert not (world.root / "PWNED").exists()


def test_unwritable_home_names_the_cache_and_the_variable(world, capsys, monkeypatch):
    monkeypatch.delenv("MEDCLIP_CACHE_DIR")
    monkeypatch.setenv("HOME", "/proc/no_home")
    rc = main(_fill(ZS, world))
    _assert_one_line_error(rc, capsys.readouterr().err, "zeroshot", r"prompt-embedding cache .*MEDCLIP_CACHE_DIR")


@pytest.mark.parametrize("values", [("NORMAL", "PNEUMONIA"), ("0", "1"), ("no", "yes"), ("false", "true")])
def test_label_values_are_mapped_never_silently_dropped(values, world, capsys):
    """0/1, yes/no, true/false labels with a NORMAL/PNEUMONIA class file: every image is evaluated
    (issue 14 saw "0 evaluated" and exit 0), or the command stops with one line naming the column."""
    import json

    table = pd.read_csv(world.root / "good.csv").assign(label=list(values) * (N_GOOD // 2))
    path = world.root / f"labels_{values[0]}.csv"
    table.to_csv(path, index=False)
    out = world.root / f"out_labels_{values[0]}"
    rc = main(_fill(ZS[:4], world) + [str(path)] + _fill(ZS[5:], world) + ["--output", str(out), "--no-cache",
                                                                          "--bootstrap", "20"])
    if rc == 0:
        assert json.loads((out / "metrics.json").read_text())["n_evaluated"] == N_GOOD
    else:
        _assert_one_line_error(rc, capsys.readouterr().err, "zeroshot", r"label")


@pytest.mark.parametrize("variable", ["MEDCLIP_MAX_PIXELS", "MEDCLIP_MIN_IMAGE_SIZE"])
def test_bad_limit_variable_is_one_error_not_one_per_image(variable, world, capsys, monkeypatch):
    monkeypatch.setenv(variable, "lots")
    rc = main(["data", "check", str(world.root / "good.csv"), "--output", str(world.root / "env_check")])
    _assert_one_line_error(rc, capsys.readouterr().err, "data", rf"{variable}='lots' is not a number")


def test_training_data_preparation_quarantines_with_the_same_reasons(world, checked, tmp_path, capfd, caplog):
    """Training decodes through the cached ImageTransform (MONAI chain): same rows, same reasons, no abort."""
    import medclip
    from medclip.config import from_dict
    from medclip.data import build_image_transform
    from medclip.data.config import DataConfig
    from medclip.data.dataset import prepare_manifest

    transform = build_image_transform(medclip.config.VisionConfig(image_size=32, in_chans=1),
                                      cache_dir=str(tmp_path / "npy"))
    cfg = from_dict(DataConfig, {"manifest": str(world.manifest), "quarantine_dir": str(tmp_path / "q")})
    good, quarantine, _ = prepare_manifest(cfg, decode=transform.prepare)
    assert len(good) == N_GOOD
    expected = checked[2]
    assert dict(zip(quarantine["line"], quarantine["reason"])) == dict(zip(expected["line"], expected["reason"]))
    out, err = capfd.readouterr()
    assert not any(s in out + err + caplog.text for s in (crafted.FAKE_NAME, crafted.FAKE_ID, crafted.FAKE_BIRTH))


def test_unverified_bad_image_mid_epoch_is_skipped_not_fatal(world, tokenizer, caplog):
    """With data.verify_images: false nothing is decoded up front; a bomb met mid-epoch is skipped with its
    reason in the log and the epoch completes."""
    import logging

    import medclip
    from medclip.data import build_image_transform
    from medclip.data.dataset import ImageReportDataset

    paths = [str(world.img / "good0.png"), str(world.img / "j2k.dcm"), str(world.img / "good2.png")]
    df = pd.DataFrame({"image": paths, "text": ["a", "b", "c"], "patient_id": ["1", "2", "3"]})
    transform = build_image_transform(medclip.config.VisionConfig(image_size=32, in_chans=1))
    dataset = ImageReportDataset(df, transform, tokenizer)
    with caplog.at_level(logging.WARNING):
        batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=3)))
    assert batch["image"].shape == (3, 1, 32, 32) and batch["path"] == [paths[0], paths[2], paths[2]]
    assert "j2k.dcm" in caplog.text and "codestream header declares 16000 x 16000" in caplog.text
