"""The ``medclip`` command line: a thin dispatcher over library functions.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``.
Modules are imported only when their subcommand runs, so ``medclip --help`` stays fast and the core
package never imports ``medclip_adapters`` unless an adapter command is asked for.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from .errors import MedclipError
from .version import __version__

# name -> (module with add_arguments/run, one-line help). Keep sorted by workflow order.
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("medclip.commands.info", "list model architectures or describe one (parameter counts)"),
    "demo-data": ("medclip.commands.demo_data", "write the synthetic demo corpus (DICOM/PNG + reports + manifest)"),
    "data": ("medclip.commands.data", "check a manifest (quarantine.csv, PHI tag counts) or split it leak-free"),
    "pretrain": ("medclip.commands.pretrain", "contrastive pretraining from a recipe (also under torchrun)"),
    "convert": ("medclip.commands.convert", "convert HF CLIPModel / open_clip weights to a medclip model folder"),
    "zeroshot": ("medclip.commands.zeroshot", "zero-shot classify images by text prompts; AUROC with bootstrap CIs"),
    "retrieve": ("medclip.commands.retrieve", "image<->report retrieval R@1/5/10, median rank, alignment/uniformity"),
    "fewshot": ("medclip.commands.fewshot", "few-shot grid: methods x shots x seeds, results/summary CSV + curve"),
}


def commands() -> dict[str, tuple[str, str]]:
    """:data:`COMMANDS` plus one command per few-shot method of the ``medclip_adapters`` registry.

    The adapters package is imported here, at run time, only when a command outside :data:`COMMANDS`
    (or the command list) is asked for.
    """
    try:
        from medclip_adapters.cli import command_help
    except ImportError:  # the adapters package is not installed
        return dict(COMMANDS)
    return {**COMMANDS, **{name: ("medclip.commands.fewshot", text) for name, text in command_help().items()}}


VERBOSITY = {"--quiet": logging.WARNING, "--verbose": logging.DEBUG}


class _StderrHandler(logging.StreamHandler):
    """A handler that writes to whatever ``sys.stderr`` is at the time (pytest's capture, a redirect)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        return text if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {text}"


def configure_logging(level: int = logging.INFO) -> None:
    """Send ``medclip``/``medclip_adapters`` log records (and Python warnings) to stderr at ``level``.

    Called once per CLI invocation (repeated calls replace the handler). Progress and facts about a run
    are INFO; ``--quiet`` shows warnings and errors only, ``--verbose`` adds DEBUG. Under ``torchrun`` only
    rank 0 prints INFO (the other ranks would repeat it); every rank prints its warnings and errors.
    """
    if os.environ.get("RANK", "0") != "0":
        level = max(level, logging.WARNING)
    logging.captureWarnings(True)
    for name in ("medclip", "medclip_adapters", "py.warnings"):
        log = logging.getLogger(name)
        for handler in [h for h in log.handlers if isinstance(h, _StderrHandler)]:
            log.removeHandler(handler)
        handler = _StderrHandler()
        handler.setFormatter(_Formatter())
        log.addHandler(handler)
        log.setLevel(level)


def _add_verbosity(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quiet", action="store_true", help="show warnings and errors only (no progress lines)")
    group.add_argument("--verbose", action="store_true", help="also show debug messages")


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medclip", description="CLIP for medical images and reports.")
    parser.add_argument("--version", action="version", version=f"medclip {__version__}")
    _add_verbosity(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in commands().items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``medclip`` command line.

    Args:
        argv: arguments without the program name (defaults to ``sys.argv[1:]``).

    Returns:
        The process exit status: 0 on success, 2 for user errors (one line on stderr).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    level = logging.INFO
    while argv and argv[0] in VERBOSITY:  # medclip --quiet COMMAND ...
        level = VERBOSITY[argv.pop(0)]
    known = COMMANDS if argv and argv[0] in COMMANDS else commands()
    if not argv or argv[0] not in known:
        top = _top_parser()
        if not argv:
            top.print_help()
            return 2
        top.parse_args(argv)  # handles --help/--version, errors on unknown commands
        return 2
    name = argv[0]
    module_name, help_text = known[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"medclip {name}", description=help_text)
    parser.set_defaults(medclip_command=name)  # modules serving several commands read it
    module.add_arguments(parser)
    _add_verbosity(parser)
    args = parser.parse_args(argv[1:])
    configure_logging(logging.WARNING if args.quiet else logging.DEBUG if args.verbose else level)
    try:
        return int(module.run(args) or 0)
    except (MedclipError, FileNotFoundError) as exc:
        print(f"medclip {name}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # permissions, a folder where a file was expected, ...: one line naming the path
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"medclip {name}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"medclip {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
