"""``medclip convert PATH --output DIR``: any supported model format → a self-contained medclip model folder.

The format is detected (``--from NAME`` forces it; see :mod:`medclip.interop.formats`). The folder holds
``config.json`` (architecture, preprocessing, provenance), ``model.safetensors``, ``text/`` (the Hugging
Face text encoder's config and tokenizer files, when the model has one) and a model card ``README.md``
(source format, source file hashes, the parity checked, the source's license when it names one).
"""

from __future__ import annotations

import os
import shutil

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                    "spiece.model", "sentencepiece.bpe.model", "merges.txt", "vocab.json")
PARITY = {
    "open-clip": "open_clip's own forward pass (tiny random-weight replicas, tests/test_interop.py)",
    "open-clip-hub": "open_clip.create_model('local-dir:...') (tiny replicas, tests/test_interop_zoo.py)",
    "hf-clip": "transformers.CLIPModel (tiny replicas, tests/test_interop.py)",
    "siglip": "transformers.SiglipModel features and logits (tiny replicas, tests/test_interop_siglip.py)",
    "pmc-clip": "a re-implementation of PMC-CLIP's forward pass from its code (tests/reference/pmc_clip.py)",
    "medclip-resnet": "a re-implementation of MedCLIP's forward pass from its code (tests/reference/medclip.py)",
    "unimed-clip": "a re-implementation of UniMed-CLIP's forward pass from its code (tests/reference/unimed_clip.py)",
    "medclip-vit": "a re-implementation of MedCLIP's forward pass from its code (tests/reference/medclip.py)",
    "medclip": "a medclip folder (no conversion)",
}


def add_arguments(parser) -> None:
    from ..interop.formats import FORMATS

    parser.add_argument("source", help="a model folder or weights file (format detected; see --from)")
    parser.add_argument("--from", dest="kind", default=None, choices=FORMATS,
                        help="force the source format instead of detecting it")
    parser.add_argument("--model-name", default="",
                        help="for bare OpenAI/open_clip state dicts: the open_clip name, e.g. ViT-B-32-quickgelu "
                             "(OpenAI-trained, CheXzero) or ViT-B-32 (GELU); required there")
    parser.add_argument("--text-model", default=None,
                        help="local Hugging Face text encoder folder (config + vocabulary) when the source names "
                             "its encoder by hub id (BiomedCLIP: PubMedBERT)")
    parser.add_argument("--output", required=True, help="folder to write")


def run(args) -> int:
    from ..interop.formats import load_model
    from ..paths import file_sha256

    loaded = load_model(args.source, args.kind, args.model_name, args.text_model)
    hashes = {os.path.basename(p): file_sha256(p) for p in loaded.weights}
    provenance = {"format": loaded.format, "source": str(args.source), "model_name": args.model_name,
                  "sha256": hashes, "license": loaded.license}
    loaded.model.save_pretrained(args.output, extra={"converted_from": provenance,
                                                     "preprocess": loaded.preprocess})
    _copy_tokenizer(loaded, args.output)
    diff = _round_trip(loaded.model, args.output)
    _write_card(args.output, loaded, hashes, diff)
    params = sum(p.numel() for p in loaded.model.parameters())
    print(f"wrote {args.output} (from {loaded.format}: {_image_tower(loaded.model.config.vision)}, {params:,} "
          f"parameters; reloaded folder matches the converted model, max |diff| {diff:.1e})")
    return 0


def _copy_tokenizer(loaded, output: str) -> None:
    """The source's own tokenizer files (published with the model) win over the encoder folder's."""
    from ..model import TEXT_DIR

    if not (loaded.tokenizer_dir and loaded.model.config.text.hf_model_dir):
        return
    for name in _TOKENIZER_FILES:
        path = os.path.join(loaded.tokenizer_dir, name)
        if os.path.isfile(path):
            shutil.copyfile(path, os.path.join(output, TEXT_DIR, name))


def _round_trip(model, output: str) -> float:
    """Max |difference| of image and text embeddings between ``model`` and the folder just written."""
    import torch

    from ..model import CLIP
    from ..tokenizer import get_tokenizer

    reloaded = CLIP.from_pretrained(output).eval()
    vision = model.config.vision
    image = torch.randn(1, vision.in_chans, vision.image_size, vision.image_size,
                        generator=torch.Generator().manual_seed(0))
    ids = get_tokenizer(reloaded.config)(["a chest x-ray"])
    if not reloaded.config.text.hf_model_dir:  # tiny test vocabularies: keep the ids inside the table
        ids = ids.clamp(max=reloaded.config.text.vocab_size - 1)
    with torch.no_grad():
        a, b = model(image, ids), reloaded(image, ids)
    return max(float((a[k] - b[k]).abs().max()) for k in ("image_features", "text_features"))


def _image_tower(vision) -> str:
    """The image tower as the card names it: the timm model, or the wrapped transformers model (``timm_model`` is
    then an unused default)."""
    if vision.hf_config:
        return f"transformers `{vision.hf_config['model_type']}` (wrapped)"
    return f"timm `{vision.timm_model}`"


def _write_card(output: str, loaded, hashes: dict, diff: float) -> None:
    cfg = loaded.model.config
    lines = ["# medclip model (converted)", "",
             f"- source format: `{loaded.format}`", f"- source: `{loaded.source}`"]
    lines += [f"- source file `{name}` sha256: `{digest}`" for name, digest in hashes.items()]
    lines += [f"- license (from the source's model card): {loaded.license or 'not stated by the source'}",
              f"- image tower: {_image_tower(cfg.vision)}, {cfg.vision.image_size} px, mean {cfg.vision.mean}, "
              f"std {cfg.vision.std}",
              f"- text tower: {'Hugging Face encoder in text/' if cfg.text.hf_model_dir else 'CLIP transformer'}, "
              f"context {cfg.text.context_length}",
              f"- source preprocessing: {loaded.preprocess or 'not stated (medclip defaults)'}",
              f"- parity of this converter: {PARITY.get(loaded.format, 'see the README model zoo')}",
              f"- checked at conversion: the written folder reloads to the same embeddings (max |diff| {diff:.1e})",
              ""]
    with open(os.path.join(output, "README.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
