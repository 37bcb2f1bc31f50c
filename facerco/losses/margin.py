"""Additive/multiplicative angular margins (SphereFace, ArcFace, CosFace in one formula), from FORMATS.md §5.

Given cosines ``cos θ_j = W_j · x`` between a normalised embedding x and normalised class centres W_j, the logits
are ``s · cos θ_j`` for every class except the target y, whose logit is ``s · (cos(m1·θ_y + m2) − m3)``.
Presets: ArcFace (1, 0.5, 0), CosFace (1, 0, 0.4), plain normalised softmax (1, 0, 0); s = 64.

Gradient conventions (``gradient=``), which differ only on the target logit and only when m1 ≠ 1 or m2 ≠ 0:

* ``"exact"``: autograd through ``arccos``/``cos``. With cos θ clamped to [−1+eps, 1−eps] before arccos,
  ∂logit_y/∂cos θ_y = s · m1 · sin(m1·θ_y + m2) / sin θ_y. This is the true derivative; it grows like
  m2/θ as θ → 0 (bounded by the clamp: about s·sin(m2)/sqrt(2·eps)) and is 0 where the clamp is active.
* ``"straight_through"``: the margin only changes the *value* of the target logit; its gradient is that of
  s · cos θ_y, i.e. ∂logit_y/∂cos θ_y = s. Implemented as ``cos + (target − cos).detach()``. This is what recent
  insightface arcface_torch does (the margin is applied in place under ``torch.no_grad``). No clamp epsilon is
  needed beyond [−1, 1].

CosFace (m3 only) has derivative s under both conventions.

Past the angle where m1·θ + m2 exceeds π, cos(m1·θ + m2) starts to *increase* with θ, rewarding a worse angle.
``overflow=`` chooses what the target logit is there (ArcFace-style margins only):

* ``"threshold"`` (default): the rule of the ArcFace reference code: when m1·θ + m2 > π use
  ``cos θ − m2·sin(m2) − m3`` (for m = 0.5: cos θ − 0.240). Monotone in θ; jumps by ≈ 0.12 at the boundary.
* ``"easy"``: the angular margin only where cos θ > 0 (θ < 90°), plain cos θ (− m3) elsewhere.
* ``"none"``: ``cos(m1·θ + m2) − m3`` everywhere (recent insightface CombinedMarginLoss).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import nn

__all__ = ["PRESETS", "CombinedMarginLoss", "margin_params"]

GradientMode = Literal["exact", "straight_through"]
OverflowMode = Literal["threshold", "easy", "none"]

PRESETS: dict[str, tuple[float, float, float]] = {
    "arcface": (1.0, 0.5, 0.0),
    "cosface": (1.0, 0.0, 0.4),
    "softmax": (1.0, 0.0, 0.0),
}


def margin_params(name: str, m1: float | None = None, m2: float | None = None,
                  m3: float | None = None) -> tuple[float, float, float]:
    """(m1, m2, m3) for a preset name, with any explicitly given value taking precedence.

    ``combined`` has no preset: unset values default to (1, 0, 0).
    """
    if name == "combined":
        base = (1.0, 0.0, 0.0)
    elif name in PRESETS:
        base = PRESETS[name]
    else:
        raise ValueError(f"unknown margin loss '{name}'; valid: {', '.join([*PRESETS, 'combined'])}")
    given = (m1, m2, m3)
    return tuple(float(g) if g is not None else b for g, b in zip(given, base))  # type: ignore[return-value]


class CombinedMarginLoss(nn.Module):
    """Margin logits ``s·(cos(m1·θ_y + m2) − m3)`` on the target, ``s·cos θ_j`` elsewhere (see module docstring).

    Despite the (insightface) name it returns logits; cross-entropy is applied by the classifier head
    (:class:`facerco.losses.partial_fc.PartialFC`), which may hold only a shard of the classes.

    Args:
        s: logit scale.
        m1: multiplicative angular margin (SphereFace), 1 = none.
        m2: additive angular margin (ArcFace), radians.
        m3: additive cosine margin (CosFace).
        gradient: ``"exact"`` or ``"straight_through"``.
        overflow: ``"threshold"``, ``"easy"`` or ``"none"`` (m1·θ + m2 > π handling).
        eps: clamp margin before arccos in ``"exact"`` mode.
    """

    def __init__(self, s: float = 64.0, m1: float = 1.0, m2: float = 0.5, m3: float = 0.0,
                 gradient: GradientMode = "exact", overflow: OverflowMode = "threshold", eps: float = 1e-6) -> None:
        super().__init__()
        if s <= 0 or m1 <= 0 or m2 < 0 or m3 < 0:
            raise ValueError(f"CombinedMarginLoss: need s > 0, m1 > 0, m2 >= 0, m3 >= 0; got s={s}, m1={m1}, "
                             f"m2={m2}, m3={m3}")
        if gradient not in ("exact", "straight_through"):
            raise ValueError(f"CombinedMarginLoss: gradient must be 'exact' or 'straight_through', got {gradient!r}")
        if overflow not in ("threshold", "easy", "none"):
            raise ValueError(f"CombinedMarginLoss: overflow must be 'threshold', 'easy' or 'none', got {overflow!r}")
        if not 0 <= eps < 0.1:
            raise ValueError(f"CombinedMarginLoss: eps must be in [0, 0.1), got {eps}")
        self.s, self.m1, self.m2, self.m3 = float(s), float(m1), float(m2), float(m3)
        self.gradient: GradientMode = gradient
        self.overflow: OverflowMode = overflow
        self.eps = float(eps)

    @classmethod
    def from_config(cls, cfg: Any) -> CombinedMarginLoss:
        """Build from a :class:`facerco.config.LossConfig` (preset ``name`` filled in by unset m1/m2/m3)."""
        m1, m2, m3 = margin_params(cfg.name, cfg.m1, cfg.m2, cfg.m3)
        return cls(s=cfg.s, m1=m1, m2=m2, m3=m3, gradient=cfg.gradient, overflow=cfg.overflow, eps=cfg.eps)

    @classmethod
    def arcface(cls, s: float = 64.0, m: float = 0.5, **kwargs: Any) -> CombinedMarginLoss:
        return cls(s=s, m1=1.0, m2=m, m3=0.0, **kwargs)

    @classmethod
    def cosface(cls, s: float = 64.0, m: float = 0.4, **kwargs: Any) -> CombinedMarginLoss:
        return cls(s=s, m1=1.0, m2=0.0, m3=m, **kwargs)

    @property
    def angular(self) -> bool:
        """True when the margin acts on the angle (m1 ≠ 1 or m2 ≠ 0), the case where conventions differ."""
        return self.m1 != 1.0 or self.m2 != 0.0

    def extra_repr(self) -> str:
        return (f"s={self.s}, m1={self.m1}, m2={self.m2}, m3={self.m3}, gradient={self.gradient}, "
                f"overflow={self.overflow}")

    def target_logit(self, cos: torch.Tensor) -> torch.Tensor:
        """Unscaled margin target ``cos(m1·θ + m2) − m3`` (with the overflow rule) for target cosines ``cos``."""
        if not self.angular:
            return cos - self.m3
        lo, hi = (-1.0 + self.eps, 1.0 - self.eps) if self.gradient == "exact" else (-1.0, 1.0)
        theta = torch.arccos(cos.clamp(lo, hi))
        angle = self.m1 * theta + self.m2
        value = torch.cos(angle)
        if self.overflow == "threshold":
            value = torch.where(angle <= math.pi, value, cos - self.m2 * math.sin(self.m2))
        elif self.overflow == "easy":
            value = torch.where(cos > 0, value, cos)
        return value - self.m3

    def forward(self, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Margin logits.

        Args:
            cos: (N, C) cosines between normalised embeddings and normalised class centres.
            labels: (N,) int64 column of each row's target class; -1 when the target is not among these C
                columns (another rank's shard, or not sampled).

        Returns:
            (N, C) logits, float like ``cos``.
        """
        if cos.dim() != 2 or labels.shape != cos.shape[:1]:
            raise ValueError(f"CombinedMarginLoss: expected cos (N, C) and labels (N,), got {tuple(cos.shape)} and "
                             f"{tuple(labels.shape)}")
        cos = cos.clamp(-1.0, 1.0)
        if self.m1 == 1.0 and self.m2 == 0.0 and self.m3 == 0.0:
            return self.s * cos
        rows = torch.nonzero(labels >= 0, as_tuple=True)[0]
        cols = labels[rows]
        target = cos[rows, cols]
        if self.gradient == "exact":
            new_target = self.target_logit(target)
        else:
            with torch.no_grad():
                shift = self.target_logit(target) - target
            new_target = target + shift
        return self.s * cos.index_put((rows, cols), new_target)
