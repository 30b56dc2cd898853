"""Interop: load CLIP weights from Hugging Face and open_clip, and timm trunk weights from local files.

* :func:`from_hf_clip` — a ``transformers`` ``CLIPModel`` folder → our model.
* :func:`from_open_clip` — an OpenAI / open_clip state dict (ViT or ModifiedResNet) → our model.
* :func:`load_trunk_weights` — a local weights file into a timm trunk through a named key map
  (``vision.trunk_weights`` / ``vision.trunk_key_map``); :func:`register_key_map` adds mappers.

The foreign libraries are never needed to *load*: only ``safetensors``/``torch`` (and ``transformers``'
config parser for HF folders). They serve as references in the parity tests.
"""

from .hf_clip import from_hf_clip
from .open_clip import from_open_clip
from .timm_weights import TrunkLoadReport, list_key_maps, load_trunk_weights, register_key_map

__all__ = ["TrunkLoadReport", "from_hf_clip", "from_open_clip", "list_key_maps", "load_trunk_weights",
           "register_key_map"]
