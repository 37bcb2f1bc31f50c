"""The evaluations are importable: ``run_verification``, ``run_megaface`` and ``run_ijb`` give the report that
``facerco eval verify|megaface|ijb`` writes, and the commands are thin wrappers that only parse, call and print."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
from test_eval_cache import setup  # noqa: F401 - the images and model of the `eval megaface` cache tests

import facerco.eval
from facerco.cli import main
from facerco.data.bins import write_bin
from facerco.eval import run_ijb, run_megaface, run_verification
from facerco.eval.ijb_fixture import write_ijb_fixture
from facerco.models import create_model
from facerco.models.checkpoint import save_model_checkpoint

# what differs between two runs of the same evaluation: the time of day, the time taken and the memory used
_VOLATILE_META = ("created", "time_s", "peak_rss_gib", "peak_gpu_gib")


def _comparable(report: dict[str, Any], out: Path) -> dict[str, Any]:
    """The report with its own output folder written as OUT and the volatile fields dropped (run meta, and each
    1:N or IJB result's ``timings``)."""
    same = json.loads(json.dumps(report).replace(str(out), "OUT"))
    for key in _VOLATILE_META:
        same["meta"].pop(key, None)
    for result in [*same["identification"].values(), *same.get("ijb", {}).values()]:
        assert result.pop("timings")
    return same


def _written(out: Path) -> dict[str, Any]:
    return json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_model_checkpoint(path, create_model("iresnet_tiny", input_size=48).eval())
    return path


def test_entry_points_are_exported():
    assert facerco.eval.run_megaface is run_megaface and {"run_ijb", "run_megaface", "run_verification"} <= set(
        facerco.eval.__all__)


def test_run_verification_gives_the_cli_report(model, tmp_path):
    rng = np.random.default_rng(0)
    imgs = [cv2.imencode(".png", rng.integers(0, 255, (48, 48, 3), np.uint8))[1].tobytes() for _ in range(8)]
    write_bin(tmp_path / "t.bin", imgs, [True, False, True, False])
    lib = run_verification([model], [tmp_path / "t.bin"], names=["m"], nfolds=2, out=tmp_path / "lib", device="cpu",
                           num_workers=0, progress=False)
    assert lib == _written(tmp_path / "lib") and set(lib["verification"]["m"]) == {"t"}
    assert main(["eval", "verify", str(model), "--bin", str(tmp_path / "t.bin"), "--names", "m", "--nfolds", "2",
                 "--device", "cpu", "--num-workers", "0", "--out", str(tmp_path / "cli")]) == 0
    assert _comparable(lib, tmp_path / "lib") == _comparable(_written(tmp_path / "cli"), tmp_path / "cli")


def test_run_megaface_gives_the_cli_report(setup, capsys):  # noqa: F811 - the fixture imported above
    tmp_path, model = setup["root"], setup["model"]  # 3 identities x 3 probe images, 20 distractor images
    lib = run_megaface(tmp_path / "probes", tmp_path / "dist", [model], names=["m"], sizes=[10], fars=[0.01],
                       out=tmp_path / "lib", device="cpu", batch_size=8, num_workers=0)
    assert lib == _written(tmp_path / "lib")
    assert [s["size"] for s in lib["identification"]["m"]["sizes"]] == [10]
    assert main(["eval", "megaface", "--probes", str(tmp_path / "probes"), "--distractors", str(tmp_path / "dist"),
                 "--model", str(model), "--names", "m", "--sizes", "10", "--far", "0.01", "--device", "cpu",
                 "--batch-size", "8", "--num-workers", "0", "--out", str(tmp_path / "cli")]) == 0
    assert "rank-1" in capsys.readouterr().out
    assert _comparable(lib, tmp_path / "lib") == _comparable(_written(tmp_path / "cli"), tmp_path / "cli")


def test_run_megaface_on_feature_files_needs_no_model(model, tmp_path):
    from facerco.eval.features import Embeddings, save_embeddings

    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(4), 3)
    probes = rng.normal(size=(4, 8))[labels] + 0.5 * rng.normal(size=(12, 8))
    save_embeddings(Embeddings(probes.astype(np.float32), np.ones(12, np.float32), labels,
                               [f"id{lab}/{i}.png" for i, lab in enumerate(labels)]), tmp_path / "probes")
    save_embeddings(Embeddings(rng.normal(size=(50, 8)).astype(np.float32), np.ones(50, np.float32),
                               np.full(50, -1), [f"d/{i}.jpg" for i in range(50)]), tmp_path / "dist")
    lib = run_megaface(tmp_path / "probes.npy", tmp_path / "dist.npy", sizes=[10, 50], fars=[0.01],
                       out=tmp_path / "lib", device="cpu", backend="torch")
    assert list(lib["identification"]) == ["features"]
    assert main(["eval", "megaface", "--probes", str(tmp_path / "probes.npy"), "--distractors",
                 str(tmp_path / "dist.npy"), "--sizes", "10", "50", "--far", "0.01", "--device", "cpu", "--backend",
                 "torch", "--out", str(tmp_path / "cli")]) == 0
    assert _comparable(lib, tmp_path / "lib") == _comparable(_written(tmp_path / "cli"), tmp_path / "cli")


