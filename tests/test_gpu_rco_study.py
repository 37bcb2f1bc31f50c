"""The GPU form of the face RCO study (benchmarks/gpu_rco_study.sh/.py, _lfw_pack.py): its pieces, the time plan and
power arithmetic it is sized by, and its dry run on the CPU.

The dry run is the same four steps at tiny sizes (a few LFW people aligned by dlib when ../shared/data is there, else
generated faces; 16 px, 4 epochs of one step, seeds 0 and 1); the test reads the JSON the GPU run will write and
checks every step, the data source, the gate, each strategy's anchors on the recorded step route, that the pilot holds
no test number, the paired analysis, the provenance block, and that ``$OUT`` holds few enough, shallow enough files
for the device tool to bring back.
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
pack_mod = sys.modules["_lfw_pack"]
study_mod = sys.modules["_study"]
plan_mod = sys.modules["_gpu_rco_plan"]
LFW = pack_mod.find_lfw()
needs_lfw = pytest.mark.skipif(LFW is None, reason="LFW photos not found (../shared/data or $FACERCO_REAL_DATA)")


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
    host = study.FaceArray(images, np.array([0, 0, 1, 1, 2]))  # the evaluation's batch path: the item values
    assert all(torch.equal(x, host[i][0]) and y == host[i][1] for i, (x, y) in zip([4, 1], host.__getitems__([4, 1])))


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

    # real faces when LFW is at hand: a tiny pack of the split's first people, aligned by align_tree (dlib)
    data = result["data"]
    if LFW is not None:
        manifest = data["pack_manifest"]
        assert data["source"] == "lfw" and manifest["people"]["train"] == 4 and manifest["size"] == 112
        assert manifest["alignment"]["method"] == study.alignment_available()
        assert data["counts"]["train"] == 16 and data["people"]["val"] == 4
    else:
        assert data["source"] == "generated"

    # the step route: a point per epoch validated on the validation part only, lr x0.1 after epochs 2 and 3
    route = result["route"]
    assert [p["name"] for p in route] == ["epoch_001", "epoch_002", "epoch_003", "epoch_004"]
    assert [round(p["lr"], 6) for p in route] == [0.1, 0.1, 0.01, 0.001]
    assert all({"val/rank1", "val/pairs_acc", "val/tar_far1e-3"} <= set(p["val"]) for p in route)
    assert not any(k.startswith("test") for p in route for k in p["val"])

    errors = {(r["variant"], r["seed"]): r["error"] for r in result["runs"] if "error" in r}
    assert not errors, errors
    gate = result["gate"]
    assert gate["seed"] == 0 and gate["ignored"] and isinstance(gate["passed"], bool)
    assert gate["teacher_val"] == pytest.approx(route[-1]["val"]["val/rank1"])
    assert gate["teacher_minus_scratch"] == pytest.approx(gate["teacher_val"] - gate["scratch_val"])

    # scratch on the pilot seed only; every other variant on the pilot and the counted seed
    runs = {(r["variant"], r["seed"]): r for r in result["runs"]}
    counted = ("mimic_final", "early", "rco_eeis_multi", "lockstep", "phase")
    assert set(runs) == {("scratch", 0)} | {(v, s) for v in counted for s in (0, 1)}
    assert all(r["complete"] and "error" not in r for r in runs.values())
    every = ["epoch_001", "epoch_002", "epoch_003", "epoch_004"]
    for seed in (0, 1):
        assert runs[("mimic_final", seed)]["anchors"] == ["epoch_004"]
        early = runs[("early", seed)]["anchors"]
        assert len(early) == 1 and early[0] in every[:3]
        assert runs[("phase", seed)]["anchors"] == every[1:]
        assert runs[("lockstep", seed)]["anchors"] == every
        assert runs[("rco_eeis_multi", seed)]["anchors"] == every
    assert runs[("scratch", 0)]["anchors"] == []
    best = max(route[:3], key=lambda p: p["val"]["val/pairs_acc"])["name"]  # ties go to the earlier point
    assert runs[("early", 0)]["anchors"] == [best]
    assert all(math.isfinite(r["congruence_final"]) for r in runs.values())
    for (_, seed), r in runs.items():  # test is read by the counted seed only: the pilot holds no test number
        tests = [r["test_rank1"], r["test_pairs_acc"], r["test_tar_far1e-3"]]
        assert all(0.0 <= t <= 1.0 for t in tests) if seed == 1 else all(t is None for t in tests)
    assert all(row["test_rank1"] is None for row in result["pilot"])
    block = result["provenance"]  # the report's, with each step's (a dry run is never counted)
    assert set(block["steps"]) == {"data", "teacher", "students"} and block["recorded"]
    assert all(b["finished"] and not b["counted"] for b in block["steps"].values())
    assert len(block["source_tree"]["sha256"]) == 64 and block["source_tree"]["files"] > 50
    assert "declared_commit" in block

    assert result["counted_seeds"] == [1] and result["pilot_seed"] == 0
    analysis = result["summary"]["analysis"]
    assert analysis["reference"] == "mimic_final" and analysis["controls"] == ["early"]
    assert set(analysis["verdicts"]) == {"rco_eeis_multi", "phase", "lockstep"}
    assert set(analysis["comparisons"]) == {"early", "rco_eeis_multi", "phase", "lockstep"}
    delta = runs[("phase", 1)]["test_rank1"] - runs[("mimic_final", 1)]["test_rank1"]
    assert analysis["comparisons"]["phase"]["mean"] == pytest.approx(delta)
    assert set(result["summary"]["secondary"]) == {"test_pairs_acc", "test_tar_far1e-3"}
    assert result["power"]["seeds"] == 1 and result["plan"]["counted_seeds_fit"] >= 1
    md = (out / "gpu_rco_study.md").read_text()
    assert "Pilot gate" in md and "| scratch | pilot only |" in md and "Secondary endpoint" in md

    # what the device tool brings back: at most 8 files, at most 2 folders down
    files = _files_under(out)
    assert len(files) <= 8 and all(len(p.relative_to(out).parts) <= 3 for p in files)

    # a second students step with no time left launches no counted seed and says so; the report keeps whole seeds
    args = [sys.executable, str(ROOT / "benchmarks" / "gpu_rco_study.py"), "students", "--work", str(work),
            "--out", str(out), "--device", "cpu", "--amp", "off", "--image-size", "16", "--teacher", "iresnet18",
            "--epochs", "4", "--batch", "16", "--workers", "2", "--ignore-gate", "--seeds", "0", "1", "2",
            "--budget-s", "1", "--allow-dirty"]  # not a dry run: counted seeds are requested, the tree may be dirty
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


def test_synthetic_pairs_follow_the_lfw_fold_layout() -> None:
    labels = np.array([0, 0, 0, 1, 1, 2, 3, 4])
    rows = pack_mod.synthetic_pairs(labels, 3, np.random.default_rng(0))
    assert rows.shape == (60, 3)
    for fold in rows.reshape(10, 6, 3):  # per fold: 3 matched, then 3 mismatched
        assert fold[:3, 2].tolist() == [1, 1, 1] and fold[3:, 2].tolist() == [0, 0, 0]
    same = rows[:, 2] == 1
    assert (labels[rows[same, 0]] == labels[rows[same, 1]]).all() and (rows[same, 0] != rows[same, 1]).all()
    assert (labels[rows[~same, 0]] != labels[rows[~same, 1]]).all()


@needs_lfw
def test_a_tiny_pack_keeps_the_split_parts_apart(tmp_path: Path) -> None:
    """Fixed-box crops (no detector): the first people of each seeded list, labels by part, pairs of the pack."""
    from facerco.data.lfw_split import lfw_split

    limits = {"train": 3, "val": 2, "val_distractors": 3, "test": 2, "test_distractors": 4}
    manifest = pack_mod.build_pack(LFW, tmp_path / "pack", alignment="fixed_box", limits=limits, per_id=3)
    split = lfw_split(LFW)
    pack = pack_mod.read_pack(tmp_path / "pack")
    kept = pack.split["kept"]
    assert kept["train"] == split.train[:3] and kept["test_distractors"] == split.distractors[:4]
    assert manifest["alignment"]["method"] == "fixed_box" and set(pack.manifest["people"].values()) <= {2, 3, 4}
    people = [f.split("/")[0] for f in pack.files]
    owners = {name: part for part, names in kept.items() for name in names}
    assert len(owners) == sum(len(v) for v in kept.values())  # no person in two parts
    arrays = pack_mod.pack_arrays(pack, 32)
    assert arrays["train"]["images"].shape[1:] == (32, 32, 3) and set(people) == set(owners)
    assert sorted(set(arrays["train"]["labels"].tolist())) == [0, 1, 2]
    assert arrays["test_distractors"]["labels"].tolist() == [2, 3, 4, 5]  # after the 2 test people
    rows, source = pack_mod.pack_pairs(pack, arrays, "val")
    assert source.startswith("synthetic") and rows.shape[1] == 3
    assert rows[:, :2].max() < len(arrays["val"]["labels"]) + len(arrays["val_distractors"]["labels"])
    with open(tmp_path / "pack" / "crops.bin", "ab") as handle:
        handle.write(b"x")
    with pytest.raises(ValueError, match="bytes"):
        pack_mod.read_pack(tmp_path / "pack")


def test_time_plan_arithmetic() -> None:
    counts = {"train": 1000, "val": 100, "val_distractors": 100, "test": 10, "test_distractors": 10}
    rates = {"teacher_train_img_s": 1000.0, "teacher_embed_img_s": 4000.0, "student_img_s_per_process": 500.0,
             "student_img_s_total": 5000.0, "student_eval_s": 2.0, "process_start_s": 10.0, "package_check_s": 15.0,
             "checkpoint_s_per_point": 0.5, "report_s": 15.0}
    plan = plan_mod.time_plan(counts, 4, 4, 300.0, 3, rates)
    steps = plan["steps_s"]
    assert steps["teacher"] == pytest.approx(10 + 4 + 4 * 2 * 200 / 4000 + 2)  # start, train, validation, points
    assert steps["anchor_cache"] == pytest.approx(4 * 2 * 1000 / 4000 + 2)
    assert steps["pilot"] == pytest.approx(4000 / 500 + 2)
    assert plan["seed_s"] == pytest.approx(5 * 4000 / 5000 + 5 * 2 / 4)  # 5 runs a seed: no scratch
    assert plan["fixed_s"] == pytest.approx(sum(steps.values()))
    assert plan["counted_seeds_fit"] == math.floor((300 - plan["fixed_s"] - 25) / (plan["seed_s"] * 1.15))


@needs_lfw
def test_the_full_study_plan_fits_ten_counted_seeds_at_the_assumed_rates() -> None:
    """The design claim of benchmarks/README.md: at the assumed H100 rates the 510 s run fits >= 10 counted seeds."""
    from facerco.data.lfw_split import lfw_split

    c = lfw_split(LFW).summary()
    counts = {"train": c["train_images"], "val": c["val_images"], "val_distractors": c["val_distractors"],
              "test": c["test_images"], "test_distractors": c["test_distractors"]}
    plan = plan_mod.time_plan(counts, 16, 8, 510.0, 3)
    assert plan["counted_seeds_fit"] >= 10 and plan["run_samples"] == 16 * 4351


def test_detectable_effects() -> None:
    # large n: the t-test's detectable effect approaches (z_(1-alpha) + z_power) * sd / sqrt(n)
    from scipy import stats

    sd, n = 1.0, 400
    expected = (stats.norm.ppf(0.95) + stats.norm.ppf(0.8)) * sd / math.sqrt(n)
    assert study_mod.detectable_effect(sd, n) == pytest.approx(expected, rel=0.01)
    assert study_mod.detectable_effect(sd, 10, family=3) > study_mod.detectable_effect(sd, 10)
    assert math.isnan(study_mod.detectable_effect(sd, 1))
    # the whole rule also needs 80 % of seeds ahead: never below the effect that makes P(d > 0) ~ 0.8
    assert study_mod.rule_detectable_effect(sd, 30, family=3) > stats.norm.ppf(0.8) * sd
    assert study_mod.rule_power(5.0, sd, 10) == 1.0 and study_mod.rule_power(0.0, sd, 10) < 0.05
    analysis = {"primary": ["a", "b"], "comparisons": {"a": {"std": 3.0}, "b": {"std": 4.0}, "c": {"std": 9.0}}}
    assert study_mod.pooled_sd(analysis) == pytest.approx(math.sqrt(12.5))


def test_the_cpu_study_sd_gives_the_issues_detectable_effect() -> None:
    """Issue 22: with 5 seeds the LFW CPU study could detect ~1.4 rank-1 points; the plan reuses its SD."""
    sd = plan_mod.cpu_study_sd()
    assert 0.005 < sd < 0.01
    assert study_mod.detectable_effect(sd, 5, family=3) == pytest.approx(0.0138, abs=0.001)


def test_tree_fingerprint_names_the_code_without_git(tmp_path: Path) -> None:
    """Where .git is missing (the GPU machine's copy), a hash of the source files stands in for the commit."""
    prov = sys.modules["_provenance"]
    (tmp_path / "facerco").mkdir()
    (tmp_path / "facerco" / "a.py").write_text("x = 1\n")
    (tmp_path / "notes.txt").write_text("not source\n")
    first = prov.tree_fingerprint(tmp_path)
    assert first["files"] == 1 and prov.tree_fingerprint(tmp_path) == first
    (tmp_path / "notes.txt").write_text("changed\n")
    assert prov.tree_fingerprint(tmp_path) == first
    (tmp_path / "facerco" / "a.py").write_text("x = 2\n")
    assert prov.tree_fingerprint(tmp_path)["sha256"] != first["sha256"]


def test_a_dry_run_without_lfw_generates_faces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where ../shared/data is absent (CI), the dry run's data step renders generated faces in the same layout."""
    monkeypatch.setattr(pack_mod, "find_lfw", lambda explicit=None: None)
    args = study.parse_args(["data", "--dry-run", "--image-size", "16", "--train-ids", "3", "--images-per-id", "2",
                             "--val-ids", "2", "--val-distractors", "3", "--test-ids", "2", "--test-distractors", "3",
                             "--eval-images-per-id", "2", "--epochs", "4"])
    layout = study.Layout.at(tmp_path / "work", tmp_path / "out")
    record = study.data_step(args, layout)
    assert record["source"] == "generated" and record["counts"]["train"] == 6 and record["pairs"]["val"] == 120
    val = np.load(layout.data / "val_labels.npy")
    distractors = np.load(layout.data / "val_distractors_labels.npy")
    assert val.tolist() == [0, 0, 1, 1] and distractors.tolist() == [2, 3, 4]  # singletons after the people
    assert np.load(layout.data / "train_images.npy").shape == (6, 16, 16, 3)
    with pytest.raises(SystemExit, match="pack"):  # a study run (not a dry run) never falls back to generated faces
        monkeypatch.setattr(pack_mod, "find_pack", lambda explicit=None: None)
        study.resolve_source(study.parse_args(["data"]), layout)
