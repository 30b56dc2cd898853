"""Training corpora with reports besides MIMIC-CXR: PadChest and IU X-ray (Open-i).

* padchest: ``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv[.gz]`` (``ImageID, ImageDir, StudyID,
  PatientID, Projection, Report`` in Spanish, ``Labels`` as a stringified Python list) and the 16-bit
  PNGs in ``<ImageDir>/<ImageID>``. Its labels are written ``|``-joined to ``padchest_labels``.
* iu-xray: the Open-i XML reports (``ecgen-radiology/*.xml`` in a .tgz, ``--reports``) and the PNG folder
  (``CXR1_1_IM-0001-3001.png``). IU has no patient ids: each report is its own patient and study.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pandas as pd

from ...errors import ConfigError, DataError, MissingFileError
from .common import corpus_file, read_table

PADCHEST_CSV = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
PADCHEST_FRONTAL = ("PA", "AP", "AP_horizontal")


def _parse_label_list(text: str, line: int, where: str) -> str:
    """``"['normal', 'cardiomegaly']"`` → ``"normal|cardiomegaly"`` (literal parsing only, never eval)."""
    text = text.strip()
    if not text or text.lower() in ("nan", "none", "[]"):
        return ""
    try:
        items = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        items = None
    if not isinstance(items, (list, tuple)) or not all(isinstance(x, str) for x in items):
        raise DataError(f"{where}: line {line}: column 'Labels' is not a list of strings: {text[:60]!r}")
    return "|".join(dict.fromkeys(x.strip() for x in items if x.strip()))


def import_padchest(root: str | os.PathLike, **_) -> pd.DataFrame:
    """Rows of PadChest: image, Spanish report, patient, study, view (Projection) and its label list.

    Args:
        root: the folder holding the label CSV and the numbered image folders.
    """
    root = Path(root).resolve()
    found = sorted(root.glob("PADCHEST_chest_x_ray_images_labels_160K*.csv*"))
    table = found[0] if found else corpus_file(root, (PADCHEST_CSV, PADCHEST_CSV + ".gz"), "padchest",
                                               "the label and report table")
    df = read_table(table, ("ImageID", "ImageDir", "StudyID", "PatientID", "Projection", "Report", "Labels"))
    dirs = df["ImageDir"].str.strip()
    first = dirs.iloc[0] if len(dirs) else ""
    if first and not (root / first).is_dir():
        raise MissingFileError(f"{root}: not a padchest root: image folder {first}/ (ImageDir of line 2) is missing")
    out = pd.DataFrame({
        "image": [str(root / d / i.strip()) for d, i in zip(dirs, df["ImageID"])],
        "report": df["Report"].str.strip(),
        "patient_id": df["PatientID"].str.strip(), "study_id": df["StudyID"].str.strip(),
        "split": "", "view": df["Projection"].str.strip(),
    })
    out["padchest_labels"] = [_parse_label_list(t, i + 2, str(table)) for i, t in enumerate(df["Labels"])]
    return out


def import_iu_xray(root: str | os.PathLike, reports: str | os.PathLike | None = None,
                   frontal_only: bool = False, **_) -> pd.DataFrame:
    """Rows of IU X-ray: one per image of each report; the report is its own patient and study.

    Args:
        root: the PNG folder (searched recursively for ``<image id>.png``).
        reports: the XML report archive (``iu-xray-reports.tgz``, ``ecgen-radiology/*.xml``).
        frontal_only: refused: IU records no view position.
    """
    from ..reports import read_iu_xray

    if frontal_only:
        raise ConfigError("iu-xray records no view position, so --frontal-only cannot be applied; drop it")
    if reports is None:
        raise ConfigError("iu-xray needs --reports PATH: the Open-i XML report archive (iu-xray-reports.tgz)")
    root = Path(root).resolve()
    if not root.is_dir():
        raise MissingFileError(f"{root}: not an iu-xray PNG folder: the folder does not exist")
    index = {p.stem: str(p) for p in root.rglob("*.png")}
    if not index:
        raise MissingFileError(f"{root}: not an iu-xray PNG folder: no .png images (e.g. CXR1_1_IM-0001-3001.png) "
                               "are in it")
    table = read_iu_xray(str(reports))
    named = [(i, r.report, r.uid) for r in table.itertuples() for i in r.images.split(";") if i]
    rows = [(index[i], report, uid) for i, report, uid in named if i in index]
    if not rows:
        raise DataError(f"{root}: none of the {len(named)} images the reports name is in this folder "
                        "(expected <image id>.png, e.g. CXR1_1_IM-0001-3001.png)")
    out = pd.DataFrame(rows, columns=["image", "report", "patient_id"])
    if len(rows) < len(named):  # a partial PNG set: say so in the import summary
        out.attrs["left_out"] = f"{len(named) - len(rows)} images the reports name are not in {root}"
    out["study_id"] = out["patient_id"]
    out["split"] = ""
    out["view"] = ""
    return out

