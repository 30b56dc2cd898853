"""A small synthetic, de-identified chest X-ray corpus that a tiny CLIP can learn in a minute or two on a CPU.

Each image is a drawn chest phantom (body, dark lung fields, bright spine, heart shadow, diaphragm)
with up to three findings, and its report is templated from them:

* an **opacity** in one lung zone (right/left × upper/lower; the patient's right is on the image's
  left, as radiographs are displayed),
* an **enlarged heart** shadow (cardiomegaly),
* a **pleural effusion** (right or left): the lung base filled up to a fluid level.

One combination, the opacity in the **left upper zone**, never appears in a training report: those
studies (and every study of their patients) are in val/test only and flagged ``heldout = 1``. Every
word of "opacity in the left upper zone" occurs in training reports, so zero-shot transfer to it
can be tested.

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

ZONES = {("right", "upper"): (0.30, 0.33), ("right", "lower"): (0.30, 0.56),
         ("left", "upper"): (0.70, 0.33), ("left", "lower"): (0.70, 0.56)}
HELDOUT_ZONE = ("left", "upper")
# (opacity zone or None, probability): the held-out zone is rarer so most patients stay in training.
OPACITY_CHOICES = [(None, 0.30), (("right", "upper"), 0.19), (("right", "lower"), 0.19),
                   (("left", "lower"), 0.19), (("left", "upper"), 0.13)]
FORMATS = ("dcm_mono2_12bit", "dcm_mono1_16bit", "dcm_mono2_rescaled", "dcm_mono1_12bit_nowindow",
           "dcm_mono2_16bit", "png_8bit", "png_16bit")
LABELS = ["normal", "opacity", "cardiomegaly", "effusion", "opacity_right_upper", "opacity_right_lower",
          "opacity_left_upper", "opacity_left_lower", "effusion_right", "effusion_left"]


def make_demo_corpus(out_dir: str | os.PathLike, n_patients: int = 150, seed: int = 0, image_size: int = 128,
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
        ``heldout``, ``opacity_zone``, ``effusion_side``, ``format`` and the 0/1 label columns
        ``normal``, ``opacity``, ``cardiomegaly``, ``effusion``, ``opacity_<side>_<level>``,
        ``effusion_<side>``.
    """
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        pid = f"P{p + 1:04d}"
        for s in range(int(rng.choice([1, 2, 3], p=[0.35, 0.35, 0.30]))):
            findings = _draw_findings(rng)
            fmt = FORMATS[int(rng.integers(len(FORMATS)))]
            name = f"images/{pid}_S{s + 1}.{'png' if fmt.startswith('png') else 'dcm'}"
            pixels = render_chest(findings, rng, image_size)
            _write_image(out / name, pixels, fmt, pid, f"{pid}S{s + 1}", seed)
            rows.append({"image": name, "report": make_report(findings), "patient_id": pid,
                         "study_id": f"{pid}-S{s + 1}", "format": fmt, **_label_values(findings)})
    df = pd.DataFrame(rows)
    df["split"] = _assign_splits(df, rng)
    columns = ["image", "report", "patient_id", "study_id", "split", "heldout", "opacity_zone", "effusion_side",
               "format", *LABELS]
    path = out / manifest_name
    write_csv(df[columns], path)
    return path


def _draw_findings(rng: np.random.Generator) -> dict:
    zones = [z for z, _ in OPACITY_CHOICES]
    zone = zones[int(rng.choice(len(zones), p=[pr for _, pr in OPACITY_CHOICES]))]
    effusion = [None, "right", "left"][int(rng.choice(3, p=[0.6, 0.2, 0.2]))]
    return {"opacity": zone, "cardiomegaly": bool(rng.random() < 0.35), "effusion": effusion}


