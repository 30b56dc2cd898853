"""The README's Architecture section matches the code: one row per file, every module listed, no stale row."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _architecture_files() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Architecture\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "`" in line.split("|")[2]]
    return [re.search(r"`([^`]+)`", row.split("|")[2]).group(1) for row in rows]


def _modules() -> set[str]:
    files = set()
    for package in ("medclip", "adapters"):
        for path in (ROOT / package).rglob("*.py"):
            body = ast.parse(path.read_text(encoding="utf-8")).body
            if path.name == "__init__.py" and all(isinstance(node, ast.Expr) for node in body):
                continue  # an empty package marker (a docstring at most)
            files.add(path.relative_to(ROOT).as_posix())
    return files


def test_every_module_has_one_row_and_every_row_exists():
    named = _architecture_files()
    assert len(named) == len(set(named)), sorted({f for f in named if named.count(f) > 1})
    assert not [f for f in named if not (ROOT / f).exists()], "rows naming files that do not exist"
    missing = sorted(_modules() - set(named))
    assert not missing, f"modules without an Architecture row in README.md: {missing}"
