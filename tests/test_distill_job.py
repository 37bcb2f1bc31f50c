"""The student job end to end on a tiny teacher route trained by the engine: plans, resume, cache, gate."""

from __future__ import annotations

import argparse
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from test_distill_support import student_cfg, train_teacher, write_faces

from facerco.distill.job import run_distill
from facerco.distill.planning import prepare_plan
from facerco.distill.plots import read_congruence
from facerco.route.cache_writer import build_cache
from facerco.route.io import load_route
from facerco.train.job import build_train_dataset


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    root = tmp_path_factory.mktemp("rco")
    faces = write_faces(root / "faces")
    return faces, train_teacher(faces, root / "teacher")


def _weights(path):
    return load_file(str(path))


def _same(a, b, atol=0.0):
    return a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), atol=atol, rtol=0) for k in a)


def _cli_plan(argv):
    from facerco.commands.distill import register_route_plan

    parser = argparse.ArgumentParser()
    register_route_plan(parser.add_subparsers())
    args = parser.parse_args(["plan", *argv])
    return args.func(args)


@pytest.mark.parametrize("distill", [
    {"strategy": "gss", "gss": {"delta": 0.6}, "schedule": "multi_stage", "kd_weight": 0.5},
    {"strategy": "eeis", "eeis": {"num_anchors": 2}, "schedule": "one_stage", "final_share": 0.5},
])
def test_printed_plan_is_the_plan_used(teacher, tmp_path, capsys, distill):
    faces, run = teacher
    cfg = student_cfg(faces, run, tmp_path / "s", **distill)
    overrides = [f"distill.{k}.{kk}={vv}" if isinstance(v, dict) else f"distill.{k}={v}"
                 for k, v in distill.items() for kk, vv in (v.items() if isinstance(v, dict) else [(k, v)])]
    cfg_file = tmp_path / "student.yaml"
    from facerco.config import dump_config

    cfg_file.write_text(dump_config(cfg))
    assert _cli_plan([str(run), *overrides, "--config", str(cfg_file)]) == 0
    printed = capsys.readouterr().out
    anchors_line = next(line for line in printed.splitlines() if line.startswith("anchors:"))
    printed_anchors = anchors_line.split(":", 1)[1].strip().split(" -> ")
    result = run_distill(cfg)
    assert result.anchor_plan.anchors == printed_anchors
    plan = json.loads((tmp_path / "s" / "plan.json").read_text())
    assert plan["anchors"]["anchors"] == printed_anchors
    assert [s["anchor"] for s in plan["stages"]["stages"]] == printed_anchors
    # the stage logged at each step is the one the plan assigns (anchors used == anchors printed)
    cong = read_congruence(tmp_path / "s" / "log.jsonl")
    assert len(cong["step"]) > 0
    for step, stage in zip(cong["step"], cong["stage"], strict=True):
        assert result.stage_plan.stage_at(int(step) - 1).index == int(stage)
    assert (tmp_path / "s" / "congruence.png").stat().st_size > 1000
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["anchors"] == printed_anchors and summary["congruence_per_stage"]
    # GSS is deterministic given the seed
    if distill["strategy"] == "gss":
        again = prepare_plan(cfg, load_route(run), build_train_dataset(cfg))[1]
        assert again.to_dict() == result.anchor_plan.to_dict()
        assert result.anchor_plan.steps and result.anchor_plan.anchors[-1] == "epoch_004"


def test_killed_mid_stage_resumes_into_same_stage(teacher, tmp_path):
    faces, run = teacher
    kw = {"strategy": "eeis", "eeis": {"num_anchors": 2}, "schedule": "multi_stage", "final_share": 0.5}
    # 4 epochs x 6 steps: stage 0 = steps 0-12 (epoch_002), stage 1 = 12-24 (epoch_004)
    full = run_distill(student_cfg(faces, run, tmp_path / "full", **kw))
    assert [(s.anchor, s.start, s.end) for s in full.stage_plan.stages] == [("epoch_002", 0, 12),
                                                                           ("epoch_004", 12, 24)]
    cut = student_cfg(faces, run, tmp_path / "cut", **kw)
    cut.train.max_steps = 9  # stop (as if killed) in the middle of stage 0
    first = run_distill(cut)
    assert first.step == 9
    state = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert int(state["step"]) == 9
    cut.train.max_steps = 0
    resumed = run_distill(cut)
    assert resumed.step == 24
    log = [json.loads(x) for x in (tmp_path / "cut" / "log.jsonl").read_text().splitlines()]
    assert any(r["event"] == "resume" and r["step"] == 9 for r in log)
    after = [r for r in log if r["event"] == "train" and 9 < r["step"] <= 12]
    assert after and all(r["stage"] == 0 for r in after)  # still stage 0 / epoch_002 after the resume
    assert _same(_weights(tmp_path / "full" / "student.safetensors"),
                 _weights(tmp_path / "cut" / "student.safetensors"))


