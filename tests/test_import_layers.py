"""No import cycle between facerco's packages: walk every module's imports (module level and inside functions)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "facerco"


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imported_packages(path: Path, here: str) -> set[str]:
    """The other facerco sub-packages one module imports (module level and inside functions)."""
    deps = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            if name.startswith("facerco.") and _package(name) not in ("", here):
                target = _package(name)
                if (ROOT / target).is_dir() or (ROOT / f"{target}.py").is_file():
                    deps.add(target)
    return deps


def _package_of(path: Path) -> str:
    return _package(".".join(path.relative_to(ROOT.parent).with_suffix("").parts))


def package_graph() -> dict[str, set[str]]:
    """facerco sub-package -> the sub-packages its modules import (single-file modules count as packages)."""
    graph: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        here = _package_of(path)
        graph.setdefault(here, set()).update(_imported_packages(path, here))
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return []


def test_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_facerco_packages():
    graph = package_graph()
    # the walker sees imports inside functions (commands import distill only there; distill imports the engine)
    assert "route" in graph and "distill" in graph["commands"] and "train" in graph["distill"]
    assert _cycle(graph) == [], f"import cycle between facerco packages: {' -> '.join(_cycle(graph))}"


def test_route_does_not_import_train():
    assert "train" not in package_graph()["route"]  # the callback protocol lives in facerco.utils.callbacks


def test_route_and_train_do_not_import_distill():
    """distill sits above route and train: `route plan`, `compare` and `distill` call it, never the reverse."""
    offenders = [path.relative_to(ROOT).as_posix() for pkg in ("route", "train") for path in (ROOT / pkg).rglob("*.py")
                 if "distill" in _imported_packages(path, _package_of(path))]
    assert offenders == []
    assert {"route", "train"} <= package_graph()["distill"]  # the rule is about a real dependency
