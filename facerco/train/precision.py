"""Mixed precision: which autocast dtype, and whether a GradScaler is needed.

``auto`` means fp16 + GradScaler on CUDA and full fp32 on CPU (bf16 on CPU is opt-in: it is slower than fp32 on
many CPUs and changes numerics). bf16 never needs a scaler.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

__all__ = ["Precision", "resolve_precision"]


@dataclass(frozen=True)
class Precision:
    """Autocast settings for one device."""

    device_type: str
    dtype: torch.dtype | None  # None: no autocast

    @property
    def enabled(self) -> bool:
        return self.dtype is not None

    @property
    def needs_scaler(self) -> bool:
        return self.dtype == torch.float16

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def make_scaler(self, growth_interval: int = 2000) -> torch.amp.GradScaler:
        """A GradScaler that is a pass-through unless fp16 is on."""
        return torch.amp.GradScaler(self.device_type, enabled=self.needs_scaler, growth_interval=growth_interval)

    def describe(self) -> str:
        return "fp32" if self.dtype is None else f"{str(self.dtype).removeprefix('torch.')} autocast"


def resolve_precision(mode: str, device: torch.device) -> Precision:
    """Map ``train.amp`` (auto/off/bf16/fp16) to autocast settings, refusing fp16 on CPU."""
    kind = device.type
    if mode == "auto":
        return Precision(kind, torch.float16 if kind == "cuda" else None)
    if mode == "off":
        return Precision(kind, None)
    if mode == "bf16":
        return Precision(kind, torch.bfloat16)
    if mode == "fp16":
        if kind != "cuda":
            raise ValueError("train.amp=fp16 needs a CUDA device; use train.amp=bf16 or off on CPU")
        return Precision(kind, torch.float16)
    raise ValueError(f"train.amp must be one of auto/off/bf16/fp16, got {mode!r}")
