"""The route strategies through the student job on a tiny teacher route: anchors followed, online GSS resume."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from test_distill_support import student_cfg, train_teacher, write_faces

from facerco.distill.job import run_distill


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A 4-epoch route whose recorded lrs are rewritten to a step schedule (x0.1 after epoch 2)."""
    root = tmp_path_factory.mktemp("strategies")
    faces = write_faces(root / "faces")
    run = train_teacher(faces, root / "teacher")
    manifest = json.loads((run / "route.json").read_text())
    for p, lr, acc in zip(manifest["points"], [0.05, 0.05, 0.005, 0.005], [0.5, 0.7, 0.8, 0.9], strict=True):
        p["lr"], p["val"] = lr, {"acc": acc}
    (run / "route.json").write_text(json.dumps(manifest))
    return faces, run


def _stages_logged(run_dir):
    log = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]
    return {r["step"]: int(r["stage"]) for r in log if r["event"] == "train"}


@pytest.mark.parametrize(("strategy", "anchors"), [
    ("lockstep", ["epoch_001", "epoch_002", "epoch_003", "epoch_004"]),
    ("phase", ["epoch_002", "epoch_004"]),
    ("early", ["epoch_002"]),
    ("ensemble", ["ensemble(epoch_002+epoch_004)"]),
    ("reverse", ["epoch_004", "epoch_002"]),
])
def test_strategy_runs_and_logs_its_anchors(teacher, tmp_path, strategy, anchors):
    faces, run = teacher
    cfg = student_cfg(faces, run, tmp_path / strategy, strategy=strategy, eeis={"num_anchors": 2}, kd_weight=0.2)
    cfg.train.log_every = 1
    result = run_distill(cfg)
    summary = json.loads((tmp_path / strategy / "summary.json").read_text())
    assert summary["anchors"] == anchors == result.anchor_plan.anchors
    assert all(torch.isfinite(torch.tensor(v)) for v in result.last_parts.values())
    stages = _stages_logged(tmp_path / strategy)
    for step, stage in stages.items():  # the stage logged at each step is the plan's
        assert result.stage_plan.stage_at(step - 1).index == stage
    if strategy == "lockstep":  # 4 epochs x 6 steps: student epoch k follows teacher epoch k
        assert [(s.start, s.end) for s in result.stage_plan.stages] == [(0, 6), (6, 12), (12, 18), (18, 24)]


def test_online_gss_resumes_exactly_and_logs_decisions(teacher, tmp_path):
    faces, run = teacher
    kw = {"strategy": "gss_online", "gss": {"max_anchors": 3, "delta": 0.5, "probe_images": 16},
          "final_share": 0.34}
    full = run_distill(student_cfg(faces, run, tmp_path / "full", **kw))
    plan = json.loads((tmp_path / "full" / "plan.json").read_text())
    decisions = plan["online_decisions"]
    assert [d["slot"] for d in decisions] == [0, 1]
    assert decisions[0]["step"] == 0 and decisions[1]["step"] == full.stage_plan.stages[1].start
    assert all(d.get("divergences") or d.get("reason") for d in decisions)
    summary = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert summary["anchors"] == plan["resolved_anchors"] and summary["anchors"][-1] == "epoch_004"
    assert "?" not in summary["anchors"]
    # killed after the second decision, resumed: same decisions, same weights
    boundary = full.stage_plan.stages[1].start
    cut = student_cfg(faces, run, tmp_path / "cut", **kw)
    cut.train.max_steps = boundary + 2
    run_distill(cut)
    cut.train.max_steps = 0
    run_distill(cut)
    again = json.loads((tmp_path / "cut" / "plan.json").read_text())
    assert [d["chosen"] for d in again["online_decisions"]] == [d["chosen"] for d in decisions]
    a, b = (load_file(str(tmp_path / d / "student.safetensors")) for d in ("full", "cut"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_ensemble_from_the_cache_reads_every_member(teacher, tmp_path):
    from facerco.route.cache_writer import build_cache
    from facerco.route.io import load_route
    from facerco.train.job import build_train_dataset

    faces, run = teacher
    route = load_route(run)
    cfg = student_cfg(faces, run, tmp_path / "s", strategy="ensemble")
    names = ["epoch_002", "epoch_004"]
    build_cache(tmp_path / "cache", {n: (lambda n=n: route.load_point(n).model, route.point(n).sha256)
                                     for n in names[:1]}, build_train_dataset(cfg), shard_size=20, progress=False)
    cfg.distill.cache = str(tmp_path / "cache")
    with pytest.raises((KeyError, ValueError), match="epoch_004"):
        run_distill(cfg)
    shutil.rmtree(tmp_path / "cache")
    build_cache(tmp_path / "cache", {n: (lambda n=n: route.load_point(n).model, route.point(n).sha256)
                                     for n in names}, build_train_dataset(cfg), shard_size=20, progress=False)
    assert run_distill(cfg).last_parts["mimic"] > 0


def test_train_student_cli_runs_the_student_job(teacher, tmp_path, capsys):
    from facerco.cli import main
    from facerco.config import dump_config

    faces, run = teacher
    cfg = student_cfg(faces, run, tmp_path / "cli", strategy="phase")
    cfg.train.epochs = 1.0
    path = tmp_path / "student.yaml"
    path.write_text(dump_config(cfg))
    assert main(["train", "student", str(path)]) == 0
    assert f"student: {tmp_path / 'cli' / 'student.safetensors'}  steps 6 " in capsys.readouterr().out  # = distill's
    assert json.loads((tmp_path / "cli" / "summary.json").read_text())["anchors"] == ["epoch_002", "epoch_004"]
