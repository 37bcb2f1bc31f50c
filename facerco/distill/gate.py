"""The gate: at a stage boundary, skip the coming anchor when its recorded val metric is below the student's."""

from __future__ import annotations

import json
from typing import Any

from facerco.distill.task import StudentTask
from facerco.route.anchors import PointInfo, default_metric
from facerco.utils.callbacks import Callback

__all__ = ["GateCallback"]


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

    def on_step_end(self, engine: Any, step: int, parts: dict[str, float]) -> None:
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
