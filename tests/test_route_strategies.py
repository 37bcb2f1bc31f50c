"""Route strategies (lockstep, phase, early, ensemble, reverse, online GSS): plans on a tiny route, targets, resume."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from facerco.config import DistillConfig, config_from_dict
from facerco.distill.strategies import PlanRequest, plan_strategy
from facerco.route.anchors import PointInfo, ProbeOutput
from facerco.route.follow import OnlineGSSCallback, RouteFollower, ensemble_embeddings, ensemble_logits
from facerco.route.strategies import ensemble_members, required_points


def step_route(epochs: int = 16, drops: tuple[int, ...] = (8, 12), val: list[float] | None = None) -> list[PointInfo]:
    """A teacher route of one point per epoch; lr 0.1, x0.1 after each epoch in ``drops``."""
    points = []
    for e in range(1, epochs + 1):
        lr = 0.1 * 0.1 ** sum(e > d for d in drops)
        metrics = {"val/acc": val[e - 1]} if val else {}
        points.append(PointInfo(f"epoch_{e:03d}", float(e), 10 * e, metrics, e == epochs, lr))
    return points


def distill_cfg(**distill) -> DistillConfig:
    """A ``distill`` section from nested keys (``gss={"max_anchors": 3}``), checked by the config schema."""
    return config_from_dict(distill, cls=DistillConfig)


def plan_route_strategy(d: DistillConfig, points, total):
    """The registry's plan of ``d`` over ``points`` with a budget of ``total`` steps."""
    return plan_strategy(PlanRequest(d, points, total, steps_per_epoch=1))


def plan(points, total=160, **distill):
    anchors, stages = plan_route_strategy(distill_cfg(**distill), points, total)
    return anchors, [(s.anchor, s.start, s.end) for s in stages.stages]


def test_lockstep_student_epoch_k_follows_teacher_epoch_k():
    anchors, stages = plan(step_route(), 160, strategy="lockstep")
    assert anchors.anchors == [f"epoch_{e:03d}" for e in range(1, 17)]
    assert stages == [(f"epoch_{e:03d}", 10 * (e - 1), 10 * e) for e in range(1, 17)]
    # a student budget of 320 steps (twice the teacher's) stretches every stage evenly
    _, long = plan(step_route(), 320, strategy="lockstep")
    assert [end - start for _, start, end in long] == [20] * 16


def test_phase_switches_at_the_teachers_lr_drops():
    anchors, stages = plan(step_route(), 160, strategy="phase")
    assert anchors.anchors == ["epoch_008", "epoch_012", "epoch_016"]
    assert stages == [("epoch_008", 0, 80), ("epoch_012", 80, 120), ("epoch_016", 120, 160)]
    # a smooth route (no drop) leaves the final teacher alone, and says so
    smooth = [PointInfo(p.name, p.epoch, p.step, p.val, p.final, 0.1 * (1 - p.epoch / 17)) for p in step_route()]
    anchors, stages = plan(smooth, 160, strategy="phase")
    assert anchors.anchors == ["epoch_016"] and stages == [("epoch_016", 0, 160)]
    assert "no lr drop" in anchors.notes
    no_lr = [PointInfo(p.name, p.epoch, p.step, p.val, p.final) for p in step_route()]
    with pytest.raises(ValueError, match="learning rates"):
        plan(no_lr, 160, strategy="phase")


def test_early_is_chosen_on_validation_before_the_last_phase():
    rising = [0.5 + 0.02 * e for e in range(16)]
    anchors, stages = plan(step_route(val=rising), 160, strategy="early")
    assert anchors.anchors == ["epoch_012"] and stages == [("epoch_012", 0, 160)]
    peaked = [0.9 if e == 6 else 0.5 for e in range(1, 17)]
    assert plan(step_route(val=peaked), strategy="early")[0].anchors == ["epoch_006"]
    assert plan(step_route(), strategy="early", early={"point": "epoch_003"})[0].anchors == ["epoch_003"]
    with pytest.raises(ValueError, match="final teacher"):
        plan(step_route(), strategy="early", early={"point": "epoch_016"})
    with pytest.raises(ValueError, match="validation metrics"):
        plan(step_route(), strategy="early")


