"""Route-following strategies beyond EEIS / GSS, and what the student follows at each step.

The strategies the first studies pointed to (issue 11), each a ``distill.strategy`` value planned here as an
:class:`~facerco.route.anchors.AnchorPlan` plus a :class:`~facerco.route.plan.StagePlan` on the same machinery:

* ``lockstep`` (PocketNet-style): every route point in order; the student's stage k spans the same share of its budget
  as teacher epoch k spans of the teacher's run, so with equal epochs the student's epoch k follows teacher epoch k.
* ``phase``: one anchor per lr phase of the teacher (the last point before each lr drop, then the final). The stage
  switches sit where the teacher's drops sit (scaled to the student's budget), so a student that runs the teacher's
  step schedule switches anchor exactly at its own lr drops. A drop is a point whose successor's recorded lr is below
  ``phase_drop_ratio`` times its own (a smooth decay has no phases: the plan is then the final teacher alone).
* ``early``: one early-stopped teacher point: ``early_point`` when named, otherwise the best point by the validation
  metric among the points before the teacher's last lr phase (the teacher as it would have been stopped early). The
  control that tells "following a route" apart from "a softer teacher".
* ``ensemble``: one stage whose targets average several route points (snapshot ensemble): embeddings L2-normalized,
  averaged and re-normalized; logits averaged as probabilities at the KD temperature. Members: ``anchors`` when
  given, else the phase anchors (the point ending each lr phase, and the final).
* ``reverse``: the EEIS anchors and stage lengths in reverse order, final first (a control: if it does as well,
  order does not matter).
* ``gss_online``: GSS measured on the *actual* student. The budget has ``gss_max_anchors`` slots (default
  ``num_anchors``); the last is the final teacher. At the start of each other slot, :class:`OnlineGSSCallback`
  embeds the probe set with the training student and picks the farthest later route point whose divergence is under
  the threshold (:func:`facerco.route.anchors.gss_step`); once the final teacher is chosen, the remaining slots
  follow it. Decisions are saved in ``last.pt`` and written to ``plan.json`` as they are made.

:class:`RouteFollower` maps a step to the anchor actually followed (stage plan, gate skips, online decisions), for
the student job and for any task built on the engine (the benchmark studies use it too).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from facerco.route.anchors import (
    AnchorPlan,
    PointInfo,
    ProbeOutput,
    best_point,
    gss_step,
    select_eeis,
    select_manual,
)
from facerco.route.plan import (
    StagePlan,
    fraction_lengths,
    split_lengths,
    stages_from_lengths,
)
from facerco.utils.callbacks import Callback

__all__ = [
    "ROUTE_STRATEGIES",
    "ensemble_name",
    "ensemble_members",
    "is_online_slot",
    "phase_ends",
    "select_lockstep",
    "select_phase",
    "select_early",
    "select_ensemble",
    "select_reverse",
    "plan_route_strategy",
    "required_points",
    "ensemble_embeddings",
    "ensemble_logits",
    "RouteFollower",
    "OnlineGSSCallback",
]

ROUTE_STRATEGIES = ("lockstep", "phase", "early", "ensemble", "reverse", "gss_online")
_ONLINE_SLOT = "gss_online@"


def ensemble_name(members: Sequence[str]) -> str:
    """The anchor name of a snapshot ensemble: ``ensemble(a+b+c)``."""
    return "ensemble(" + "+".join(members) + ")"


def ensemble_members(anchor: str) -> list[str]:
    """Route points behind an anchor name: the members of ``ensemble(...)``, else the name itself."""
    if anchor.startswith("ensemble(") and anchor.endswith(")"):
        members = [m for m in anchor[len("ensemble("):-1].split("+") if m]
        if not members:
            raise ValueError(f"anchor {anchor!r} names no ensemble members")
        return members
    return [anchor]


def is_online_slot(anchor: str) -> bool:
    """True for an online-GSS slot whose route point is decided during training."""
    return anchor.startswith(_ONLINE_SLOT)


# ----------------------------------------------------------------------------------------------------------------
# Anchor selection
# ----------------------------------------------------------------------------------------------------------------


def phase_ends(points: Sequence[PointInfo], drop_ratio: float = 0.5) -> list[int]:
    """Indices of the last point of each lr phase except the final one (points before an lr drop)."""
    if not 0.0 < drop_ratio < 1.0:
        raise ValueError(f"distill.phase_drop_ratio must be in (0, 1), got {drop_ratio}")
    if len(points) > 1 and all(p.lr <= 0 for p in points):
        raise ValueError("the route records no learning rates (route.json points have no 'lr'); "
                         "lockstep works without them, phase / early / ensemble need them")
    return [i for i in range(len(points) - 1)
            if points[i].lr > 0 and points[i + 1].lr < drop_ratio * points[i].lr]


def _epoch_fractions(points: Sequence[PointInfo], chosen: Sequence[int]) -> list[float]:
    """Where each chosen point sits in the teacher's run, as a fraction of the final point's epoch."""
    last = points[-1].epoch
    if last <= 0:
        raise ValueError("the route's final point has no epoch; lockstep and phase plans need the points' epochs")
    fractions = [points[i].epoch / last for i in chosen]
    if any(b <= a for a, b in zip([0.0, *fractions[:-1]], fractions, strict=True)):
        raise ValueError(f"route point epochs must increase: {[points[i].epoch for i in chosen]}")
    return fractions


def select_lockstep(points: Sequence[PointInfo]) -> tuple[AnchorPlan, list[float]]:
    """Every route point after the start, in order (final last); stage ends at their epoch fractions."""
    chosen = [i for i, p in enumerate(points) if p.epoch > 0 or i == len(points) - 1]
    plan = AnchorPlan("lockstep", [points[i].name for i in chosen],
                      notes="student stage k spans teacher epoch k's share of the run")
    return plan, _epoch_fractions(points, chosen)


def select_phase(points: Sequence[PointInfo], drop_ratio: float = 0.5) -> tuple[AnchorPlan, list[float]]:
    """The point ending each lr phase, then the final; stage ends where the teacher's lr dropped."""
    ends = phase_ends(points, drop_ratio)
    chosen = [*ends, len(points) - 1]
    notes = (f"{len(ends)} lr drop(s) at epochs {[points[i].epoch for i in ends]}" if ends
             else "no lr drop in the route: the final teacher alone")
    return AnchorPlan("phase", [points[i].name for i in chosen], notes=notes), _epoch_fractions(points, chosen)


