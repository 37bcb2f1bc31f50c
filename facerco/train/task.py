"""The task contract between a training job and the engine.

A task is an ``nn.Module`` that owns everything trained in one job (backbone, margin head, projectors...) and
turns one batch into a loss. The engine owns the loop: data order, optimizer, schedule, precision, DDP, clipping,
checkpoints and logs. Teacher training uses :class:`facerco.train.teacher.TeacherTask`; distillation writes its
own subclass; both run through :class:`facerco.train.engine.Engine`.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

__all__ = ["TrainTask"]


class TrainTask(nn.Module):
    """Base class; subclasses set ``self.backbone`` and implement :meth:`training_step`.

    Attributes a subclass may set:
        backbone: the network whose gradient norm is clipped and whose weights a route point saves.
        rank_local_prefixes: state-dict name prefixes that differ per rank (a Partial-FC shard, e.g. ``("head.",)``);
            DDP does not average them and the resume checkpoint keeps one copy per rank.
        wants_keys: when True the engine passes ``keys=`` (LongTensor (N, 2) of ``[dataset_index, flip]``) to
            :meth:`training_step`, for tasks that look up per-sample targets in a feature cache.
        find_unused_parameters: forwarded to DDP.
    """

    backbone: nn.Module
    rank_local_prefixes: tuple[str, ...] = ()
    wants_keys: bool = False
    find_unused_parameters: bool = False

    def training_step(
        self, images: torch.Tensor, labels: torch.Tensor, step: int, **kwargs: Any
    ) -> dict[str, torch.Tensor]:
        """Return ``{'loss': scalar, **named parts}``; ``step`` is the 0-based global optimizer step.

        Parts other than 'loss' are only logged (detached by the engine). Under DDP each rank returns the mean
        over its local batch; DDP averages gradients, which equals the single-process gradient for the global
        batch when every rank has the same batch size.
        """
        raise NotImplementedError

    def forward(self, images: torch.Tensor, labels: torch.Tensor, step: int, **kwargs: Any) -> dict[str, torch.Tensor]:
        # DDP hooks gradients through forward(), so the engine calls the (wrapped) module, which lands here.
        return self.training_step(images, labels, step, **kwargs)

    def param_groups(self, weight_decay: float, classifier_lr_mult: float = 1.0) -> list[dict[str, Any]]:
        """Optimizer param groups; default: every trainable parameter, one group, the config's weight decay.

        A group may carry ``lr_mult`` (relative to optim.lr); the engine sets ``lr = base * lr_mult * factor``.
        """
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params, "weight_decay": weight_decay, "lr_mult": 1.0}]

    def on_step_start(self, step: int) -> None:
        """Hook before each step (e.g. switch the distillation anchor); must depend on ``step`` only."""

    def extra_state(self) -> dict[str, Any]:
        """Anything beyond ``state_dict()`` that a resume needs (tensors / plain values)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`extra_state`; called after the weights are restored and before training resumes."""

    @staticmethod
    def full_precision(device_type: str) -> contextlib.AbstractContextManager:
        """Disable autocast inside (margin softmax and losses run in fp32 even under fp16/bf16 AMP)."""
        return torch.autocast(device_type=device_type, enabled=False)
