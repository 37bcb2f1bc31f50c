"""The student-only pieces of a student job, shared by the job, `route plan` and `facerco compare`.

The student config (refused when it is not one), the student backbone (seeded, so `route plan` and `distill` start
from the same weights) and two facts about the teacher (embedding size, hint channels) a task needs before training
starts. What teacher and student build alike (training set, validator, margin head) comes from
:mod:`facerco.train.job` and :func:`facerco.losses.partial_fc.build_head`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from facerco.config import Config
from facerco.distill.anchors import LoadPoint
from facerco.losses.distill import FeatureHooks

__all__ = ["load_student_config", "build_student", "teacher_dim", "hint_channels"]


def load_student_config(path: str | Path, overrides: list[str]) -> Config:
    """A student config (``kind: student``) with dotted overrides; another kind is refused, naming the file."""
    from facerco.config import load_config

    cfg = load_config(path, overrides)
    if cfg.kind != "student":
        raise ValueError(f"{path}: kind is {cfg.kind!r}; `facerco distill` (= `facerco train student`) takes a "
                         "student config (kind: student)")
    return cfg


def build_student(cfg: Config) -> nn.Module:
    """Seed, then build the student backbone of ``cfg.model``: the same weights in `route plan` and `distill`."""
    from facerco.train.engine import seed_everything
    from facerco.train.job import build_backbone

    seed_everything(cfg.train.seed, cfg.train.deterministic)
    return build_backbone(cfg)


def teacher_dim(route: Any, load: LoadPoint, final: str) -> int:
    """Embedding size of the final teacher: from route.json, else from loading the point."""
    dim = int(getattr(route, "info", {}).get("embedding_size", 0) or 0)
    if dim:
        return dim
    model, _ = load(final)
    return int(model.meta.embedding_size)


def hint_channels(student: nn.Module, teacher: nn.Module, cfg: Config) -> tuple[int, int]:
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