def select_early(points: Sequence[PointInfo], name: str = "", metric: str = "",
                 drop_ratio: float = 0.5) -> AnchorPlan:
    """One early-stopped teacher point (see the module docstring); ties go to the earlier point."""
    final = points[-1].name
    if name:
        names = [p.name for p in points]
        if name not in names:
            raise ValueError(f"distill.early_point {name!r} is not a route point; valid names: {', '.join(names)}")
        if name == final:
            raise ValueError("distill.early_point names the final teacher; 'early' is an intermediate point "
                             "(use strategy: final to mimic the final teacher)")
        return AnchorPlan("early", [name], notes="named by distill.early_point")
    if len(points) < 2:
        raise ValueError("strategy 'early' needs a route with at least one intermediate point")
    ends = phase_ends(points, drop_ratio)
    candidates = list(points[: ends[-1] + 1]) if ends else list(points[:-1])
    best, key, value = best_point(candidates, metric, "early")
    where = "before the last lr phase" if ends else "among the intermediate points"
    return AnchorPlan("early", [best], notes=f"best {where} by validation {key}={value:.4f}")


def select_ensemble(points: Sequence[PointInfo], members: Sequence[str] = (), drop_ratio: float = 0.5) -> AnchorPlan:
    """One anchor averaging ``members`` (route order; default the phase anchors)."""
    if members:
        names = select_manual(points, members, append_final=False).anchors
    else:
        names = [points[i].name for i in phase_ends(points, drop_ratio)] + [points[-1].name]
    return AnchorPlan("ensemble", [ensemble_name(names)], notes=f"snapshot ensemble of {len(names)} route points")


def select_reverse(points: Sequence[PointInfo], num_anchors: int = 0, every: int = 0) -> AnchorPlan:
    """The EEIS anchors, final first."""
    eeis = select_eeis(points, num_anchors=num_anchors, every=every)
    return AnchorPlan("reverse", list(reversed(eeis.anchors)), notes="EEIS anchors in reverse order (control)")


# ----------------------------------------------------------------------------------------------------------------
# Plans
# ----------------------------------------------------------------------------------------------------------------


def _slots(d: Any) -> int:
    count = int(getattr(d, "gss_max_anchors", 0) or 0) or int(getattr(d, "num_anchors", 0) or 0) or 4
    if count < 2:
        raise ValueError(f"online GSS needs at least 2 slots (gss_max_anchors / num_anchors), got {count}")
    return count


