"""The strategy registry: ``distill.strategy`` name -> planner, the one place a strategy name is looked up.

A planner turns a :class:`PlanRequest` (the typed ``distill`` config, the route's points, the student's budget)
into an anchor plan and a stage plan, before training. `facerco route plan`, the student job (`facerco distill` =
`facerco train student`), `facerco cache --config` and `facerco compare` all plan through :func:`plan_strategy`
(by way of :func:`facerco.distill.planning.build_plan`), so the plan `route plan` prints is the plan a run follows.
What happens during training (the anchor at each step, online-GSS decisions) is in :mod:`facerco.route.follow`.

Each :class:`Strategy` names the ``distill`` sections it reads (``distill.gss``, ``distill.eeis``, ...), whether it
measures the GSS probe before training, whether it leaves slots to decide during training, and whether it follows
a recorded route (a one-point route, such as an imported teacher, is then refused). Explicit ``distill.stages``
override every strategy. The selection rules themselves are pure functions over route points in
:mod:`facerco.route.anchors` (final, best, EEIS, manual, GSS) and :mod:`facerco.route.strategies` (the rest).

``final`` is the library default and facerco's recommendation; the others are studies and controls.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from facerco.config import DistillConfig
from facerco.route.anchors import (
    AnchorPlan,
    PointInfo,
    select_best,
    select_eeis,
    select_final,
    select_gss,
    select_manual,
)
from facerco.route.plan import StagePlan, build_stage_plan, fraction_lengths, split_lengths, stages_from_lengths
from facerco.route.strategies import (
    online_slot,
    select_early,
    select_ensemble,
    select_lockstep,
    select_phase,
    select_reverse,
)

if TYPE_CHECKING:  # the probe needs torch; planners that use it import it when they run
    from facerco.distill.probe import ProbeContext

__all__ = ["PlanRequest", "Planner", "Strategy", "STRATEGIES", "register_strategy", "get_strategy", "plan_strategy",
           "needs_probe", "decides_online"]


@dataclass(frozen=True)
class PlanRequest:
    """What a planner is given: the ``distill`` config, the route's points (final last) and the student's budget."""

    distill: DistillConfig
    points: Sequence[PointInfo]
    total_steps: int  # the automatic plan's budget in optimizer steps
    steps_per_epoch: int  # converts explicit stages' epochs to steps
    base_lr: float = 0.0  # optim.lr, to turn an explicit stage's lr into a multiplier
    probe: ProbeContext | None = None  # GSS only: probe images, route loader, initial student


Planner = Callable[[PlanRequest], tuple[AnchorPlan, StagePlan]]


@dataclass(frozen=True)
class Strategy:
    """A registered strategy: its planner and the facts the job, `route plan` and `compare` ask of it."""

    name: str
    summary: str
    planner: Planner
    sections: tuple[str, ...] = ()  # the distill sections it reads, e.g. ("gss",) for distill.gss.*
    needs_route: bool = True  # follows a recorded route: a one-point route is refused
    needs_probe: bool = False  # measures the GSS probe (route points and the initial student) before training
    online: bool = False  # leaves slots that OnlineGSSCallback decides during training
    one_anchor: bool = False  # follows one target, so distill.schedule does not matter


STRATEGIES: dict[str, Strategy] = {}
"""Every strategy by name, in registration order; ``distill.strategy`` takes exactly these names."""


def register_strategy(name: str, summary: str, sections: tuple[str, ...] = (), *, needs_route: bool = True,
                      needs_probe: bool = False, online: bool = False,
                      one_anchor: bool = False) -> Callable[[Planner], Planner]:
    """Register the decorated planner under ``name``; a name registered twice is an error, not an overwrite."""

    def add(planner: Planner) -> Planner:
        if name in STRATEGIES:
            raise ValueError(f"strategy {name!r} is already registered (by {STRATEGIES[name].planner.__name__})")
        STRATEGIES[name] = Strategy(name, summary, planner, sections, needs_route, needs_probe, online, one_anchor)
        return planner

    return add


def get_strategy(name: str) -> Strategy:
    """The registered strategy ``name``; an unknown name is refused with the nearest one and the full list."""
    if name not in STRATEGIES:
        close = difflib.get_close_matches(name, list(STRATEGIES), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown distill.strategy {name!r}{hint} (registered: {', '.join(STRATEGIES)})")
    return STRATEGIES[name]


def needs_probe(d: DistillConfig) -> bool:
    """Whether planning ``d`` measures the GSS probe before training (explicit stages never do)."""
    return not d.stages and get_strategy(d.strategy).needs_probe


def decides_online(d: DistillConfig) -> bool:
    """Whether ``d``'s plan has slots decided during training (explicit stages never do)."""
    return not d.stages and get_strategy(d.strategy).online


