"""Tiny-size runs of the study and throughput benchmarks (so they cannot rot), plus known-answer checks of their
table arithmetic. Every fixture (IDX files, an LFW-shaped split of generated images) is written by the tests."""

from __future__ import annotations

import gzip
import json
import math
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
    argv = ["--data", str(data), "--val-size", "100", "--teacher-epochs", "4", "--student-epochs", "4",
            "--batch", "32", "--seeds", "0", "1", "--probe-images", "64", "--student-width", "8",
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
    assert all(0.0 <= r["test_acc"] <= 1.0 and r["steps"] == 40 for r in result["runs"])
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


# ---------------------------------------------------------------------------------------------------------------
# LFW study
# ---------------------------------------------------------------------------------------------------------------


def _face(rng: np.random.Generator, ident: int) -> np.ndarray:
    """A 40x40 image whose colour layout depends on the identity, plus noise."""
    base = np.random.default_rng(1000 + ident).integers(0, 255, (4, 4, 3)).astype(np.float32)
    img = cv2.resize(base, (40, 40), interpolation=cv2.INTER_LINEAR) + rng.normal(0, 10, (40, 40, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _fake_split(root: Path) -> None:
    """An LFW-shaped prepared split: train/ (6 ids x 4), eval/ (4 test ids x 3 + 6 singletons), pairs, split.json."""
    from facerco.data.lfw_split import LFWPair, LFWSplit, format_pairs
    from facerco.utils.io import write_json

    rng = np.random.default_rng(0)
    train = [f"Train_{k}" for k in range(6)]
    test = [f"Test_{k}" for k in range(4)]
    distractors = [f"Single_{k}" for k in range(6)]
    for folder, names, count, offset in (("train", train, 4, 0), ("eval", test, 3, 10), ("eval", distractors, 1, 20)):
        for k, name in enumerate(names):
            (root / folder / name).mkdir(parents=True)
            for i in range(count):
                cv2.imwrite(str(root / folder / name / f"{name}_{i + 1:04d}.jpg"), _face(rng, offset + k))
    pairs = []
    for fold in range(10):
        a, b = test[fold % 4], test[(fold + 1) % 4]
        pairs += [LFWPair(a, 1, a, 2 + fold % 2, True, fold), LFWPair(a, 3, b, 1, False, fold)]
    split = LFWSplit(0, 6, train, test, distractors, pairs, 1)
    (root / "pairs_heldout.txt").write_text(format_pairs(split))
    write_json(root / "split.json", {"test": test, "distractors": distractors, "train": train})


def test_lfw_summary_and_verdict_known_answer() -> None:
    def run(variant: str, seed: int, acc: float, rank1: float) -> dict:
        return {"variant": variant, "seed": seed, "anchors": [], "seconds": 1.0, "congruence": 0.1,
                "val": {"heldout_pairs/accuracy": acc, "megaface/rank1": rank1, "megaface/tar_far1e-3": 0.5,
                        "heldout_pairs/tar_far1e-3": 0.5}}

    runs = [run("mimic_final", s, 0.80, 0.10) for s in range(3)]
    runs += [run("rco_eeis_one", 0, 0.810, 0.10), run("rco_eeis_one", 1, 0.811, 0.10),
             run("rco_eeis_one", 2, 0.812, 0.10)]
    rows = rco_lfw.summarize(runs, ["mimic_final", "rco_eeis_one"])
    rco = rows[1]
    assert rco["delta/heldout_pairs/accuracy"][0] == pytest.approx(0.011)
    assert rco["wins/heldout_pairs/accuracy"] == [3, 3]
    assert rco["wins/megaface/rank1"] == [0, 3]
    t, p = rco["test/heldout_pairs/accuracy"]  # deltas 0.010, 0.011, 0.012: mean 0.011, sd 0.001, n 3
    assert t == pytest.approx(0.011 / (0.001 / math.sqrt(3)))
    assert p == pytest.approx(0.002743, abs=2e-5)  # two-sided, 2 d.f.: 1 - |t|/sqrt(2 + t^2)
    text = " ".join(rco_lfw.verdict(rows))
    assert "held-out pairs acc +1.10 (ahead, p=0.00; ahead on 3/3 seeds)" in text
    assert "rank-1 +0.00 (no clear difference; ahead on 0/3 seeds)" in text


@pytest.mark.slow
def test_rco_lfw_tiny_run(tmp_path: Path) -> None:
    data = tmp_path / "lfw"
    _fake_split(data)
    out = tmp_path / "out"
    teacher = tmp_path / "teacher"
    args = ["--data", str(data), "--teacher-run", str(teacher),
            "--teacher-config", str(ROOT / "configs/teacher/lfw_cpu.yaml"),
            "--teacher-set", "data.image_size=32", "train.epochs=2", "train.batch_size=8", "train.val_every_epochs=1",
            "train.log_every=1", "train.progress=false", "train.tensorboard=false",
            "--config-dir", str(ROOT / "configs/student"), "--image-size", "32", "--epochs", "2", "--seeds", "0",
            "--set", "train.batch_size=8", "train.log_every=1", "distill.gss_probe_images=16",
            "--teacher-eval", "final", "--out", str(out)]
    assert rco_lfw.main(args) == 0
    result = json.loads((out / "rco_lfw.json").read_text())
    assert [r["variant"] for r in result["rows"]] == list(rco_lfw.VARIANT_NAMES)
    assert result["counts"] == {"eval_images": 18, "probes": 12, "probe_identities": 4, "distractors": 6,
                                "heldout_pairs": 20}
    by = {r["variant"]: r for r in result["runs"]}
    assert by["mimic_final"]["anchors"] == ["epoch_002"] and by["mimic_best"]["anchors"] == ["epoch_001"]
    assert by["rco_eeis_one"]["anchors"] == ["epoch_001", "epoch_002"]
    for r in result["runs"]:
        assert set(r["val"]) >= {k for k, _ in rco_lfw.METRICS}
        assert all(0.0 <= r["val"][k] <= 1.0 for k, _ in rco_lfw.METRICS)
    assert (out / "cache" / "manifest.json").is_file()  # students read anchor targets from the cache
    assert result["teacher"]["points"][0]["name"] == "epoch_002"
    assert "Verdict" in (out / "rco_lfw.md").read_text() and (out / "rco_lfw.png").stat().st_size > 0


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
