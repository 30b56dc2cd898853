"""Tiny replicas of the public corpora's published layouts (real file and column names, synthetic pixels).

Each ``make_*`` writes a corpus folder under ``root`` and returns it. Patient/study ids follow the real
formats; the images are small gray gradients (a different one per file).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

CHEXPERT_LABELS = ["No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
                   "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
                   "Pleural Other", "Fracture", "Support Devices"]
CXR14 = ["Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
         "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia"]
REPORT = "FINAL REPORT\n EXAMINATION: CHEST (PA AND LAT)\n\n FINDINGS: {f}\n\n IMPRESSION: {i}\n"


def pixels(seed: int, shape=(40, 32), top: int = 255) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    base = (yy / shape[0] * rng.uniform(0.3, 1) + xx / shape[1] * rng.uniform(0, 0.5)) / 1.5
    return np.round(np.clip(base + rng.normal(0, 0.05, shape), 0, 1) * top)


def write_image(path: Path, seed: int, bits: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    dtype = np.uint16 if bits == 16 else np.uint8
    Image.fromarray(pixels(seed, top=2**bits - 1).astype(dtype)).save(path)


def write_dicom(path: Path, seed: int, view: str) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    path.parent.mkdir(parents=True, exist_ok=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[str(path)])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.ViewPosition = "DX", view
    arr = pixels(seed, top=4095).astype(np.uint16)
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = arr.tobytes()
    ds.save_as(path, enforce_file_format=True)


# (subject, study, dicom ids with their ViewPosition, official split)
MIMIC_STUDIES = [
    ("10000032", "50414267", [("02aa804e-bde0afdd-112c0b34-7bc16630-4e384014", "PA"),
                              ("174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962", "LATERAL")], "train"),
    ("10000032", "53189527", [("2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab", "AP")], "train"),
    ("10000764", "57375967", [("096052b7-d256dc40-453a102b-fa7d01c6-1b22c6b4", "AP"),
                              ("b79e55c3-735ce5ac-64412506-cdc9ea79-f1af521f", "")], "validate"),
    ("10000898", "50771383", [("b82ff3c7-5a3a4d9b-b2e0c8a4-44a3c4d1-3a0a1c2f", "PA")], "train"),
    ("11000011", "59651063", [("c51ed3f5-2d2ce4d4-0d63ee64-8e2d1f6d-7e5e5b90", "PA")], "test"),
    ("12000010", "51000001", [("d7a1b2c3-11111111-22222222-33333333-44444444", "PA")], "train"),
]


def _mimic_labels(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {k: str(rng.choice(["1.0", "0.0", "-1.0", ""])) for k in CHEXPERT_LABELS}


def make_mimic_jpg(root: Path) -> tuple[Path, Path]:
    """The JPG project (``mimic-cxr-jpg/2.0.0``) and the reports folder (``mimic-cxr-reports``)."""
    jpg, reports = root / "mimic-cxr-jpg" / "2.0.0", root / "mimic-cxr-reports"
    meta, split, labels = [], [], []
    for n, (subject, study, images, part) in enumerate(MIMIC_STUDIES):
        for k, (dicom, view) in enumerate(images):
            write_image(jpg / f"files/p{subject[:2]}/p{subject}/s{study}/{dicom}.jpg", 10 * n + k)
            meta.append({"dicom_id": dicom, "subject_id": subject, "study_id": study,
                         "PerformedProcedureStepDescription": "CHEST (PA AND LAT)", "ViewPosition": view,
                         "Rows": 3056, "Columns": 2544, "StudyDate": 21800506, "StudyTime": 213014.531,
                         "ProcedureCodeSequence_CodeMeaning": "CHEST (PA AND LAT)",
                         "ViewCodeSequence_CodeMeaning": "postero-anterior",
                         "PatientOrientationCodeSequence_CodeMeaning": "Erect"})
            split.append({"dicom_id": dicom, "study_id": study, "subject_id": subject, "split": part})
        labels.append({"subject_id": subject, "study_id": study, **_mimic_labels(n)})
        report = reports / f"files/p{subject[:2]}/p{subject}/s{study}.txt"
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(REPORT.format(f=f"Finding number {n}. Lungs are clear.", i=f"Impression {n}."))
    for name, rows in (("metadata", meta), ("split", split), ("chexpert", labels)):
        pd.DataFrame(rows).to_csv(jpg / f"mimic-cxr-2.0.0-{name}.csv.gz", index=False, compression="gzip")
    return jpg, reports


def make_mimic_dicom(root: Path) -> Path:
    """The DICOM project (``mimic-cxr/2.0.0``): record list, DICOMs and reports beside the study folders."""
    base = root / "mimic-cxr" / "2.0.0"
    records = []
    for n, (subject, study, images, _) in enumerate(MIMIC_STUDIES):
        folder = f"files/p{subject[:2]}/p{subject}"
        for k, (dicom, view) in enumerate(images):
            write_dicom(base / folder / f"s{study}/{dicom}.dcm", 10 * n + k, view)
            records.append({"subject_id": subject, "study_id": study, "dicom_id": dicom,
                            "path": f"{folder}/s{study}/{dicom}.dcm"})
        (base / folder / f"s{study}.txt").write_text(REPORT.format(f=f"Finding {n}.", i=f"Impression {n}."))
    pd.DataFrame(records).to_csv(base / "cxr-record-list.csv.gz", index=False, compression="gzip")
    return base


def make_chexpert(root: Path, n_train: int = 48, n_valid: int = 12) -> Path:
    """``CheXpert-v1.0-small`` with train.csv (prefix CheXpert-v1.0-small/) and valid.csv (prefix CheXpert-v1.0/)."""
    base = root / "CheXpert-v1.0-small"
    rng = np.random.default_rng(1)
    for name, count, prefix, values in (("train", n_train, "CheXpert-v1.0-small", ["1.0", "0.0", "-1.0", ""]),
                                        ("valid", n_valid, "CheXpert-v1.0", ["1.0", "0.0"])):
        rows = []
        for i in range(count):
            patient = f"patient{(i // 2 + (0 if name == 'train' else 64540)) + 1:05d}"
            view = "view1_frontal.jpg" if i % 4 != 3 else "view2_lateral.jpg"
            rel = f"{name}/{patient}/study{i % 2 + 1}/{view}"
            write_image(base / rel, i + (1000 if name == "valid" else 0))
            labels = {k: str(rng.choice(values)) for k in CHEXPERT_LABELS}
            for k in ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"):
                labels[k] = ["1.0", "0.0"][i % 2] if i < 4 else labels[k]  # both classes in every condition
            rows.append({"Path": f"{prefix}/{rel}", "Sex": "Female", "Age": 68,
                         "Frontal/Lateral": "Frontal" if "frontal" in view else "Lateral",
                         "AP/PA": ("AP" if i % 2 else "PA") if "frontal" in view else "", **labels})
        pd.DataFrame(rows).to_csv(base / f"{name}.csv", index=False)
    return base


def make_chestxray14(root: Path, n: int = 100) -> Path:
    """``Data_Entry_2017.csv`` (real header, trailing comma), the two lists, images_001/ and images_002/."""
    base = root / "chestxray14"
    base.mkdir(parents=True)
    rng = np.random.default_rng(2)
    lines = ["Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
             "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"]
    names = []
    for i in range(n):
        patient, follow = (i // 2 + 1, i % 2) if i < 8 else (i - 3, 0)  # 4 patients with a follow-up image
        name = f"{patient:08d}_{follow:03d}.png"
        names.append(name)
        write_image(base / f"images_{1 + i * 2 // n:03d}/images/{name}", 2000 + i)
        found = sorted({CXR14[j] for j in rng.choice(14, rng.integers(0, 3), replace=False)})
        if i < 70:  # every label positive in at least 5 patients
            found = [CXR14[i % 14]]
        lines.append(f"{name},{'|'.join(found) or 'No Finding'},{follow},{patient},58,M,{'PA' if i % 3 else 'AP'},"
                     "2682,2749,0.143,0.143,")
    (base / "Data_Entry_2017.csv").write_text("\n".join(lines) + "\n")
    (base / "train_val_list.txt").write_text("\n".join(names[: 2 * n // 3]) + "\n")
    (base / "test_list.txt").write_text("\n".join(names[2 * n // 3:]) + "\n")
    return base


PADCHEST_COLUMNS = ["ImageID", "ImageDir", "StudyDate_DICOM", "StudyID", "PatientID", "PatientBirth",
                    "PatientSex_DICOM", "ViewPosition_DICOM", "Projection", "MethodProjection", "Pediatric",
                    "Modality_DICOM", "Manufacturer_DICOM", "PhotometricInterpretation_DICOM",
                    "PixelRepresentation_DICOM", "PixelAspectRatio_DICOM", "SpatialResolution_DICOM",
                    "BitsStored_DICOM", "WindowCenter_DICOM", "WindowWidth_DICOM", "Rows_DICOM", "Columns_DICOM",
                    "XRay_tube_current_DICOM", "Exposure_time_DICOM", "Exposure_DICOM", "ExposureInuAs_DICOM",
                    "Report", "MethodLabel", "Labels", "Localizations", "LabelsLocalizationsBySentence",
                    "labelCUIS", "LocalizationsCUIS"]
SPANISH = ["sin hallazgos radiologicos significativos .", "cardiomegalia . derrame pleural derecho .",
           "pinzamiento seno costofrenico izquierdo .", "aumento de densidad en lobulo inferior derecho ."]
PADCHEST_LABELS = ["['normal']", "['cardiomegaly', 'pleural effusion']", "['costophrenic angle blunting', '']",
                   "['consolidation']"]


def make_padchest(root: Path, n: int = 12) -> Path:
    """The PadChest CSV (.csv.gz, all 33 columns) and 16-bit PNGs in ``0/`` and ``1/``."""
    base = root / "padchest"
    rows = []
    for i in range(n):
        image = f"216840111366964012283393834152009{i:03d}_{i:06d}.png"
        write_image(base / str(i % 2) / image, 3000 + i, bits=16)
        row = dict.fromkeys(PADCHEST_COLUMNS, "")
        row.update(ImageID=image, ImageDir=str(i % 2), StudyID=f"20536686640136348236148679891455886468_{i // 2:06d}",
                   PatientID=f"839860488694292331637988235681460987{i // 3:04d}",
                   Projection=["PA", "L", "AP_horizontal", "AP"][i % 4], Report=SPANISH[i % 4],
                   Labels=PADCHEST_LABELS[i % 4], BitsStored_DICOM="12", MethodLabel="Physician")
        rows.append(row)
    pd.DataFrame(rows, columns=PADCHEST_COLUMNS).to_csv(
        base / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz", index=False, compression="gzip")
    return base


def make_iu_pngs(root: Path, reports_tgz: Path, n_reports: int = 10) -> Path:
    """PNGs (``<image id>.png``) for the images of the first ``n_reports`` real IU reports with images."""
    from medclip.data.reports import read_iu_xray

    base = root / "iu-png"
    table = read_iu_xray(str(reports_tgz))
    table = table[table["images"] != ""].head(n_reports)
    for k, ids in enumerate(table["images"]):
        for j, image in enumerate(ids.split(";")):
            write_image(base / f"{image}.png", 4000 + 10 * k + j)
    return base

