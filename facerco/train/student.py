"""The RCO student job: follow anchors from a teacher route through the shared training engine.

Pieces, each replaceable: an :class:`AnchorSource` gives the current anchor's targets (running the anchor online,
or reading the anchor-feature cache by dataset index and flip bit); :class:`StudentTask` turns a batch into
``arcface + mimic + KD + hint`` (weights from ``distill``) and logs the congruence (mimic loss to the current anchor
and to the final teacher); a :class:`~facerco.route.plan.StagePlan` maps every global step to its stage and
anchor, so a resumed run lands in the same stage; :class:`GateCallback` optionally skips anchors whose validation
metric is below the student's current one (decisions saved in ``last.pt``).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facerco.config import Config
from facerco.losses.distill import FeatureHooks, HintLoss, KDLoss, MimicLoss
from facerco.route.anchors import (
    AnchorPlan,
    PointInfo,
    ProbeOutput,
    default_metric,
    probe_indices,
    route_points,
    select_best,
    select_eeis,
    select_final,
    select_gss,
    select_manual,
)
from facerco.route.cache import AnchorCache
from facerco.route.plan import StagePlan, build_stage_plan
from facerco.route.strategies import (
    ROUTE_STRATEGIES,
    OnlineGSSCallback,
    RouteFollower,
    ensemble_embeddings,
    ensemble_logits,
    ensemble_members,
    plan_route_strategy,
    required_points,
)
from facerco.train.engine import Callback, Engine
from facerco.train.task import TrainTask

__all__ = [
    "AnchorSource",
    "OnlineAnchors",
    "CachedAnchors",
    "StudentTask",
    "GateCallback",
    "ProbeContext",
    "DistillResult",
    "plan_anchors",
    "build_plan",
    "prepare_plan",
    "run_distill",
    "build_student",
    "build_validator",
    "open_train_dataset",
    "teacher_logits",
    "read_congruence",
    "plot_congruence",
]


class AnchorSource(Protocol):
    """Where anchor targets come from."""

    def embeddings(self, anchor: str, images: torch.Tensor, keys: torch.Tensor | None) -> torch.Tensor: ...

    def classifier(self, anchor: str) -> torch.Tensor | None: ...


def teacher_logits(embeddings: torch.Tensor, weight: torch.Tensor, scale: float) -> torch.Tensor:
    """``s * cos(e, W)``: the anchor classifier's logits without margin (the KD target)."""
    return scale * F.linear(F.normalize(embeddings.float(), dim=1), F.normalize(weight.float(), dim=1))


LoadPoint = Callable[[str], tuple[nn.Module, "torch.Tensor | None"]]
"""Loads a route point by name: (backbone in eval mode, classifier weight (C, D) or None)."""


class OnlineAnchors:
    """Runs anchors on the batch (no grad, eval mode); keeps the last ``keep`` loaded anchors in memory.

    Anchor models are held in a plain dict, not registered as sub-modules: they are never trained, never in
    ``state_dict()`` (so not in resume checkpoints) and never wrapped by DDP.
    """

    def __init__(self, load: LoadPoint, device: torch.device | str = "cpu", hint_layer: str = "",
                 keep: int = 2) -> None:
        self._load = load
        self.device = torch.device(device)
        self.hint_layer = hint_layer
        self.keep = max(1, keep)
        self._models: OrderedDict[str, tuple[nn.Module, torch.Tensor | None, FeatureHooks | None]] = OrderedDict()
        self.last_features: torch.Tensor | None = None

    def _get(self, anchor: str) -> tuple[nn.Module, torch.Tensor | None, FeatureHooks | None]:
        if anchor in self._models:
            self._models.move_to_end(anchor)
            return self._models[anchor]
        model, classifier = self._load(anchor)
        model = model.to(self.device).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        hooks = FeatureHooks(model, [self.hint_layer]) if self.hint_layer else None
        cls = classifier.to(self.device) if classifier is not None else None
        self._models[anchor] = (model, cls, hooks)
        while len(self._models) > self.keep:
            _, (_, _, old_hooks) = self._models.popitem(last=False)
            if old_hooks is not None:
                old_hooks.remove()
        return self._models[anchor]

    @torch.no_grad()
    def embeddings(self, anchor: str, images: torch.Tensor, keys: torch.Tensor | None = None) -> torch.Tensor:
        model, _, hooks = self._get(anchor)
        out = model(images).float()
        self.last_features = hooks.features.get(self.hint_layer) if hooks is not None else None
        return out

    def classifier(self, anchor: str) -> torch.Tensor | None:
        return self._get(anchor)[1]


