"""``medclip <few-shot method>`` and ``medclip fewshot``: few-shot adapters (thin wrapper).

The work lives in the separate ``medclip_adapters`` package, imported only when one of these commands
runs, so the medclip core never depends on it. The command name is the parser default
``medclip_command``, which the dispatcher in :mod:`medclip.cli` sets.
"""

from __future__ import annotations


def add_arguments(parser) -> None:
    from medclip_adapters.cli import add_arguments as add

    add(parser, parser.get_default("medclip_command"))


def run(args) -> int:
    from medclip_adapters.cli import run as run_command

    return run_command(args)
