"""Tiny-size runs of the study and throughput benchmarks (so they cannot rot), plus known-answer checks of their
table arithmetic. Every fixture (IDX files, an LFW-shaped split of generated images) is written by the tests."""

from __future__ import annotations

import gzip
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import rco_fmnist  # noqa: E402
import rco_lfw  # noqa: E402

# ---------------------------------------------------------------------------------------------------------------
# Fashion-MNIST companion
# ---------------------------------------------------------------------------------------------------------------


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + arr.astype(np.uint8).tobytes())


def _fake_fmnist(root: Path, n_train: int, n_test: int) -> None:
    """Ten classes, each a bright 7x7 block at its own place on noise: learnable in a few steps."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 60, (n, 28, 28))
        for i, c in enumerate(labels):
            r, col = divmod(int(c), 4)
            images[i, 7 * r: 7 * r + 7, 7 * col: 7 * col + 7] = 250
        _write_idx(root / f"{split}-images-idx3-ubyte.gz", images)
        _write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels)


def test_read_idx_known_answer_and_bad_files(tmp_path: Path) -> None:
    arr = np.arange(2 * 3 * 4).reshape(2, 3, 4).astype(np.uint8)
    _write_idx(tmp_path / "a.gz", arr)
    np.testing.assert_array_equal(rco_fmnist.read_idx(tmp_path / "a.gz"), arr)
    (tmp_path / "bad").write_bytes(b"\x00\x00\x0d\x01" + (3).to_bytes(4, "big") + b"abc")
    with pytest.raises(ValueError, match="bad: not an unsigned-byte IDX"):
        rco_fmnist.read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + b"abc")
    with pytest.raises(ValueError, match="short: header says"):
        rco_fmnist.read_idx(tmp_path / "short")


def test_study_analysis_known_answer() -> None:
    import _study

    # deltas +1, +2, +3 points over three seeds: mean 2, sd 1, t = 2 / (1 / sqrt 3) = 3.464, 2 d.f.
    values = {"kd_final": {1: 0.80, 2: 0.80, 3: 0.80}, "phase": {1: 0.81, 2: 0.82, 3: 0.83},
              "lockstep": {1: 0.79, 2: 0.80, 3: 0.81}, "early": {1: 0.80, 2: 0.80, 3: 0.80}}
    a = _study.analyse(values, "kd_final", ["phase", "lockstep"], ["early"], min_gain=0.002)
    c = a["comparisons"]["phase"]
    assert c["mean"] == pytest.approx(0.02) and c["wins"] == 3 and c["n"] == 3
    t = 0.02 / (0.01 / math.sqrt(3))
    assert c["p_t"] == pytest.approx(0.5 * (1 - t / math.sqrt(2 + t * t)), rel=1e-4)  # one-sided, 2 d.f.
    half = 4.302653 * 0.01 / math.sqrt(3)  # t(0.975, 2) = 4.3027
    assert c["ci95"] == pytest.approx([0.02 - half, 0.02 + half], rel=1e-4)
    # Holm over the family {phase, lockstep}: the smaller p is doubled, the larger kept (monotone)
    pl = a["comparisons"]["lockstep"]["p_t"]
    assert c["p_holm"] == pytest.approx(min(1.0, 2 * c["p_t"]))
    assert a["comparisons"]["lockstep"]["p_holm"] == pytest.approx(max(2 * c["p_t"], pl))
    assert a["verdicts"]["phase"]["checks"]["gain>=min"] and a["verdicts"]["phase"]["checks"]["ahead_of_controls"]
    assert not a["verdicts"]["lockstep"]["success"]
    assert _study.holm({"a": 0.01, "b": 0.04, "c": float("nan")}) == pytest.approx(
        {"a": 0.02, "b": 0.04, "c": float("nan")}, nan_ok=True)


@pytest.mark.slow
def test_rco_fmnist_tiny_run(tmp_path: Path) -> None:
    data = tmp_path / "fm"
    data.mkdir()
    _fake_fmnist(data, 420, 100)
    out = tmp_path / "out"
    argv = ["--allow-dirty", "--data", str(data), "--val-size", "100", "--teacher-epochs", "4", "--student-epochs",
            "4", "--batch", "32", "--seeds", "0", "1", "--probe-images", "64", "--student-width", "8",
            "--gate-gap", "-100", "--gate-kd", "-100", "--out", str(out)]
    assert rco_fmnist.main(argv) == 0
    result = json.loads((out / "rco_fmnist.json").read_text())
    assert result["train_images"] == 320 and result["val_images"] == 100 and result["counted_seeds"] == [1]
    assert [r["variant"] for r in result["summary"]["rows"]] == list(rco_fmnist.VARIANTS)
    assert [p["name"] for p in result["route"]] == ["epoch_001", "epoch_002", "epoch_003", "epoch_004"]
    assert [round(p["lr"], 6) for p in result["route"]] == [0.1, 0.1, 0.01, 0.001]  # drops after epochs 2 and 3
    by = {r["variant"]: r for r in result["runs"] if r["seed"] == 1}
    assert by["kd_final"]["anchors"] == ["epoch_004"] and by["scratch"]["anchors"] == []
    assert by["phase"]["anchors"] == ["epoch_002", "epoch_003", "epoch_004"]
    assert by["lockstep"]["anchors"] == ["epoch_001", "epoch_002", "epoch_003", "epoch_004"]
    assert by["reverse"]["anchors"] == ["epoch_004", "epoch_003", "epoch_002", "epoch_001"]
    assert by["ensemble"]["anchors"] == ["ensemble(epoch_002+epoch_003+epoch_004)"]
    assert len(by["early"]["anchors"]) == 1 and by["early"]["anchors"][0] in ("epoch_001", "epoch_002", "epoch_003")
    assert "?" not in by["rco_gss_online"]["anchors"] and by["rco_gss_online"]["anchors"][-1] == "epoch_004"
    assert all(r["steps"] == 40 for r in result["runs"])
    assert all(0.0 <= r["test_acc"] <= 1.0 for r in result["runs"] if r["seed"] == 1)
    assert all(r["test_acc"] is None and r["congruence_final"] is None for r in result["runs"] if r["seed"] == 0)
    block = result["provenance"]
    assert block["recorded"] and block["counted"] and block["allow_dirty"] and block["argv"][-1] == str(out)
    assert sum(c["runs"] for c in block["run_codes"]) == len(result["runs"])
    assert result["gate"]["passed"] and result["teacher_test_acc"] > 0.5  # the blocks are easy
    md = (out / "rco_fmnist.md").read_text()
    assert "Pilot gate" in md and "Verdicts" in md and (out / "rco_fmnist.png").stat().st_size > 0
    # a rerun reuses the finished teacher and students (no training: same numbers)
    assert rco_fmnist.main(argv) == 0
    again = json.loads((out / "rco_fmnist.json").read_text())
    assert [r["test_acc"] for r in again["runs"]] == [r["test_acc"] for r in result["runs"]]
    # a failed gate stops before the counted seeds and says so
    gated = list(argv)
    gated[gated.index("--gate-gap") + 1], gated[-1] = "100", str(tmp_path / "gated")
    assert rco_fmnist.main(gated) == 0
    g = json.loads((tmp_path / "gated" / "rco_fmnist.json").read_text())
    assert not g["gate"]["passed"] and g["counted_seeds"] == [] and {r["seed"] for r in g["runs"]} == {0}
    assert _test_numbers(g) == [] and g["summary"]["endpoint"] == "val_acc"


def _test_numbers(obj: object, path: str = "") -> list[str]:
    """Paths of numbers stored under a key naming test; sizes are not metrics (``test_images``, ``counts``)."""
    found = []
    if isinstance(obj, dict):
        for key, value in obj.items():
            where = f"{path}/{key}"
            if key in ("test_images", "counts"):
                continue
            if "test" in str(key).lower() and _has_number(value):
                found.append(where)
            else:
                found += _test_numbers(value, where)
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            found += _test_numbers(value, f"{path}[{i}]")
    return found


def _has_number(obj: object) -> bool:
    if isinstance(obj, dict):
        return any(_has_number(v) for v in obj.values())
    if isinstance(obj, list):
        return any(_has_number(v) for v in obj)
    return isinstance(obj, (int, float)) and not isinstance(obj, bool)


def test_a_pilot_run_reads_no_test_number(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 22, item 2: a pilot-only study (the pilot seed alone) computes no test metric; its JSON, table and
    printout hold none, and it is recorded as not counted."""
    data, out = tmp_path / "fm", tmp_path / "out"
    data.mkdir()
    _fake_fmnist(data, 140, 40)
    assert rco_fmnist.main(["--data", str(data), "--val-size", "40", "--teacher-epochs", "2", "--student-epochs", "1",
                            "--batch", "25", "--seeds", "0", "--probe-images", "16", "--variants", "scratch",
                            "kd_final", "early", "--out", str(out)]) == 0
    result = json.loads((out / "rco_fmnist.json").read_text())
    assert result["counted_seeds"] == [] and len(result["runs"]) == 3 and result["test_images"] == 40
    assert _test_numbers(result) == []
    assert result["provenance"]["counted"] is False
    md = (out / "rco_fmnist.md").read_text()
    rows = [line.split("|") for line in md.splitlines() if line.startswith(("| scratch", "| kd_final", "| early"))]
    assert "test not read" in md and len(rows) == 3 and all(row[4].strip() == "–" for row in rows)
    assert not re.search(r"\btest\b[ :=]*[-+]?\d", capsys.readouterr().out)  # no "test 81.2" printed


