"""``medclip info [MODEL]``: list architectures, or show one's config and parameter counts."""

from __future__ import annotations

import json


def add_arguments(parser) -> None:
    parser.add_argument("model", nargs="?", help="architecture name or YAML path; omit to list all")


def run(args) -> int:
    from ..config import to_dict
    from ..factory import create_model
    from ..registry import list_models

    if not args.model:
        print("\n".join(list_models()))
        return 0
    model = create_model(args.model, device="meta")
    counts = [sum(p.numel() for p in part.parameters()) for part in (model, model.visual, model.text)]
    print(json.dumps(to_dict(model.config), indent=2))
    print("parameters: total {:,} | image tower {:,} | text tower {:,}".format(*counts))
    return 0
