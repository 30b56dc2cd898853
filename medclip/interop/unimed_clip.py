"""UniMed-CLIP checkpoints → our :class:`~medclip.model.CLIP`.

Read from the upstream code (the UniMed-CLIP repository, mirrored at github.com/yusufSLCN/UniMed-CLIP,
``src/open_clip/model.py``, ``hf_model.py``, ``transform.py`` and ``run_inference.py`` at commit
8a66872a8c03004fbc189559629c3e4f2488bedc):

* image: OpenAI's ``VisualTransformer`` (``visual.*`` keys: ``conv1``, ``class_embedding``, ``ln_pre``,
  ``transformer.resblocks``, ``ln_post``, ``proj``) built with ``force_quick_gelu=True`` → timm's
  ``vit_*_clip_*`` trunk with QuickGELU, exactly as for OpenAI checkpoints;
* text: open_clip's ``HFTextEncoder`` under ``text_encoder.*`` (BiomedBERT, ``proj_type='mlp'``,
  ``cls_last_hidden_state_pooler``, attention mask = ids != pad, 256 tokens) → our wrapped HF encoder with
  an ``mlp`` projection and CLS pooling (the BiomedCLIP text layout under another prefix);
* preprocessing: OpenAI mean/std (``get_mean_std``).

The BERT config and vocabulary come from ``--text-model DIR`` (the code names them by hub id).
"""

from __future__ import annotations

from ..errors import CheckpointError
from .checkpoints import read_state_dict
from .clip_common import build_and_load, require_text_model
from .open_clip import _vit_config, visual_to_timm
from .open_clip_hub import _custom_text_state

PREPROCESS = {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}


def is_unimed_clip(state: dict) -> bool:
    """An OpenAI ViT image tower plus an open_clip ``HFTextEncoder`` saved as ``text_encoder``."""
    return "visual.class_embedding" in state and "text_encoder.transformer.embeddings.word_embeddings.weight" in state


def from_unimed_clip(path: str, text_model: str | None) -> tuple:
    """Load a UniMed-CLIP checkpoint; ``text_model``: the local BiomedBERT folder. Returns ``(model, preprocess)``."""
    source = f"{path} (UniMed-CLIP)"
    state = read_state_dict(path, "UniMed-CLIP checkpoint")
    if not is_unimed_clip(state):
        raise CheckpointError(f"{source}: not a UniMed-CLIP checkpoint (needs visual.class_embedding and "
                              f"text_encoder.transformer.*)")
    require_text_model(text_model, path, "UniMed-CLIP", "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract")
    vision = _vit_config(state, "quick_gelu", {}, source)
    vision.update(PREPROCESS)
    config = {"embed_dim": int(state["visual.proj"].shape[1]), "vision": vision, "name": "unimed-clip",
              "text": {"hf_model_dir": text_model, "pooling": "cls", "proj": "mlp", "context_length": 256}}
    return build_and_load(config, convert_unimed_state(state, source), source), dict(PREPROCESS)


def convert_unimed_state(state: dict, source: str) -> dict:
    """Upstream keys → ours: the OpenAI ViT onto timm, ``text_encoder.*`` as open_clip's HF text tower."""
    visual = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
    projection = visual.pop("proj")
    out = {f"visual.trunk.{k}": v for k, v in visual_to_timm(visual, is_resnet=False).items()}
    out["visual.head.weight"] = projection.t().contiguous()
    rest = {("text." + k[len("text_encoder."):] if k.startswith("text_encoder.") else k): v
            for k, v in state.items() if not k.startswith("visual.")}
    out.update(_custom_text_state(rest, source))
    return out
