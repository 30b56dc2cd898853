"""``medclip convert --from hf-clip|open-clip SRC --output DIR``: foreign CLIP weights → a medclip model folder."""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("source", help="HF CLIPModel folder (hf-clip) or open_clip/OpenAI state dict file (open-clip)")
    parser.add_argument("--from", dest="kind", required=True, choices=("hf-clip", "open-clip"),
                        help="the format of SOURCE")
    parser.add_argument("--model-name", default="",
                        help="open_clip model name, e.g. ViT-B-32 or RN50-quickgelu (sets the activation)")
    parser.add_argument("--output", required=True, help="folder to write (config.json + model.safetensors)")


def run(args) -> int:
    from ..interop import from_hf_clip, from_open_clip

    if args.kind == "hf-clip":
        model = from_hf_clip(args.source)
    else:
        model = from_open_clip(args.source, args.model_name)
    model.save_pretrained(args.output, extra={"converted_from": {"format": args.kind, "source": str(args.source),
                                                                 "model_name": args.model_name}})
    params = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.output} ({model.config.vision.timm_model}, text width {model.config.text.width}, "
          f"{params:,} parameters)")
    return 0