def test_ensemble_and_reverse_plans():
    anchors, stages = plan(step_route(), 160, strategy="ensemble")
    assert anchors.anchors == ["ensemble(epoch_008+epoch_012+epoch_016)"]
    assert ensemble_members(anchors.anchors[0]) == ["epoch_008", "epoch_012", "epoch_016"]
    assert stages == [(anchors.anchors[0], 0, 160)]
    chosen = plan(step_route(), strategy="ensemble", manual={"anchors": ["epoch_004", "final"]})[0].anchors
    assert chosen == ["ensemble(epoch_004+epoch_016)"]
    anchors, stages = plan(step_route(), 160, strategy="reverse", eeis={"num_anchors": 4}, final_share=0.5)
    assert anchors.anchors == ["epoch_016", "epoch_012", "epoch_008", "epoch_004"]
    # the EEIS lengths (27, 27, 26, 80), reversed: the final teacher's share comes first
    assert stages == [("epoch_016", 0, 80), ("epoch_012", 80, 106), ("epoch_008", 106, 133),
                      ("epoch_004", 133, 160)]


def test_online_gss_plan_has_slots_then_the_final():
    anchors, stages = plan(step_route(), 160, strategy="gss_online", gss={"max_anchors": 4}, final_share=0.25)
    assert anchors.anchors == ["gss_online@1", "gss_online@2", "gss_online@3", "epoch_016"]
    assert stages == [("gss_online@1", 0, 40), ("gss_online@2", 40, 80), ("gss_online@3", 80, 120),
                      ("epoch_016", 120, 160)]
    d = distill_cfg(strategy="gss_online", gss={"max_anchors": 3})
    _, stage_plan = plan_route_strategy(d, step_route(), 90)
    assert required_points(stage_plan, step_route()) == [p.name for p in step_route()]
    _, ens = plan_route_strategy(DistillConfig(strategy="ensemble"), step_route(), 90)
    assert required_points(ens, step_route()) == ["epoch_008", "epoch_012", "epoch_016"]


def test_ensemble_targets_average_probabilities_and_directions():
    gen = torch.Generator().manual_seed(0)
    logits = [torch.randn(5, 7, generator=gen) * 3 for _ in range(3)]
    t = 4.0
    mixed = ensemble_logits(logits, t)
    brute = sum(torch.softmax(z / t, dim=1) for z in logits) / 3
    assert torch.allclose(torch.softmax(mixed / t, dim=1), brute, atol=1e-6)
    embs = [torch.randn(4, 8, generator=gen) * (i + 1) for i in range(2)]
    mean = ensemble_embeddings(embs)
    unit = [e / e.norm(dim=1, keepdim=True) for e in embs]
    expected = (unit[0] + unit[1]) / (unit[0] + unit[1]).norm(dim=1, keepdim=True)
    assert torch.allclose(mean, expected, atol=1e-6)
    assert ensemble_logits(logits[:1], t) is logits[0]


def _onehot_output(index: int, sharp: float = 8.0) -> ProbeOutput:
    """Probe logits peaked on class ``index`` (10 images, 4 classes): divergences are easy to order by hand."""
    z = np.zeros((10, 4))
    z[:, index] = sharp
    return ProbeOutput.from_arrays(np.eye(10, 4) + 0.01, z)