def plan_strategy(req: PlanRequest) -> tuple[AnchorPlan, StagePlan]:
    """(anchor plan, stage plan) of ``req.distill``: its explicit stages, else its strategy's planner."""
    d = req.distill
    if d.stages:
        return _plan_explicit_stages(req)
    strategy = get_strategy(d.strategy)
    if strategy.needs_route and len(req.points) == 1:
        raise ValueError(f"distill.strategy={d.strategy} follows a recorded route, but this route has one point "
                         f"({req.points[0].name}: an imported or unfinished teacher); use distill.strategy=final")
    if req.total_steps <= 0:
        raise ValueError(f"the student budget must be > 0 steps, got {req.total_steps}")
    return strategy.planner(req)


# ----------------------------------------------------------------------------------------------------------------
# Stage plans around an anchor plan
# ----------------------------------------------------------------------------------------------------------------


def _plan_explicit_stages(req: PlanRequest) -> tuple[AnchorPlan, StagePlan]:
    """``distill.stages``: their anchors in their order, each stage its own length (and lr)."""
    d = req.distill
    plan = select_manual(req.points, [s.anchor for s in d.stages], append_final=False)
    return plan, build_stage_plan(plan.anchors, req.total_steps, req.steps_per_epoch, d.schedule, d.final_share,
                                  d.restart_lr, d.stages, req.base_lr)


def _split(req: PlanRequest, plan: AnchorPlan) -> tuple[AnchorPlan, StagePlan]:
    """The anchors in order; the final gets ``final_share`` of the budget, the others split the rest evenly."""
    d = req.distill
    return plan, build_stage_plan(plan.anchors, req.total_steps, req.steps_per_epoch, d.schedule, d.final_share,
                                  d.restart_lr, (), req.base_lr)


def _whole(req: PlanRequest, plan: AnchorPlan) -> tuple[AnchorPlan, StagePlan]:
    """One stage over the whole budget (an early point, an ensemble)."""
    d = req.distill
    return plan, stages_from_lengths(plan.anchors, [req.total_steps], d.schedule, d.restart_lr)


def _at_fractions(req: PlanRequest, plan: AnchorPlan, ends: list[float]) -> tuple[AnchorPlan, StagePlan]:
    """Stages ending at ``ends`` (fractions of the budget), where the teacher's own points or lr drops sit."""
    d = req.distill
    return plan, stages_from_lengths(plan.anchors, fraction_lengths(req.total_steps, ends), d.schedule, d.restart_lr)


# ----------------------------------------------------------------------------------------------------------------
# The strategies
# ----------------------------------------------------------------------------------------------------------------


@register_strategy("final", "mimic the converged teacher (the recommended strategy)", needs_route=False,
                   one_anchor=True)
def _plan_final(req: PlanRequest) -> tuple[AnchorPlan, StagePlan]:
    return _split(req, select_final(list(req.points)))


register_strategy("none", "the final point as a placeholder, for runs without a teacher loss", needs_route=False,
                  one_anchor=True)(_plan_final)


@register_strategy("best", "the best route point by validation (distill.best.metric)", ("best",), one_anchor=True)
def _plan_best(req: PlanRequest) -> tuple[AnchorPlan, StagePlan]:
    return _split(req, select_best(list(req.points), req.distill.best.metric))


@register_strategy("eeis", "Equal Epoch Interval anchors, final last", ("eeis",))
def _plan_eeis(req: PlanRequest) -> tuple[AnchorPlan, StagePlan]:
    e = req.distill.eeis
    return _split(req, select_eeis(list(req.points), num_anchors=e.num_anchors if e.every <= 0 else 0, every=e.every))


