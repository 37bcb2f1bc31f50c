"""Anchor selection (EEIS, manual, best, GSS) and stage plans, on hand-made routes and probe outputs."""

from __future__ import annotations

import numpy as np
import pytest

from facerco.route.anchors import (
    ProbeOutput,
    divergence,
    format_plan,
    probe_indices,
    route_points,
    select_best,
    select_eeis,
    select_gss,
    select_manual,
)
from facerco.route.plan import StagedSchedule, build_stage_plan


def _route(n=8, accs=None):
    accs = accs or [0.5 + 0.05 * i for i in range(n)]
    pts = [{"name": f"epoch_{i + 1:03d}", "epoch": i + 1, "step": 10 * (i + 1), "val": {"lfw": accs[i]}}
           for i in range(n)]
    pts[-1]["final"] = True
    return {"points": pts}


def test_route_points_final_marked_or_last():
    pts = route_points(_route(4))
    assert [p.final for p in pts] == [False, False, False, True]
    unmarked = route_points([{"name": "a"}, {"name": "b"}])
    assert unmarked[-1].final and unmarked[-1].name == "b"
    with pytest.raises(ValueError, match="empty"):
        route_points([])


def test_eeis_evenly_spaced_and_every_k():
    pts = route_points(_route(8))
    assert select_eeis(pts, num_anchors=4).anchors == ["epoch_002", "epoch_004", "epoch_006", "epoch_008"]
    assert select_eeis(pts, every=3).anchors == ["epoch_003", "epoch_006", "epoch_008"]
    assert select_eeis(pts, every=4).anchors == ["epoch_004", "epoch_008"]
    assert select_eeis(pts, num_anchors=20).anchors == [p.name for p in pts]
    assert select_eeis(pts, num_anchors=1).anchors == ["epoch_008"]
    with pytest.raises(ValueError, match="EEIS"):
        select_eeis(pts)


def test_manual_and_best():
    pts = route_points(_route(5, accs=[0.6, 0.9, 0.7, 0.8, 0.95]))
    assert select_manual(pts, ["epoch_002", "epoch_004"]).anchors == ["epoch_002", "epoch_004", "epoch_005"]
    assert select_manual(pts, ["epoch_001", "final"]).anchors == ["epoch_001", "epoch_005"]
    with pytest.raises(ValueError, match="route order"):
        select_manual(pts, ["epoch_003", "epoch_002"])
    with pytest.raises(ValueError, match="not a route point"):
        select_manual(pts, ["epoch_077"])
    assert select_best(pts).anchors == ["epoch_002"]  # final excluded: best intermediate
    with pytest.raises(ValueError, match="metric"):
        select_best(route_points([{"name": "a"}, {"name": "b"}]))


