"""UniMed-CLIP's image and text forward, re-implemented from a reading of the UniMed-CLIP code (mirrored at
github.com/yusufSLCN/UniMed-CLIP: ``src/open_clip/model.py``, ``hf_model.py``, ``run_inference.py``; commit
8a66872a8c03004fbc189559629c3e4f2488bedc).

What the upstream code does, and this module reproduces with the same parameter names:

* ``visual``: OpenAI's ``VisualTransformer`` (class token, ``ln_pre``, pre-norm blocks, ``ln_post`` on the class
  token, ``@ proj``) with QuickGELU (``force_quick_gelu=True`` in ``run_inference.py``); open_clip's
  ``VisionTransformer`` is that code, so it is used;
* ``text_encoder``: open_clip's ``HFTextEncoder`` with ``proj_type='mlp'`` and
  ``pooler_type='cls_last_hidden_state_pooler'`` (mask = ids != pad): upstream's ``hf_model.py`` is that file;
* ``logit_scale``; no CLIP text transformer (``encode_text`` calls ``text_encoder`` only).
"""

from __future__ import annotations

import torch
from torch import nn


class UniMedCLIPReference(nn.Module):
    """Upstream's ``CLIP`` with ``text_encoder_name`` (a local BERT folder here) and a small ViT."""

    def __init__(self, bert_dir: str, embed_dim: int = 24, width: int = 64, layers: int = 2, patch: int = 8,
                 image_size: int = 32):
        super().__init__()
        from open_clip.hf_model import HFTextEncoder
        from open_clip.model import QuickGELU
        from open_clip.transformer import VisionTransformer

        self.visual = VisionTransformer(image_size=image_size, patch_size=patch, width=width, layers=layers,
                                        heads=width // 64 or 1, mlp_ratio=4.0, output_dim=embed_dim,
                                        act_layer=QuickGELU)
        self.text_encoder = HFTextEncoder(bert_dir, output_dim=embed_dim, proj_type="mlp",
                                          pooler_type="cls_last_hidden_state_pooler", pretrained=False)
        self.logit_scale = nn.Parameter(torch.tensor(2.6592))

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return self.visual(image)

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(ids)
