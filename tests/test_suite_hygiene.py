"""The suite itself: no test turns an import regression of facerco into a skip (issue 15 §4)."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _skipped_imports(path: Path) -> list[str]:
    """Module names passed as a literal to ``pytest.importorskip`` in one test file."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "importorskip"
                and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            names.append(node.args[0].value)
    return names


def test_project_modules_are_imported_plainly():
    offenders = [f"{p.name}: importorskip({name!r})" for p in sorted(TESTS.glob("*.py"))
                 for name in _skipped_imports(p) if name.split(".")[0] == "facerco"]
    assert not offenders, "import facerco modules plainly (skip only for optional extras): " + "; ".join(offenders)


def test_the_scan_sees_importorskip(tmp_path):
    probe = tmp_path / "t.py"
    probe.write_text('import pytest\nm = pytest.importorskip("facerco.data.synthetic")\n'
                     'x = pytest.importorskip("onnxruntime")\n')
    assert _skipped_imports(probe) == ["facerco.data.synthetic", "onnxruntime"]
