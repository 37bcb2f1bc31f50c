"""Parameter and multiply-accumulate (MAC) counts, measured with forward hooks on one input.

Counting convention (per image, the one the published iResNet/MobileFaceNet numbers use):
    Conv2d: output elements x (in_channels / groups) x kernel area (a bias adds nothing);
    Linear: output elements x in_features;
    BatchNorm: one MAC per element (scale and shift fold into a multiply-add; 0 when folded into the conv);
    PReLU: one MAC per element.
Conv + Linear give ``macs``; BN and PReLU are reported separately in ``elementwise_macs`` because they vanish
after BN folding and are negligible in practice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = ["Complexity", "count_params", "measure_complexity"]


@dataclass
class Complexity:
    """Params and MACs of one model at one input size (MACs per image)."""

    params: int
    trainable_params: int
    macs: int
    elementwise_macs: int
    input_size: tuple[int, int]
    by_type: dict[str, int] = field(default_factory=dict)

    @property
    def total_macs(self) -> int:
        return self.macs + self.elementwise_macs


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (each shared tensor counted once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def _layer_macs(module: nn.Module, out: torch.Tensor) -> tuple[str, int]:
    per_image = out[0].numel()
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return "conv", per_image * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return "linear", per_image * module.in_features
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return "bn", per_image
    if isinstance(module, nn.PReLU):
        return "prelu", per_image
    return "", 0


@torch.no_grad()
def measure_complexity(model: nn.Module, input_size: tuple[int, int] | None = None) -> Complexity:
    """Run one image of ``input_size`` (default ``model.meta.input_size`` or 112x112) and count MACs.

    The model is put in eval mode for the pass and restored afterwards.
    """
    if input_size is None:
        meta = getattr(model, "meta", None)
        input_size = tuple(meta.input_size) if meta is not None else (112, 112)
    counts = {"conv": 0, "linear": 0, "bn": 0, "prelu": 0}

    def hook(module: nn.Module, _inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        kind, macs = _layer_macs(module, out)
        if kind:
            counts[kind] += macs

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        model(torch.zeros(1, 3, *input_size, device=device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return Complexity(
        params=count_params(model),
        trainable_params=count_params(model, trainable_only=True),
        macs=counts["conv"] + counts["linear"],
        elementwise_macs=counts["bn"] + counts["prelu"],
        input_size=(int(input_size[0]), int(input_size[1])),
        by_type=dict(counts),
    )
