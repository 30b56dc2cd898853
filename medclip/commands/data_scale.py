"""``medclip data import``: the public corpora's published layouts as medclip manifests.

(Registered under ``medclip data`` by :mod:`medclip.commands.data`.)
"""

from __future__ import annotations

import argparse

ACTIONS = ("import",)


def add_parsers(sub) -> None:
    """Add the ``import`` action to ``medclip data``'s subparsers."""
    from ..data.corpora import CORPORA
    from ..data.corpora.common import IMPORT_POLICIES

    corpora = "; ".join(f"{name}: {c.help}" for name, c in CORPORA.items())
    imp = sub.add_parser("import", help="write a manifest from a public corpus in its published layout",
                         description=f"Corpora: {corpora}.")
    imp.add_argument("name", choices=list(CORPORA), metavar="NAME", help=", ".join(CORPORA))
    imp.add_argument("root", help="the corpus folder as published (iu-xray: the PNG folder)")
    imp.add_argument("--output", required=True, help="manifest CSV to write (image paths relative to it)")
    imp.add_argument("--frontal-only", action="store_true", help="keep PA/AP images only")
    imp.add_argument("--reports", help="mimic-cxr-jpg: the mimic-cxr-reports folder; mimic-cxr: where files/ "
                                       "with the reports is (default ROOT); iu-xray: the XML report .tgz")
    imp.add_argument("--jpg-meta", help="mimic-cxr: the JPG project's folder (official split, labels, views)")
    imp.add_argument("--uncertain", choices=IMPORT_POLICIES, default="keep",
                     help="CheXpert-style -1 labels: keep -1 (evaluation applies labels.uncertain, default) "
                          "or apply ones/zeros/ignore now")


def run(args: argparse.Namespace) -> int:
    from ..data.corpora import import_corpus

    _, line = import_corpus(args.name, args.root, args.output, args.frontal_only, reports=args.reports,
                            jpg_meta=args.jpg_meta, uncertain=args.uncertain)
    print(line)
    return 0
