"""Anchor and stage plans of a student config: the one place `route plan`, `cache --config` and `distill` ask.

:func:`prepare_plan` gives (steps per epoch, anchor plan, stage plan) of a config over a route; `facerco route plan`
prints exactly what `facerco distill` then follows. The plan itself comes from the strategy registry
(:mod:`facerco.distill.strategies`); GSS measures route points (and the initial student) on the fixed, seeded probe
set of :mod:`facerco.distill.probe`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from facerco.config import Config
from facerco.distill.builders import build_student
from facerco.distill.probe import ProbeContext, make_probe
from facerco.distill.strategies import PlanRequest, needs_probe, plan_strategy
from facerco.route.anchors import AnchorPlan, PointInfo, route_points
from facerco.route.plan import StagePlan
from facerco.route.strategies import required_points

__all__ = ["build_plan", "prepare_plan", "write_plan", "route_plan_config", "plan_points"]


def build_plan(cfg: Config, points: list[PointInfo], steps_per_epoch: int, total_steps: int,
               probe: ProbeContext | None = None) -> tuple[AnchorPlan, StagePlan]:
    """Anchor plan and stage plan of a config: the single function behind `route plan` and `distill`, through the
    strategy registry (explicit ``distill.stages`` override the strategy)."""
    return plan_strategy(PlanRequest(cfg.distill, points, total_steps, steps_per_epoch, cfg.optim.lr, probe))


def prepare_plan(cfg: Config, route: Any, dataset: Any, world_size: int = 1, initial: nn.Module | None = None,
                 device: torch.device | str = "cpu", student_start: bool = True) -> tuple[int, AnchorPlan, StagePlan]:
    """(steps per epoch, anchor plan, stage plan) of a student config: `facerco route plan` prints exactly this.

    For GSS, ``initial`` is the freshly built student (:func:`~facerco.distill.builders.build_student`); None
    builds it here from the seed. ``student_start=False`` starts the GSS walk at the first route point instead (no
    student model known).
    """
    spe = len(dataset) // (cfg.train.batch_size * world_size)
    if spe <= 0:
        raise ValueError(f"dataset of {len(dataset)} images is smaller than one global batch "
                         f"({world_size} x {cfg.train.batch_size})")
    budget = max(1, round(cfg.train.epochs * spe))
    probe = None
    if needs_probe(cfg.distill):
        student = None
        if student_start:
            student = initial if initial is not None else build_student(cfg)
        probe = make_probe(cfg, dataset, route, student, device)
    anchor_plan, stage_plan = build_plan(cfg, route_points(route), spe, budget, probe)
    return spe, anchor_plan, stage_plan


def write_plan(path: Path, anchor_plan: AnchorPlan, stage_plan: StagePlan,
               online: list[dict[str, Any]] | None = None, resolved: list[str] | None = None) -> None:
    """plan.json of a student run: the anchors (with GSS divergences), the stages, and online-GSS decisions so far."""
    from facerco.utils.io import write_json

    record: dict[str, Any] = {"anchors": anchor_plan.to_dict(), "stages": stage_plan.to_dict()}
    if online is not None:
        record["online_decisions"] = online
        record["resolved_anchors"] = resolved or []
    write_json(path, record)


def route_plan_config(run: str | Path, config: str | Path | None, overrides: Sequence[str],
                      dataset: str = "") -> Config:
    """The config `facerco route plan RUN` plans with: the student ``config``, or without one the teacher run's
    data and batch settings (defaults elsewhere); then ``overrides``, and ``dataset`` replacing ``data.train``."""
    from facerco.config import load_config

    if config:
        cfg = load_config(config, list(overrides))
    else:
        teacher = Path(run) / "config.yaml"
        base = load_config(teacher if teacher.is_file() else None)
        data = [f"data.train={base.data.train}", f"data.format={base.data.format}",
                f"data.image_size={base.data.image_size}", f"train.batch_size={base.train.batch_size}",
                f"train.epochs={base.train.epochs}", "kind=student"]
        cfg = load_config(None, [*data, *overrides])
    if dataset:
        cfg = replace(cfg, data=replace(cfg.data, train=dataset))
    return cfg


def plan_points(cfg: Config, route: Any, dataset: Any) -> list[str]:
    """The route points a student config's plan reads (ensemble members; every point for online GSS): what
    `facerco cache --config` embeds."""
    _, _, stage_plan = prepare_plan(cfg, route, dataset)
    return required_points(stage_plan, route_points(route))
