"""The GPU form of the face RCO study (benchmarks/gpu_rco_study.sh/.py): its pieces, and its dry run on the CPU.

The dry run is the same four steps at tiny sizes (16 px, 4 identities, 4 epochs, seeds 0 and 1); the test reads the
JSON the GPU run will write and checks every step, the gate, each strategy's anchors on the recorded step route, the
paired analysis, and that ``$OUT`` holds few enough, shallow enough files for the device tool to bring back.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_rco_study.sh"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_rco_study", ROOT / "benchmarks" / "gpu_rco_study.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_rco_study"] = module
    spec.loader.exec_module(module)
    return module


study = _module()


def test_shell_script_parses() -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0


def test_device_batches_survive_the_engine_loader_path() -> None:
    """The engine pins every batch on CUDA, which a CUDA tensor refuses: a gathered batch must pass pinning as it
    is, flip like the item path, and reach the model as a plain tensor."""
    from torch.utils.data._utils.pin_memory import pin_memory

    from facerco.train.sampler import KeyedDataset

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    data = study.DeviceFaces(images, np.array([0, 0, 1, 1, 2]), torch.device("cpu"))
    batch = KeyedDataset(data).__getitems__([(3, 1), (0, 0), (4, 1)])
    assert isinstance(batch.images, study.DeviceBatch)
    assert pin_memory(batch.images) is batch.images
    moved = batch.images.to("cpu")
    assert type(moved) is torch.Tensor
    assert torch.equal(moved[0], torch.flip(data[3][0], dims=(-1,)))
    assert torch.equal(moved[1], data[0][0])
    assert batch.labels.tolist() == [1, 0, 2]
    cached = data.__getitems__([2, 4])
    assert torch.equal(cached[0][0], data[2][0]) and [c[1] for c in cached] == [1, 2]


def test_a_seed_is_launched_only_when_it_fits_the_budget() -> None:
    # 8 workers, 5 jobs per seed, 40 s a job: an idle pool needs one wave (46 s with the margin)
    assert study.seed_fits(0.0, 50.0, 0, 5, 8, 40.0)
    assert not study.seed_fits(0.0, 45.0, 0, 5, 8, 40.0)
    # 6 jobs still queued push the new seed into a second wave
    assert not study.seed_fits(0.0, 50.0, 6, 5, 8, 40.0)
    assert study.seed_fits(0.0, 100.0, 6, 5, 8, 40.0)
    assert not study.seed_fits(0.0, 1e9, 0, 5, 8, math.inf)  # nothing finished yet: no estimate, no launch


def test_only_whole_seeds_count() -> None:
    ok = {"complete": True}
    results = [{"variant": v, "seed": s, **ok} for s in (1, 2, 3) for v in ("a", "b")]
    results[3] = {"variant": "b", "seed": 2, "error": "TimeoutError: the run exceeded --job-limit-s"}
    results.append({"variant": "a", "seed": 4, **ok})
    assert study.complete_seeds(results, ["a", "b"], [1, 2, 3, 4]) == [1, 3]


def test_pilot_gate_reads_validation_and_both_thresholds() -> None:
    args = Namespace(pilot_seed=0, gate_gap=4.0, gate_mimic=0.5, ignore_gate=False)

    def runs(scratch: float, mimic: float) -> list[dict]:
        return [{"variant": "scratch", "seed": 0, "complete": True, "val_rank1": scratch},
                {"variant": "mimic_final", "seed": 0, "complete": True, "val_rank1": mimic},
                {"variant": "scratch", "seed": 1, "complete": True, "val_rank1": 0.0}]

    assert study.pilot_gate(runs(0.80, 0.81), 0.85, args)["passed"]
    assert not study.pilot_gate(runs(0.82, 0.83), 0.85, args)["passed"]  # gap 3 points
    gate = study.pilot_gate(runs(0.80, 0.802), 0.85, args)  # mimic gain 0.2 point
    assert not gate["passed"] and gate["mimic_minus_scratch"] == pytest.approx(0.002)
    assert not study.pilot_gate(runs(0.80, 0.81)[1:], 0.85, args)["passed"]  # no pilot scratch: not computable


def _files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


@pytest.fixture
def work_dir(tmp_path: Path):
    """The dry run's big files (route checkpoints, resume checkpoints: ~0.4 GB), removed after the test."""
    yield tmp_path / "work"
    shutil.rmtree(tmp_path / "work", ignore_errors=True)