class CachedAnchors:
    """Reads anchor embeddings from an :class:`~facerco.route.cache.AnchorCache` by ``keys = [index, flip]``."""

    def __init__(self, cache: AnchorCache, load_classifier: Callable[[str], torch.Tensor | None] | None = None,
                 device: torch.device | str = "cpu") -> None:
        self.cache = cache
        self.device = torch.device(device)
        self._load_classifier = load_classifier
        self._classifiers: dict[str, torch.Tensor | None] = {}
        self.last_features = None

    def embeddings(self, anchor: str, images: torch.Tensor, keys: torch.Tensor | None) -> torch.Tensor:
        if keys is None:
            raise ValueError("cached anchor targets need the dataset keys [index, flip] (task.wants_keys)")
        keys = keys.cpu()
        return self.cache.targets(anchor, keys[:, 0], keys[:, 1]).to(self.device)

    def classifier(self, anchor: str) -> torch.Tensor | None:
        if anchor not in self._classifiers:
            w = self._load_classifier(anchor) if self._load_classifier is not None else None
            self._classifiers[anchor] = w.to(self.device) if w is not None else None
        return self._classifiers[anchor]


class StudentTask(TrainTask):
    """Student backbone + ArcFace head + distillation losses, following the anchor of the current stage.

    Args:
        backbone: the student network (exported alone).
        head: margin-softmax module ``head(embeddings, labels) -> loss`` exposing ``logits(embeddings)`` (no margin,
            all classes; Partial FC all-gathers its class centres there) for KD; may be None when
            ``arcface_weight == 0`` and KD is off.
        plan: stage plan; ``plan.stage_at(step).anchor`` is the anchor at a global step.
        anchors: an :class:`AnchorSource`.
        cfg: the whole config (``distill`` weights, ``loss.s`` for teacher logits, ``train.log_every``).
        teacher_dim: anchor embedding size (a mimic projector is built when it differs from the student's).
        final_anchor: the converged teacher's point name (congruence to the final).
        stop_step: last step of this run, so congruence is also measured at the final step.
        hint_channels: (student, teacher) channels of the hooked stages, when ``hint_weight > 0``.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module | None, plan: StagePlan, anchors: AnchorSource,
                 cfg: Config, teacher_dim: int, final_anchor: str, stop_step: int = 0,
                 hint_channels: tuple[int, int] | None = None) -> None:
        super().__init__()
        d = cfg.distill
        self.backbone = backbone
        self.head = head
        self.plan = plan
        self.anchors = anchors
        self.dcfg = d
        self.scale = cfg.loss.s
        self.log_every = max(1, cfg.train.log_every)
        self.stop_step = stop_step
        self.final_anchor = final_anchor
        self.wants_keys = isinstance(anchors, CachedAnchors)
        student_dim = int(getattr(getattr(backbone, "meta", None), "embedding_size", 0) or 0)
        self.mimic = MimicLoss(d.mimic_type, student_dim, teacher_dim)
        self.kd = KDLoss(d.kd_temperature) if d.kd_weight > 0 else None
        if d.arcface_weight > 0 and head is None:
            raise ValueError("distill.arcface_weight > 0 needs a margin head")
        self.hint: HintLoss | None = None
        self._student_hooks: FeatureHooks | None = None
        if d.hint_weight > 0:
            if not (d.hint_student_layer and d.hint_teacher_layer and hint_channels):
                raise ValueError("distill.hint_weight > 0 needs distill.hint_student_layer and hint_teacher_layer")
            if isinstance(anchors, CachedAnchors):
                raise ValueError("hint losses need teacher feature maps: run anchors online (distill.cache empty)")
            self.hint = HintLoss(*hint_channels)
            self._student_hooks = FeatureHooks(backbone, [d.hint_student_layer])
        self.follower = RouteFollower(plan)
        self.skipped = self.follower.skipped  # stage indices skipped by the gate (the follower's set)
        # DDP must not wait for gradients of parts this configuration never trains (e.g. the projector of scratch)
        needs_teacher = d.mimic_weight > 0 or self.kd is not None or self.hint is not None
        self.find_unused_parameters = (self.mimic.projector is not None and (d.mimic_weight == 0 or not needs_teacher)
                                       ) or (head is not None and d.arcface_weight == 0 and self.kd is None)
        if head is not None and getattr(head, "sharded", False):
            self.rank_local_prefixes = ("head.",)  # Partial-FC rows differ per rank

    # -- stage / anchor ---------------------------------------------------------------------------------------------
    def anchor_at(self, step: int) -> str:
        """Anchor followed at ``step``: the stage's (online slots: as decided), or the next non-skipped one."""
        return self.follower.anchor_at(step)

    def extra_state(self) -> dict[str, Any]:
        return self.follower.state()

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.follower.load_state(state)
        self.skipped = self.follower.skipped

    def mimic_target(self, anchor: str, images: torch.Tensor, keys: torch.Tensor | None) -> torch.Tensor:
        """The anchor's embeddings (an ensemble anchor: its members' normalized mean)."""
        return ensemble_embeddings([self.anchors.embeddings(m, images, keys).float()
                                    for m in ensemble_members(anchor)])

    def kd_target(self, anchor: str, images: torch.Tensor, keys: torch.Tensor | None,
                  single: torch.Tensor | None = None) -> torch.Tensor:
        """The anchor classifier's logits (an ensemble: probabilities averaged at the KD temperature)."""
        logits = []
        for member in ensemble_members(anchor):
            weight = self.anchors.classifier(member)
            if weight is None:
                raise ValueError(f"KD needs the classifier of anchor {member!r}; the route point has none "
                                 "(record the route with route.save_classifier=true)")
            emb = single if single is not None else self.anchors.embeddings(member, images, keys).float()
            logits.append(teacher_logits(emb, weight, self.scale))
        return ensemble_logits(logits, self.dcfg.kd_temperature)

    # -- optimisation ---------------------------------------------------------------------------------------------
    def param_groups(self, weight_decay: float, classifier_lr_mult: float = 1.0) -> list[dict[str, Any]]:
        head_params = [p for p in (self.head.parameters() if self.head is not None else []) if p.requires_grad]
        head_ids = {id(p) for p in head_params}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in head_ids]
        groups = [{"params": rest, "weight_decay": weight_decay, "lr_mult": 1.0}]
        if head_params:
            groups.append({"params": head_params, "weight_decay": weight_decay, "lr_mult": classifier_lr_mult})
        return groups

    def _wants_congruence(self, step: int) -> bool:
        return (step + 1) % self.log_every == 0 or (self.stop_step > 0 and step + 1 == self.stop_step)

    def training_step(self, images: torch.Tensor, labels: torch.Tensor, step: int,
                      keys: torch.Tensor | None = None, **kwargs: Any) -> dict[str, torch.Tensor]:
        d = self.dcfg
        anchor = self.anchor_at(step)
        emb = self.backbone(images)
        parts: dict[str, torch.Tensor] = {}
        zero = emb.new_zeros(()).float()
        total = zero
        device_type = emb.device.type
        need_teacher = d.mimic_weight > 0 or self.kd is not None or self.hint is not None
        congruence = need_teacher and self._wants_congruence(step)
        target = final_t = t_feat = None
        if need_teacher:  # anchors run under the ambient autocast (fast on GPU); losses below run in fp32
            target = self.mimic_target(anchor, images, keys)
            t_feat = getattr(self.anchors, "last_features", None)
            if congruence and anchor != self.final_anchor:
                final_t = self.anchors.embeddings(self.final_anchor, images, keys).float()
        with self.full_precision(device_type):
            emb32 = emb.float()
            if d.arcface_weight > 0 and self.head is not None:
                arc = self.head(emb32, labels)
                parts["arcface"] = arc.detach()
                total = total + d.arcface_weight * arc
            if target is not None:
                mimic = self.mimic(emb32, target)
                parts["mimic"] = mimic.detach()
                if d.mimic_weight > 0:
                    total = total + d.mimic_weight * mimic
                if self.kd is not None:
                    single = target if len(ensemble_members(anchor)) == 1 else None
                    student_logits = self.head.logits(emb32)  # type: ignore[union-attr]
                    kd = self.kd(student_logits, self.kd_target(anchor, images, keys, single))
                    parts["kd"] = kd.detach()
                    total = total + d.kd_weight * kd
                if self.hint is not None and self._student_hooks is not None and t_feat is not None:
                    s_feat = self._student_hooks.features[d.hint_student_layer]
                    hint = self.hint(s_feat.float(), t_feat.float())
                    parts["hint"] = hint.detach()
                    total = total + d.hint_weight * hint
                if congruence:
                    with torch.no_grad():
                        parts["cong_anchor"] = mimic.detach()
                        parts["cong_final"] = (mimic.detach() if final_t is None
                                               else self.mimic(emb32.detach(), final_t).detach())
        parts["stage"] = torch.tensor(float(self.plan.stage_at(step).index), device=emb.device)
        parts["loss"] = total
        return parts


