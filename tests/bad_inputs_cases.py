"""The bad-input table of issue 14: a world of hostile files, and every case run against it.

* :data:`ROW_CASES`: a bad row among good ones. ``medclip data check`` exits 0, quarantines exactly that
  row with a one-line reason matching the pattern, and every good row survives.
* :data:`ERROR_CASES`: a bad command line, file or config. The command exits 2 with one line on stderr
  (``medclip CMD: error: ...`` matching the pattern) and no traceback.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import crafted
import numpy as np

GOOD = "FINDINGS: lungs are clear. IMPRESSION: normal chest."
N_GOOD = 6


def _nan_tiff(path: Path) -> Path:
    from PIL import Image

    arr = np.full((16, 16), np.nan, np.float32)
    Image.fromarray(arr, mode="F").save(path)
    return path


def _truncated(path: Path, source: Path, keep: float = 0.5) -> Path:
    data = source.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def _large_dicom(path: Path) -> Path:
    """A plain 12-bit windowed DICOM over 1 MiB (first-pass reads of this size defer the pixel data)."""
    pixels = (np.arange(1024 * 768, dtype=np.uint16).reshape(1024, 768) % 4096).astype(np.uint16)
    return crafted.dicom(path, pixels, Modality="DX", BitsAllocated=16, BitsStored=12, HighBit=11,
                         WindowCenter=2048, WindowWidth=4096)


def _no_pixels(path: Path) -> Path:
    import pydicom

    ds = pydicom.dcmread(crafted.dicom(path))
    del ds.PixelData
    ds.save_as(path, enforce_file_format=True)
    return path


def _truncated_j2k(path: Path) -> Path:
    import pydicom
    from pydicom.encaps import encapsulate

    ds = pydicom.dcmread(crafted.j2k_bomb_dicom(path))
    ds.PixelData = encapsulate([crafted.j2k_codestream(32, 32)[:30]])
    ds.save_as(path, enforce_file_format=True)
    return path


# kind -> (make(img_dir) -> row dict (image relative to the manifest folder), reason pattern)
ROW_CASES = {
    "missing image file": (lambda d: {"image": "img/nowhere.png"}, r"^image file not found$"),
    "zero-byte image": (lambda d: (d / "empty.png").write_bytes(b"") and None or {"image": "img/empty.png"},
                        r"empty image file \(0 bytes\)"),
    "text file named .png": (lambda d: (d / "text.png").write_text("hello") and {"image": "img/text.png"},
                             r"not a readable image"),
    "truncated PNG": (lambda d: {"image": _rel(_truncated(d / "trunc.png", crafted.png(d / "src.png", 64)))},
                      r"not a readable image"),
    "1x1 image": (lambda d: {"image": _rel(crafted.png(d / "one.png", 1))}, r"smaller than the minimum side"),
    "PNG bomb 13000^2": (lambda d: {"image": _rel(crafted.png_bomb(d / "bomb13k.png"))}, r"over the pixel budget"),
    "PNG bomb 50000^2": (lambda d: {"image": _rel(crafted.png_bomb(d / "bomb50k.png", 50000, 2))},
                         r"more pixels than the pixel budget"),
    "DICOM J2K codestream bomb": (lambda d: {"image": _rel(crafted.j2k_bomb_dicom(d / "j2k.dcm"))},
                                  r"codestream header declares 16000 x 16000"),
    "DICOM RLE header bomb": (lambda d: {"image": _rel(crafted.rle_header_bomb(d / "rle.dcm"))},
                              r"DICOM header declares 65535 x 65535"),
    "RescaleSlope empty": (lambda d: {"image": _rel(crafted.dicom(d / "slope.dcm", raw={"RescaleSlope": b"  ",
                                                                                        "RescaleIntercept": b"0 "}))},
                           r"cannot be applied \(TypeError"),
    "RescaleIntercept abc": (lambda d: {"image": _rel(crafted.dicom(d / "icpt.dcm", raw={
        "RescaleSlope": b"1 ", "RescaleIntercept": b"abc "}))}, r"cannot be applied \(UFuncTypeError"),
    "UID is not a transfer syntax": (lambda d: {"image": _rel(crafted.not_a_transfer_syntax(d / "ts.dcm"))},
                                     r"is not a transfer syntax"),
    "truncated J2K codestream": (lambda d: {"image": _rel(_truncated_j2k(d / "tj2k.dcm"))},
                                 r"pixel data cannot be decoded, file truncated or corrupt"),
    "DICOM without pixel data": (lambda d: {"image": _rel(_no_pixels(d / "nopix.dcm"))}, r"no pixel data"),
    "truncated DICOM": (lambda d: {"image": _rel(_truncated(d / "half.dcm", crafted.dicom(d / "full.dcm"), 0.6))},
                        r"truncated|no pixel data|cannot"),
    "truncated large 12-bit DICOM (over 1 MiB)": (  # the size read with pixel data deferred
        lambda d: {"image": _rel(_truncated(d / "half_large.dcm", _large_dicom(d / "large.dcm"), 0.8))},
        r"truncated|no pixel data|cannot"),
    "garbage .dcm": (lambda d: (d / "junk.dcm").write_bytes(b"\x00garbage" * 40) and {"image": "img/junk.dcm"},
                     r"not a DICOM file"),
    "folder as image path": (lambda d: (d / "sub").mkdir() or {"image": "img/sub"}, r"folder, not a file"),
    "NaN pixels": (lambda d: {"image": _rel(_nan_tiff(d / "nan.tif"))}, r"NaN or infinite"),
    "damaged header quoting PHI": (lambda d: {"image": _rel(crafted.phi_in_damaged_meta(d / "phi.dcm"))},
                                   r"no pixel data|cannot"),
    "empty report": (lambda d: {"image": "img/good0.png", "report": "  \n "}, r"^empty report$"),
    "duplicate row": (lambda d: {"image": "img/good1.png", "report": GOOD}, r"duplicate of line"),
    "no image path": (lambda d: {"image": "", "report": "FINDINGS: other."}, r"no image path"),
    "missing report file": (lambda d: {"image": "img/good2.png", "report": "", "report_path": "gone.txt"},
                            r"report file not found"),
    "non-UTF-8 report file": (lambda d: (d / "latin1.txt").write_bytes("FINDINGS: \xe9panchement".encode("latin-1"))
                              and {"image": "img/good3.png", "report": "", "report_path": "img/latin1.txt"},
                              r"not UTF-8"),
}


def _rel(path: Path) -> str:
    return f"img/{path.name}"


def build_world(root: Path, model_dir: Path) -> SimpleNamespace:
    """Write the hostile world under ``root``: images, manifests, class files, broken model folders."""
    img = root / "img"
    img.mkdir(parents=True)
    good = [{"image": _rel(crafted.png(img / f"good{i}.png", 32 + i)), "report": GOOD.replace("clear", f"clear {i}"),
             "patient_id": f"g{i}", "label": ["NORMAL", "PNEUMONIA"][i % 2]} for i in range(N_GOOD)]
    good[1]["report"] = GOOD  # the "duplicate row" case repeats this one
    good[3]["report"] = '"multi-line\nquoted" History: cough.\nFINDINGS: clear.'  # spans three file lines
    good[4]["report"] = "History: fever. Follow-up: none."  # headings, none of FINDINGS/IMPRESSION: used whole
    good[5]["report"] = "=HYPERLINK(\"http://evil\") FINDINGS: formula-like but a good row."
    bad = []
    for kind, (make, _) in ROW_CASES.items():
        row = {"report": GOOD.replace("lungs", kind), "patient_id": f"b{len(bad)}", "label": "NORMAL", **make(img)}
        bad.append((kind, row))
    import pandas as pd

    rows = good + [row for _, row in bad]
    pd.DataFrame(rows).to_csv(root / "m.csv", index=False)
    kinds_by_line = _kinds_by_line(root / "m.csv", [k for k, _ in bad])
    w = SimpleNamespace(root=root, img=img, manifest=root / "m.csv", model=model_dir, kinds_by_line=kinds_by_line)
    w.classes = root / "classes.yaml"
    w.classes.write_text("task: single\nlabel_column: label\nclasses:\n  NORMAL: [normal chest]\n"
                         "  PNEUMONIA: [pneumonia]\n")
    _manifest_variants(w, pd.DataFrame(good))
    _model_variants(w)
    (root / "a_file.txt").write_text("not a folder")
    (root / "outdir").mkdir()
    _run_folders(root)
    _pickles(root)
    _foreign_configs(root)
    return w


def _foreign_configs(root: Path) -> None:
    """Hostile configs of the formats ``medclip convert`` reads (no weights needed: refused before)."""
    text = {"vocab_size": 100, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2}
    vision = {"hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 3,
              "image_size": 32, "patch_size": 8}
    for name, part, key, value in [("layers", "text_config", "num_hidden_layers", 1e9),
                                   ("heads", "text_config", "num_attention_heads", 0),
                                   ("vocab", "text_config", "vocab_size", 10_000_000),
                                   ("vlayers", "vision_config", "num_hidden_layers", 10**9)]:
        config = {"model_type": "clip", "projection_dim": 16, "text_config": dict(text),
                  "vision_config": dict(vision)}
        config[part][key] = value
        (root / f"hf_{name}").mkdir()
        (root / f"hf_{name}" / "config.json").write_text(json.dumps(config))
    (root / "hub_layers").mkdir()
    (root / "hub_layers" / "open_clip_config.json").write_text(json.dumps({"model_cfg": {
        "embed_dim": 16, "vision_cfg": {"layers": 1e9, "width": 64, "patch_size": 8, "image_size": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 100, "width": 32, "heads": 2, "layers": 2}}}))


def _run_folders(root: Path) -> None:
    """A used run folder (metrics.csv) and one locked by a live process (this one: PID 1 is always alive)."""
    import socket

    (root / "used_run").mkdir()
    (root / "used_run" / "metrics.csv").write_text("step,loss\n1,0.5\n")
    (root / "locked_run").mkdir()
    (root / "locked_run" / "run.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": 1,
                                                              "started": "2026-01-01 00:00:00"}))


class Evil:
    """Unpickling this runs a shell command that leaves a marker file: a malicious checkpoint."""

    marker = ""

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def _pickles(root: Path) -> None:
    import pickle

    import torch

    Evil.marker = str(root / "PWNED")
    torch.save({"visual.proj": torch.zeros(2), "payload": Evil()}, root / "evil.pt")
    with open(root / "evil.bin", "wb") as f:
        pickle.dump({"payload": Evil()}, f)


def _kinds_by_line(manifest: Path, kinds: list[str]) -> dict[int, str]:
    """File line of each bad row (good rows come first; one of them spans three lines)."""
    import csv

    starts, previous = [], 0
    with open(manifest, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        for _ in reader:
            starts.append(previous + 1)
            previous = reader.line_num
    return dict(zip(starts[1 + N_GOOD:], kinds))


def _manifest_variants(w: SimpleNamespace, good) -> None:
    r = w.root
    good.to_csv(r / "semicolon.csv", index=False, sep=";")
    good.to_csv(r / "tab.csv", index=False, sep="\t")
    (r / "header_only.csv").write_text("image,report,patient_id,label\n")
    (r / "empty.csv").write_bytes(b"")
    (r / "latin1.csv").write_bytes("image,report\nimg/good0.png,FINDINGS: \xe9panchement\n".encode("latin-1"))
    good.rename(columns={"image": "path"}).to_csv(r / "no_image_col.csv", index=False)
    good.assign(line=1).to_csv(r / "reserved.csv", index=False)
    good.assign(split="holdout").to_csv(r / "bad_split.csv", index=False)
    good.assign(label=["0", "2", "1", "0", "1", "0"]).to_csv(r / "label2.csv", index=False)
    good.to_csv(r / "good.csv", index=False)


def _model_variants(w: SimpleNamespace) -> None:
    """Copies of the tiny model folder with hostile config.json values or broken weights."""
    config = json.loads((w.model / "config.json").read_text())
    for name, key, value in [("layers", "layers", 1e9), ("vocab", "vocab_size", 10_000_000), ("heads", "heads", 0),
                             ("mismatch", "vocab_size", 5000)]:
        folder = w.root / f"model_{name}"
        shutil.copytree(w.model, folder)
        changed = json.loads(json.dumps(config))
        changed["model"]["text"][key] = value
        (folder / "config.json").write_text(json.dumps(changed))
    folder = w.root / "model_notjson"
    shutil.copytree(w.model, folder)
    (folder / "config.json").write_text("{not json")
    folder = w.root / "model_truncated"
    shutil.copytree(w.model, folder)
    _truncated(folder / "model.safetensors", w.model / "model.safetensors", 0.3)
