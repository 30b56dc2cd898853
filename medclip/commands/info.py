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
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    print(json.dumps(to_dict(model.config), indent=2))
    print(f"parameters: total {count(model):,} | image tower {count(model.visual):,} | text tower {count(model.text):,}")
    return 0
