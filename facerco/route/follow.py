"""What the student follows during training: the anchor at each step, online-GSS decisions, ensemble targets.

Planning happens before training (:mod:`facerco.distill.strategies`, over the selection rules of
:mod:`facerco.route.anchors` and :mod:`facerco.route.strategies`); this module runs while the engine trains:

* :class:`RouteFollower` maps a step to the anchor actually followed (stage plan, gate skips, online decisions), for
  the student job and for any task built on the engine (the benchmark studies use it too).
* :class:`OnlineGSSCallback` decides each ``gss_online`` slot at its first step: it embeds the probe set with the
  training student and picks the farthest later route point whose divergence is under the threshold
  (:func:`facerco.route.anchors.gss_step`); once the final teacher is chosen, the remaining slots follow it.
  Decisions are saved in ``last.pt`` and written to ``plan.json`` as they are made.
* :func:`ensemble_embeddings` / :func:`ensemble_logits`: the targets of an ``ensemble(...)`` anchor.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from facerco.route.anchors import ProbeOutput, gss_step
from facerco.route.plan import StagePlan
from facerco.route.strategies import is_online_slot
from facerco.utils.callbacks import Callback

__all__ = ["ensemble_embeddings", "ensemble_logits", "RouteFollower", "OnlineGSSCallback"]


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
