"""The data config: where the manifest is, how its columns are named, and how images/reports are prepared.

Loaded strictly with :func:`medclip.config.from_dict` (unknown keys raise), e.g. from a recipe::

    data:
      manifest: demo_data/manifest.csv
      columns: {image: path, report: text, labels: [opacity, effusion]}
      sections: [impression]
      cache_dir: runs/cache
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError


@dataclass
class ManifestColumns:
    """Names of the manifest's columns (the values map your CSV onto medclip's canonical names).

    Attributes:
        image: image path, relative to the manifest's folder or absolute (DICOM, PNG or JPEG).
        report: report text (used when present and non-empty).
        report_path: path of a UTF-8 text file holding the report (used when ``report`` is absent/empty).
        patient_id: patient key for leak-free splits (optional column).
        study_id: study key (optional column, kept for grouping).
        split: ``train``/``val``/``test`` (optional; made leak-free when absent).
        labels: label columns to keep (0/1 values) for probes and zero-shot evaluation.
    """

    image: str = "image"
    report: str = "report"
    report_path: str = "report_path"
    patient_id: str = "patient_id"
    study_id: str = "study_id"
    split: str = "split"
    labels: list = field(default_factory=list)


@dataclass
class DataConfig:
    """Everything the data layer needs to turn a manifest into batches.

    Attributes:
        manifest: the manifest CSV.
        columns: column names of the manifest.
        sections: report sections that feed the text tower, in order (``findings``, ``impression``, ...);
            empty or None uses the whole report. Reports without any section header are used whole.
        resize: ``pad`` (keep aspect ratio, pad to a square, as CheXzero) or ``crop`` (resize the short
            side, center crop).
        augment: random resized crop, small rotation and contrast change at train time (never at eval).
        cache_dir: folder of the deterministic-preprocessing cache (decoded, windowed, resized images);
            None disables it.
        window_index: which DICOM window (center/width or VOI LUT) to apply when several are stored.
        frame: which frame of a multi-frame DICOM to use.
        eval_batch_size: batch size of the data layer's loaders: validation and encoding (training batches
            with ``train.batch_size``; the old ``data.batch_size`` key of recipes sets both).
        num_workers: DataLoader worker processes.
        demo: generate the synthetic demo corpus in the manifest's folder when the manifest is missing.
        quarantine_dir: where ``quarantine.csv`` is written (default: the manifest's folder, or the
            cache/run folder when the manifest's folder is read-only).
        val: fraction of patients for validation when the manifest has no split column.
        test: fraction of patients for test when the manifest has no split column.
        verify_images: decode every image while checking the manifest (slower first start, but a
            corrupt file is quarantined up front instead of failing mid-epoch).
    """

    manifest: str = "demo_data/manifest.csv"
    columns: ManifestColumns = field(default_factory=ManifestColumns)
    sections: list | None = field(default_factory=lambda: ["findings", "impression"])
    resize: str = "pad"
    augment: bool = True
    cache_dir: str | None = None
    window_index: int = 0
    frame: int = 0
    eval_batch_size: int = 32
    num_workers: int = 0
    demo: bool = False
    quarantine_dir: str | None = None
    val: float = 0.1
    test: float = 0.1
    verify_images: bool = True

    def __post_init__(self):
        if self.resize not in ("pad", "crop"):
            raise ConfigError(f"data.resize must be 'pad' or 'crop', got '{self.resize}'")
        if self.eval_batch_size < 1 or self.num_workers < 0:
            raise ConfigError(f"data.eval_batch_size must be >= 1 and data.num_workers >= 0, got "
                              f"{self.eval_batch_size} and {self.num_workers}")
        if not (0 <= self.val < 1 and 0 <= self.test < 1 and self.val + self.test < 1):
            raise ConfigError(f"data.val and data.test must be fractions summing below 1, got {self.val}, {self.test}")
        if self.window_index < 0 or self.frame < 0:
            raise ConfigError("data.window_index and data.frame must be >= 0")