class GateCallback(Callback):
    """At each stage boundary, skip the coming anchor when its recorded val metric is below the student's.

    The student's metric comes from the engine's validator (rank 0, broadcast), the anchor's from ``route.json``.
    Decisions live in ``task.skipped`` and are saved in ``last.pt`` via ``task.extra_state()``.
    """

    name = "rco_gate"

    def __init__(self, task: StudentTask, points: dict[str, PointInfo], metric: str = "") -> None:
        self.task = task
        self.points = points
        self.metric = metric
        self.decisions: list[dict[str, Any]] = []

    def state_dict(self) -> dict[str, Any]:
        return {"decisions": json.dumps(self.decisions)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decisions = json.loads(state.get("decisions", "[]"))

    def on_step_end(self, engine: Engine, step: int, parts: dict[str, float]) -> None:
        plan = self.task.plan
        upcoming = [s for s in plan.stages[:-1] if s.start == step and s.index > 0]
        if not upcoming:
            return
        stage = upcoming[0]
        student = engine.validate()
        info = self.points.get(stage.anchor)
        key = self.metric or default_metric([k for k in student if info is not None and k in info.val])
        if not key or info is None or key not in info.val or key not in student:
            self.decisions.append({"stage": stage.index, "anchor": stage.anchor, "skipped": False,
                                   "reason": "no comparable metric"})
            return
        skip = info.val[key] < student[key]
        if skip:
            self.task.skipped.add(stage.index)
        self.decisions.append({"stage": stage.index, "anchor": stage.anchor, "metric": key,
                               "anchor_value": info.val[key], "student_value": student[key], "skipped": skip})


# --------------------------------------------------------------------------------------------------------------------
# Anchor plans (shared by `facerco route plan` and `facerco distill`, so the printed plan is the plan used)
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class ProbeContext:
    """What GSS needs besides the route: probe images, a loader of route points and the initial student."""

    images: torch.Tensor  # (N, C, H, W) eval-transformed probe images
    load_point: LoadPoint
    student: nn.Module | None
    scale: float
    device: torch.device


@torch.no_grad()
def _probe_output(model: nn.Module, classifier: torch.Tensor | None, ctx: ProbeContext) -> ProbeOutput:
    model = model.to(ctx.device).eval()
    embs = []
    for chunk in torch.split(ctx.images, 128):
        embs.append(model(chunk.to(ctx.device)).float().cpu())
    emb = torch.cat(embs)
    logits = None
    if classifier is not None:
        logits = teacher_logits(emb, classifier.float().cpu(), ctx.scale).double().numpy()
    return ProbeOutput.from_arrays(emb.double().numpy(), logits)


def route_probe_outputs(points: list[PointInfo], probe: ProbeContext, use_logits: bool) -> dict[str, ProbeOutput]:
    """Every route point's probe outputs (GSS; online GSS computes them once at the start of training)."""
    outputs = {}
    for p in points:
        model, classifier = probe.load_point(p.name)
        outputs[p.name] = _probe_output(model, classifier if use_logits else None, probe)
    return outputs


def student_probe_fn(backbone: nn.Module, head: nn.Module | None, probe: ProbeContext,
                     use_logits: bool) -> Callable[[], ProbeOutput]:
    """The training student's probe outputs, computed in eval mode without touching its state or any RNG."""

    @torch.no_grad()
    def output() -> ProbeOutput:
        was = backbone.training
        backbone.eval()
        try:
            emb = torch.cat([backbone(chunk.to(probe.device)).float() for chunk in torch.split(probe.images, 128)])
            logits = None
            if use_logits and head is not None and hasattr(head, "logits"):
                logits = head.logits(emb).double().cpu().numpy()
        finally:
            backbone.train(was)
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
        start = _probe_output(probe.student, None, probe) if probe.student is not None else None
        return select_gss(points, outputs, start, d.gss_delta, d.gss_delta_mode, d.gss_divergence,
                          d.kd_temperature, d.gss_max_anchors)
    raise ValueError(f"unknown distill.strategy {d.strategy!r}")


def probe_images(dataset: Any, count: int, seed: int) -> torch.Tensor:
    """The fixed, seeded probe set of GSS (eval transform, no flip)."""
    idx = probe_indices(len(dataset), count, seed)
    return torch.stack([dataset[int(i)][0] for i in idx])


def write_plan(path: Path, anchor_plan: AnchorPlan, stage_plan: StagePlan,
               online: list[dict[str, Any]] | None = None, resolved: list[str] | None = None) -> None:
    """plan.json of a student run: the anchors (with GSS divergences), the stages, and online-GSS decisions so far."""
    from facerco.utils.io import write_json

    record: dict[str, Any] = {"anchors": anchor_plan.to_dict(), "stages": stage_plan.to_dict()}
    if online is not None:
        record["online_decisions"] = online
        record["resolved_anchors"] = resolved or []
    write_json(path, record)


def read_congruence(log_path: Path) -> dict[str, np.ndarray]:
    """Steps and congruence values from a run's log.jsonl (train events that carry them)."""
    steps, anchor, final, stage = [], [], [], []
    if log_path.is_file():
        for line in log_path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if rec.get("event") == "train" and "cong_final" in rec:
                steps.append(rec["step"])
                anchor.append(rec.get("cong_anchor", np.nan))
                final.append(rec["cong_final"])
                stage.append(rec.get("stage", 0))
    return {"step": np.asarray(steps), "cong_anchor": np.asarray(anchor, dtype=float),
            "cong_final": np.asarray(final, dtype=float), "stage": np.asarray(stage)}


def plot_congruence(log_path: Path, plan: StagePlan, out_png: Path, title: str = "") -> Path | None:
    """PNG of the mimic loss to the current anchor and to the final teacher along training, stages shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from facerco.utils.io import atomic_path

    data = read_congruence(log_path)
    if len(data["step"]) == 0:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for s in plan.stages:
        if s.index % 2:
            ax.axvspan(s.start, s.end, color="0.92", lw=0)
        ax.text((s.start + s.end) / 2, 1.0, s.anchor, transform=ax.get_xaxis_transform(), ha="center", va="bottom",
                fontsize=7, rotation=0)
    ax.plot(data["step"], data["cong_anchor"], marker=".", label="to current anchor")
    ax.plot(data["step"], data["cong_final"], marker=".", label="to final teacher")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("mimic loss (congruence)")
    ax.set_title(title or "RCO congruence", pad=14)
    ax.legend()
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return out_png


def build_plan(cfg: Config, points: list[PointInfo], steps_per_epoch: int, total_steps: int,
               probe: ProbeContext | None = None) -> tuple[AnchorPlan, StagePlan]:
    """Anchor plan and stage plan of a config: the single function behind `route plan` and `distill`."""
    d = cfg.distill
    if d.strategy in ROUTE_STRATEGIES and not d.stages:
        return plan_route_strategy(d, points, total_steps)
    anchor_plan = plan_anchors(cfg, points, probe)
    stage_plan = build_stage_plan(anchor_plan.anchors, total_steps, steps_per_epoch, d.schedule, d.final_share,
                                  d.restart_lr, d.stages, cfg.optim.lr)
    return anchor_plan, stage_plan




# --------------------------------------------------------------------------------------------------------------------
# The job: `facerco distill CONFIG`
# --------------------------------------------------------------------------------------------------------------------


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


def build_student(cfg: Config) -> nn.Module:
    """Seed, then build the student backbone of ``cfg.model``: the same weights in `route plan` and `distill`."""
    from facerco.train.engine import seed_everything
    from facerco.train.teacher import build_backbone

    seed_everything(cfg.train.seed, cfg.train.deterministic)
    return build_backbone(cfg)


def open_train_dataset(cfg: Config) -> Any:
    """The training set without random flip (the engine flips from its seeded sampler), as the teacher job reads it."""
    from facerco.train.teacher import build_train_dataset

    return build_train_dataset(cfg)


def route_loader(route: Any, device: torch.device | str = "cpu") -> LoadPoint:
    """A LoadPoint over a :class:`facerco.route.io.Route` (sha256 checked on every load)."""

    def load(name: str) -> tuple[nn.Module, torch.Tensor | None]:
        loaded = route.load_point(name, verify=True, device=str(device))
        return loaded.model, loaded.classifier

    return load


def make_probe(cfg: Config, dataset: Any, route: Any, student: nn.Module | None,
               device: torch.device | str = "cpu") -> ProbeContext:
    """GSS probe context: the seeded probe images, the route loader and the initial student."""
    return ProbeContext(probe_images(dataset, cfg.distill.gss_probe_images, cfg.distill.gss_seed),
                        route_loader(route, device), student, cfg.loss.s, torch.device(device))


def _teacher_dim(route: Any, load: LoadPoint, final: str) -> int:
    dim = int(getattr(route, "info", {}).get("embedding_size", 0) or 0)
    if dim:
        return dim
    model, _ = load(final)
    return int(model.meta.embedding_size)


def _hint_channels(student: nn.Module, teacher: nn.Module, cfg: Config) -> tuple[int, int]:
    """Channels of the hooked stages, from one dummy forward of each network."""
    size = cfg.data.image_size
    out = []
    for model, layer in ((student, cfg.distill.hint_student_layer), (teacher, cfg.distill.hint_teacher_layer)):
        hooks = FeatureHooks(model, [layer])
        was = model.training
        model.eval()
        with torch.no_grad():
            model(torch.zeros(2, 3, size, size, device=next(model.parameters()).device))
        model.train(was)
        hooks.remove()
        out.append(int(hooks.features[layer].shape[1]))
    return out[0], out[1]


def prepare_plan(cfg: Config, route: Any, dataset: Any, world_size: int = 1, initial: nn.Module | None = None,
                 device: torch.device | str = "cpu", student_start: bool = True) -> tuple[int, AnchorPlan, StagePlan]:
    """(steps per epoch, anchor plan, stage plan) of a student config: `facerco route plan` prints exactly this.

    For GSS, ``initial`` is the freshly built student (:func:`build_student`); None builds it here from the seed.
    ``student_start=False`` starts the GSS walk at the first route point instead (no student model known).
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


def run_distill(cfg: Config, *, dataset: Any = None, head: nn.Module | None = None,
                head_factory: Callable[[Config, int, int], nn.Module] | None = None,
                validator: Callable[[nn.Module], dict[str, float]] | None = None) -> DistillResult:
    """Train a student by RCO (or a baseline: final / best / scratch) as ``cfg`` says; see the module docstring."""
    from facerco.config import dump_config
    from facerco.models.checkpoint import save_model_checkpoint
    from facerco.route.anchors import format_plan
    from facerco.route.io import load_route
    from facerco.route.plan import StagedSchedule, format_stages
    from facerco.train import distributed as fdist
    from facerco.train.schedule import stage_schedule_factory
    from facerco.utils.device import resolve_device
    from facerco.utils.io import atomic_write_text, write_json

    d = cfg.distill
    if not d.teacher_run:
        raise ValueError("distill.teacher_run is empty: point it at a teacher run directory holding route.json")
    route = load_route(d.teacher_run)
    points = route_points(route)
    final = points[-1].name
    dist_info = fdist.init_distributed(resolve_device(cfg.train.device))
    device = dist_info.device
    dataset = dataset if dataset is not None else open_train_dataset(cfg)
    backbone = build_student(cfg)
    initial = None
    if d.strategy == "gss" and not d.stages:
        import copy

        initial = copy.deepcopy(backbone)
    num_classes = int(getattr(dataset, "num_classes", 0) or 0)
    student_dim = int(backbone.meta.embedding_size)
    if head is None and (d.arcface_weight > 0 or d.kd_weight > 0):
        if head_factory is None:
            head_factory = default_head
        head = head_factory(cfg, student_dim, num_classes)
    spe, anchor_plan, stage_plan = prepare_plan(cfg, route, dataset, dist_info.world_size, initial, device)
    load = route_loader(route, device)
    if d.cache:
        cache = AnchorCache(d.cache, verify=d.cache_verify)
        cache.check_dataset(dataset, route=route, anchors=required_points(stage_plan, points))
        source: Any = CachedAnchors(cache, (lambda name: load(name)[1]) if d.kd_weight > 0 else None, device)
        teacher_dim = cache.embedding_size(final)
    else:
        keep = max(2, 1 + max(len(ensemble_members(a)) for a in stage_plan.anchors))  # an ensemble stays loaded
        source = OnlineAnchors(load, device, d.hint_teacher_layer if d.hint_weight > 0 else "", keep=keep)
        teacher_dim = _teacher_dim(route, load, final)
    hint_channels = None
    if d.hint_weight > 0:
        hint_channels = _hint_channels(backbone, load(final)[0].to(device), cfg)
    stop = min(stage_plan.total_steps, cfg.train.max_steps) if cfg.train.max_steps > 0 else stage_plan.total_steps
    task = StudentTask(backbone, head, stage_plan, source, cfg, teacher_dim, final, stop, hint_channels)
    schedule = StagedSchedule(stage_plan, stage_schedule_factory(cfg.schedule, spe, stage_plan.total_steps,
                                                                 cfg.optim.lr))
    callbacks: list[Callback] = []
    gate = None
    if d.gate:
        if validator is None:
            raise ValueError("distill.gate=true needs validation data (data.val_bins or data.val_pairs)")
        gate = GateCallback(task, {p.name: p for p in points}, d.gate_metric)
        callbacks.append(gate)
    run_dir = Path(cfg.train.output)
    online = None
    if d.strategy == "gss_online" and not d.stages:
        online = _online_gss(cfg, task, head, dataset, route, points, device, run_dir, anchor_plan, dist_info.is_main)
        callbacks.append(online)
    if dist_info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
        if online is None or not (run_dir / "plan.json").is_file():
            write_plan(run_dir / "plan.json", anchor_plan, stage_plan, [] if online is not None else None)
        print(format_plan(anchor_plan), flush=True)
        print(format_stages(stage_plan, spe), flush=True)
    from facerco.train.engine import Engine

    engine = Engine(task, dataset, cfg, run_dir=run_dir, schedule=schedule, total_steps=stage_plan.total_steps,
                    callbacks=callbacks, validator=validator, dist_info=dist_info)
    result = engine.fit()
    student_path = None
    if dist_info.is_main:
        student_path = run_dir / "student.safetensors"
        followed = task.follower.resolved_anchors()
        save_model_checkpoint(student_path, backbone, metadata={
            "kind": "student", "teacher_run": str(d.teacher_run), "strategy": anchor_plan.strategy,
            "anchors": followed, "schedule": stage_plan.kind, "step": result.step,
            "val": result.val})
        cong = read_congruence(run_dir / "log.jsonl")
        per_stage = {}
        for s in stage_plan.stages:
            sel = (cong["step"] > s.start) & (cong["step"] <= s.end)
            if sel.any():
                per_stage[str(s.index)] = {"anchor": followed[s.index],
                                           "cong_anchor_last": float(cong["cong_anchor"][sel][-1]),
                                           "cong_final_last": float(cong["cong_final"][sel][-1])}
        write_json(run_dir / "summary.json", {
            "step": result.step, "total_steps": result.total_steps, "seconds": result.seconds,
            "val": result.val, "last_parts": result.last_parts, "anchors": followed,
            "skipped_stages": sorted(task.skipped), "gate": gate.decisions if gate else [],
            "congruence_per_stage": per_stage})
        plot_congruence(run_dir / "log.jsonl", stage_plan, run_dir / "congruence.png",
                        f"{anchor_plan.strategy} / {stage_plan.kind}")
    return DistillResult(run_dir, student_path, anchor_plan, stage_plan, result.step, result.seconds, result.val,
                         result.last_parts)


def _online_gss(cfg: Config, task: StudentTask, head: nn.Module | None, dataset: Any, route: Any,
                points: list[PointInfo], device: torch.device, run_dir: Path, anchor_plan: AnchorPlan,
                is_main: bool) -> OnlineGSSCallback:
    """The online-GSS callback: route points' probe outputs now, the student's at each slot, plan.json rewritten."""
    from facerco.train import distributed as fdist

    d = cfg.distill
    probe = make_probe(cfg, dataset, route, None, device)
    outputs = route_probe_outputs(points, probe, d.gss_use_logits)

    def on_decide(records: list[dict[str, Any]]) -> None:
        if is_main:
            write_plan(run_dir / "plan.json", anchor_plan, task.plan, records, task.follower.resolved_anchors())
            print(f"online GSS: slot {records[-1]['slot']} follows {records[-1]['chosen']} "
                  f"(step {records[-1]['step']})", flush=True)

    return OnlineGSSCallback(task.follower, [p.name for p in points], outputs,
                             student_probe_fn(task.backbone, head, probe, d.gss_use_logits), d.gss_delta,
                             d.gss_delta_mode, d.gss_divergence, d.kd_temperature, on_decide,
                             share=fdist.broadcast_object)


def default_head(cfg: Config, embedding_size: int, num_classes: int) -> nn.Module:
    """The teacher job's margin head (Partial FC; ``logits()`` gives margin-free logits over all classes for KD)."""
    from facerco.train.teacher import build_margin_head

    return build_margin_head(cfg, embedding_size, num_classes)


def build_validator(cfg: Config, device: str = "cpu") -> Callable[[nn.Module], dict[str, float]] | None:
    """The teacher job's periodic validation (``data.val_bins`` / ``data.val_pairs``), or None when none is set."""
    from facerco.train.validation import build_validator as _build

    return _build(cfg.data.val_bins, cfg.data.val_pairs, cfg.data.val_root, cfg.eval.batch_size, device)
