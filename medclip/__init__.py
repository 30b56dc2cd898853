"""medclip: CLIP adapted to medicine.

The public API is listed here explicitly; everything else is internal.
"""

from .config import ModelConfig, TextConfig, VisionConfig
from .errors import CheckpointError, ConfigError, DataError, MedclipError, MissingFileError
from .factory import create_model, create_model_and_transforms, from_pretrained
from .interop import from_hf_clip, from_open_clip
from .loss import clip_loss
from .model import CLIP
from .registry import get_model_config, list_models, register_model_config
from .tokenizer import ClipTokenizer, HFTokenizer, get_tokenizer
from .version import __version__

__all__ = [
    "CLIP",
    "CheckpointError",
    "ClipTokenizer",
    "ConfigError",
    "DataError",
    "HFTokenizer",
    "MedclipError",
    "MissingFileError",
    "ModelConfig",
    "TextConfig",
    "VisionConfig",
    "__version__",
    "clip_loss",
    "create_model",
    "create_model_and_transforms",
    "from_hf_clip",
    "from_open_clip",
    "from_pretrained",
    "get_model_config",
    "get_tokenizer",
    "list_models",
    "register_model_config",
]
