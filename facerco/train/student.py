"""Moved: the student job now lives in :mod:`facerco.distill` (one job per module); this module only re-exports.

Kept so that ``facerco.train.student.build_plan``, ``run_distill`` and the rest still import for existing scripts
(``benchmarks/rco_fmnist.py``, ``facerco train student``). Where each name went:

- anchor sources, ``teacher_logits``, ``route_loader``: :mod:`facerco.distill.anchors`
- ``StudentTask``: :mod:`facerco.distill.task`; ``GateCallback``: :mod:`facerco.distill.gate`
- probes and plans (``ProbeContext``, ``plan_anchors``, ``build_plan``, ``prepare_plan``, ``write_plan``, ...):
  :mod:`facerco.distill.planning`
- ``read_congruence``, ``plot_congruence``: :mod:`facerco.distill.plots`
- ``build_student``, ``open_train_dataset``, ``default_head``, ``build_validator``: :mod:`facerco.distill.builders`
- ``run_distill``, ``DistillResult``: :mod:`facerco.distill.job`

New code imports from :mod:`facerco.distill`; nothing in ``facerco`` imports this module.
"""

from __future__ import annotations

from facerco.distill.anchors import AnchorSource, CachedAnchors, LoadPoint, OnlineAnchors, route_loader, teacher_logits
from facerco.distill.builders import build_student, build_validator, default_head, open_train_dataset
from facerco.distill.gate import GateCallback
from facerco.distill.job import DistillResult, run_distill
from facerco.distill.planning import (
    ProbeContext,
    build_plan,
    make_probe,
    plan_anchors,
    prepare_plan,
    probe_images,
    route_probe_outputs,
    student_probe_fn,
    write_plan,
)
from facerco.distill.plots import plot_congruence, read_congruence
from facerco.distill.task import StudentTask

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
    "LoadPoint",
    "default_head",
    "make_probe",
    "probe_images",
    "route_loader",
    "route_probe_outputs",
    "student_probe_fn",
    "write_plan",
]