@pytest.mark.slow
def test_dry_run_writes_the_study_json(tmp_path: Path, work_dir: Path) -> None:
    out, work = tmp_path / "out", work_dir
    env = dict(os.environ, OUT=str(out), WORK=str(work), PYTHON=sys.executable, OMP_NUM_THREADS="1")
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run"], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "gpu_rco_study.json").read_text())
    assert [s["step"] for s in result["steps"]] == ["data", "teacher", "students"]
    assert all(s["exit"] == 0 for s in result["steps"]) and result["dry_run"]
    assert "report: exit 0" in proc.stdout

    # the step route: a validated point per epoch, lr x0.1 after epochs 2 and 3
    route = result["route"]
    assert [p["name"] for p in route] == ["epoch_001", "epoch_002", "epoch_003", "epoch_004"]
    assert [round(p["lr"], 6) for p in route] == [0.1, 0.1, 0.01, 0.001]
    assert all("val/rank1" in p["val"] for p in route)

    errors = {(r["variant"], r["seed"]): r["error"] for r in result["runs"] if "error" in r}
    assert not errors, errors
    gate = result["gate"]
    assert gate["seed"] == 0 and gate["ignored"] and isinstance(gate["passed"], bool)
    assert gate["teacher_val"] == pytest.approx(route[-1]["val"]["val/rank1"])
    assert gate["teacher_minus_scratch"] == pytest.approx(gate["teacher_val"] - gate["scratch_val"])

    runs = {(r["variant"], r["seed"]): r for r in result["runs"]}
    assert set(runs) == {(v, s) for v in ("scratch", "mimic_final", "early", "phase", "lockstep") for s in (0, 1)}
    assert all(r["complete"] and "error" not in r for r in runs.values())
    for seed in (0, 1):
        assert runs[("scratch", seed)]["anchors"] == []
        assert runs[("mimic_final", seed)]["anchors"] == ["epoch_004"]
        early = runs[("early", seed)]["anchors"]
        assert len(early) == 1 and early[0] in ("epoch_001", "epoch_002", "epoch_003")
        assert runs[("phase", seed)]["anchors"] == ["epoch_002", "epoch_003", "epoch_004"]
        assert runs[("lockstep", seed)]["anchors"] == ["epoch_001", "epoch_002", "epoch_003", "epoch_004"]
    best = max(route[:3], key=lambda p: p["val"]["val/rank1"])["name"]  # ties go to the earlier point
    assert runs[("early", 0)]["anchors"] == [best]
    assert all(math.isfinite(r["congruence_final"]) for r in runs.values())
    assert all(0.0 <= r["test_rank1"] <= 1.0 if s == 1 else r["test_rank1"] is None for (_, s), r in runs.items())
    block = result["provenance"]  # the report's, with each step's (a dry run is never counted)
    assert set(block["steps"]) == {"data", "teacher", "students"} and block["recorded"]
    assert all(b["finished"] and not b["counted"] for b in block["steps"].values())

    assert result["counted_seeds"] == [1] and result["pilot_seed"] == 0
    analysis = result["summary"]["analysis"]
    assert analysis["reference"] == "mimic_final" and analysis["controls"] == ["early"]
    assert set(analysis["verdicts"]) == {"phase", "lockstep"}
    assert set(analysis["comparisons"]) == {"scratch", "early", "phase", "lockstep"}
    delta = runs[("phase", 1)]["test_rank1"] - runs[("mimic_final", 1)]["test_rank1"]
    assert analysis["comparisons"]["phase"]["mean"] == pytest.approx(delta)
    assert "Pilot gate" in (out / "gpu_rco_study.md").read_text()

    # what the device tool brings back: at most 8 files, at most 2 folders down
    files = _files_under(out)
    assert len(files) <= 8 and all(len(p.relative_to(out).parts) <= 3 for p in files)

    # a second students step with no time left launches no counted seed and says so; the report keeps whole seeds
    args = [sys.executable, str(ROOT / "benchmarks" / "gpu_rco_study.py"), "students", "--work", str(work),
            "--out", str(out), "--device", "cpu", "--amp", "off", "--image-size", "16", "--teacher", "iresnet18",
            "--train-ids", "4", "--images-per-id", "4", "--val-ids", "4", "--val-distractors", "6", "--test-ids",
            "4", "--test-distractors", "8", "--eval-images-per-id", "3", "--epochs", "4", "--batch", "8",
            "--workers", "2", "--render-workers", "1", "--ignore-gate", "--seeds", "0", "1", "2", "--budget-s", "1",
            "--allow-dirty"]  # not a dry run: counted seeds are requested, the tree may be dirty
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    students = json.loads((work / "students.json").read_text())
    assert students["not_launched_for_budget"] == [1, 2] and students["counted_launched"] == []
    proc = subprocess.run([*args[:2], "report", *args[3:]], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "gpu_rco_study.json").read_text())
    assert result["counted_seeds"] == [1] and result["not_launched_for_budget"] == [1, 2]


def test_overflowed_cache_rows_are_counted_per_anchor(tmp_path: Path) -> None:
    good = np.zeros((4, 2, 3), np.float16)
    bad = good.copy()
    bad[1, 1, 2], bad[3, 0, 0] = np.inf, np.nan
    for name, arr in (("epoch_001", bad), ("epoch_002", good)):
        (tmp_path / name).mkdir()
        np.save(tmp_path / name / "shard_00000.npy", arr)
    manifest = {"anchors": {n: {"shards": [{"file": f"{n}/shard_00000.npy"}]} for n in ("epoch_001", "epoch_002")}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert study.nonfinite_rows(tmp_path) == {"epoch_001": 2}