@register_strategy("manual", "the route points named in distill.manual.anchors, final appended", ("manual",),
                   needs_route=False)
def _plan_manual(req: PlanRequest) -> tuple[AnchorPlan, StagePlan]:
    return _split(req, select_manual(list(req.points), req.distill.manual.anchors))


@register_strategy("gss", "Greedy Search: the farthest later point within delta of the current one", ("gss",),
                   needs_probe=True)
def _plan_gss(req: PlanRequest) -> tuple[AnchorPlan, StagePlan]:
    from facerco.distill.probe import probe_output, route_probe_outputs

    probe, d = req.probe, req.distill
    if probe is None:
        raise ValueError("GSS needs probe images and the route's checkpoints")
    g = d.gss
    outputs = route_probe_outputs(list(req.points), probe, g.use_logits)
    start = probe_output(probe.student, None, probe) if probe.student is not None else None
    return _split(req, select_gss(list(req.points), outputs, start, g.delta, g.delta_mode, g.divergence,
                                  d.kd_temperature, g.max_anchors))


@register_strategy("lockstep", "student epoch k follows teacher epoch k (PocketNet-style)")
def _plan_lockstep(req: PlanRequest) -> tuple[AnchorPlan, StagePlan]:
    plan, ends = select_lockstep(list(req.points))
    return _at_fractions(req, plan, ends)


@register_strategy("phase", "one anchor per teacher lr phase, switching at its lr drops", ("phase",))
def _plan_phase(req: PlanRequest) -> tuple[AnchorPlan, StagePlan]:
    plan, ends = select_phase(list(req.points), req.distill.phase.drop_ratio)
    return _at_fractions(req, plan, ends)


@register_strategy("early", "one early-stopped teacher point (control)", ("early", "best", "phase"),
                   one_anchor=True)
def _plan_early(req: PlanRequest) -> tuple[AnchorPlan, StagePlan]:
    d = req.distill
    return _whole(req, select_early(list(req.points), d.early.point, d.best.metric, d.phase.drop_ratio))


@register_strategy("ensemble", "one anchor averaging route points (snapshot ensemble)", ("manual", "phase"),
                   one_anchor=True)
def _plan_ensemble(req: PlanRequest) -> tuple[AnchorPlan, StagePlan]:
    d = req.distill
    if d.hint_weight > 0:
        raise ValueError("strategy 'ensemble' averages embeddings and logits; hint losses are not defined for it")
    return _whole(req, select_ensemble(list(req.points), d.manual.anchors, d.phase.drop_ratio))


@register_strategy("reverse", "the EEIS anchors and stage lengths in reverse order (control)", ("eeis",))
def _plan_reverse(req: PlanRequest) -> tuple[AnchorPlan, StagePlan]:
    d = req.distill
    e = d.eeis
    plan = select_reverse(list(req.points), num_anchors=e.num_anchors if e.every <= 0 else 0, every=e.every)
    lengths = split_lengths(req.total_steps, list(reversed(plan.anchors)), d.final_share)
    return plan, stages_from_lengths(plan.anchors, list(reversed(lengths)), d.schedule, d.restart_lr)


@register_strategy("gss_online", "GSS decided on the training student at each slot", ("gss", "eeis"), online=True)
def _plan_gss_online(req: PlanRequest) -> tuple[AnchorPlan, StagePlan]:
    """``distill.gss.max_anchors`` slots (default ``distill.eeis.num_anchors``), the last the final teacher."""
    d = req.distill
    count = d.gss.max_anchors or d.eeis.num_anchors or 4
    if count < 2:
        raise ValueError(f"online GSS needs at least 2 slots (distill.gss.max_anchors / distill.eeis.num_anchors), "
                         f"got {count}")
    count = min(count, len(req.points))
    slots = [online_slot(i + 1) for i in range(count - 1)] + [req.points[-1].name]
    plan = AnchorPlan("gss_online", slots, notes=f"delta={d.gss.delta} ({d.gss.delta_mode}), decided online")
    return plan, stages_from_lengths(slots, split_lengths(req.total_steps, slots, d.final_share), d.schedule,
                                     d.restart_lr)