def plan_route_strategy(d: Any, points: Sequence[PointInfo], total_steps: int) -> tuple[AnchorPlan, StagePlan]:
    """(anchor plan, stage plan) of one of :data:`ROUTE_STRATEGIES`; ``d`` is a ``DistillConfig``."""
    if total_steps <= 0:
        raise ValueError(f"the student budget must be > 0 steps, got {total_steps}")
    pts = list(points)
    strategy = d.strategy
    kind, restart = d.schedule, d.restart_lr
    if strategy in ("lockstep", "phase"):
        plan, ends = select_lockstep(pts) if strategy == "lockstep" else select_phase(pts, d.phase_drop_ratio)
        return plan, stages_from_lengths(plan.anchors, fraction_lengths(total_steps, ends), kind, restart)
    if strategy == "early":
        plan = select_early(pts, d.early_point, d.best_metric, d.phase_drop_ratio)
    elif strategy == "ensemble":
        if d.hint_weight > 0:
            raise ValueError("strategy 'ensemble' averages embeddings and logits; hint losses are not defined for it")
        plan = select_ensemble(pts, d.anchors, d.phase_drop_ratio)
    elif strategy == "reverse":
        plan = select_reverse(pts, num_anchors=d.num_anchors if d.eeis_every <= 0 else 0, every=d.eeis_every)
        lengths = split_lengths(total_steps, list(reversed(plan.anchors)), d.final_share)
        return plan, stages_from_lengths(plan.anchors, list(reversed(lengths)), kind, restart)
    elif strategy == "gss_online":
        count = min(_slots(d), len(pts))
        slots = [f"{_ONLINE_SLOT}{i + 1}" for i in range(count - 1)] + [pts[-1].name]
        plan = AnchorPlan("gss_online", slots, notes=f"delta={d.gss_delta} ({d.gss_delta_mode}), decided online")
        return plan, stages_from_lengths(slots, split_lengths(total_steps, slots, d.final_share), kind, restart)
    else:
        raise ValueError(f"{strategy!r} is not a route strategy; valid: {', '.join(ROUTE_STRATEGIES)}")
    return plan, stages_from_lengths(plan.anchors, [total_steps], kind, restart)


def required_points(stage_plan: StagePlan, points: Sequence[PointInfo]) -> list[str]:
    """Route points whose targets a plan may read (ensemble members; every point for online GSS), final included."""
    names = [p.name for p in points]
    need: list[str] = []
    for anchor in stage_plan.anchors:
        need.extend(names if is_online_slot(anchor) else ensemble_members(anchor))
    need.append(names[-1])
    return [n for n in names if n in set(need)]


# ----------------------------------------------------------------------------------------------------------------
# Targets of an ensemble anchor
# ----------------------------------------------------------------------------------------------------------------


