"""The pieces a student job is built from, shared by the job, `route plan` and `facerco compare`.

The student backbone (seeded, so `route plan` and `distill` start from the same weights), the training set as the
teacher job reads it, the teacher job's margin head and validator, and two facts about the teacher (embedding size,
hint channels) a task needs before training starts.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from facerco.config import Config
from facerco.distill.anchors import LoadPoint
from facerco.losses.distill import FeatureHooks

__all__ = ["load_student_config", "build_student", "open_train_dataset", "default_head", "build_validator",
           "teacher_dim", "hint_channels"]


def load_student_config(path: str | Path, overrides: list[str]) -> Config:
    """A student config (``kind: student``) with dotted overrides; another kind is refused, naming the file."""
    from facerco.config import load_config

    cfg = load_config(path, overrides)
    if cfg.kind != "student":
        raise ValueError(f"{path}: kind is {cfg.kind!r}; `facerco distill` takes a student config "
                         "(kind: student)")
    return cfg


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


def default_head(cfg: Config, embedding_size: int, num_classes: int) -> nn.Module:
    """The teacher job's margin head (Partial FC; ``logits()`` gives margin-free logits over all classes for KD)."""
    from facerco.losses.partial_fc import build_head

    return build_head(cfg, embedding_size, num_classes)


def build_validator(cfg: Config, device: str = "cpu") -> Callable[[nn.Module], dict[str, float]] | None:
    """The teacher job's periodic validation (``data.val_bins`` / ``data.val_pairs``), or None when none is set."""
    from facerco.train.validation import build_validator as _build

    return _build(cfg.data.val_bins, cfg.data.val_pairs, cfg.data.val_root, cfg.eval.batch_size, device)


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
