"""``medclip data prepare``: check + split once in parallel (slices over processes and torchrun ranks), equal
to the serial check; training reads the prepared rows without checking again; an edited one is refused."""

from __future__ import annotations

import json
import os
from pathlib import Path

import corpus_replicas as R
import pandas as pd
import pytest
from torchrun import torchrun

from medclip.cli import main
from medclip.data import prepare as prep
from medclip.data.config import DataConfig
from medclip.data.manifest import check_manifest, load_manifest
from medclip.errors import DataError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def messy(tmp_path_factory) -> Path:
    """A 60-row manifest with a missing image, an empty report and duplicates inside and across slices."""
    root = tmp_path_factory.mktemp("messy")
    rows = []
    for i in range(60):
        image = root / "img" / f"{i % 50}.png"  # rows 50..59 repeat images 0..9
        if not image.exists():
            R.write_image(image, i)
        report = f"FINDINGS: finding {i % 50 if i < 55 else i}. IMPRESSION: normal."  # 50..54 = rows 0..4
        rows.append({"image": os.path.relpath(image, root), "report": report, "patient_id": f"P{i // 3}"})
    rows[7]["image"] = "img/missing.png"
    rows[8]["report"] = "   "
    rows[20] = dict(rows[19])  # duplicate inside one slice
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


def test_parallel_slices_equal_the_serial_check(messy, tmp_path, monkeypatch):
    monkeypatch.setattr(prep, "MIN_ROWS_PER_WORKER", 1)
    good, quarantine = check_manifest(load_manifest(messy), verify_images=False)
    info = prep.prepare(messy, tmp_path / "p", workers=3, split=(0.2, 0.2, 1))
    rows, _ = prep.read_prepared(tmp_path / "p")
    assert sorted(rows["line"]) == sorted(good["line"]) and info["rows"] == len(good) == 60 - 8
    want = quarantine.sort_values("line").reset_index(drop=True)
    got = pd.read_csv(tmp_path / "p" / "quarantine.csv", dtype={"image": str})
    pd.testing.assert_frame_equal(got, want, check_dtype=False)
    assert "duplicate of line 2 (same image and report)" in set(got["reason"])  # across slices (row 50 vs 0)
    assert (rows["image"] == good.set_index("line").loc[rows["line"], "image"].to_numpy()).all()
    assert set(rows["split"]) == {"train", "val", "test"} and json.loads((tmp_path / "p" / "prepared.json").read_text(
    ))["split"] == {"given": False, "val": 0.2, "test": 0.2, "seed": 1}
    one = prep.prepare(messy, tmp_path / "q", workers=1, split=(0.2, 0.2, 1))
    assert one["manifest_sha256"] == info["manifest_sha256"]  # byte-identical whatever the slicing


def test_parallel_slices_report_file_lines_after_multiline_reports(tmp_path, monkeypatch):
    monkeypatch.setattr(prep, "MIN_ROWS_PER_WORKER", 1)
    rows = []
    for i in range(10):
        R.write_image(tmp_path / "img" / f"{i}.png", i)
        report = f"FINDINGS: finding {i}.\nsecond line. IMPRESSION: normal." if i in (2, 6) else f"FINDINGS: {i}."
        rows.append({"image": f"img/{i}.png", "report": report, "patient_id": f"P{i}"})
    rows[9]["image"] = "img/missing.png"  # rows 2 and 6 span two file lines each: row 9 is on line 13
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    prep.prepare(tmp_path / "m.csv", tmp_path / "p", workers=3)
    assert list(pd.read_csv(tmp_path / "p" / "quarantine.csv")["line"]) == [13]
    _, serial = check_manifest(load_manifest(tmp_path / "m.csv"), verify_images=False)
    assert list(serial["line"]) == [13]


def test_training_reads_prepared_rows_without_rechecking(messy, tmp_path, monkeypatch):
    from medclip.data import dataset

    assert main(["data", "prepare", str(messy), "--output", str(tmp_path / "p")]) == 0
    monkeypatch.setattr(dataset, "check_manifest", lambda *a, **k: pytest.fail("re-checked a prepared manifest"))
    for manifest in (tmp_path / "p", tmp_path / "p" / "manifest.csv"):
        good, quarantine, _ = dataset.prepare_manifest(DataConfig(manifest=str(manifest)))
        assert len(good) == 52 and len(quarantine) == 8 and all(Path(p).is_file() for p in good["image"])