def test_online_gss_decides_from_the_student_and_keeps_its_decisions():
    points = step_route(epochs=4, drops=())
    d = distill_cfg(strategy="gss_online", gss={"max_anchors": 3, "delta": 0.5}, final_share=0.5)
    _, stage_plan = plan_route_strategy(d, points, 40)
    follower = RouteFollower(stage_plan)
    # route points output classes 0, 1, 2, 3; the student looks like point 2 (class 1), later like point 3
    outputs = {p.name: _onehot_output(i) for i, p in enumerate(points)}
    student = {"now": _onehot_output(1)}
    written = []
    cb = OnlineGSSCallback(follower, [p.name for p in points], outputs, lambda: student["now"], 0.5,
                           "relative", "kl", 4.0, on_decide=lambda recs: written.append(list(recs)))
    cb.on_train_start(SimpleNamespace(step=0))
    # from the student (class 1): KL to epoch_002 is 0, to 003/004 equal: all under 0.5 x D(final) = the farthest
    # one under the threshold is epoch_002 (the others sit exactly at D(final) > threshold)
    assert follower.decided == {0: "epoch_002"}
    assert follower.anchor_at(0) == "epoch_002"
    with pytest.raises(RuntimeError, match="decided"):
        follower.anchor_at(10)
    student["now"] = _onehot_output(2)
    cb.on_step_end(SimpleNamespace(step=10), 10, {})
    assert follower.decided[1] == "epoch_003" and follower.anchor_at(19) == "epoch_003"
    assert follower.anchor_at(39) == "epoch_004"
    assert follower.resolved_anchors() == ["epoch_002", "epoch_003", "epoch_004"]
    assert [r["chosen"] for r in written[-1]] == ["epoch_002", "epoch_003"]
    # resume: a new follower + callback restored from the saved states decide nothing again
    again = RouteFollower(stage_plan)
    again.load_state(json.loads(json.dumps(follower.state())))
    cb2 = OnlineGSSCallback(again, [p.name for p in points], outputs, lambda: pytest.fail("re-measured"), 0.5)
    cb2.load_state_dict(cb.state_dict())
    cb2.on_train_start(SimpleNamespace(step=25))
    assert again.resolved_anchors() == follower.resolved_anchors()
    other = RouteFollower(plan_route_strategy(DistillConfig(strategy="lockstep"), points, 40)[1])
    with pytest.raises(ValueError, match="keep the distill config"):
        other.load_state(follower.state())


def test_online_gss_after_the_final_follows_the_final():
    points = step_route(epochs=3, drops=())
    d = distill_cfg(strategy="gss_online", gss={"max_anchors": 3}, final_share=0.34)
    _, stage_plan = plan_route_strategy(d, points, 30)
    follower = RouteFollower(stage_plan)
    outputs = {p.name: _onehot_output(i) for i, p in enumerate(points)}
    cb = OnlineGSSCallback(follower, [p.name for p in points], outputs, lambda: _onehot_output(2), 0.5)
    cb.on_train_start(SimpleNamespace(step=0))
    assert follower.decided[0] == "epoch_003"  # the student already matches the final teacher
    cb.on_step_end(SimpleNamespace(step=stage_plan.stages[1].start), stage_plan.stages[1].start, {})
    assert follower.decided[1] == "epoch_003" and cb.records[-1]["reason"] == "final already reached"


def test_multi_stage_restarts_drop_the_lr_inside_each_stage():
    from facerco.config import ScheduleConfig
    from facerco.route.plan import StagedSchedule, build_stage_plan
    from facerco.train.schedule import stage_schedule_factory

    sched = ScheduleConfig(decay="step", milestones=[8.0, 12.0], gamma=0.1)
    plan = build_stage_plan(["a", "b", "c", "d"], 160, 10, "multi_stage", final_share=0.25)
    staged = StagedSchedule(plan, stage_schedule_factory(sched, 10, 160, 0.1))
    # each 40-step stage (4 epochs) drops at its epochs 2 and 3, as the 16-epoch run does at 8 and 12
    for start in (0, 40, 80, 120):
        assert [round(staged.lr_factor(start + k), 6) for k in (0, 19, 20, 29, 30, 39)] == [1, 1, 0.1, 0.1, 0.01, 0.01]
    one = StagedSchedule(build_stage_plan(["a", "b"], 160, 10, "one_stage", final_share=0.5),
                         stage_schedule_factory(sched, 10, 160, 0.1))
    assert [round(one.lr_factor(k), 6) for k in (79, 80, 119, 120)] == [1, 0.1, 0.1, 0.01]  # the run's own drops
