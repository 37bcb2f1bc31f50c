"""Per-iteration learning-rate schedules.

The engine multiplies every param group's base lr by ``schedule.lr_factor(step)`` before each optimizer step.
A job may pass its own object with that one method (multi-stage restarts for distillation are
:class:`facerco.route.plan.StagedSchedule` over :func:`stage_schedule_factory`); the factor is a pure function of the
global step, so a resumed run recomputes it instead of restoring it.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

from facerco.config import ScheduleConfig
from facerco.route.plan import StagedSchedule

__all__ = ["LRSchedule", "WarmupDecaySchedule", "MultiStageSchedule", "build_schedule", "stage_schedule_factory"]


@runtime_checkable
class LRSchedule(Protocol):
    """Anything with ``lr_factor(step) -> float``: the base-lr multiplier at 0-based optimizer step ``step``."""

    def lr_factor(self, step: int) -> float: ...


_DECAYS = ("linear", "cosine", "step", "constant")


@dataclass(frozen=True)
class WarmupDecaySchedule:
    """Linear warm-up from 0 to 1 over ``warmup_steps``, then decay to ``min_factor`` at ``total_steps``.

    Warm-up factor at step t is ``(t + 1) / warmup_steps`` so the first step already moves the weights.
    Decay position p = (t - warmup) / (total - warmup) in [0, 1]:
    linear ``1 - p``, cosine ``(1 + cos(pi p)) / 2``, both rescaled to ``min_factor + (1 - min_factor) * f``;
    step multiplies by ``gamma`` at each milestone (absolute steps, warm-up included), floored at ``min_factor``;
    constant stays at 1.
    """

    total_steps: int
    warmup_steps: int = 0
    decay: str = "linear"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    min_factor: float = 0.0

    def __post_init__(self) -> None:
        if self.decay not in _DECAYS:
            raise ValueError(f"schedule decay must be one of {list(_DECAYS)}, got {self.decay!r}")
        if self.total_steps <= 0:
            raise ValueError(f"schedule needs total_steps > 0, got {self.total_steps}")
        if not 0 <= self.warmup_steps <= self.total_steps:
            raise ValueError(f"warmup_steps must be in [0, total_steps={self.total_steps}], got {self.warmup_steps}")
        if list(self.milestones) != sorted(self.milestones):
            raise ValueError(f"schedule milestones must be increasing, got {list(self.milestones)}")
        if not 0.0 <= self.min_factor <= 1.0:
            raise ValueError(f"min lr factor must be in [0, 1], got {self.min_factor}")

    def lr_factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.decay == "constant":
            return 1.0
        if self.decay == "step":
            drops = bisect.bisect_right(self.milestones, step)
            return max(self.gamma**drops, self.min_factor)
        span = self.total_steps - self.warmup_steps
        pos = min(max((step - self.warmup_steps) / span, 0.0), 1.0) if span > 0 else 1.0
        f = 1.0 - pos if self.decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * pos))
        return self.min_factor + (1.0 - self.min_factor) * f


MultiStageSchedule = StagedSchedule
"""Alias of :class:`facerco.route.plan.StagedSchedule`, the one staged schedule (a plan and ``factory(length)``)."""


def build_schedule(cfg: ScheduleConfig, steps_per_epoch: int, total_steps: int, base_lr: float) -> WarmupDecaySchedule:
    """The schedule of a config: warm-up and milestones in epochs become steps; ``min_lr`` becomes a factor."""
    if steps_per_epoch <= 0:
        raise ValueError(f"steps_per_epoch must be > 0, got {steps_per_epoch} (dataset smaller than one global batch?)")
    warmup = min(int(round(cfg.warmup_epochs * steps_per_epoch)), total_steps)
    milestones = tuple(int(round(m * steps_per_epoch)) for m in cfg.milestones)
    if cfg.decay == "step" and not milestones:
        raise ValueError("schedule.decay=step needs schedule.milestones (epochs)")
    min_factor = cfg.min_lr / base_lr if base_lr > 0 else 0.0
    if min_factor > 1.0:
        raise ValueError(f"schedule.min_lr={cfg.min_lr} is above optim.lr={base_lr}")
    return WarmupDecaySchedule(
        total_steps=total_steps,
        warmup_steps=warmup,
        decay=cfg.decay,
        milestones=milestones,
        gamma=cfg.gamma,
        min_factor=min_factor,
    )


def stage_schedule_factory(cfg: ScheduleConfig, steps_per_epoch: int, total_steps: int, base_lr: float
                           ) -> Callable[[int], WarmupDecaySchedule]:
    """``factory(length)`` for :class:`facerco.route.plan.StagedSchedule`: the run's schedule over ``length`` steps.

    A stage that restarts the schedule (multi-stage RCO) is shorter than the run, so a step schedule's lr drops,
    given in epochs of the whole run, are scaled to the stage (drops at epochs 8 and 12 of a 16-epoch run fall at
    epochs 2 and 3 of a 4-epoch stage); otherwise they would lie past the stage's end and the stage would never
    decay. Warm-up stays in epochs (each restart warms up as the run does); linear and cosine decays already span
    ``length``.
    """

    def factory(length: int) -> WarmupDecaySchedule:
        sched = cfg
        if length != total_steps and cfg.milestones and total_steps > 0:
            fraction = length / total_steps
            sched = replace(cfg, milestones=[m * fraction for m in cfg.milestones])
        return build_schedule(sched, steps_per_epoch, length, base_lr)

    return factory
