"""Decompression bombs, damaged headers and PHI: refused or quarantined before decoding, never printed."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import crafted
import numpy as np
import pytest

from medclip.data import load_image
from medclip.data.guard import ImageLimits, redact
from medclip.errors import DataError, MedclipError

BUDGET = 4_000_000  # pixels: the bombs below declare 10x to 1000x more


@pytest.mark.parametrize("make, where", [
    (lambda d: crafted.j2k_bomb_dicom(d / "j2k.dcm"), "compressed codestream header declares 16000 x 16000"),
    (lambda d: crafted.rle_header_bomb(d / "rle.dcm"), "DICOM header declares 65535 x 65535"),
    (lambda d: crafted.png_bomb(d / "big.png", 13000), "PNG header declares 13000 x 13000"),
    (lambda d: crafted.png_bomb(d / "huge.png", 50000, rows=2), "header declares"),
])
def test_bombs_refused_before_decoding(tmp_path, make, where):
    path = make(tmp_path)
    assert path.stat().st_size < 2000
    with pytest.raises(DataError) as info:
        load_image(path, limits=ImageLimits(max_pixels=BUDGET, min_size=8))
    message = str(info.value)
    assert where in message and "\n" not in message and str(path) in message


def test_codestream_header_checked_even_when_dicom_header_is_small(tmp_path):
    import pydicom

    path = crafted.j2k_bomb_dicom(tmp_path / "j2k.dcm")
    ds = pydicom.dcmread(path)
    assert (ds.Rows, ds.Columns) == (32, 32)  # the DICOM header alone would pass any budget
    with pytest.raises(DataError, match="codestream header declares 16000 x 16000 x 1 x 1 = 256,000,000"):
        load_image(path)  # default budget (50 million pixels)


def test_budget_is_configurable(tmp_path, monkeypatch):
    path = crafted.png(tmp_path / "ok.png", 64)
    assert load_image(path).shape == (64, 64)
    with pytest.raises(DataError, match="over the pixel budget of 1,000"):
        load_image(path, limits=ImageLimits(max_pixels=1000, min_size=8))
    monkeypatch.setenv("MEDCLIP_MAX_PIXELS", "1000")
    with pytest.raises(DataError, match="MEDCLIP_MAX_PIXELS"):
        load_image(path)


def test_minimum_side(tmp_path, monkeypatch):
    tiny = crafted.png(tmp_path / "one.png", 1)
    with pytest.raises(DataError, match="1 x 1 pixels, smaller than the minimum side of 8"):
        load_image(tiny)
    monkeypatch.setenv("MEDCLIP_MIN_IMAGE_SIZE", "1")
    assert load_image(tiny).shape == (1, 1)


PEAK_SCRIPT = """
import json, os, resource, sys, types
# load medclip.data.dicom without the package __init__ files (they import torch and MONAI: a 400 MB baseline)
import importlib.util
root = os.path.dirname(importlib.util.find_spec("medclip").origin)
for name, path in (("medclip", root), ("medclip.data", os.path.join(root, "data"))):
    module = types.ModuleType(name)
    module.__path__ = [path]
    sys.modules[name] = module
from medclip.data.dicom import read_image
from medclip.data.guard import ImageLimits
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = {}
for path in sys.argv[1:]:
    try:
        read_image(path, limits=ImageLimits(max_pixels=%d, min_size=8))
        out[path] = "decoded"
    except Exception as exc:
        out[path] = type(exc).__name__
