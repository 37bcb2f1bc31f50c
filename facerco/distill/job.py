"""The student job, `facerco distill CONFIG` (= `facerco train student CONFIG`): set up, train, write the run.

:func:`run_distill` starts as the teacher job does (:mod:`facerco.train.job`: process group and threads, the resume
check against config.yaml, written by the first start only, the validator, the training set), then reads in order:
the route, the student and its head, the plan (:mod:`facerco.distill.planning`), the anchor source (online or
cached, :mod:`facerco.distill.anchors`), the task (:mod:`facerco.distill.task`), the callbacks (gate, online GSS),
then trains with :class:`facerco.train.engine.Engine` and writes ``student.safetensors``, ``summary.json`` and
``congruence.png``. The order of the setup steps is the order the RNG is drawn in (student weights, head, projector),
so it is part of a run's reproducibility.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from facerco.config import Config
from facerco.distill.anchors import CachedAnchors, LoadPoint, OnlineAnchors, route_loader
from facerco.distill.builders import build_student, hint_channels, teacher_dim
from facerco.distill.gate import GateCallback
from facerco.distill.planning import prepare_plan, write_plan
from facerco.distill.plots import congruence_per_stage, plot_congruence
from facerco.distill.probe import make_probe, route_probe_outputs, student_probe_fn
from facerco.distill.strategies import decides_online, needs_probe
from facerco.distill.task import StudentTask
from facerco.losses.partial_fc import build_head
from facerco.route.anchors import AnchorPlan, PointInfo, route_points
from facerco.route.cache_reader import AnchorCache
from facerco.route.follow import OnlineGSSCallback
from facerco.route.plan import StagePlan
from facerco.route.strategies import ensemble_members, required_points
from facerco.train.job import JobContext, build_train_dataset, build_validator, prepare_run_dir, start_job
from facerco.utils.callbacks import Callback
from facerco.utils.threads import ThreadChoice

__all__ = ["DistillResult", "run_distill"]

HeadFactory = Callable[[Config, int, int], nn.Module]
Validator = Callable[[nn.Module], dict[str, float]]


@dataclass
class DistillResult:
    """What a finished student run leaves behind."""

    run_dir: Path
    student_path: Path | None
    anchor_plan: AnchorPlan
    stage_plan: StagePlan
    step: int
    seconds: float
    val: dict[str, float]
    last_parts: dict[str, float]


@dataclass
class _Setup:
    """What the setup steps of :func:`run_distill` hand to the next ones."""

    route: Any
    points: list[PointInfo]
    dataset: Any
    backbone: nn.Module
    head: nn.Module | None
    spe: int
    anchor_plan: AnchorPlan
    stage_plan: StagePlan
    load: LoadPoint
    device: torch.device

    @property
    def final(self) -> str:
        return self.points[-1].name


def _open_route(cfg: Config) -> Any:
    """The teacher route of ``distill.teacher_run`` (an empty setting is refused with the fix)."""
    from facerco.route.io import load_route

    if not cfg.distill.teacher_run:
        raise ValueError("distill.teacher_run is empty: point it at a teacher run directory holding route.json")
    return load_route(cfg.distill.teacher_run)


def _setup(cfg: Config, route: Any, dist_info: Any, dataset: Any, head: nn.Module | None,
           head_factory: HeadFactory | None) -> _Setup:
    """Data, student, head and plan, in the order the RNG is drawn (student weights, then the head); the head is
    built only when a loss needs it (``distill.arcface_weight`` or ``kd_weight`` > 0), which needs labelled data."""
    from facerco.data.datasets import require_labels

    d = cfg.distill
    points = route_points(route)
    device = dist_info.device
    dataset = dataset if dataset is not None else build_train_dataset(cfg)
    if d.arcface_weight > 0 or d.kd_weight > 0:  # a margin head over identities; KD reads its logits
        require_labels(dataset, f"distill.arcface_weight={d.arcface_weight:g} and distill.kd_weight={d.kd_weight:g} "
                                "need identities: set distill.arcface_weight=0 and distill.kd_weight=0 to only mimic "
                                "the teacher, or give one sub-folder per identity (data.format=folder)")
    backbone = build_student(cfg)
    initial = None
    if needs_probe(d):
        import copy

        initial = copy.deepcopy(backbone)
    num_classes = int(getattr(dataset, "num_classes", 0) or 0)
    if head is None and (d.arcface_weight > 0 or d.kd_weight > 0):
        head = (head_factory or build_head)(cfg, int(backbone.meta.embedding_size), num_classes)
    spe, anchor_plan, stage_plan = prepare_plan(cfg, route, dataset, dist_info.world_size, initial, device)
    return _Setup(route, points, dataset, backbone, head, spe, anchor_plan, stage_plan, route_loader(route, device),
                  device)


def _anchor_source(cfg: Config, s: _Setup) -> tuple[Any, int]:
    """(anchor source, teacher embedding size): the cache when ``distill.cache`` is set (checked against the data
    and the route), else the route points run online (an ensemble's members stay loaded together)."""
    d = cfg.distill
    if d.cache:
        cache = AnchorCache(d.cache, verify=d.cache_verify)
        cache.check_dataset(s.dataset, route=s.route, anchors=required_points(s.stage_plan, s.points))
        load = s.load
        source: Any = CachedAnchors(cache, (lambda name: load(name)[1]) if d.kd_weight > 0 else None, s.device,
                                    center=d.target_center)
        return source, cache.embedding_size(s.final)
    if d.target_center:
        raise ValueError("distill.target_center=true needs distill.cache (the mean target is taken over the cached "
                         "training set); build one with `facerco cache`")
    keep = max(2, 1 + max(len(ensemble_members(a)) for a in s.stage_plan.anchors))
    source = OnlineAnchors(s.load, s.device, d.hint_teacher_layer if d.hint_weight > 0 else "", keep=keep)
    return source, teacher_dim(s.route, s.load, s.final)


def _build_task(cfg: Config, s: _Setup) -> StudentTask:
    """The student task over the plan, stopping at ``train.max_steps`` when set."""
    source, t_dim = _anchor_source(cfg, s)
    hints = None
    if cfg.distill.hint_weight > 0:
        hints = hint_channels(s.backbone, s.load(s.final)[0].to(s.device), cfg)
    total = s.stage_plan.total_steps
    stop = min(total, cfg.train.max_steps) if cfg.train.max_steps > 0 else total
    return StudentTask(s.backbone, s.head, s.stage_plan, source, cfg, t_dim, s.final, stop, hints)


def _online_gss(cfg: Config, task: StudentTask, s: _Setup, run_dir: Path, is_main: bool) -> OnlineGSSCallback:
    """The online-GSS callback: route points' probe outputs now, the student's at each slot, plan.json rewritten."""
    from facerco.train import distributed as fdist

    probe = make_probe(cfg, s.dataset, s.route, None, s.device)
    g = cfg.distill.gss
    outputs = route_probe_outputs(s.points, probe, g.use_logits)

    def on_decide(records: list[dict[str, Any]]) -> None:
        if is_main:
            write_plan(run_dir / "plan.json", s.anchor_plan, task.plan, records, task.follower.resolved_anchors())
            print(f"online GSS: slot {records[-1]['slot']} follows {records[-1]['chosen']} "
                  f"(step {records[-1]['step']})", flush=True)

    return OnlineGSSCallback(task.follower, [p.name for p in s.points], outputs,
                             student_probe_fn(task.backbone, s.head, probe, g.use_logits), g.delta, g.delta_mode,
                             g.divergence, cfg.distill.kd_temperature, on_decide,
                             share=fdist.broadcast_object)


def _callbacks(cfg: Config, task: StudentTask, s: _Setup, validator: Validator | None, run_dir: Path,
               is_main: bool) -> tuple[list[Callback], GateCallback | None, OnlineGSSCallback | None]:
    """The gate (``distill.gate``, needs validation data) and the online-GSS slots (``strategy: gss_online``)."""
    d = cfg.distill
    callbacks: list[Callback] = []
    gate = None
    if d.gate:
        if validator is None:
            raise ValueError("distill.gate=true needs validation data (data.val_bins or data.val_pairs)")
        gate = GateCallback(task, {p.name: p for p in s.points}, d.gate_metric)
        callbacks.append(gate)
    online = None
    if decides_online(d):
        online = _online_gss(cfg, task, s, run_dir, is_main)
        callbacks.append(online)
    return callbacks, gate, online


def _write_start(cfg: Config, s: _Setup, run_dir: Path, online: bool) -> None:
    """plan.json (online GSS keeps the plan.json of a run it resumes) and the printed plan; config.yaml is written
    by :func:`facerco.train.job.prepare_run_dir`."""
    from facerco.route.anchors import format_plan
    from facerco.route.plan import format_stages

    if not online or not (run_dir / "plan.json").is_file():
        write_plan(run_dir / "plan.json", s.anchor_plan, s.stage_plan, [] if online else None)
    print(format_plan(s.anchor_plan), flush=True)
    print(format_stages(s.stage_plan, s.spe), flush=True)


def _write_end(cfg: Config, s: _Setup, task: StudentTask, result: Any, gate: GateCallback | None,
               run_dir: Path, threads: ThreadChoice) -> Path:
    """student.safetensors (with the anchors followed), summary.json and congruence.png; returns the student."""
    from facerco.models.checkpoint import save_model_checkpoint
    from facerco.utils.io import write_json

    student_path = run_dir / "student.safetensors"
    followed = task.follower.resolved_anchors()
    save_model_checkpoint(student_path, s.backbone, metadata={
        "kind": "student", "teacher_run": str(cfg.distill.teacher_run), "strategy": s.anchor_plan.strategy,
        "anchors": followed, "schedule": s.stage_plan.kind, "step": result.step, "val": result.val})
    write_json(run_dir / "summary.json", {
        "step": result.step, "total_steps": result.total_steps, "seconds": result.seconds,
        "val": result.val, "last_parts": result.last_parts, "anchors": followed,
        "skipped_stages": sorted(task.skipped), "gate": gate.decisions if gate else [],
        "torch_threads": threads.to_dict(),
        "congruence_per_stage": congruence_per_stage(run_dir / "log.jsonl", s.stage_plan, followed)})
    plot_congruence(run_dir / "log.jsonl", s.stage_plan, run_dir / "congruence.png",
                    f"{s.anchor_plan.strategy} / {s.stage_plan.kind}")
    return student_path


def run_distill(cfg: Config, *, dataset: Any = None, head: nn.Module | None = None,
                head_factory: HeadFactory | None = None, validator: Validator | None = None) -> DistillResult:
    """Train a student by RCO (or a baseline: final / best / scratch) as ``cfg`` says; see the module docstring.

    ``dataset``/``head`` replace the config's training set and margin head; ``head_factory(cfg, embedding_size,
    num_classes)`` builds the head instead of the teacher job's; ``validator`` is the engine's periodic validation
    (the gate needs it; default: the config's ``data.val_bins`` / ``data.val_pairs``, as in the teacher job). A run
    folder with ``last.pt`` resumes under the config it was started with (else refused, naming config.yaml). Torch
    runs with ``train.threads`` threads (0: the cores not busy at start), printed and recorded in summary.json; the
    caller's count is restored afterwards. Collective under torchrun; the process group is left on any exit.
    """
    route = _open_route(cfg)  # before the process group starts: a wrong teacher_run fails at once
    with start_job(cfg, "distill") as job:
        return _run(cfg, route, job, dataset, head, head_factory, validator)


def _run(cfg: Config, route: Any, job: JobContext, dataset: Any, head: nn.Module | None,
         head_factory: HeadFactory | None, validator: Validator | None) -> DistillResult:
    """The body of :func:`run_distill` once the route is open and the process group is up."""
    from facerco.route.plan import StagedSchedule
    from facerco.train.engine import Engine
    from facerco.train.schedule import stage_schedule_factory

    dist_info, threads = job.dist, job.threads
    run_dir = prepare_run_dir(cfg, dist_info)
    if validator is None:
        validator = build_validator(cfg, dist_info.device)
    s = _setup(cfg, route, dist_info, dataset, head, head_factory)
    task = _build_task(cfg, s)
    schedule = StagedSchedule(s.stage_plan, stage_schedule_factory(cfg.schedule, s.spe, s.stage_plan.total_steps,
                                                                   cfg.optim.lr))
    callbacks, gate, online = _callbacks(cfg, task, s, validator, run_dir, dist_info.is_main)
    if dist_info.is_main:
        _write_start(cfg, s, run_dir, online is not None)
    engine = Engine(task, s.dataset, cfg, run_dir=run_dir, schedule=schedule, total_steps=s.stage_plan.total_steps,
                    callbacks=callbacks, validator=validator, dist_info=dist_info)
    result = engine.fit()
    student_path = _write_end(cfg, s, task, result, gate, run_dir, threads) if dist_info.is_main else None
    return DistillResult(run_dir, student_path, s.anchor_plan, s.stage_plan, result.step, result.seconds,
                         result.val, result.last_parts)
