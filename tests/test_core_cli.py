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
