"""Distillation losses used by RCO students: embedding mimicking, logit KD and FitNets hints.

Each loss is one class whose docstring cites its paper and states its formula. Trainable parts (the mimic
projector, the hint regressor) live inside the loss module: they are optimised with the student during
training and are never part of the exported student (only ``task.backbone`` is exported).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MimicLoss", "KDLoss", "HintLoss", "FeatureHooks", "find_module"]


class MimicLoss(nn.Module):
    """Embedding mimicking: the student's normalized embedding regresses onto the teacher's.

    Face-setting loss of RCO (Jin et al., "Knowledge Distillation via Route Constrained Optimization", ICCV 2019)
    and of embedding mimicking (Luo et al., "Face Model Compression by Distilling Knowledge from Neurons", AAAI 2016).

    With ``s = P(e_s) / ||P(e_s)||`` and ``t = e_t / ||e_t||`` (``P`` a bias-free linear projector when the
    sizes differ, identity otherwise):

    * ``kind="l2"``:     ``L = mean_i ||s_i - t_i||_2^2``  (in [0, 4])
    * ``kind="cosine"``: ``L = mean_i (1 - <s_i, t_i>)``  (in [0, 2]; equals half the l2 form)

    Args:
        kind: "l2" or "cosine".
        student_dim: student embedding size.
        teacher_dim: teacher embedding size; a projector is created when it differs from ``student_dim``.
    """

    def __init__(self, kind: Literal["l2", "cosine"] = "l2", student_dim: int = 0, teacher_dim: int = 0) -> None:
        super().__init__()
        if kind not in ("l2", "cosine"):
            raise ValueError(f"MimicLoss: kind must be 'l2' or 'cosine', got {kind!r}")
        self.kind = kind
        self.projector: nn.Module | None = None
        if student_dim and teacher_dim and student_dim != teacher_dim:
            self.projector = nn.Linear(student_dim, teacher_dim, bias=False)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if self.projector is not None:
            student = self.projector(student)
        if student.shape != teacher.shape:
            raise ValueError(
                f"MimicLoss: student embedding {tuple(student.shape)} and teacher {tuple(teacher.shape)} differ; "
                "pass student_dim/teacher_dim so a projector is built"
            )
        s = F.normalize(student.float(), dim=1)
        t = F.normalize(teacher.float().detach(), dim=1)
        if self.kind == "l2":
            return (s - t).pow(2).sum(dim=1).mean()
        return (1.0 - (s * t).sum(dim=1)).mean()


class KDLoss(nn.Module):
    """Logit distillation with a temperature (Hinton et al., "Distilling the Knowledge in a Neural Network", 2015).

    ``L = T^2 * mean_i KL(softmax(z_t,i / T) || softmax(z_s,i / T))``, the ``T^2`` keeping gradient magnitudes
    comparable across temperatures. In the face setting the teacher logits come from the anchor's own classifier
    (``s * cos`` without margin) and the student logits from the student's classifier on the same classes.

    Partial FC: pass the student logits of ``PartialFC.logits(embeddings)``, which all-gathers the class centres
    so each rank scores its own samples against every class (gradients flow back to every shard); the teacher
    logits come from the anchor checkpoint's full classifier.

    Args:
        temperature: softening temperature T > 0.
    """

    def __init__(self, temperature: float = 4.0) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"KDLoss: temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        if student_logits.shape != teacher_logits.shape:
            raise ValueError(
                f"KDLoss: student logits {tuple(student_logits.shape)} and teacher logits "
                f"{tuple(teacher_logits.shape)} differ (same classes, same shard needed)"
            )
        t = self.temperature
        log_p_s = F.log_softmax(student_logits.float() / t, dim=1)
        log_p_t = F.log_softmax(teacher_logits.float().detach() / t, dim=1)
        return (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1).mean() * t * t


class HintLoss(nn.Module):
    """FitNets hint (Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015).

    ``L = mean((r(F_s) - F_t)^2)`` over batch, channels and positions, where ``r`` is a 1x1 convolution (plus
    BatchNorm) from the student's channels to the teacher's; when the spatial sizes differ the student map is
    resized to the teacher's by bilinear interpolation before the regressor.

    Args:
        student_channels: channels of the hooked student stage.
        teacher_channels: channels of the hooked teacher stage.
    """

    def __init__(self, student_channels: int, teacher_channels: int) -> None:
        super().__init__()
        if student_channels <= 0 or teacher_channels <= 0:
            raise ValueError(f"HintLoss: channel counts must be > 0, got {student_channels}, {teacher_channels}")
        self.regressor = nn.Sequential(
            nn.Conv2d(student_channels, teacher_channels, kernel_size=1, bias=False),
            nn.BatchNorm2d(teacher_channels),
        )

    def forward(self, student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
        if student_feat.dim() != 4 or teacher_feat.dim() != 4:
            raise ValueError(
                f"HintLoss: expects NCHW maps, got {tuple(student_feat.shape)} and {tuple(teacher_feat.shape)}"
            )
        if student_feat.shape[-2:] != teacher_feat.shape[-2:]:
            student_feat = F.interpolate(student_feat, size=teacher_feat.shape[-2:], mode="bilinear",
                                         align_corners=False)
        return (self.regressor(student_feat).float() - teacher_feat.float().detach()).pow(2).mean()


def find_module(model: nn.Module, name: str) -> nn.Module:
    """The sub-module called ``name`` (dotted, as in ``named_modules``), with an error that lists valid names."""
    modules = dict(model.named_modules())
    if name not in modules or not name:
        top = [n for n in modules if n and "." not in n]
        raise ValueError(f"no module named {name!r} in {type(model).__name__}; top-level modules: {', '.join(top)}")
    return modules[name]


class FeatureHooks:
    """Forward hooks that keep the latest output of named sub-modules (for hint losses).

    Usage: ``hooks = FeatureHooks(model, ["layer3"])``; run the model; ``hooks.features["layer3"]``.
    """

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        self.features: dict[str, torch.Tensor] = {}
        self._handles = []
        for name in names:
            module = find_module(model, name)
            self._handles.append(module.register_forward_hook(self._make_hook(name)))

    def _make_hook(self, name: str) -> Callable:
        def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            self.features[name] = output

        return hook

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