def test_run_ijb_gives_the_cli_report(model, tmp_path, capsys):
    write_ijb_fixture(tmp_path / "root", "IJBC", subjects=8, seed=0)
    options = {"names": ["tiny"], "device": "cpu", "num_workers": 0, "batch_size": 16, "block": 24, "workers": 2}
    lib = run_ijb([model], tmp_path / "root", "ijbc", out=tmp_path / "lib", **options)
    assert lib == _written(tmp_path / "lib") and lib["meta"]["target"] == "IJBC"
    assert main(["eval", "ijb", "--model", str(model), "--names", "tiny", "--root", str(tmp_path / "root"),
                 "--device", "cpu", "--num-workers", "0", "--batch-size", "16", "--block", "24", "--workers", "2",
                 "--out", str(tmp_path / "cli")]) == 0
    printed = capsys.readouterr().out
    assert "1:1 TAR% at FAR" in printed and "peak memory" in printed
    cli = _written(tmp_path / "cli")
    assert _comparable(lib, tmp_path / "lib") == _comparable(cli, tmp_path / "cli")
    scores = [np.load(report["ijb"]["tiny"]["scores_file"]) for report in (lib, cli)]
    np.testing.assert_array_equal(*scores)


@pytest.mark.parametrize(("argv", "entry"), [
    (["eval", "verify", "m.onnx", "--bin", "a.bin", "--names", "x"], "run_verification"),
    (["eval", "megaface", "--probes", "p.npy", "--distractors", "d.npy", "--backend", "faiss"], "run_megaface"),
    (["eval", "ijb", "--model", "m.onnx", "--root", "R", "--target", "ijbb", "--no-norm-score"], "run_ijb"),
])
def test_cli_only_parses_calls_and_prints(argv, entry, monkeypatch, tmp_path, capsys):
    """The command passes its options to the entry point and prints from the report it returns."""
    import facerco.eval.run as run

    calls: list[tuple[tuple, dict]] = []
    canned = {"meta": {"peak_rss_gib": 0.5, "time_s": 1.0}, "verification": {}, "identification": {}, "ijb": {}}
    monkeypatch.setattr(run, entry, lambda *a, **k: calls.append((a, k)) or canned)
    assert main([*argv, "--out", str(tmp_path)]) == 0
    (args, kwargs), = calls
    assert kwargs["out"] == str(tmp_path) and kwargs["device"] == "auto"
    if entry == "run_megaface":
        assert args == ("p.npy", "d.npy", None) and kwargs["backend"] == "faiss"
    if entry == "run_ijb":
        assert args == (["m.onnx"], "R", "IJBB") and kwargs["norm_score"] is False and kwargs["detector_score"]
    assert f"report: {tmp_path / 'report.md'}" in capsys.readouterr().out