def test_edited_prepared_manifest_is_one_line_error(messy, tmp_path, capsys):
    assert main(["data", "prepare", str(messy), "--output", str(tmp_path / "p")]) == 0
    rows = tmp_path / "p" / "manifest.csv"
    rows.write_text(rows.read_text().replace("finding 3.", "finding 33."))
    with pytest.raises(DataError, match="changed since 'medclip data prepare'"):
        prep.read_prepared(tmp_path / "p")
    from conftest import demo_recipe_dict

    from medclip.train.config import recipe_from_dict
    from medclip.train.loop import train

    recipe = recipe_from_dict(demo_recipe_dict(tmp_path / "p", max_steps=1, batch_size=4))
    with pytest.raises(DataError, match="content hash differs"):
        train(recipe, str(tmp_path / "run"))


def test_prepared_manifest_trains_one_step(messy, tmp_path):
    from conftest import demo_recipe_dict

    from medclip.train.config import recipe_from_dict
    from medclip.train.loop import train

    assert main(["data", "prepare", str(messy), "--output", str(tmp_path / "p"), "--image-size", "64"]) == 0
    cached = list((tmp_path / "p" / "cache").rglob("*.npy"))
    assert len(cached) == 49  # preprocessed once: one cache file per distinct good image (20.png: a dup row)
    recipe = demo_recipe_dict(tmp_path / "p", max_steps=1, batch_size=4, eval_every=0)
    recipe["data"].update(cache_dir=str(tmp_path / "p" / "cache"), sections=["findings", "impression"])
    result = train(recipe_from_dict(recipe), str(tmp_path / "run"))
    assert result["step"] == 1 and len(list((tmp_path / "p" / "cache").rglob("*.npy"))) == 49


def test_evaluation_manifest_is_not_quarantined_for_missing_reports(tmp_path, capsys):
    R.make_chexpert(tmp_path, n_train=8, n_valid=4)
    assert main(["data", "import", "chexpert", str(tmp_path), "--output", str(tmp_path / "c.csv")]) == 0
    (tmp_path / "CheXpert-v1.0-small" / "train" / "patient00001" / "study2" / "view1_frontal.jpg").unlink()
    assert main(["data", "prepare", str(tmp_path / "c.csv"), "--output", str(tmp_path / "p")]) == 0
    quarantine = pd.read_csv(tmp_path / "p" / "quarantine.csv")
    assert list(quarantine["reason"]) == ["image file not found"]
    rows, info = prep.read_prepared(tmp_path / "p")
    assert len(rows) == 11 and not info["reports"] and set(rows["split"]) == {"train", "val"}


@pytest.mark.slow  # ~40 s on 2 busy cores: two torchrun processes import torch
def test_two_torchrun_ranks_each_check_a_slice_and_rank0_writes(messy, tmp_path):
    serial = prep.prepare(messy, tmp_path / "one", workers=1)
    proc = torchrun(["-m", "medclip", "data", "prepare", str(messy), "--output", str(tmp_path / "two"),
                     "--workers", "1"], timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("rows ok") == 1  # only rank 0 reports (and writes)
    two = json.loads((tmp_path / "two" / "prepared.json").read_text())
    assert two["manifest_sha256"] == serial["manifest_sha256"]
    assert (tmp_path / "two" / "quarantine.csv").read_bytes() == (tmp_path / "one" / "quarantine.csv").read_bytes()


def test_prepared_with_other_sections_than_the_recipe_is_one_line_error(messy, tmp_path):
    from medclip.data import dataset

    assert main(["data", "prepare", str(messy), "--output", str(tmp_path / "p"), "--sections", "impression"]) == 0
    with pytest.raises(DataError, match=r"prepared with report sections \['impression'\].*--sections findings"):
        dataset.prepare_manifest(DataConfig(manifest=str(tmp_path / "p")))
