"""Anchor and stage plans of a student config: the one place `route plan`, `cache --config` and `distill` ask.

:func:`prepare_plan` gives (steps per epoch, anchor plan, stage plan) of a config over a route; `facerco route plan`
prints exactly what `facerco distill` then follows. GSS measures route points (and the initial student) on a fixed,
seeded probe set (:class:`ProbeContext`); online GSS measures the training student with :func:`student_probe_fn`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from facerco.config import Config
from facerco.distill.anchors import LoadPoint, route_loader, teacher_logits
from facerco.distill.builders import build_student
from facerco.eval.features import embed_batch
from facerco.route.anchors import (
    AnchorPlan,
    PointInfo,
    ProbeOutput,
    probe_indices,
    route_points,
    select_best,
    select_eeis,
    select_final,
    select_gss,
    select_manual,
)
from facerco.route.plan import StagePlan, build_stage_plan
from facerco.route.strategies import ROUTE_STRATEGIES, plan_route_strategy, required_points

__all__ = ["PROBE_CHUNK", "ProbeContext", "probe_images", "make_probe", "probe_output", "route_probe_outputs",
           "student_probe_fn", "plan_anchors", "build_plan", "prepare_plan", "write_plan", "route_plan_config",
           "plan_points"]

PROBE_CHUNK = 128  # probe images per forward: bounds the memory of a probe set of any size


@dataclass
class ProbeContext:
    """What GSS needs besides the route: probe images, a loader of route points and the initial student."""

    images: torch.Tensor  # (N, C, H, W) eval-transformed probe images
    load_point: LoadPoint
    student: nn.Module | None
    scale: float
    device: torch.device


def probe_images(dataset: Any, count: int, seed: int) -> torch.Tensor:
    """The fixed, seeded probe set of GSS (eval transform, no flip)."""
    idx = probe_indices(len(dataset), count, seed)
    return torch.stack([dataset[int(i)][0] for i in idx])


def make_probe(cfg: Config, dataset: Any, route: Any, student: nn.Module | None,
               device: torch.device | str = "cpu") -> ProbeContext:
    """GSS probe context: the seeded probe images, the route loader and the initial student."""
    return ProbeContext(probe_images(dataset, cfg.distill.gss_probe_images, cfg.distill.gss_seed),
                        route_loader(route, device), student, cfg.loss.s, torch.device(device))


def probe_output(model: nn.Module, classifier: torch.Tensor | None, ctx: ProbeContext) -> ProbeOutput:
    """A model's probe embeddings (and, given its classifier, margin-free logits), in float64 for the divergences."""
    emb = embed_batch(model.to(ctx.device), ctx.images, ctx.device, PROBE_CHUNK).cpu()
    logits = None
    if classifier is not None:
        logits = teacher_logits(emb, classifier.float().cpu(), ctx.scale).double().numpy()
    return ProbeOutput.from_arrays(emb.double().numpy(), logits)


def route_probe_outputs(points: list[PointInfo], probe: ProbeContext, use_logits: bool) -> dict[str, ProbeOutput]:
    """Every route point's probe outputs (GSS; online GSS computes them once at the start of training)."""
    outputs = {}
    for p in points:
        model, classifier = probe.load_point(p.name)
        outputs[p.name] = probe_output(model, classifier if use_logits else None, probe)
    return outputs


def student_probe_fn(backbone: nn.Module, head: nn.Module | None, probe: ProbeContext,
                     use_logits: bool) -> Callable[[], ProbeOutput]:
    """The training student's probe outputs, computed in eval mode without touching its state or any RNG."""

    @torch.no_grad()
    def output() -> ProbeOutput:
        emb = embed_batch(backbone, probe.images, probe.device, PROBE_CHUNK)
        logits = None
        if use_logits and head is not None and hasattr(head, "logits"):
            logits = head.logits(emb).double().cpu().numpy()
        return ProbeOutput.from_arrays(emb.double().cpu().numpy(), logits)

    return output


def plan_anchors(cfg: Config, points: list[PointInfo], probe: ProbeContext | None = None) -> AnchorPlan:
    """Anchors of ``cfg.distill`` over ``points``: final / best / eeis / manual / gss (GSS needs ``probe``)."""
    d = cfg.distill
    if d.stages:
        return select_manual(points, [s.anchor for s in d.stages], append_final=False)
    if d.strategy in ("final", "none"):
        return select_final(points)
    if d.strategy == "best":
        return select_best(points, d.best_metric)
    if d.strategy == "eeis":
        return select_eeis(points, num_anchors=d.num_anchors if d.eeis_every <= 0 else 0, every=d.eeis_every)
    if d.strategy == "manual":
        return select_manual(points, d.anchors)
    if d.strategy == "gss":
        if probe is None:
            raise ValueError("GSS needs probe images and the route's checkpoints")
        outputs = route_probe_outputs(points, probe, d.gss_use_logits)
        start = probe_output(probe.student, None, probe) if probe.student is not None else None
        return select_gss(points, outputs, start, d.gss_delta, d.gss_delta_mode, d.gss_divergence,
                          d.kd_temperature, d.gss_max_anchors)
    raise ValueError(f"unknown distill.strategy {d.strategy!r}")


def build_plan(cfg: Config, points: list[PointInfo], steps_per_epoch: int, total_steps: int,
               probe: ProbeContext | None = None) -> tuple[AnchorPlan, StagePlan]:
    """Anchor plan and stage plan of a config: the single function behind `route plan` and `distill`."""
    d = cfg.distill
    if len(points) == 1 and d.strategy not in ("final", "none", "manual") and not d.stages:
        raise ValueError(f"distill.strategy={d.strategy} follows a recorded route, but this route has one point "
                         f"({points[0].name}: an imported or unfinished teacher); use distill.strategy=final")
    if d.strategy in ROUTE_STRATEGIES and not d.stages:
        return plan_route_strategy(d, points, total_steps)
    anchor_plan = plan_anchors(cfg, points, probe)
    stage_plan = build_stage_plan(anchor_plan.anchors, total_steps, steps_per_epoch, d.schedule, d.final_share,
                                  d.restart_lr, d.stages, cfg.optim.lr)
    return anchor_plan, stage_plan


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
    if cfg.distill.strategy == "gss" and not cfg.distill.stages:
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
