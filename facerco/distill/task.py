"""The student task: one batch -> ``arcface + mimic + KD + hint`` (weights from ``distill``) and the congruence.

:class:`StudentTask` follows the anchor the stage plan assigns to the current step (through
:class:`~facerco.route.follow.RouteFollower`, which also holds the gate's skips and online-GSS choices, saved in
``last.pt``), reads its targets from an :class:`~facerco.distill.anchors.AnchorSource`, and logs the mimic loss to
the current anchor and to the final teacher (``cong_anchor`` / ``cong_final``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from facerco.config import Config
from facerco.distill.anchors import AnchorSource, CachedAnchors, teacher_logits
from facerco.losses.distill import FeatureHooks, HintLoss, KDLoss, MimicLoss
from facerco.route.follow import RouteFollower, ensemble_embeddings, ensemble_logits
from facerco.route.plan import StagePlan
from facerco.route.strategies import ensemble_members
from facerco.train.task import TrainTask

__all__ = ["StudentTask"]


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