out["grew_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps(out))
"""


@pytest.mark.slow
def test_bombs_peak_memory_stays_under_budget(tmp_path):
    """In a fresh process, refusing all four bombs grows the peak RSS by less than the budget as float32."""
    paths = [crafted.j2k_bomb_dicom(tmp_path / "a.dcm"), crafted.rle_header_bomb(tmp_path / "b.dcm"),
             crafted.png_bomb(tmp_path / "c.png", 13000), crafted.png_bomb(tmp_path / "d.png", 50000, rows=2)]
    run = subprocess.run([sys.executable, "-c", PEAK_SCRIPT % BUDGET, *map(str, paths)],
                         capture_output=True, text=True, timeout=120, env=os.environ.copy())
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert [out[str(p)] for p in paths] == ["DataError"] * 4
    assert out["grew_kb"] * 1024 < BUDGET * 4, out  # 16000^2 decoded would be >= 256 MB


@pytest.mark.parametrize("make, reason", [
    (lambda d: crafted.dicom(d / "slope.dcm", raw={"RescaleSlope": b"  ", "RescaleIntercept": b"0 "}),
     "display tags (rescale, window, LUT) cannot be applied (TypeError"),
    (lambda d: crafted.dicom(d / "icpt.dcm", raw={"RescaleSlope": b"1 ", "RescaleIntercept": b"abc "}),
     "display tags (rescale, window, LUT) cannot be applied (UFuncTypeError"),
    (lambda d: crafted.not_a_transfer_syntax(d / "ts.dcm"), "is not a transfer syntax"),
    (lambda d: crafted.j2k_bomb_dicom(d / "j2k.dcm", side=64), "pixel data cannot be decoded"),
])
def test_damaged_dicom_is_one_data_error(tmp_path, make, reason):
    with pytest.raises(DataError) as info:
        load_image(make(tmp_path))
    assert reason in str(info.value) and "no decoder installed" not in str(info.value)


def test_truncated_j2k_header_is_a_data_error(tmp_path):
    """A codestream cut inside its SIZ segment (struct.error in a header parser) is one DataError."""
    import pydicom
    from pydicom.encaps import encapsulate

    ds = pydicom.dcmread(crafted.j2k_bomb_dicom(tmp_path / "t.dcm"))
    ds.PixelData = encapsulate([crafted.j2k_codestream(32, 32)[:30]])
    ds.save_as(tmp_path / "t.dcm", enforce_file_format=True)
    with pytest.raises(DataError, match="pixel data cannot be decoded"):
        load_image(tmp_path / "t.dcm")


def test_phi_never_printed_or_logged(tmp_path, capfd, caplog):
    """A damaged header makes pydicom quote the patient's name; the loader reports the problem without it."""
    path = crafted.phi_in_damaged_meta(tmp_path / "phi.dcm")
    caplog.set_level(logging.DEBUG)
    with pytest.raises(MedclipError):
        load_image(path)
    from medclip.data import phi_tags_present
    from medclip.data.corpora.mimic import _view_position
    from medclip.data.stored import stored_dtype

    phi_tags_present(path), stored_dtype(path), _view_position(str(path))  # header-only readers too
    out, err = capfd.readouterr()
    text = out + err + caplog.text
    assert "DICOM header problem(s) reported by pydicom (values withheld)" in caplog.text
    for secret in (crafted.FAKE_NAME, "Zzfakename", crafted.FAKE_ID, crafted.FAKE_BIRTH):
        assert secret not in text


def test_redact_withholds_quoted_values():
    text = "Invalid value for VR UI: 'Doe^John'x'y'. See x"
    assert redact(text) == "Invalid value for VR UI: <value withheld>. See x"
    assert redact("no quotes here") == "no quotes here"


def _fuzz(seeds: list[bytes], rng: np.random.Generator, n: int, path: Path) -> dict[str, int]:
    """Decode ``n`` mutants of ``seeds`` (in turn) written to ``path``: each is a [0, 1] image or a one-line
    MedclipError; returns how many of each."""
    outcomes = {"image": 0, "error": 0}
    for i in range(n):
        path.write_bytes(crafted.mutate(seeds[i % len(seeds)], rng))
        try:
            img = load_image(path)
        except MedclipError as exc:
            assert "\n" not in str(exc)
            outcomes["error"] += 1
        else:
            assert img.dtype == np.float32 and np.isfinite(img).all() and 0 <= img.min() and img.max() <= 1
            outcomes["image"] += 1
    return outcomes


def test_dicom_fuzz_outcomes_are_images_or_project_errors(tmp_path, capfd, caplog):
    """Seeded random mutations of a small DICOM: every outcome is a [0, 1] image or a MedclipError, and
    the fake patient name/ID/birth date never reaches stdout, stderr or the log.
    MEDCLIP_FUZZ_N sets the number of mutations (default 1000, ~10 s of CPU)."""
    n = int(os.environ.get("MEDCLIP_FUZZ_N", "1000"))
    seeds = [crafted.dicom(tmp_path / "seed.dcm").read_bytes(),
             crafted.j2k_bomb_dicom(tmp_path / "seed_j2k.dcm", side=32).read_bytes()]
    caplog.set_level(logging.DEBUG)
    outcomes = _fuzz(seeds, np.random.default_rng(0), n, tmp_path / "mutant.dcm")
    out, err = capfd.readouterr()
    text = out + err + caplog.text
    assert not any(s in text for s in (crafted.FAKE_NAME, crafted.FAKE_ID, crafted.FAKE_BIRTH))
    assert outcomes["image"] > n // 20 and outcomes["error"] > n // 20, outcomes  # the mutator does both


def test_data_check_quarantines_bombs_and_keeps_good_rows(tmp_path, capsys):
    from medclip.cli import main

    files = {"good.png": crafted.png(tmp_path / "good.png"), "good.dcm": crafted.dicom(tmp_path / "good.dcm"),
             "bomb.dcm": crafted.j2k_bomb_dicom(tmp_path / "bomb.dcm"),
             "bomb.png": crafted.png_bomb(tmp_path / "bomb.png"),
             "icpt.dcm": crafted.dicom(tmp_path / "icpt.dcm", raw={"RescaleSlope": b"1 ", "RescaleIntercept": b"abc "})}
    rows = [f"{name},FINDINGS: report {i}." for i, name in enumerate(files)]
    Path(tmp_path / "m.csv").write_text("image,report\n" + "\n".join(rows) + "\n")
    assert main(["data", "check", str(tmp_path / "m.csv")]) == 0
    out = capsys.readouterr().out
    assert "5 rows, 2 ok, 3 quarantined" in out
    import pandas as pd

    q = pd.read_csv(tmp_path / "quarantine.csv")
    assert sorted(q["image"]) == ["bomb.dcm", "bomb.png", "icpt.dcm"]
    assert q["reason"].str.contains("pixel budget|decompression-bomb|cannot be applied").all()


def test_dicom_fuzz_on_real_files(shared_data, tmp_path, capfd):
    """The same mutator on real files (RLE palette ultrasound, 2-frame RGB, JPEG Lossless): every outcome
    is a [0, 1] image or a MedclipError. MEDCLIP_FUZZ_N scales it too (default 1000 -> 200 here)."""
    n = int(os.environ.get("MEDCLIP_FUZZ_N", "1000")) // 5
    seeds = [(shared_data / "dicom" / name).read_bytes()
             for name in ("OBXXXX1A_rle.dcm", "SC_rgb_16bit_2frame.dcm", "JPEG-LL.dcm")]
    outcomes = _fuzz(seeds, np.random.default_rng(1), n, tmp_path / "mutant.dcm")
    assert "Traceback" not in "".join(capfd.readouterr())
    assert outcomes["image"] > 0 and outcomes["error"] > 0, outcomes