def test_student_from_cache_equals_online(teacher, tmp_path):
    faces, run = teacher
    route = load_route(run)
    kw = {"strategy": "eeis", "eeis": {"num_anchors": 2}, "schedule": "one_stage", "mimic_weight": 1.0,
          "kd_weight": 0.1}

    def make(out, seed=0):
        cfg = student_cfg(faces, run, out, **kw)
        cfg.optim.lr, cfg.train.epochs, cfg.train.seed = 0.005, 2.0, seed
        return cfg

    online = run_distill(make(tmp_path / "online"))
    cfg = make(tmp_path / "cached")
    names = online.stage_plan.anchors
    build_cache(tmp_path / "cache", {n: (lambda n=n: route.load_point(n).model, route.point(n).sha256)
                                     for n in names}, build_train_dataset(cfg), shard_size=20, progress=False)
    cfg.distill.cache = str(tmp_path / "cache")
    cached = run_distill(cfg)
    a, b = _weights(online.student_path), _weights(cached.student_path)
    # targets differ only by fp16 rounding, so the students agree closely (not bit-exactly)
    c = _weights(run_distill(make(tmp_path / "seed1", seed=1)).student_path)
    def rel(x, y):  # relative difference of all float weights together
        keys = [k for k in x if x[k].is_floating_point()]
        vx = torch.cat([x[k].float().flatten() for k in keys])
        vy = torch.cat([y[k].float().flatten() for k in keys])
        return ((vx - vy).norm() / vx.norm()).item()

    gap, seed_gap = rel(a, b), rel(a, c)
    assert gap < 0.02 and gap < seed_gap / 20, (gap, seed_gap)
    first = [json.loads((tmp_path / d / "log.jsonl").read_text().splitlines()[0]) for d in ("online", "cached")]
    assert first[0]["mimic"] == pytest.approx(first[1]["mimic"], rel=1e-4)


def test_gate_skips_anchors_below_the_student(teacher, tmp_path):
    faces, run = teacher
    gated_run = tmp_path / "teacher"
    shutil.copytree(run, gated_run)
    manifest = json.loads((gated_run / "route.json").read_text())
    for p, acc in zip(manifest["points"], [0.2, 0.4, 0.8, 0.9], strict=True):
        p["val"] = {"acc": acc}
    (gated_run / "route.json").write_text(json.dumps(manifest))
    cfg = student_cfg(faces, gated_run, tmp_path / "s", strategy="eeis", eeis={"num_anchors": 4}, gate=True,
                      final_share=0.25, schedule="multi_stage")
    result = run_distill(cfg, validator=lambda backbone: {"acc": 0.5})
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    # stage 1 (epoch_002, 0.4 < 0.5) is skipped, stage 2 (epoch_003, 0.8) kept; stage 0 is never gated
    assert summary["skipped_stages"] == [1]
    assert [d["skipped"] for d in summary["gate"]] == [True, False]
    assert result.anchor_plan.anchors == ["epoch_001", "epoch_002", "epoch_003", "epoch_004"]
    with pytest.raises(ValueError, match="gate"):
        run_distill(student_cfg(faces, gated_run, tmp_path / "x", gate=True))


def test_hint_loss_through_named_stages(teacher, tmp_path):
    faces, run = teacher
    cfg = student_cfg(faces, run, tmp_path / "hint", strategy="final", hint_weight=0.5,
                      hint_student_layer="layers.5", hint_teacher_layer="layer3")
    cfg.train.epochs, cfg.train.log_every = 0.5, 1
    result = run_distill(cfg)
    assert result.last_parts["hint"] > 0.0
    exported = _weights(result.student_path)
    assert not any("regressor" in k or "projector" in k for k in exported)  # training-only parts never exported
    bad = student_cfg(faces, run, tmp_path / "bad", strategy="final", hint_weight=0.5,
                      hint_student_layer="layers.55", hint_teacher_layer="layer3")
    with pytest.raises(ValueError, match="layers.55"):
        run_distill(bad)
