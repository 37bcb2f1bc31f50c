"""Reports: JSON, Markdown and PNG files for several models, written atomically."""

from __future__ import annotations

import json

import numpy as np

from facerco.eval.identification import evaluate_identification
from facerco.eval.report import write_report
from facerco.eval.verification import evaluate_verification


def test_report_files_for_two_models(tmp_path):
    rng = np.random.default_rng(0)
    ver, ident = {}, {}
    for name, noise in (("teacher", 0.3), ("student", 0.6)):
        base = rng.normal(size=(200, 8))
        other = base + noise * rng.normal(size=(200, 8))
        same = np.arange(200) % 2 == 0
        other[~same] = rng.normal(size=(100, 8))
        ver[name] = {"lfw": evaluate_verification(base, other, same, norms=np.full(400, 20.0))}
        labels = np.repeat(np.arange(10), 4)
        probes = rng.normal(size=(10, 8))[labels] + noise * rng.normal(size=(40, 8))
        probes /= np.linalg.norm(probes, axis=1, keepdims=True)
        dist = rng.normal(size=(2000, 8))
        dist /= np.linalg.norm(dist, axis=1, keepdims=True)
        ident[name] = evaluate_identification(probes.astype(np.float32), labels, dist.astype(np.float32),
                                              fars=(1e-4, 1e-3), backend="torch", device="cpu", progress=False)
    paths = write_report(tmp_path / "rep", ver, ident, meta={"note": "unit test"})
    for key in ("json", "md", "roc", "cmc", "identification_roc"):
        assert paths[key].is_file() and paths[key].stat().st_size > 0
    assert paths["roc"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(paths["json"].read_text())
    assert set(data["verification"]) == {"teacher", "student"} and data["meta"]["note"] == "unit test"
    assert data["identification"]["student"]["sizes"][-1]["size"] == 2000
    md = paths["md"].read_text()
    assert "| teacher | lfw |" in md and "| 2,000 |" in md and "![cmc](cmc.png)" in md
    assert not [p for p in (tmp_path / "rep").iterdir() if p.name.endswith(".tmp")]
