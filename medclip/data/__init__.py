"""The data layer: manifests, DICOM/PNG decoding, MONAI transforms, reports, leak-free splits, demo corpus."""

from .config import DataConfig, ManifestColumns
from .dataset import ImageReportDataset, build_dataloaders, prepare_manifest
from .demo import make_demo_corpus
from .dicom import phi_tags_present
from .manifest import check_manifest, load_manifest, write_quarantine
from .reports import extract_sections, read_iu_xray
from .splits import check_splits, split_leak_free
from .transforms import build_image_transform, load_image

__all__ = [
    "DataConfig",
    "ImageReportDataset",
    "ManifestColumns",
    "build_dataloaders",
    "build_image_transform",
    "check_manifest",
    "check_splits",
    "extract_sections",
    "load_image",
    "load_manifest",
    "make_demo_corpus",
    "phi_tags_present",
    "prepare_manifest",
    "read_iu_xray",
    "split_leak_free",
    "write_quarantine",
]
