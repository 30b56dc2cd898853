"""The CLI dispatcher: help lists commands, user errors are one line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from medclip.cli import COMMANDS, main


def test_help_lists_every_command(capsys):
    assert main([]) == 2
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_info_lists_and_describes_models(capsys):
    assert main(["info"]) == 0
    assert "ViT-B-16" in capsys.readouterr().out
    assert main(["info", "RN50"]) == 0
    assert "parameters: total 102,007,137" in capsys.readouterr().out


@pytest.mark.slow
def test_unknown_model_is_one_line_error():
    proc = subprocess.run([sys.executable, "-m", "medclip", "info", "ViT-Q-99"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "unknown model 'ViT-Q-99'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_logging_levels_quiet_verbose_and_other_ranks(monkeypatch, capsys):
    import logging

    log = logging.getLogger("medclip.test")
    for argv, rank, shown in ((["info"], "0", ["info", "warning"]), (["--quiet", "info"], "0", ["warning"]),
                              (["info", "--verbose"], "0", ["debug", "info", "warning"]), (["info"], "1", ["warning"])):
        monkeypatch.setenv("RANK", rank)
        assert main(argv) == 0
        capsys.readouterr()
        log.debug("debug line")
        log.info("info line")
        log.warning("warning line")
        err = capsys.readouterr().err
        assert [w for w in ("debug", "info", "warning") if f"{w} line" in err] == shown, (argv, rank, err)
    assert "warning: warning line" in err  # warnings are labelled; info lines are plain progress
    monkeypatch.setenv("RANK", "0")
    main(["info"])  # leave logging as any other CLI call leaves it (INFO)
    capsys.readouterr()