def test_divergence_known_answers():
    a = ProbeOutput.from_arrays(np.array([[1.0, 0.0], [0.0, 2.0]]), np.array([[0.0, 0.0], [1.0, 1.0]]))
    b = ProbeOutput.from_arrays(np.array([[0.0, 1.0], [0.0, 1.0]]), np.array([[np.log(3.0), 0.0], [1.0, 1.0]]))
    d, kind = divergence(a, b, "kl", temperature=1.0)
    # row 0: KL([.75,.25] || [.5,.5]) ; row 1: 0
    kl0 = 0.75 * np.log(0.75 / 0.5) + 0.25 * np.log(0.25 / 0.5)
    assert kind == "kl" and d == pytest.approx(kl0 / 2)
    assert divergence(a, b, "l2") == (pytest.approx((2.0 + 0.0) / 2), "l2")
    assert divergence(a, b, "cosine")[0] == pytest.approx(0.5)
    c = ProbeOutput.from_arrays(np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    d, kind = divergence(a, c, "auto")  # sizes differ -> relational: both Gram matrices are I
    assert kind == "relational" and d == pytest.approx(0.0)
    assert divergence(a, b, "auto")[1] == "kl"


def _chain_outputs(n, step=0.25, dim=4, seed=0):
    """Route points drifting along a great circle: divergence grows with the route distance."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((16, dim))
    other = rng.standard_normal((16, dim))
    outs = {}
    for i in range(n):
        ang = step * (i + 1)
        outs[f"epoch_{i + 1:03d}"] = ProbeOutput.from_arrays(np.cos(ang) * base + np.sin(ang) * other)
    start = ProbeOutput.from_arrays(base)
    return outs, start


def test_gss_relative_rule_by_brute_force():
    pts = route_points(_route(8))
    outs, start = _chain_outputs(8)
    plan = select_gss(pts, outs, start, delta=0.4, mode="relative", kind="l2")
    assert plan.anchors[-1] == "epoch_008"
    # brute force the documented rule
    names = [p.name for p in pts]
    cur, expected = start, []
    pos = -1
    while not expected or expected[-1] != names[-1]:
        later = names[pos + 1:]
        d = {n: divergence(cur, outs[n], "l2")[0] for n in later}
        thr = 0.4 * d[names[-1]]
        under = [n for n in later if d[n] <= thr]
        nxt = under[-1] if under else later[0]
        expected.append(nxt)
        pos, cur = names.index(nxt), outs[nxt]
    assert plan.anchors == expected and len(plan.anchors) >= 2
    assert len(plan.steps) == len(plan.anchors)
    text = format_plan(plan)
    assert "chosen" in text and " -> ".join(plan.anchors) in text


def test_gss_absolute_delta_and_deterministic_and_cap():
    pts = route_points(_route(8))
    outs, start = _chain_outputs(8)
    big = select_gss(pts, outs, start, delta=100.0, mode="absolute")
    assert big.anchors == ["epoch_008"]  # everything is under the threshold: jump to the final
    tiny = select_gss(pts, outs, start, delta=1e-9, mode="absolute")
    assert tiny.anchors == [p.name for p in pts]  # nothing qualifies: advance one point at a time
    again = select_gss(pts, outs, start, delta=0.4)
    assert again.to_dict() == select_gss(pts, outs, start, delta=0.4).to_dict()
    capped = select_gss(pts, outs, start, delta=1e-9, mode="absolute", max_anchors=3)
    assert len(capped.anchors) == 3 and capped.anchors[-1] == "epoch_008"
    no_student = select_gss(pts, outs, None, delta=0.4)
    assert no_student.anchors[0] == "epoch_001" and no_student.anchors[-1] == "epoch_008"


def test_probe_indices_seeded():
    a = probe_indices(100, 10, seed=3)
    assert np.array_equal(a, probe_indices(100, 10, seed=3)) and len(set(a.tolist())) == 10
    assert not np.array_equal(a, probe_indices(100, 10, seed=4))
    assert len(probe_indices(5, 10, seed=0)) == 5


class _Lin:
    def __init__(self, total):
        self.total = total

    def lr_factor(self, step):
        return 1.0 - step / self.total


def test_one_stage_plan_final_share_and_shared_schedule():
    plan = build_stage_plan(["a", "b", "c", "f"], total_steps=100, steps_per_epoch=10, final_share=0.4)
    assert [(s.anchor, s.start, s.end) for s in plan.stages] == [("a", 0, 20), ("b", 20, 40), ("c", 40, 60),
                                                                  ("f", 60, 100)]
    assert plan.stage_at(59).anchor == "c" and plan.stage_at(60).anchor == "f" and plan.stage_at(500).anchor == "f"
    sched = StagedSchedule(plan, _Lin)
    assert sched.lr_factor(30) == pytest.approx(0.7)  # global schedule, no restart


def test_multi_stage_restart_and_explicit_stages():
    plan = build_stage_plan(["a", "f"], total_steps=10, steps_per_epoch=5, kind="multi_stage", final_share=0.5)
    sched = StagedSchedule(plan, _Lin)
    assert [sched.lr_factor(s) for s in (0, 4, 5, 9)] == pytest.approx([1.0, 0.2, 1.0, 0.2])
    flat = build_stage_plan(["a", "f"], 10, 5, kind="multi_stage", final_share=0.5, restart_lr=False)
    assert StagedSchedule(flat, _Lin).lr_factor(5) == pytest.approx(0.5)

    class St:
        def __init__(self, anchor, epochs, steps=0, lr=None):
            self.anchor, self.epochs, self.steps, self.lr = anchor, epochs, steps, lr

    explicit = build_stage_plan([], 0, 4, kind="multi_stage", stages=[St("a", 1.5), St("f", 0, steps=3, lr=0.05)],
                                base_lr=0.1)
    assert [(s.anchor, s.start, s.end, s.lr_mult) for s in explicit.stages] == [("a", 0, 6, 1.0), ("f", 6, 9, 0.5)]
    assert explicit.total_steps == 9
    with pytest.raises(ValueError, match="final_share"):
        build_stage_plan(["a", "f"], 10, 5, final_share=1.0)


def test_default_metric_prefers_accuracy():
    from facerco.route.anchors import default_metric

    assert default_metric(["pairs/num_pairs", "pairs/accuracy", "lfw/acc"]) == "pairs/accuracy"
    assert default_metric(["x", "y"]) == "x" and default_metric([]) == ""
    pts = route_points({"points": [{"name": "a", "val": {"n": 9.0, "acc": 0.5}},
                                   {"name": "b", "val": {"n": 1.0, "acc": 0.7}}, {"name": "c"}]})
    assert select_best(pts).anchors == ["b"]
