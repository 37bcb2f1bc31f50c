"""`eval megaface` feature cache: reused only for the same model file (sha256) and the same source files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from facerco.cli import main
from facerco.eval import features as F


def _model(path: Path, seed: int) -> None:
    from facerco.models import create_model
    from facerco.models.checkpoint import save_model_checkpoint

    torch.manual_seed(seed)
    save_model_checkpoint(path, create_model("iresnet_tiny", input_size=48).eval())


@pytest.fixture
def setup(tmp_path: Path) -> dict[str, Path]:
    """3 identities x 3 probe images, 20 distractor images (48x48 PNG) and a tiny model."""
    rng = np.random.default_rng(0)
    for ident in range(3):
        (tmp_path / "probes" / f"id{ident}").mkdir(parents=True)
        base = rng.integers(0, 255, (6, 6, 3), np.uint8)
        for j in range(3):
            img = np.clip(base.astype(int) + rng.integers(-40, 40, (6, 6, 3)), 0, 255).astype(np.uint8)
            cv2.imwrite(str(tmp_path / "probes" / f"id{ident}" / f"{j}.png"), cv2.resize(img, (48, 48)))
    (tmp_path / "dist").mkdir()
    for i in range(20):
        cv2.imwrite(str(tmp_path / "dist" / f"{i:02d}.png"),
                    cv2.resize(rng.integers(0, 255, (6, 6, 3), np.uint8), (48, 48)))
    _model(tmp_path / "m.safetensors", seed=0)
    return {"root": tmp_path, "model": tmp_path / "m.safetensors", "out": tmp_path / "out"}


def _run(s: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> tuple[str, dict]:
    rc = main(["eval", "megaface", "--probes", str(s["root"] / "probes"), "--distractors", str(s["root"] / "dist"),
               "--model", str(s["model"]), "--names", "m", "--device", "cpu", "--num-workers", "0",
               "--batch-size", "8", "--sizes", "10", "--far", "0.01", "--out", str(s["out"])])
    out = capsys.readouterr().out
    assert rc == 0, out
    return out, json.loads((s["out"] / "report.json").read_text())["identification"]["m"]


def _thresholds(rep: dict) -> list:
    return [s["far_thresholds"] for s in rep["sizes"]]


def test_cache_reused_for_same_inputs_recomputed_when_model_or_sources_change(setup, capsys, monkeypatch):
    calls: list[int] = []
    real = F.extract_embeddings
    monkeypatch.setattr(F, "extract_embeddings", lambda *a, **k: calls.append(1) or real(*a, **k))
    _, first = _run(setup, capsys)
    assert len(calls) == 2
    manifest = json.loads((setup["out"] / "features" / "m" / "manifest.json").read_text())
    assert set(manifest["roles"]) == {"probes", "distractors"}
    assert manifest["roles"]["distractors"]["sources"]["count"] == 20

    out, again = _run(setup, capsys)  # same inputs: reused
    assert len(calls) == 2 and out.count("using cached") == 2
    assert again["sizes"] == first["sizes"]

    _model(setup["model"], seed=1)  # retrained into the same path
    out, retrained = _run(setup, capsys)
    assert len(calls) == 4 and out.count("model changed: features recomputed") == 2
    assert _thresholds(retrained) != _thresholds(first)

    img = setup["root"] / "dist" / "07.png"
    cv2.imwrite(str(img), np.zeros((48, 48, 3), np.uint8))
    os.utime(img, ns=(img.stat().st_atime_ns, img.stat().st_mtime_ns + 10**9))
    out, _ = _run(setup, capsys)
    assert len(calls) == 5
    assert "distractors: source files changed (a path, size or modification time differs): features recomputed" \
        in out and "using cached probes" in out
    (setup["root"] / "dist" / "20.png").write_bytes(img.read_bytes())  # one more distractor
    out, _ = _run(setup, capsys)
    assert len(calls) == 6 and "source files changed (20 files before, 21 now)" in out


def test_cache_without_manifest_is_recomputed(setup, capsys):
    _run(setup, capsys)
    (setup["out"] / "features" / "m" / "manifest.json").unlink()
    out, _ = _run(setup, capsys)
    assert out.count("no manifest") == 2 and "using cached" not in out