def ensemble_embeddings(embeddings: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean of the members' L2-normalized embeddings, re-normalized (one member: returned as it is)."""
    if len(embeddings) == 1:
        return embeddings[0]
    mean = torch.stack([F.normalize(e.float(), dim=1) for e in embeddings]).mean(dim=0)
    return F.normalize(mean, dim=1)


def ensemble_logits(logits: Sequence[torch.Tensor], temperature: float) -> torch.Tensor:
    """Logits whose softmax at ``temperature`` is the mean of the members' softmax at that temperature.

    ``T * log(mean_m softmax(z_m / T))``, so a KD loss at temperature T sees the averaged probabilities.
    """
    if len(logits) == 1:
        return logits[0]
    t = float(temperature)
    log_p = torch.stack([F.log_softmax(z.float() / t, dim=1) for z in logits])
    return t * (torch.logsumexp(log_p, dim=0) - math.log(len(logits)))


# ----------------------------------------------------------------------------------------------------------------
# Following the plan
# ----------------------------------------------------------------------------------------------------------------


class RouteFollower:
    """The anchor actually followed at a step: the stage plan, anchors skipped by the gate, online decisions.

    Everything it decides during training (``skipped``, ``decided``) is in :meth:`state`, which the task saves in
    ``last.pt``, so a resumed run follows the same anchors.
    """

    def __init__(self, plan: StagePlan) -> None:
        self.plan = plan
        self.skipped: set[int] = set()
        self.decided: dict[int, str] = {}

    def stage_anchor(self, index: int) -> str:
        """Anchor of stage ``index`` (an online slot must have been decided)."""
        anchor = self.plan.stages[index].anchor
        if is_online_slot(anchor):
            if index not in self.decided:
                raise RuntimeError(f"online GSS slot {anchor!r} is used before it was decided")
            return self.decided[index]
        return anchor

    def anchor_at(self, step: int) -> str:
        """The stage's anchor, or the next non-skipped stage's when the gate skipped it."""
        stages = self.plan.stages
        for s in stages[self.plan.stage_at(step).index:]:
            if s.index not in self.skipped or s is stages[-1]:
                return self.stage_anchor(s.index)
        return self.stage_anchor(stages[-1].index)

    def resolved_anchors(self) -> list[str]:
        """The plan's anchors with online slots replaced by their decisions (``?`` while undecided)."""
        return [self.decided.get(s.index, "?") if is_online_slot(s.anchor) else s.anchor for s in self.plan.stages]

    def state(self) -> dict[str, Any]:
        return {"skipped": sorted(self.skipped), "plan_anchors": self.plan.anchors,
                "decided": {str(k): v for k, v in sorted(self.decided.items())}}

    def load_state(self, state: dict[str, Any]) -> None:
        if state.get("plan_anchors") and list(state["plan_anchors"]) != self.plan.anchors:
            raise ValueError(f"resume: the checkpoint followed anchors {state['plan_anchors']}, the plan now is "
                             f"{self.plan.anchors}; keep the distill config of the interrupted run")
        self.skipped = {int(i) for i in state.get("skipped", [])}
        self.decided = {int(k): str(v) for k, v in dict(state.get("decided", {})).items()}


class OnlineGSSCallback(Callback):
    """Decides each online-GSS slot at its first step from the training student's probe outputs.

    Args:
        follower: where decisions go (its ``decided`` is restored from ``last.pt`` on resume, through the task).
        route_names: route point names in order (final last).
        point_outputs: probe outputs of every route point (computed once).
        student_output: the training student's probe output now (eval mode, no grad; must not touch RNG state).
        delta, mode, kind, temperature: the GSS rule (:func:`facerco.route.anchors.gss_step`).
        on_decide: called with the list of decision records after each decision (e.g. to rewrite ``plan.json``).
        share: makes every rank take rank 0's decision (``facerco.train.distributed.broadcast_object``).
    """

    name = "gss_online"

    def __init__(self, follower: RouteFollower, route_names: Sequence[str], point_outputs: dict[str, ProbeOutput],
                 student_output: Callable[[], ProbeOutput], delta: float, mode: str = "relative",
                 kind: str = "auto", temperature: float = 4.0,
                 on_decide: Callable[[list[dict[str, Any]]], None] | None = None,
                 share: Callable[[Any], Any] | None = None) -> None:
        self.follower = follower
        self.names = list(route_names)
        self.outputs = point_outputs
        self.student_output = student_output
        self.rule = (delta, mode, kind, temperature)
        self.on_decide = on_decide
        self.share = share
        self.records: list[dict[str, Any]] = []

    def state_dict(self) -> dict[str, Any]:
        import json

        return {"records": json.dumps(self.records)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        import json

        self.records = json.loads(state.get("records", "[]"))

    def _position(self, before: int) -> int:
        """Route index of the last anchor decided before stage ``before`` (-1: none yet)."""
        for s in reversed(self.follower.plan.stages[:before]):
            if s.index in self.follower.decided:
                return self.names.index(self.follower.decided[s.index])
        return -1

    def decide(self, index: int, step: int) -> str:
        """Choose slot ``index``'s route point now (once)."""
        if index in self.follower.decided:
            return self.follower.decided[index]
        pos = self._position(index)
        if pos == len(self.names) - 1:
            record: dict[str, Any] = {"chosen": self.names[-1], "reason": "final already reached"}
        else:
            delta, mode, kind, temperature = self.rule
            later = {n: self.outputs[n] for n in self.names[pos + 1:]}
            record = gss_step(self.student_output(), later, delta, mode, kind, temperature)  # type: ignore[arg-type]
        if self.share is not None:
            record = self.share(record)
        record.update({"slot": index, "step": step, "from": "student"})
        self.follower.decided[index] = str(record["chosen"])
        self.records.append(record)
        if self.on_decide is not None:
            self.on_decide(self.records)
        return record["chosen"]

    def _due(self, step: int) -> None:
        for s in self.follower.plan.stages:
            if s.start == step and is_online_slot(s.anchor):
                self.decide(s.index, step)

    def on_train_start(self, engine: Any) -> None:
        stage = self.follower.plan.stage_at(engine.step)
        # a fresh run decides slot 0 here; a resumed one already holds every decision up to its step
        for s in self.follower.plan.stages[: stage.index + 1]:
            if is_online_slot(s.anchor) and s.index not in self.follower.decided:
                self.decide(s.index, engine.step)

    def on_step_end(self, engine: Any, step: int, parts: dict[str, float]) -> None:
        self._due(step)
