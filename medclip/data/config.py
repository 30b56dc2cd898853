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

from ..defaults import EVAL_BATCH_SIZE
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
        max_pixels: pixel budget: an image whose header (DICOM rows x columns x frames x samples, or the
            compressed codestream's / PNG's own header) declares more is quarantined before decoding
            (default: ``MEDCLIP_MAX_PIXELS`` or 50 million).
        min_size: images with a shorter side below this are quarantined (default:
            ``MEDCLIP_MIN_IMAGE_SIZE`` or 8).
        sections_missing: what to do with a report that has section headings but none of ``sections``
            (e.g. only ``History:`` / ``Follow-up:``): ``whole`` uses the whole report (counted in the
            summary), ``quarantine`` skips the row (MIMIC-style recipes).
        shards: train from WebDataset tar shards (``medclip data shard``) instead of the manifest's rows,
            e.g. ``"DIR/{000000..000377}.tar"``; local paths (``pipe:`` URLs only with ``allow_pipe``).
            Validation still comes from ``manifest`` (best a prepared folder) when it exists.
        shards_index: the shards' ``shards.json`` (default: beside the first shard).
        allow_pipe: allow ``pipe:`` shard URLs (they run shell commands).
        shuffle_buffer: samples each loader worker shuffles through when reading shards.
    """

    manifest: str = "demo_data/manifest.csv"
    columns: ManifestColumns = field(default_factory=ManifestColumns)
    sections: list | None = field(default_factory=lambda: ["findings", "impression"])
    resize: str = "pad"
    augment: bool = True
    cache_dir: str | None = None
    window_index: int = 0
    frame: int = 0
    eval_batch_size: int = EVAL_BATCH_SIZE
    num_workers: int = 0
    demo: bool = False
    quarantine_dir: str | None = None
    val: float = 0.1
    test: float = 0.1
    verify_images: bool = True
    max_pixels: int | None = None
    min_size: int | None = None
    sections_missing: str = "whole"
    shards: str | None = None
    shards_index: str | None = None
    allow_pipe: bool = False
    shuffle_buffer: int = 1000

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
        from ..config import check_int

        for name in ("max_pixels", "min_size"):
            if getattr(self, name) is not None:
                check_int(f"data.{name}", getattr(self, name), 1, 2**48)
        if self.sections_missing not in ("whole", "quarantine"):
            raise ConfigError(f"data.sections_missing must be 'whole' or 'quarantine', got '{self.sections_missing}'")

    def limits(self):
        """The :class:`~medclip.data.guard.ImageLimits` of this config (unset values: environment/defaults)."""
        from .guard import resolve_limits

        return resolve_limits(self.max_pixels, self.min_size)
