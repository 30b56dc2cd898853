"""PMC-CLIP's image and text forward, re-implemented from a reading of github.com/WeixiongLin/PMC-CLIP
(``src/pmc_clip/model/pmc_clip.py``, ``blocks.py``; commit 419c147a77a77cbb06f58de6838eec050ddc3475).

What the upstream code does, and this module reproduces:

* ``encode_image``: OpenAI's ModifiedResNet (3-conv stem, anti-aliased bottlenecks, attention pool projecting
  to ``embed_dim``); upstream's ``blocks.ModifiedResNet`` is OpenAI's code, so open_clip's ``ModifiedResNet``
  (same code, installable) is used for it;
* ``encode_text``: the BERT encoder is called with ``input_ids`` only (padding attended, no mask), the
  hidden state is taken at the position of token id 2 ([CLS]) and multiplied by ``text_projection``
  (``width × embed_dim``, a bare parameter);
* the state dict also holds the fusion transformer, ``img_special_token``, ``mlm_projection``,
  ``positional_embedding`` and ``ln_final`` (unused by the two encoders), saved under ``module.``.
"""

from __future__ import annotations

import torch
from torch import nn

CLS_ID = 2  # [CLS] in PubMedBERT's vocabulary (upstream asserts the tokenizer)


class PMCCLIPReference(nn.Module):
    """The modules (and key names) of upstream's ``PMC_CLIP`` with ``bert_model_name`` and ModifiedRN50."""

    def __init__(self, bert_config, embed_dim: int = 32, layers=(3, 4, 6, 3), width: int = 16, image_size: int = 64,
                 fusion_layers: int = 1, mlm: bool = True):
        super().__init__()
        from open_clip.modified_resnet import ModifiedResNet
        from open_clip.transformer import Transformer
        from transformers import BertModel

        self.visual = ModifiedResNet(list(layers), embed_dim, heads=width * 32 // 64, image_size=image_size,
                                     width=width)
        self.text_encoder = BertModel(bert_config)  # upstream: AutoModel.from_pretrained (keeps the pooler)
        text_width = bert_config.hidden_size
        self.positional_embedding = nn.Parameter(torch.randn(77, text_width))
        self.ln_final = nn.LayerNorm(text_width)
        self.text_projection = nn.Parameter(torch.randn(text_width, embed_dim) * text_width ** -0.5)
        if mlm:
            self.mlm_projection = nn.Parameter(torch.randn(text_width, bert_config.vocab_size))
        self.logit_scale = nn.Parameter(torch.tensor(2.6592))
        self.img_special_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.fusion_module = Transformer(width=text_width, layers=fusion_layers, heads=2)

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return self.visual(image)

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        hidden = self.text_encoder(input_ids=ids).last_hidden_state  # no attention mask, as upstream
        rows, cols = (ids == CLS_ID).nonzero(as_tuple=True)
        assert torch.equal(rows, torch.arange(ids.shape[0])), "one [CLS] per text"
        return hidden[rows, cols] @ self.text_projection

    def published_state(self) -> dict:
        """What upstream's training loop saves: ``{"epoch", "state_dict": {"module.<key>": tensor}}``."""
        state = {f"module.{k}": v for k, v in self.state_dict().items()}
        return {"epoch": 100, "name": "pmc-clip", "state_dict": state}
