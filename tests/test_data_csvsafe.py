"""CSV injection: formula-like text cells are escaped in every CSV medclip writes and restored on reading."""

from __future__ import annotations

import csv

import crafted
import pandas as pd
import pytest

from medclip.cli import main
from medclip.data.csvsafe import escape_cell, unescape_cell
from medclip.data.manifest import load_manifest


@pytest.mark.parametrize("value, escaped", [
    ("=HYPERLINK(\"http://x\")", "'=HYPERLINK(\"http://x\")"), ("+1 nodule", "'+1 nodule"),
    ("-2+3 mass", "'-2+3 mass"), ("@SUM(A1)", "'@SUM(A1)"), ("'=already quoted", "''=already quoted"),
    ("-1", "-1"), ("-0.3", "-0.3"), ("+5", "+5"), ("-1e-3", "-1e-3"), ("normal", "normal"),
    ("'plain quote", "'plain quote"), ("", ""), (-0.3, -0.3),
])
def test_escape_cell_and_its_inverse(value, escaped):
    assert escape_cell(value) == escaped
    assert unescape_cell(escaped) == value


REPORTS = ["=HYPERLINK(\"http://evil\",\"x\")", "-2+3 opacity in the left lung", "@SUM(A1:A9) normal",
           "+1 small effusion", "'=quoted already", "clear lungs"]


@pytest.fixture()
def hostile_manifest(tmp_path):
    for i in range(len(REPORTS)):
        crafted.png(tmp_path / f"img{i}.png")
    df = pd.DataFrame({"image": [f"img{i}.png" for i in range(len(REPORTS))], "report": REPORTS,
                       "patient_id": [f"p{i}" for i in range(len(REPORTS))],
                       "score": ["-1", "-0.3", "1", "0", "-1", "1"]})
    df.to_csv(tmp_path / "m.csv", index=False)
    return tmp_path / "m.csv"


def test_split_csv_escapes_text_never_numbers_and_round_trips(hostile_manifest, tmp_path, capsys):
    out = tmp_path / "out" / "split.csv"
    assert main(["data", "split", str(hostile_manifest), "--output", str(out), "--sections", "all"]) == 0
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["report"][:1] for r in rows] == ["'", "'", "'", "'", "'", "c"]
    assert [r["score"] for r in rows] == ["-1", "-0.3", "1", "0", "-1", "1"]  # numbers never escaped
    back, original = load_manifest(out), load_manifest(hostile_manifest)
    assert back["report"].tolist() == original["report"].tolist()  # the added ' is stripped on reading back
    assert original["report"].tolist() == [*REPORTS[:4], "=quoted already", "clear lungs"]  # a user's own escape too


def test_quarantine_csv_escapes_image_names(tmp_path, capsys):
    (tmp_path / "m.csv").write_text("image,report\n=cmd|' /C calc'!A0.png,FINDINGS: x.\nok.png,FINDINGS: y.\n")
    crafted.png(tmp_path / "ok.png")
    assert main(["data", "check", str(tmp_path / "m.csv")]) == 0
    raw = (tmp_path / "quarantine.csv").read_text()
    assert "\n'=cmd|" in raw or ",'=cmd|" in raw
    assert pd.read_csv(tmp_path / "quarantine.csv")["reason"].tolist() == ["image file not found"]
