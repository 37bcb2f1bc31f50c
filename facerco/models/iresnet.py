"""iResNet ("improved ResNet", ArcFace's teacher family), written from the description in FORMATS.md §4.

Parameter names follow insightface's arcface_torch backbones so that its published state_dicts load with
``strict=True``: ``conv1, bn1, prelu, layer{1..4}.{i}.{bn1,conv1,bn2,prelu,conv2,bn3}, layer{N}.0.downsample.{0,1},
bn2, fc, features``. Unlike that file, precision, activation checkpointing and the input size are not baked in: the
flattened size feeding ``fc`` is computed from ``input_size`` (112 -> 7x7), and autocast is left to the caller.

Stages for hint losses: ``layer1`` (stride 2), ``layer2`` (4), ``layer3`` (8), ``layer4`` (16); see
``model.feature_info``.

Variants: ``iresnet18/34/50/100/200`` (published depths, 512-d) and two reduced variants for CPU-scale runs:
``iresnet_tiny`` (blocks 1-1-1-1, width x0.25, 128-d) and ``iresnet_small`` (blocks 2-2-2-2, width x0.5, 256-d).
Every variant accepts ``width_mult`` to scale all stage widths.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from facerco.models._registry import check_overrides, register_model

__all__ = ["IBasicBlock", "FrozenScaleBatchNorm1d", "IResNet"]

_BN_EPS = 1e-5


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    h, w = size
    return (int(h), int(w))


class IBasicBlock(nn.Module):
    """Pre-activation-style basic block: bn1 -> conv1 -> bn2 -> prelu -> conv2(stride) -> bn3, plus shortcut."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=_BN_EPS)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=_BN_EPS)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=_BN_EPS)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut  # no activation after the add


class FrozenScaleBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose scale is fixed at 1: only the shift (bias) is learned.

    ``weight`` exists (requires_grad=False) only so insightface's ``features.weight`` key loads; forward never
    reads it, so it cannot drift even if someone re-enables its gradient. Loading a state_dict whose
    ``weight`` is not all ones raises, since this layer could not reproduce that model.
    """

    def __init__(self, num_features: int) -> None:
        super().__init__(num_features, eps=_BN_EPS)
        nn.init.ones_(self.weight)
        self.weight.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average, as nn.BatchNorm1d does
                factor = 1.0 / float(self.num_batches_tracked)
        use_batch_stats = self.training or self.running_mean is None
        return F.batch_norm(x, self.running_mean, self.running_var, None, self.bias, use_batch_stats, factor, self.eps)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        weight = state_dict.get(prefix + "weight")
        if weight is not None and weight.shape == self.weight.shape and not torch.all(weight == 1):
            raise ValueError(f"'{prefix}weight' must be all ones (fixed BatchNorm scale); the checkpoint has values "
                             f"in [{float(weight.min()):.4g}, {float(weight.max()):.4g}]")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class IResNet(nn.Module):
    """iResNet backbone returning an (N, embedding_size) embedding.

    Args:
        layers: blocks per stage, e.g. (3, 4, 14, 3) for r50.
        embedding_size: output dimension D.
        dropout: dropout probability before ``fc`` (0 in the reference recipe).
        width_mult: multiplies the 64/128/256/512 stage widths (1.0 = published models).
        input_size: (H, W) or one int; must be divisible by 16.
    """

    def __init__(
        self,
        layers: Sequence[int] = (3, 4, 14, 3),
        embedding_size: int = 512,
        dropout: float = 0.0,
        width_mult: float = 1.0,
        input_size: int | Sequence[int] = 112,
    ) -> None:
        super().__init__()
        if len(layers) != 4 or any(int(n) < 1 for n in layers):
            raise ValueError(f"IResNet: layers must be 4 positive block counts, got {tuple(layers)}")
        if width_mult <= 0:
            raise ValueError(f"IResNet: width_mult must be > 0, got {width_mult}")
        self.input_size = _pair(input_size)
        if any(s % 16 for s in self.input_size):
            raise ValueError(f"IResNet: input_size {self.input_size} must be divisible by 16 (four stride-2 stages)")
        self.embedding_size = int(embedding_size)
        widths = [max(8, round(c * width_mult)) for c in (64, 128, 256, 512)]
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0], eps=_BN_EPS)
        self.prelu = nn.PReLU(widths[0])
        self.layer1 = self._make_stage(widths[0], int(layers[0]))
        self.layer2 = self._make_stage(widths[1], int(layers[1]))
        self.layer3 = self._make_stage(widths[2], int(layers[2]))
        self.layer4 = self._make_stage(widths[3], int(layers[3]))
        self.bn2 = nn.BatchNorm2d(widths[3], eps=_BN_EPS)
        self.dropout = nn.Dropout(p=dropout)
        fh, fw = self.input_size[0] // 16, self.input_size[1] // 16
        self.num_features = widths[3] * fh * fw
        self.fc = nn.Linear(self.num_features, self.embedding_size)
        self.features = FrozenScaleBatchNorm1d(self.embedding_size)
        self.feature_info = [
            {"module": f"layer{i + 1}", "num_chs": widths[i], "reduction": 2 ** (i + 1)} for i in range(4)
        ]
        self._init_weights()

    def _make_stage(self, planes: int, blocks: int) -> nn.Sequential:
        downsample = nn.Sequential(
            nn.Conv2d(self.inplanes, planes, 1, stride=2, bias=False),
            nn.BatchNorm2d(planes, eps=_BN_EPS),
        )
        stage = [IBasicBlock(self.inplanes, planes, stride=2, downsample=downsample)]
        self.inplanes = planes
        stage += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def _init_weights(self) -> None:
        """The reference init: conv weights N(0, 0.1), BN scale 1 / shift 0.

        Training-mode BN renormalises every conv, so this scale is harmless for training; but in eval mode with
        the initial running statistics (0, 1) deep variants blow up (r50 ~1e24, r100 inf/NaN) until a few hundred
        training steps have updated the statistics. Evaluate trained weights only.
        """
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem and the four stages, then ``bn2``: (N, 3, H, W) -> (N, C, H/16, W/16)."""
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.bn2(x)

    def forward_head(self, feat: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Flatten -> dropout -> fc -> features BN; ``pre_logits`` returns the flattened map before ``fc``."""
        x = torch.flatten(feat, 1)
        if pre_logits:
            return x
        return self.features(self.fc(self.dropout(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_head(self, embedding_size: int) -> None:
        """Replace ``fc`` and ``features`` for a new embedding size (fresh weights), updating ``meta``."""
        self.embedding_size = int(embedding_size)
        self.fc = nn.Linear(self.num_features, self.embedding_size)
        self.features = FrozenScaleBatchNorm1d(self.embedding_size)
        meta = getattr(self, "meta", None)
        if meta is not None:
            meta.embedding_size = self.embedding_size
            meta.arch_kwargs["embedding_size"] = self.embedding_size


def _create(name: str, layers: tuple[int, ...], defaults: dict[str, Any], overrides: dict[str, Any]) -> IResNet:
    check_overrides(name, IResNet, overrides, fixed={"layers": layers})
    return IResNet(layers=layers, **{**defaults, **overrides})


@register_model
def iresnet18(**overrides: Any) -> IResNet:
    """iResNet-18: blocks 2-2-2-2, 512-d (24.0M params, 2.61G MACs)."""
    return _create("iresnet18", (2, 2, 2, 2), {}, overrides)


@register_model
def iresnet34(**overrides: Any) -> IResNet:
    """iResNet-34: blocks 3-4-6-3, 512-d (34.1M params, 4.46G MACs)."""
    return _create("iresnet34", (3, 4, 6, 3), {}, overrides)


@register_model
def iresnet50(**overrides: Any) -> IResNet:
    """iResNet-50: blocks 3-4-14-3, 512-d (43.6M params, 6.31G MACs)."""
    return _create("iresnet50", (3, 4, 14, 3), {}, overrides)


@register_model
def iresnet100(**overrides: Any) -> IResNet:
    """iResNet-100: blocks 3-13-30-3, 512-d (65.2M params, 12.09G MACs)."""
    return _create("iresnet100", (3, 13, 30, 3), {}, overrides)


@register_model
def iresnet200(**overrides: Any) -> IResNet:
    """iResNet-200: blocks 6-26-60-6, 512-d."""
    return _create("iresnet200", (6, 26, 60, 6), {}, overrides)


@register_model
def iresnet_small(**overrides: Any) -> IResNet:
    """CPU-scale teacher: blocks 2-2-2-2 at half width (32/64/128/256), 256-d."""
    return _create("iresnet_small", (2, 2, 2, 2), {"width_mult": 0.5, "embedding_size": 256}, overrides)


@register_model
def iresnet_tiny(**overrides: Any) -> IResNet:
    """Smoke-test size: one block per stage at quarter width (16/32/64/128), 128-d."""
    return _create("iresnet_tiny", (1, 1, 1, 1), {"width_mult": 0.25, "embedding_size": 128}, overrides)
