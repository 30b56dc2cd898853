"""A small synthetic, de-identified chest X-ray corpus that a tiny CLIP learns in a minute or two on a CPU.

Each image is a drawn chest phantom (body, dark lung fields, clavicles, bright spine, heart shadow,
diaphragm) with findings large and bright enough to see at 64 px, and its report is a few short
sentences, one per finding, in shuffled order and varied wording (several phrasings per finding and
per negative), so a text tower learns words, not template ids:

* **opacity** in one or two lung zones (right/left × upper/lower; the patient's right is on the
  image's left, as radiographs are displayed),
* **cardiomegaly**: an enlarged heart shadow,
* **pleural effusion** (right or left): the lung base filled up to a fluid level.

Held out of training, two finding combinations that no training image shows and no training report
states (their studies, and every study of their patients, are in val/test only, flagged ``heldout = 1``):

* an **enlarged heart with a left pleural effusion** (``cardiomegaly_effusion_left``): training has
  enlarged hearts, left effusions, and enlarged hearts with right effusions, never the two together;
* an opacity in the **left upper zone** (``opacity_left_upper``, :data:`HELDOUT_ZONE`): "left" occurs
  with lower-zone opacities and effusions, "upper" with right-sided opacities.

Every word of their prompts occurs in training reports, so zero-shot transfer to the unseen
combinations can be measured (:mod:`medclip.eval.heldout_demo`).

Files: DICOM (MONOCHROME1 and MONOCHROME2, 12- and 16-bit, with windows, one with rescale
slope/intercept, one without a window) and PNG (8- and 16-bit), all through the same loader. Header
identities are synthetic (``DEMO^PATIENT0001``). Generation is deterministic given the seed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from .csvsafe import write_csv
from .demo_render import render_chest
from .demo_reports import make_report

ZONES = {("right", "upper"): (0.30, 0.31), ("right", "lower"): (0.30, 0.58),
         ("left", "upper"): (0.70, 0.31), ("left", "lower"): (0.70, 0.58)}
HELDOUT_ZONE = ("left", "upper")
P_OPACITY, P_SECOND_OPACITY, P_CARDIOMEGALY, P_EFFUSION, P_HELDOUT = 0.5, 0.25, 0.35, 0.35, 0.06
FORMATS = ("dcm_mono2_12bit", "dcm_mono1_16bit", "dcm_mono2_rescaled", "dcm_mono1_12bit_nowindow",
           "dcm_mono2_16bit", "png_8bit", "png_16bit")
LABELS = ["normal", "opacity", "cardiomegaly", "effusion", "opacity_right_upper", "opacity_right_lower",
          "opacity_left_upper", "opacity_left_lower", "effusion_right", "effusion_left"]
SPLIT_FRACTIONS = (0.70, 0.10, 0.20)  # train / val / test of the patients without a held-out study
VERSION = 2  # bump when the corpus changes: an older generated corpus is then regenerated, never reused
STAMP = "demo_corpus.json"


def demo_corpus_current(manifest: str | os.PathLike) -> bool:
    """True when ``manifest`` exists and was written by this version of :func:`make_demo_corpus`."""
    import json

    stamp = Path(manifest).parent / STAMP
    if not Path(manifest).exists() or not stamp.exists():
        return False
    try:
        return json.loads(stamp.read_text()).get("version") == VERSION
    except (ValueError, OSError):
        return False


def make_demo_corpus(out_dir: str | os.PathLike, n_patients: int = 300, seed: int = 0, image_size: int = 128,
                     manifest_name: str = "manifest.csv") -> Path:
    """Write the synthetic demo corpus (images + ``manifest.csv``) and return the manifest path.

    Args:
        out_dir: output folder (created; existing files of the same names are overwritten).
        n_patients: number of synthetic patients (1-3 studies each, ~2 on average).
        seed: random seed; the same seed gives identical files.
        image_size: nominal image side in pixels (images are slightly non-square, ±15 %).
        manifest_name: file name of the manifest.

    Returns:
        Path of the manifest CSV: columns ``image``, ``report``, ``patient_id``, ``study_id``, ``split``,
        ``heldout``, ``opacity_zone`` (zones joined by ``;``), ``effusion_side``, ``format`` and the 0/1
        label columns ``normal``, ``opacity``, ``cardiomegaly``, ``effusion``, ``opacity_<side>_<level>``,
        ``effusion_<side>``, ``cardiomegaly_effusion_left``. Also writes ``demo_corpus.json`` (the version).
    """
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        pid = f"P{p + 1:04d}"
        for s in range(int(rng.choice([1, 2, 3], p=[0.35, 0.35, 0.30]))):
            findings = draw_findings(rng)
            fmt = FORMATS[int(rng.integers(len(FORMATS)))]
            name = f"images/{pid}_S{s + 1}.{'png' if fmt.startswith('png') else 'dcm'}"
            _write_image(out / name, render_chest(findings, rng, image_size, ZONES), fmt, pid, f"{pid}S{s + 1}", seed)
            rows.append({"image": name, "report": make_report(findings, rng), "patient_id": pid,
                         "study_id": f"{pid}-S{s + 1}", "format": fmt, **label_values(findings)})
    df = pd.DataFrame(rows)
    df["split"] = _assign_splits(df, rng)
    columns = ["image", "report", "patient_id", "study_id", "split", "heldout", "opacity_zone", "effusion_side",
               "format", *LABELS, "cardiomegaly_effusion_left"]
    path = out / manifest_name
    write_csv(df[columns], path)
    import json

    (out / STAMP).write_text(json.dumps({"version": VERSION, "manifest": manifest_name, "n_patients": n_patients,
                                         "seed": seed, "image_size": image_size}))
    return path


def draw_findings(rng: np.random.Generator) -> dict:
    """Random findings of one study: ``opacity`` (list of (side, level) zones), ``cardiomegaly``, ``effusion``."""
    zones: list[tuple[str, str]] = []
    if rng.random() < P_HELDOUT:
        zones.append(HELDOUT_ZONE)
    elif rng.random() < P_OPACITY:
        seen = [z for z in ZONES if z != HELDOUT_ZONE]
        count = 2 if rng.random() < P_SECOND_OPACITY else 1
        zones = [seen[i] for i in sorted(rng.choice(len(seen), size=count, replace=False))]
    effusion = [None, "right", "left"][int(rng.choice(3, p=[1 - P_EFFUSION, P_EFFUSION / 2, P_EFFUSION / 2]))]
    return {"opacity": zones, "cardiomegaly": bool(rng.random() < P_CARDIOMEGALY), "effusion": effusion}


def label_values(findings: dict) -> dict:
    """The manifest's label columns for one study's findings."""
    zones, effusion = findings["opacity"], findings["effusion"]
    both = int(bool(findings["cardiomegaly"]) and effusion == "left")
    values = {"heldout": int(HELDOUT_ZONE in zones or both), "cardiomegaly_effusion_left": both,
              "opacity_zone": ";".join(f"{s} {lv}" for s, lv in zones),
              "effusion_side": effusion or "", "opacity": int(bool(zones)),
              "cardiomegaly": int(findings["cardiomegaly"]), "effusion": int(effusion is not None)}
    values["normal"] = int(not (values["opacity"] or values["cardiomegaly"] or values["effusion"]))
    for side, level in ZONES:
        values[f"opacity_{side}_{level}"] = int((side, level) in zones)
    for side in ("right", "left"):
        values[f"effusion_{side}"] = int(effusion == side)
    return values


def _write_image(path: Path, pixels: np.ndarray, fmt: str, patient_id: str, study: str, seed: int) -> None:
    if fmt.startswith("png"):
        from PIL import Image

        if fmt == "png_8bit":
            Image.fromarray(np.round(pixels * 255).astype(np.uint8)).save(path)
        else:
            Image.fromarray(np.round(pixels * 65535).astype(np.uint16)).save(path)
        return
    bits = 12 if "12bit" in fmt else 16
    top = 2**bits - 1
    stored = np.round(pixels * top)
    mono1 = "mono1" in fmt
    if mono1:
        stored = top - stored
    slope, intercept = (0.5, -1024.0) if fmt == "dcm_mono2_rescaled" else (1.0, 0.0)
    ds = _dicom_header(patient_id, study, seed, mono1, bits, pixels.shape)
    if fmt != "dcm_mono1_12bit_nowindow":
        lo, hi = intercept, top * slope + intercept  # a window spanning the stored range (after rescale)
        ds.WindowCenter, ds.WindowWidth = [(lo + hi) / 2, (lo + hi) / 2], [hi - lo, (hi - lo) / 2]
        ds.WindowCenterWidthExplanation = ["FULL", "NARROW"]
    if slope != 1.0:
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, intercept, "US"
    ds.PixelData = stored.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def _dicom_header(patient_id: str, study: str, seed: int, mono1: bool, bits: int, shape: tuple):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sop_class = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
    sop_uid = generate_uid(entropy_srcs=["medclip-demo", str(seed), study, "sop"])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["medclip-demo", str(seed), study, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["medclip-demo", str(seed), study, "series"])
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "CHEST", "PA"
    ds.PatientName, ds.PatientID = f"DEMO^PATIENT{patient_id[1:]}", f"DEMO-{patient_id}"  # synthetic identities
    ds.PatientIdentityRemoved, ds.StudyDate = "YES", "20240101"
    ds.Rows, ds.Columns = int(shape[0]), int(shape[1])
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1" if mono1 else "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    return ds


def _assign_splits(df: pd.DataFrame, rng: np.random.Generator) -> list[str]:
    """Patient-level split; patients with any held-out study go to val/test (alternating, 1 in 4 to val)."""
    held = set(df.loc[df["heldout"] == 1, "patient_id"])
    split_of = {pid: ("val" if i % 4 == 3 else "test") for i, pid in enumerate(sorted(held))}
    train, val, _ = SPLIT_FRACTIONS
    for pid in sorted(set(df["patient_id"]) - held):
        r = rng.random()
        split_of[pid] = "train" if r < train else ("val" if r < train + val else "test")
    return [split_of[p] for p in df["patient_id"]]