def test_test_number_walk() -> None:
    record = {"test_images": 3, "counts": {"test": {"images": 5}}, "teacher_test_acc": 0.9, "flag_test": True,
              "runs": [{"test_acc": None, "val": 1}, {"test": {"rank1": 0.5}}]}
    assert _test_numbers(record) == ["/teacher_test_acc", "/runs[1]/test"]


# ---------------------------------------------------------------------------------------------------------------
# LFW study
# ---------------------------------------------------------------------------------------------------------------


def _face(rng: np.random.Generator, ident: int) -> np.ndarray:
    """A 40x40 image whose colour layout depends on the identity, plus noise."""
    base = np.random.default_rng(1000 + ident).integers(0, 255, (4, 4, 3)).astype(np.float32)
    img = cv2.resize(base, (40, 40), interpolation=cv2.INTER_LINEAR) + rng.normal(0, 10, (40, 40, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _fake_split(root: Path) -> None:
    """An LFW-shaped prepared split (format version 2): train/ (6 ids x 4); val/ (3 validation ids x 3 + 4
    validation singletons) with pairs_val.txt; eval/ (4 test ids x 3 + 6 test singletons) with pairs_heldout.txt."""
    from facerco.data.lfw_split import SPLIT_VERSION, LFWPair, LFWSplit, format_pairs
    from facerco.utils.io import write_json

    rng = np.random.default_rng(0)
    train = [f"Train_{k}" for k in range(6)]
    val, val_single = [f"Val_{k}" for k in range(3)], [f"ValSingle_{k}" for k in range(4)]
    test, single = [f"Test_{k}" for k in range(4)], [f"Single_{k}" for k in range(6)]
    layout = (("train", train, 4, 0), ("val", val, 3, 30), ("val", val_single, 1, 40), ("eval", test, 3, 10),
              ("eval", single, 1, 20))
    for folder, names, count, offset in layout:
        for k, name in enumerate(names):
            (root / folder / name).mkdir(parents=True)
            for i in range(count):
                cv2.imwrite(str(root / folder / name / f"{name}_{i + 1:04d}.jpg"), _face(rng, offset + k))

    def pairs(people: list[str], singles: list[str]) -> list[LFWPair]:
        out = []
        for fold in range(10):
            a, b = people[fold % len(people)], singles[fold % len(singles)]
            out += [LFWPair(a, 1, a, 2 + fold % 2, True, fold), LFWPair(a, 3, b, 1, False, fold)]
        return out

    split = LFWSplit(0, 6, train, test, single, pairs(test, single), 1, val=val, val_distractors=val_single,
                     val_pairs=pairs(val, val_single), val_pairs_per_set=1, val_pairs_source="generated")
    (root / "pairs_heldout.txt").write_text(format_pairs(split, "test"))
    (root / "pairs_val.txt").write_text(format_pairs(split, "val"))
    write_json(root / "split.json", {"format_version": SPLIT_VERSION, "counts": {"train_images": 24},
                                     "train": train, "val": val, "val_distractors": val_single, "test": test,
                                     "test_distractors": single, "distractors": single})


def _lfw_run(variant: str, seed: int, test_rank1: float, val_rank1: float) -> dict:
    return {"variant": variant, "seed": seed, "anchors": [] if variant == "scratch" else ["epoch_004"],
            "steps": 12, "total_steps": 12, "seconds": 2.0, "congruence_final": 0.01 * (seed + 1),
            "val": {"rank1": val_rank1, "pairs_acc": 0.7, "tar_far1e-3": 0.2},
            "test": {"rank1": test_rank1, "pairs_acc": 0.6, "tar_far1e-3": 0.1}}


def test_lfw_summary_and_verdict_known_answer() -> None:
    variants = ["scratch", "mimic_final", "early", "phase", "lockstep"]
    runs = [_lfw_run("scratch", 0, 0.20, 0.30), _lfw_run("mimic_final", 0, 0.25, 0.31)]
    for s in (1, 2, 3):  # phase: test rank-1 +1, +2, +3 points over mimic_final; lockstep: -1, 0, +1; early: 0
        runs += [_lfw_run("scratch", s, 0.20, 0.30), _lfw_run("mimic_final", s, 0.50, 0.40),
                 _lfw_run("early", s, 0.50, 0.40), _lfw_run("phase", s, 0.50 + 0.01 * s, 0.40),
                 _lfw_run("lockstep", s, 0.49 + 0.01 * (s - 1), 0.40)]
    summary = rco_lfw.summarize(runs, variants, [1, 2, 3])
    rows = {r["variant"]: r for r in summary["rows"]}
    assert [r["role"] for r in summary["rows"]] == ["baseline", "reference", "control", "primary", "primary"]
    assert rows["phase"]["n"] == 3 and rows["phase"]["test/rank1"] == pytest.approx((0.52, 0.01))
    assert rows["phase"]["congruence_final"] == pytest.approx((0.03, 0.01))
    assert rows["scratch"]["anchors"] == [] and rows["phase"]["val/rank1"] == pytest.approx((0.40, 0.0))
    a = summary["analysis"]
    assert a["primary"] == ["phase", "lockstep"] and a["controls"] == ["early"]
    c = a["comparisons"]["phase"]
    assert c["mean"] == pytest.approx(0.02) and c["wins"] == 3 and c["seeds"] == [1, 2, 3]  # pilot not counted
    t = 0.02 / (0.01 / math.sqrt(3))
    assert c["p_t"] == pytest.approx(0.5 * (1 - t / math.sqrt(2 + t * t)), rel=1e-4)  # one-sided, 2 d.f.
    assert c["p_holm"] == pytest.approx(2 * c["p_t"])  # the smaller of the two primary p-values, doubled
    assert a["verdicts"]["phase"]["vs_controls"]["early"] == pytest.approx(0.02)
    # p_t = 0.037, Holm over {phase, lockstep (p 0.5)} doubles it to 0.074: only the Holm check fails
    assert a["verdicts"]["phase"]["checks"] == {"holm_p<alpha": False, "gain>=min": True, "wins>=share": True,
                                                "ahead_of_controls": True}
    assert a["comparisons"]["lockstep"]["mean"] == pytest.approx(0.0, abs=1e-12)
    assert not a["verdicts"]["lockstep"]["success"]
    # the pilot gate reads validation rank-1 of seed 0 only: 0.40 - 0.30 = 10 points, 0.31 - 0.30 = 1 point
    gate = rco_lfw.pilot_gate(runs, {"rank1": 0.40, "pairs_acc": 0.8}, 0, 4.0, 0.5)
    assert gate["passed"] and gate["teacher_minus_scratch"] == pytest.approx(0.10)
    assert gate["mimic_minus_scratch"] == pytest.approx(0.01) and gate["pairs_acc"]["teacher"] == 0.8
    assert not rco_lfw.pilot_gate(runs, {"rank1": 0.33}, 0, 4.0, 0.5)["passed"]  # 3-point gap is too small
    assert not rco_lfw.pilot_gate(runs, {"rank1": 0.40}, 0, 4.0, 2.0)["passed"]  # mimic gain under 2 points
    assert not rco_lfw.pilot_gate(runs, {"rank1": 0.40}, 7, 4.0, 0.5)["passed"]  # no pilot runs: nan fails
    route = {"final": "epoch_002", "arch": "iresnet_small", "params": 1000,
             "points": [{"name": "epoch_001", "epoch": 1.0, "lr": 0.1, "route_val": {"pairs_val/accuracy": 0.7},
                         "val": {"rank1": 0.3, "pairs_acc": 0.7}},
                        {"name": "epoch_002", "epoch": 2.0, "lr": 0.01, "route_val": {},
                         "val": {"rank1": 0.4, "pairs_acc": 0.8}, "test": {"rank1": 0.45}}]}
    counts = {"probe_identities": 3, "probes": 9, "distractors": 4, "pairs": 20}
    result = {"route": route, "gate": gate, "summary": summary, "student": "mobilefacenet", "student_params": 77,
              "epochs": 4, "image_size": 32, "multi_stage_note": "", "counted_seeds": [1, 2, 3],
              "table_seeds": [1, 2, 3], "counts": {"train": {"identities": 6, "images": 24}, "val": counts,
                                                   "test": counts}}
    md = rco_lfw.format_markdown(result)
    assert "| phase | primary | ep4 | 52.00 ± 1.00 | +2.00 (" in md and "| 3/3 |" in md
    assert "| epoch_002 (final) | 0.01 | 40.00 | 80.00 | – |" in md and "pairs_val/accuracy 70.00" in md
    assert "Pilot gate (seed 0, validation rank-1): teacher − scratch +10.00" in md and "**passed**" in md
    assert "- phase: Δ +2.00 points" in md and "teacher iresnet_small (1000 params, test rank-1 45.00 %)" in md


def test_lfw_study_refuses_old_split_and_test_validated_teacher(tmp_path: Path) -> None:
    from facerco.config import dump_config, load_config
    from facerco.utils.io import write_json

    data = tmp_path / "lfw"
    data.mkdir()
    (data / "pairs_heldout.txt").write_text("1\t0\n")
    write_json(data / "split.json", {"format_version": 1, "train": [], "test": [], "distractors": []})
    with pytest.raises(ValueError, match="prepared before the validation split.*re-run"):
        rco_lfw.ensure_data(data, tmp_path / "no_lfw")
    run = tmp_path / "teacher"
    run.mkdir()
    cfg = load_config(ROOT / "configs/teacher/lfw_cpu_study.yaml", [f"data.val_pairs={data / 'pairs_heldout.txt'}"])
    (run / "config.yaml").write_text(dump_config(cfg))
    with pytest.raises(ValueError, match="validates on its reported test set"):
        rco_lfw.check_teacher_validation(run, data)
    cfg = load_config(ROOT / "configs/teacher/lfw_cpu_study.yaml", [f"data.val_pairs={data / 'pairs_val.txt'}"])
    (run / "config.yaml").write_text(dump_config(cfg))
    rco_lfw.check_teacher_validation(run, data)  # validation on its own pairs: accepted


@pytest.mark.slow
def test_rco_lfw_tiny_run(tmp_path: Path) -> None:
    data = tmp_path / "lfw"
    _fake_split(data)
    out = tmp_path / "out"
    teacher = tmp_path / "teacher"
    four_epochs = ["schedule.warmup_epochs=0", "schedule.milestones=[2,3]"]  # the study's route, shrunk: 3 phases
    argv = ["--allow-dirty", "--data", str(data), "--teacher-run", str(teacher),
            "--teacher-set", "model.name=iresnet_tiny", "train.epochs=4", *four_epochs, "train.batch_size=8",
            "train.log_every=1", "train.progress=false", "train.tensorboard=false", "train.checkpoint_every_steps=0",
            "--epochs", "4", "--seeds", "0", "1", "--gate-gap", "-100", "--gate-mimic", "-100",
            "--variants", "scratch", "mimic_final", "early", "rco_eeis_multi", "lockstep", "phase", "reverse",
            "--set", "train.batch_size=8", "train.log_every=1", "distill.gss.probe_images=16", *four_epochs,
            "--out", str(out)]
    assert rco_lfw.main(argv) == 0
    result = json.loads((out / "rco_lfw.json").read_text())
    assert result["counted_seeds"] == [1] and result["gate"]["passed"]
    assert result["distill"]["variant"] == "mimic_final" and result["distill"]["mimic_weight"] > 0  # not scratch's
    assert result["counts"]["val"] == {"images": 13, "probes": 9, "probe_identities": 3, "distractors": 4,
                                       "pairs": 20}
    assert result["counts"]["test"] == {"images": 18, "probes": 12, "probe_identities": 4, "distractors": 6,
                                        "pairs": 20}
    assert [p["name"] for p in result["route"]["points"]][-1] == "epoch_004"
    assert [round(p["lr"], 6) for p in result["route"]["points"] if p["epoch"] > 0] == [0.1, 0.1, 0.01, 0.001]
    by = {r["variant"]: r for r in result["runs"] if r["seed"] == 1}
    assert by["scratch"]["anchors"] == [] and by["mimic_final"]["anchors"] == ["epoch_004"]
    assert by["phase"]["anchors"] == ["epoch_002", "epoch_003", "epoch_004"]
    assert by["lockstep"]["anchors"] == ["epoch_001", "epoch_002", "epoch_003", "epoch_004"]
    assert by["reverse"]["anchors"] == ["epoch_004", "epoch_003", "epoch_002", "epoch_001"]
    assert len(by["early"]["anchors"]) == 1 and by["early"]["anchors"][0] in ("epoch_001", "epoch_002")
    assert result["multi_stage_schedule"] == {"variants": ["rco_eeis_multi"], "warmup_epochs": 0.0,
                                              "milestones": [0.5, 0.75]}
    assert result["roles"]["reverse"] == "control" and result["summary"]["analysis"]["controls"] == ["early",
                                                                                                     "reverse"]
    for r in result["runs"]:
        assert r["steps"] == 12 and r["congruence_final"] >= 0.0
        splits = ("val", "test") if r["seed"] == 1 else ("val",)
        assert all(0.0 <= r[s][k] <= 1.0 for s in splits for k in ("rank1", "pairs_acc", "tar_far1e-3"))
        assert r["seed"] == 1 or r["test"] is None  # the pilot's test is not read
    assert result["provenance"]["counted"] and result["provenance"]["allow_dirty"]
    assert (out / "cache" / "manifest.json").is_file()  # students read anchor targets from the cache
    md = (out / "rco_lfw.md").read_text()
    assert "Pilot gate" in md and "Verdicts" in md and (out / "rco_lfw.png").stat().st_size > 0
    # a rerun reuses the teacher, the cache and the students (same numbers); --aggregate-only tabulates the same
    for extra in ([], ["--aggregate-only"]):
        assert rco_lfw.main([*argv, *extra]) == 0
        again = json.loads((out / "rco_lfw.json").read_text())
        assert [r["test"] for r in again["runs"]] == [r["test"] for r in result["runs"]]
    # a failed gate stops before the counted seeds and says so (seed 2 is never trained)
    gated = [*argv[:argv.index("--seeds")], "--seeds", "0", "2", "--gate-gap", "100", *argv[argv.index("--variants"):]]
    assert rco_lfw.main(gated) == 0
    g = json.loads((out / "rco_lfw.json").read_text())
    assert not g["gate"]["passed"] and g["counted_seeds"] == [] and {r["seed"] for r in g["runs"]} == {0}
    assert _test_numbers(g) == [] and g["summary"]["endpoint"] == "val rank1"
    assert not list((out / "runs").glob("*/seed2")) and "the counted seeds were not run" in (out / "rco_lfw.md"
                                                                                             ).read_text()


# ---------------------------------------------------------------------------------------------------------------
# Throughput and the GPU check (CPU sizes)
# ---------------------------------------------------------------------------------------------------------------


def test_distill_and_train_throughput_tiny(tmp_path: Path) -> None:
    import distill_throughput
    import train_throughput

    assert distill_throughput.main(["--device", "cpu", "--teachers", "iresnet_tiny", "--image-size", "32",
                                    "--batch", "4", "--window", "1", "--windows", "2",
                                    "--out", str(tmp_path / "d.json")]) == 0
    d = json.loads((tmp_path / "d.json").read_text())
    assert [r["mode"] for r in d["rows"]] == ["scratch", "online_iresnet_tiny", "cached"]
    assert all(r["samples_per_s"] > 0 and r["steps"] == 2 for r in d["rows"])
    rates = [r["samples_per_s"] for r in d["rows"]]
    assert d["ratios"]["cached_vs_scratch"] == pytest.approx(rates[2] / rates[0])
    assert d["provenance"]["recorded"] and not d["provenance"]["counted"]  # written outside benchmarks/results/
    assert train_throughput.main(["--device", "cpu", "--models", "iresnet_tiny", "--image-size", "32", "--batch", "4",
                                  "--window", "1", "--windows", "2", "--out", str(tmp_path / "t.json")]) == 0
    t = json.loads((tmp_path / "t.json").read_text())
    assert t["rows"][0]["model"] == "iresnet_tiny" and t["rows"][0]["samples_per_s"] > 0


def test_gpu_eval_export_identification_dry(tmp_path: Path) -> None:
    import gpu_eval_export

    assert gpu_eval_export.main(["--device", "cpu", "--distractors", "2000", "--probes", "60", "--identities", "6",
                                 "--dim", "64", "--data", str(tmp_path), "--skip", "onnx",
                                 "--out", str(tmp_path / "g.json")]) == 0
    g = json.loads((tmp_path / "g.json").read_text())["identification"]
    assert g["backends_agree"] and g["rows"][0]["backend"] == "torch" and 0.0 <= g["rows"][0]["rank1"] <= 1.0


def test_gpu_check_script_parses() -> None:
    subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_check.sh")], check=True)
