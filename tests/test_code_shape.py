"""The house rule from issue 14: no function in the package over 80 lines without a reason written next to it."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "facerco"
MAX_LINES = 80


def long_functions(root: Path, max_lines: int = MAX_LINES) -> list[str]:
    """``path:line name (N lines)`` of every function longer than ``max_lines`` lacking a ``# long:`` comment on the
    line above its ``def`` (or above its first decorator)."""
    found = []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        for node in ast.walk(ast.parse(text, filename=str(path))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            length = node.end_lineno - node.lineno + 1
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            above = lines[first - 2].strip() if first >= 2 else ""
            if length > max_lines and not above.startswith("# long:"):
                found.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_no_unexplained_long_function_in_the_package() -> None:
    assert long_functions(PACKAGE) == []


def test_the_walk_finds_a_long_function_and_accepts_a_reason(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(90))
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text(f"def big():\n{body}\n\n\ndef small():\n    return 1\n")
    assert long_functions(tmp_path / "pkg") == ["pkg/a.py:1 big (91 lines)"]
    (tmp_path / "pkg" / "a.py").write_text(f"# long: one table, read top to bottom\ndef big():\n{body}\n")
    assert long_functions(tmp_path / "pkg") == []
