"""Anchor selection of the route strategies beyond EEIS / GSS: which route points, and where their stages end.

The strategies the first studies pointed to (issue 11). Each function here is a pure rule over the route's points;
:mod:`facerco.distill.strategies` (the strategy registry) turns them into an
:class:`~facerco.route.anchors.AnchorPlan` plus a :class:`~facerco.route.plan.StagePlan` with the config's knobs:

* ``lockstep`` (PocketNet-style): every route point in order; the student's stage k spans the same share of its budget
  as teacher epoch k spans of the teacher's run, so with equal epochs the student's epoch k follows teacher epoch k.
* ``phase``: one anchor per lr phase of the teacher (the last point before each lr drop, then the final). The stage
  switches sit where the teacher's drops sit (scaled to the student's budget), so a student that runs the teacher's
  step schedule switches anchor exactly at its own lr drops. A drop is a point whose successor's recorded lr is below
  ``distill.phase.drop_ratio`` times its own (a smooth decay has no phases: the plan is then the final teacher alone).
* ``early``: one early-stopped teacher point: ``distill.early.point`` when named, otherwise the best point by the
  validation metric among the points before the teacher's last lr phase (the teacher as it would have been stopped
  early). The control that tells "following a route" apart from "a softer teacher".
* ``ensemble``: one stage whose targets average several route points (snapshot ensemble): embeddings L2-normalized,
  averaged and re-normalized; logits averaged as probabilities at the KD temperature
  (:mod:`facerco.route.follow`). Members: ``distill.manual.anchors`` when given, else the phase anchors.
* ``reverse``: the EEIS anchors and stage lengths in reverse order, final first (a control: if it does as well,
  order does not matter).
* ``gss_online``: GSS measured on the *actual* student: the plan holds slots (:func:`online_slot`) that
  :class:`facerco.route.follow.OnlineGSSCallback` decides during training.

What the student follows during training (:class:`~facerco.route.follow.RouteFollower`, the online-GSS callback,
ensemble targets) is in :mod:`facerco.route.follow`; this module only plans.
"""

from __future__ import annotations

from collections.abc import Sequence

from facerco.route.anchors import AnchorPlan, PointInfo, best_point, select_eeis, select_manual
from facerco.route.plan import StagePlan

__all__ = [
    "ensemble_name",
    "ensemble_members",
    "online_slot",
    "is_online_slot",
    "phase_ends",
    "select_lockstep",
    "select_phase",
    "select_early",
    "select_ensemble",
    "select_reverse",
    "required_points",
]

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


def online_slot(index: int) -> str:
    """The placeholder anchor of online-GSS slot ``index`` (1-based), decided during training."""
    return f"{_ONLINE_SLOT}{index}"


def is_online_slot(anchor: str) -> bool:
    """True for an online-GSS slot whose route point is decided during training."""
    return anchor.startswith(_ONLINE_SLOT)


# ----------------------------------------------------------------------------------------------------------------
# Anchor selection
# ----------------------------------------------------------------------------------------------------------------


def phase_ends(points: Sequence[PointInfo], drop_ratio: float = 0.5) -> list[int]:
    """Indices of the last point of each lr phase except the final one (points before an lr drop)."""
    if not 0.0 < drop_ratio < 1.0:
        raise ValueError(f"distill.phase.drop_ratio must be in (0, 1), got {drop_ratio}")
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
            raise ValueError(f"distill.early.point {name!r} is not a route point; valid names: {', '.join(names)}")
        if name == final:
            raise ValueError("distill.early.point names the final teacher; 'early' is an intermediate point "
                             "(use strategy: final to mimic the final teacher)")
        # the note keeps the old key's name: plan.json stays byte-identical for the same config
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
# What a plan reads
# ----------------------------------------------------------------------------------------------------------------


def required_points(stage_plan: StagePlan, points: Sequence[PointInfo]) -> list[str]:
    """Route points whose targets a plan may read (ensemble members; every point for online GSS), final included."""
    names = [p.name for p in points]
    need: list[str] = []
    for anchor in stage_plan.anchors:
        need.extend(names if is_online_slot(anchor) else ensemble_members(anchor))
    need.append(names[-1])
    return [n for n in names if n in set(need)]
