"""medclip: CLIP adapted to medicine.

The public API is listed here explicitly; everything else is internal.
"""

__version__ = "0.1.0"

from .config import ModelConfig, TextConfig, VisionConfig  # noqa: E402
from .errors import CheckpointError, ConfigError, DataError, MedclipError, MissingFileError  # noqa: E402
from .factory import create_model, from_pretrained  # noqa: E402
from .interop import from_hf_clip, from_open_clip  # noqa: E402
from .loss import clip_loss  # noqa: E402
from .model import CLIP  # noqa: E402
from .registry import get_model_config, list_models, register_model_config  # noqa: E402
from .tokenizer import ClipTokenizer, HFTokenizer, get_tokenizer  # noqa: E402

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
    "from_hf_clip",
    "from_open_clip",
    "from_pretrained",
    "get_model_config",
    "get_tokenizer",
    "list_models",
    "register_model_config",
]