def make_report(findings: dict) -> str:
    """Templated report: ``FINDINGS: ... IMPRESSION: ...`` (short, one sentence per finding)."""
    zone, big_heart, effusion = findings["opacity"], findings["cardiomegaly"], findings["effusion"]
    parts = [f"Opacity in the {zone[0]} {zone[1]} zone." if zone else "No focal opacity.",
             "The heart is enlarged." if big_heart else "Normal heart size.",
             f"{effusion.capitalize()} pleural effusion." if effusion else "No pleural effusion."]
    impression = []
    if zone:
        impression.append(f"{zone[0].capitalize()} {zone[1]} zone opacity.")
    if big_heart:
        impression.append("Cardiomegaly.")
    if effusion:
        impression.append(f"{effusion.capitalize()} pleural effusion.")
    return f"FINDINGS: {' '.join(parts)} IMPRESSION: {' '.join(impression) or 'No acute cardiopulmonary disease.'}"


def _label_values(findings: dict) -> dict:
    zone, effusion = findings["opacity"], findings["effusion"]
    values = {"heldout": int(zone == HELDOUT_ZONE), "opacity_zone": f"{zone[0]} {zone[1]}" if zone else "",
              "effusion_side": effusion or "", "opacity": int(zone is not None),
              "cardiomegaly": int(findings["cardiomegaly"]), "effusion": int(effusion is not None)}
    values["normal"] = int(not (values["opacity"] or values["cardiomegaly"] or values["effusion"]))
    for side, level in ZONES:
        values[f"opacity_{side}_{level}"] = int(zone == (side, level))
    for side in ("right", "left"):
        values[f"effusion_{side}"] = int(effusion == side)
    return values


def render_chest(findings: dict, rng: np.random.Generator, size: int = 128) -> np.ndarray:
    """Draw a chest phantom with the given findings: float64 (H, W) in [0, 1], dense = bright."""
    h, w = int(size * rng.uniform(1.0, 1.15)), int(size * rng.uniform(0.9, 1.05))
    v, u = np.mgrid[0:h, 0:w]
    v, u = (v + 0.5) / h + rng.normal(0, 0.01), (u + 0.5) / w + rng.normal(0, 0.01)

    def ellipse(cu, cv, ru, rv):
        return ((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2 <= 1.0

    img = np.full((h, w), 0.04)
    img[ellipse(0.5, 0.56, 0.47, 0.52)] = 0.42 + rng.normal(0, 0.02)  # soft tissue
    lungs = {side: ellipse(cu, 0.45, 0.15, 0.29) for side, cu in (("right", 0.30), ("left", 0.70))}
    for mask in lungs.values():
        img[mask] = 0.12 + rng.normal(0, 0.015)
    img[ellipse(0.5, 1.02, 0.45, 0.2)] = 0.62  # diaphragm / abdomen
    heart_ru = 0.215 if findings["cardiomegaly"] else 0.11
    img[ellipse(0.54, 0.68, heart_ru * rng.uniform(0.95, 1.05), 0.14)] = 0.6
    img[(np.abs(u - 0.5) < 0.035) & (v > 0.05)] = 0.8  # spine
    if findings["effusion"]:
        lung = lungs[findings["effusion"]]
        lateral = np.abs(u - 0.5)  # meniscus: the level climbs towards the chest wall
        level = rng.uniform(0.55, 0.60) - 0.25 * np.clip(lateral - 0.2, 0, None)
        img[lung & (v > level)] = 0.62
    if findings["opacity"]:
        cu, cv = ZONES[findings["opacity"]]
        cu, cv = cu + rng.normal(0, 0.015), cv + rng.normal(0, 0.015)
        blob = np.exp(-(((u - cu) ** 2 + (v - cv) ** 2) / (2 * rng.uniform(0.05, 0.06) ** 2)))
        img = img + 0.55 * blob * lungs[findings["opacity"][0]]
    img = img + rng.normal(0, 0.02, img.shape)
    return np.clip(img, 0.0, 1.0)


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
    """Patient-level split; patients with any held-out study go to val/test (alternating)."""
    held = set(df.loc[df["heldout"] == 1, "patient_id"])
    split_of = {}
    for i, pid in enumerate(sorted(held)):
        split_of[pid] = "test" if i % 2 == 0 else "val"
    for pid in sorted(set(df["patient_id"]) - held):
        r = rng.random()
        split_of[pid] = "train" if r < 0.8 else ("val" if r < 0.9 else "test")
    return [split_of[p] for p in df["patient_id"]]
