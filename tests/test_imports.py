"""Import structure (the developers' guide): no import cycles between modules, and ``medclip``'s modules never
import ``medclip_adapters`` (the CLI loads that plugin at run time). Read from the source with ``ast``."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"medclip": ROOT / "medclip", "medclip_adapters": ROOT / "adapters"}


def _modules() -> dict[str, Path]:
    out = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _targets(node: ast.Import | ast.ImportFrom, module: str, path: Path) -> list[str]:
    """The modules an import statement names (``from .x import y`` names ``pkg.x.y`` when that is a module)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    if node.level:
        base = base[:len(base) - node.level + 1]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    return [f"{target}.{alias.name}" for alias in node.names] + [target]


def _graph(module_level: bool) -> dict[str, set[str]]:
    """module -> modules of this project it imports (at module level only, or anywhere)."""
    modules, graph = _modules(), {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        nodes = tree.body if module_level else list(ast.walk(tree))
        deps = set()
        for node in nodes:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                deps.update(t for t in _targets(node, module, path) if t in modules)
        # a package's own __init__ runs first anyway: an edge to an enclosing package is not a cycle
        graph[module] = {d for d in deps if d != module and not module.startswith(d + ".")}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    state, stack, found = {}, [], []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_no_module_level_import_cycles():
    graph = _graph(module_level=True)
    assert "medclip.data.manifest" in graph["medclip.data.dataset"]  # the graph sees relative imports
    assert _cycles(graph) == []


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c", "a"]]


def test_medclip_never_imports_the_adapters_at_module_level():
    """Only the CLI reaches the adapters plugin, inside a function, when an adapter command runs."""
    graph = _graph(module_level=True)
    assert "medclip_adapters.base" in graph["medclip_adapters.lora"]
    assert not {m: sorted(d) for m, d in graph.items()
                if m.startswith("medclip.") and any(x.startswith("medclip_adapters") for x in d)}
