"""Stage plans: which anchor the student follows at which optimizer step, and the lr schedule around it.

* **one-stage**: the anchors share the student's single lr schedule, so the budget equals plain KD. The final
  teacher gets ``final_share`` of the steps; the earlier anchors split the rest evenly.
* **multi-stage**: the same split (or explicit ``stages`` with their own lengths and lrs), but each stage runs its
  own warm-up + decay when ``restart_lr`` is true (otherwise one schedule spans all stages).

Everything is a pure function of the step, so a resumed job recomputes its stage and anchor from the global step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

__all__ = ["Stage", "StagePlan", "build_stage_plan", "split_lengths", "fraction_lengths", "stages_from_lengths",
           "StagedSchedule", "format_stages"]


@dataclass(frozen=True)
class Stage:
    """Steps ``[start, end)`` follow ``anchor``; ``restart`` gives the stage its own lr schedule."""

    index: int
    anchor: str
    start: int
    end: int
    restart: bool = False
    lr_mult: float = 1.0

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclass
class StagePlan:
    """The whole student run: stages that tile ``[0, total_steps)``."""

    kind: str
    stages: list[Stage]
    total_steps: int

    def stage_at(self, step: int) -> Stage:
        """The stage that owns optimizer step ``step`` (the last stage for steps past the end)."""
        for stage in self.stages:
            if step < stage.end:
                return stage
        return self.stages[-1]

    @property
    def anchors(self) -> list[str]:
        return [s.anchor for s in self.stages]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "total_steps": self.total_steps, "stages": [asdict(s) for s in self.stages]}


def split_lengths(total: int, anchors: Sequence[str], final_share: float) -> list[int]:
    """Stage lengths: ``final_share`` of the steps to the last anchor, the rest evenly to the others."""
    n = len(anchors)
    if n == 1:
        return [total]
    if not 0.0 < final_share < 1.0:
        raise ValueError(f"distill.final_share must be in (0, 1) with several anchors, got {final_share}")
    final_len = max(1, round(total * final_share))
    rest = total - final_len
    if rest < n - 1:
        raise ValueError(f"budget of {total} steps is too short for {n} anchors")
    base, extra = divmod(rest, n - 1)
    return [base + (1 if i < extra else 0) for i in range(n - 1)] + [final_len]


def fraction_lengths(total: int, ends: Sequence[float]) -> list[int]:
    """Stage lengths whose ends sit at the fractions ``ends`` of ``total`` steps (increasing, the last 1.0).

    Lockstep and phase plans use it to put the student's anchor switches where the teacher's route points (or lr
    drops) sit in the teacher's own run, scaled to the student's budget.
    """
    if not ends or abs(ends[-1] - 1.0) > 1e-9:
        raise ValueError(f"stage ends must finish at 1.0 (the whole budget), got {list(ends)}")
    bounds = [0] + [round(f * total) for f in ends]
    lengths = [b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    if any(n <= 0 for n in lengths):
        raise ValueError(f"a budget of {total} steps is too short for {len(ends)} stages ending at {list(ends)}")
    return lengths


def stages_from_lengths(anchors: Sequence[str], lengths: Sequence[int], kind: str = "one_stage",
                        restart_lr: bool = True) -> StagePlan:
    """A plan from explicit per-anchor lengths (steps), in training order."""
    if kind not in ("one_stage", "multi_stage"):
        raise ValueError(f"distill.schedule must be 'one_stage' or 'multi_stage', got {kind!r}")
    if len(anchors) != len(lengths) or not anchors:
        raise ValueError(f"{len(anchors)} anchors but {len(lengths)} stage lengths")
    restart = kind == "multi_stage" and restart_lr
    out, start = [], 0
    for i, (anchor, length) in enumerate(zip(anchors, lengths, strict=True)):
        if length <= 0:
            raise ValueError(f"stage {i} ({anchor!r}) has no steps")
        out.append(Stage(i, anchor, start, start + int(length), restart))
        start += int(length)
    return StagePlan(kind, out, start)


def build_stage_plan(anchors: Sequence[str], total_steps: int, steps_per_epoch: int, kind: str = "one_stage",
                     final_share: float = 0.25, restart_lr: bool = True,
                     stages: Sequence[Any] = (), base_lr: float = 0.0) -> StagePlan:
    """Tile the budget into stages.

    Args:
        anchors: anchor names in training order (final last).
        total_steps: the automatic plan's budget (ignored when ``stages`` is given).
        steps_per_epoch: converts epoch lengths of explicit stages to steps.
        kind: "one_stage" or "multi_stage".
        final_share: share of the budget for the last anchor (automatic plans with several anchors).
        restart_lr: multi-stage only: each stage restarts the lr schedule.
        stages: explicit stages (objects with ``anchor``, ``epochs``, optional ``steps`` and ``lr``); their
            anchors replace ``anchors``.
        base_lr: the optimizer lr, to turn a stage's absolute ``lr`` into a multiplier.
    """
    if kind not in ("one_stage", "multi_stage"):
        raise ValueError(f"distill.schedule must be 'one_stage' or 'multi_stage', got {kind!r}")
    restart = kind == "multi_stage" and restart_lr
    out: list[Stage] = []
    if stages:
        start = 0
        for i, st in enumerate(stages):
            steps = int(getattr(st, "steps", 0) or 0)
            length = steps if steps > 0 else round(float(st.epochs) * steps_per_epoch)
            if length <= 0:
                raise ValueError(f"distill.stages[{i}] ({st.anchor!r}) has no steps (epochs={st.epochs})")
            lr = getattr(st, "lr", None)
            mult = 1.0 if lr is None or base_lr <= 0 else float(lr) / base_lr
            out.append(Stage(i, st.anchor, start, start + length, restart, mult))
            start += length
        return StagePlan(kind, out, start)
    if not anchors:
        raise ValueError("a stage plan needs at least one anchor")
    if total_steps <= 0:
        raise ValueError(f"the student budget must be > 0 steps, got {total_steps}")
    start = 0
    for i, (anchor, length) in enumerate(zip(anchors, split_lengths(total_steps, anchors, final_share), strict=True)):
        out.append(Stage(i, anchor, start, start + length, restart))
        start += length
    return StagePlan(kind, out, total_steps)


class _Schedule(Protocol):
    def lr_factor(self, step: int) -> float: ...


class StagedSchedule:
    """The one staged lr schedule (``lr_factor(step)``): it restarts per stage when the stage says so.

    ``factory(length)`` builds the base schedule for a span of ``length`` steps (the engine's warm-up + decay,
    :func:`facerco.train.schedule.stage_schedule_factory`); restarting stages evaluate a schedule of their own length
    at the stage-local step, others the run's schedule at the global step; each stage scales by its ``lr_mult``.
    ``facerco.train.schedule.MultiStageSchedule`` is this class.
    """

    def __init__(self, plan: StagePlan, factory: Callable[[int], _Schedule]) -> None:
        self.plan = plan
        self._global = factory(plan.total_steps)
        self._local = {s.index: factory(s.length) for s in plan.stages if s.restart}

    def stage_of(self, step: int) -> int:
        """Index of the stage that owns ``step`` (the last one past the end)."""
        return self.plan.stage_at(step).index

    def lr_factor(self, step: int) -> float:
        stage = self.plan.stage_at(step)
        if stage.restart:
            return self._local[stage.index].lr_factor(min(step - stage.start, stage.length - 1)) * stage.lr_mult
        return self._global.lr_factor(step) * stage.lr_mult


def format_stages(plan: StagePlan, steps_per_epoch: int = 0) -> str:
    """One line per stage: anchor, step range (and epochs), restart."""
    lines = [f"schedule: {plan.kind}, {plan.total_steps} steps"]
    for s in plan.stages:
        ep = f"  epochs {s.start / steps_per_epoch:.2f}-{s.end / steps_per_epoch:.2f}" if steps_per_epoch else ""
        extra = ("  lr restart" if s.restart else "") + (f"  lr x{s.lr_mult:g}" if s.lr_mult != 1.0 else "")
        lines.append(f"  stage {s.index}: {s.anchor:<20} steps {s.start}-{s.end}{ep}{extra}")
    return "\n".join(lines)
