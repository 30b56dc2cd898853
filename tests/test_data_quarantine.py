"""Bad input never crashes a run and never costs a good row: each kind gives a one-line reason or error."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image

from medclip.cli import main
from medclip.config import from_dict
from medclip.data import DataConfig, prepare_manifest
from medclip.data.demo import _dicom_header, _write_image
from medclip.errors import DataError

GOOD_REPORT = "FINDINGS: Clear lungs. IMPRESSION: Normal."


def _dicom(path, pixels=None):
    _write_image(path, np.linspace(0, 1, 48 * 40).reshape(48, 40) if pixels is None else pixels,
                 "dcm_mono1_16bit", "P0001", path.stem, 0)
    return path.name


def _good_rows(d):
    Image.fromarray(np.arange(48 * 40, dtype=np.uint16).reshape(48, 40) % 256 * 200).save(d / "good16.png")
    _dicom(d / "good.dcm")
    (d / "good_report.txt").write_text("IMPRESSION: Small right effusion.", encoding="utf-8")
    return [{"image": "good16.png", "report": GOOD_REPORT, "patient_id": "g1"},
            {"image": "good.dcm", "report": "IMPRESSION: Cardiomegaly.", "patient_id": "g2"},
            {"image": "good.dcm", "report": "", "report_path": "good_report.txt", "patient_id": "g2"}]


def _truncated(d):
    data = (d / "good.dcm").read_bytes()
    (d / "cut.dcm").write_bytes(data[: len(data) - 1000])
    return {"image": "cut.dcm"}


def _no_pixels(d):
    ds = pydicom.dcmread(d / "good.dcm")
    del ds.PixelData
    ds.save_as(d / "nopix.dcm")
    return {"image": "nopix.dcm"}


def _nan_pixels(d):
    ds = _dicom_header("P0009", "nan", 0, False, 16, (8, 8))
    ds.BitsAllocated = 32
    del ds.BitsStored, ds.HighBit, ds.PixelRepresentation
    ds.FloatPixelData = np.where(np.eye(8) > 0, np.nan, 1.0).astype(np.float32).tobytes()
    ds.save_as(d / "nan.dcm", enforce_file_format=True)
    return {"image": "nan.dcm"}


def _non_utf8(d):
    (d / "latin1.txt").write_bytes("IMPRESSION: épanchement pleural".encode("latin-1"))
    return {"image": "good16.png", "report": "", "report_path": "latin1.txt"}


def _jpeg_ll_without_decoder(d, shared_data, monkeypatch):
    from pydicom.pixels import get_decoder

    shutil.copy(shared_data / "dicom" / "JPEG-LL.dcm", d / "jpegll.dcm")
    decoder = get_decoder(pydicom.dcmread(d / "jpegll.dcm", stop_before_pixels=True).file_meta.TransferSyntaxUID)
    monkeypatch.setattr(decoder, "_available", {})
    monkeypatch.setattr(decoder, "_unavailable", {"pylibjpeg": ("pylibjpeg-libjpeg>=2.1",)})
    return {"image": "jpegll.dcm"}


# name -> (make the bad row (or None), expected text, "row": quarantined | "error": one-line DataError)
CASES = {
    "truncated DICOM": (_truncated, "truncated or corrupt", "row"),
    "not a DICOM": (lambda d: (d / "fake.dcm").write_text("hello") and {"image": "fake.dcm"}, "not a DICOM file",
                    "row"),
    "missing pixel data": (_no_pixels, "no pixel data", "row"),
    "missing file": (lambda d: {"image": "nowhere.dcm"}, "image file not found", "row"),
    "zero-byte image": (lambda d: (d / "empty.png").write_bytes(b"") or {"image": "empty.png"},
                        "empty image file (0 bytes)", "row"),
    "corrupt PNG": (lambda d: (d / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n00") and {"image": "bad.png"},
                    "not a readable image", "row"),
    "NaN pixels": (_nan_pixels, "NaN or infinite pixel values", "row"),
    "JPEG Lossless without decoder": (_jpeg_ll_without_decoder, "pip install 'medclip[dicom]'", "row"),
    "empty report": (lambda d: {"image": "good16.png", "report": "   \n "}, "empty report", "row"),
    "non-UTF-8 report file": (_non_utf8, "not UTF-8", "row"),
    "missing report file": (lambda d: {"image": "good16.png", "report": "", "report_path": "gone.txt"},
                            "report file not found", "row"),
    "report without wanted sections": (lambda d: {"image": "good16.png", "report": "INDICATION: cough."},
                                       "none of the sections FINDINGS, IMPRESSION", "row"),
    "duplicate row": (lambda d: {"image": "good16.png", "report": GOOD_REPORT}, "duplicate of line 2", "row"),
    "wrong column names": (None, "no image column 'image'", "error"),
    "unknown split value": (None, "unknown value(s) 'holdout'", "error"),
    "patient in two given splits": (None, "patient 'g2' is in splits test, train", "error"),
    "missing label column": (None, "label column(s) opacity not found", "error"),
}


def _write_manifest(d, rows):
    pd.DataFrame(rows).to_csv(d / "manifest.csv", index=False)
    return d / "manifest.csv"


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case, tmp_path, shared_data, monkeypatch):
    make, expected, kind = CASES[case]
    rows = _good_rows(tmp_path)
    overrides = {"quarantine_dir": str(tmp_path / "q")}
    if kind == "row":
        extra = make(tmp_path, shared_data, monkeypatch) if make is _jpeg_ll_without_decoder else make(tmp_path)
        rows.append({"patient_id": "bad", "report": GOOD_REPORT, **extra})
    elif case == "wrong column names":
        rows = [{"img" if k == "image" else k: v for k, v in r.items()} for r in rows]
    elif case == "unknown split value":
        rows = [{**r, "split": s} for r, s in zip(rows, ["train", "holdout", "train"])]
    elif case == "patient in two given splits":
        rows = [{**r, "split": s} for r, s in zip(rows, ["train", "train", "test"])]
    elif case == "missing label column":
        overrides["columns"] = {"labels": ["opacity"]}
    if case == "report without wanted sections":
        overrides["sections_missing"] = "quarantine"  # the default, "whole", keeps the row (tests/test_bad_inputs.py)
    cfg = from_dict(DataConfig, {"manifest": str(_write_manifest(tmp_path, rows)), **overrides})
    if kind == "error":
        with pytest.raises(DataError) as info:
            prepare_manifest(cfg)
        assert expected in str(info.value) and "\n" not in str(info.value)
        return
    good, quarantine, qpath = prepare_manifest(cfg)
    assert sorted(good["line"]) == [2, 3, 4]  # no good row is ever dropped
    assert quarantine["line"].tolist() == [5]
    reason = quarantine["reason"].iloc[0]
    assert expected in reason and "\n" not in reason
    written = pd.read_csv(qpath)
    assert written["image"].tolist() == [rows[-1]["image"]] and written["reason"].tolist() == [reason]


def test_data_check_and_split_cli(tmp_path, capsys):
    rows = _good_rows(tmp_path) + [{"image": "nowhere.dcm", "report": GOOD_REPORT, "patient_id": "x"},
                                   {"image": "good16.png", "report": GOOD_REPORT, "patient_id": "g1"}]
    manifest = _write_manifest(tmp_path, rows)
    assert main(["data", "check", str(manifest), "--output", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "5 rows, 3 ok, 2 quarantined" in out
    assert "image file not found" in out and "duplicate row (same image and report)" in out
    assert "PatientName: 1" in out and "DEMO^" not in out  # PHI tags counted, values never printed
    assert len(pd.read_csv(tmp_path / "out" / "quarantine.csv")) == 2
    assert main(["data", "split", str(manifest), "--val", "0.3", "--test", "0.3", "--output",
                 str(tmp_path / "split" / "m.csv")]) == 0
    split = pd.read_csv(tmp_path / "split" / "m.csv")
    assert split["image"].iloc[0] == "../good16.png"  # paths still point at the same files
    assert split.groupby("patient_id")["split"].nunique().max() == 1
    assert split.groupby("image")["split"].nunique().max() == 1
    assert main(["data", "check", str(manifest), "--column", "image=img"]) == 2
    assert "no image column 'img'" in capsys.readouterr().err
