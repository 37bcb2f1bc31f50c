"""`facerco demo --quick`: the whole chain runs end to end, writes its table, and a rerun resumes."""

from __future__ import annotations

import json

from facerco.cli import main


def test_quick_demo_runs_and_resumes(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [r["model"] for r in summary["rows"]] == ["teacher", "scratch", "mimic_final", "phase", "mimic_final_seed+1"]
    for row in summary["rows"]:
        assert 0.0 <= row["ver_acc"] <= 1.0 and 0.0 <= row["rank1"] <= 1.0
        assert row["distractors"] == 200
    student = next(r for r in summary["rows"] if r["model"] == "mimic_final")
    assert 0.75e6 < student["params_M"] * 1e6 < 0.85e6
    # differences to the recommended student, marked against its own two-seed spread
    rows = {r["model"]: r for r in summary["rows"]}
    noise = rows["mimic_final"]["noise"]
    for name in ("scratch", "phase"):
        for metric in ("ver_acc", "rank1"):
            delta = rows[name][metric] - rows["mimic_final"][metric]
            assert rows[name]["delta"][metric] == delta
            assert rows[name]["within_noise"][metric] == (abs(delta) <= noise[metric])
    assert noise["rank1"] == abs(rows["mimic_final"]["rank1"] - rows["mimic_final_seed+1"]["rank1"])
    # validation identities are not the reported test identities
    assert (out / "data" / "val.bin").is_file() and (out / "data" / "heldout.bin").is_file()
    assert (out / "data" / "val.bin").read_bytes() != (out / "data" / "heldout.bin").read_bytes()
    assert summary["onnx_parity"]["summary"]["min_cosine"] >= 0.9999
    for name in ("summary.md", "eval/report.md", "eval/cmc.png", "eval/roc.png", "teacher/route.json",
                 "teacher/route.png", "students/compare.md", "export/student.onnx", "data/train_rec/train.rec"):
        assert (out / name).is_file(), name
    # A rerun finds every stage finished: the route and the student checkpoints are not rewritten.
    route_mtime = (out / "teacher" / "route.json").stat().st_mtime_ns
    ckpt = out / "students" / "phase" / "seed0" / "student.safetensors"
    ckpt_mtime = ckpt.stat().st_mtime_ns
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    assert (out / "teacher" / "route.json").stat().st_mtime_ns == route_mtime
    assert ckpt.stat().st_mtime_ns == ckpt_mtime


def test_only_the_recommended_student_reads_the_anchor_cache(tmp_path):
    from facerco.demo import RECOMMENDED, STUDENT_VARIANTS, student_variants

    cache = tmp_path / "anchor_cache"
    variants = student_variants([f"distill.teacher_run={tmp_path / 'teacher'}"], cache)
    assert [v.name for v in variants] == list(STUDENT_VARIANTS)
    assert {v.name: v.cfg.distill.cache for v in variants} == {"scratch": "", RECOMMENDED: str(cache), "phase": ""}
    assert all(v.cfg.train.val_every_epochs == 0 and v.cfg.train.channels_last for v in variants)
    assert [v.name for v in student_variants([], cache, [RECOMMENDED])] == [RECOMMENDED]


def test_demo_threads_follow_the_free_cores_unless_pinned():
    from facerco.utils.threads import choose_threads as demo_threads  # the demo's choice, shared with the jobs

    assert demo_threads(cpus=2, busy=0.1, default=2) == 2  # idle: every core
    assert demo_threads(cpus=2, busy=1.05, default=2) == 1  # one core held by another process
    assert demo_threads(cpus=2, busy=5.0, default=2) == 1  # never below one
    assert demo_threads(cpus=16, busy=0.0, default=4) == 4  # never above torch's default
    assert demo_threads(3, cpus=2, busy=2.0, default=2) == 3  # --threads pins it


def test_busy_cores_sees_a_busy_loop_in_another_process():
    import subprocess
    import sys

    from facerco.utils.threads import busy_cores

    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        assert busy_cores(0.5) >= 0.7  # the loop holds about one core (more if the machine is otherwise busy)
    finally:
        spinner.kill()
        spinner.wait()
