"""MobileFaceNet family (Chen et al., CCBR 2018), the RCO student, from the description in FORMATS.md §4.

Module names follow insightface's arcface_torch ``mbf`` so its state_dicts load with ``strict=True``:
``layers.{0..7}`` (a ModuleList), ``conv_sep``, ``features`` (the GDC head), each block holding a ``layers``
Sequential. Stage layout (stride relative to the input, for hint losses; see ``model.feature_info``):

====================  =================================================  ======
name                  content                                            stride
====================  =================================================  ======
``layers.0``          3x3 conv, stride 2                                 2
``layers.1``          3x3 grouped conv (blocks[0] == 1) or residual DWs  2
``layers.2``          bottleneck, stride 2                               4
``layers.3``          blocks[1] residual bottlenecks                     4
``layers.4``          bottleneck, stride 2, widens to 128*scale          8
``layers.5``          blocks[2] residual bottlenecks                     8
``layers.6``          bottleneck, stride 2                               16
``layers.7``          blocks[3] residual bottlenecks                     16
``conv_sep``          1x1 conv to 512                                    16
``features``          GDC: 7x7 depthwise linear conv, Linear, BN1d       -
====================  =================================================  ======

Expansion widths are the published constants (128, 128, 256, 256, 512, 256 channels for layers 1..7), so
``scale`` widens the trunk but not the expansions, exactly like the reference implementation.

Variants:
    ``mobilefacenet``: the original paper model, blocks (1, 4, 6, 2), scale 1, 128-d (≈1.0M params, 221M MACs).
    ``mbf``: insightface's variant, scale 2, 512-d (2.06M params, 0.44G MACs).
    ``mbf_large``: insightface's large variant, blocks (2, 8, 12, 4), scale 4, 512-d.
    ``mbf_0.8m``: the RCO student, 0.8M params ±3% (see its docstring for the choice).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from facerco.models._registry import check_overrides, register_model

__all__ = ["ConvBlock", "LinearBlock", "DepthWise", "Residual", "GDC", "MobileFaceNet"]


ACTIVATIONS = ("prelu", "relu")


def _activation(name: str, channels: int) -> nn.Module:
    """The block activation: PReLU as published, or ReLU, which int8 runtimes fold into the preceding integer
    convolution (onnxruntime has no integer PReLU: each one runs in float between a dequantize and a requantize)."""
    if name == "prelu":
        return nn.PReLU(channels)
    if name == "relu":
        return nn.ReLU(inplace=True)
    raise ValueError(f"MobileFaceNet: activation must be one of {', '.join(ACTIVATIONS)}, got {name!r}")


class ConvBlock(nn.Module):
    """conv (no bias) -> BN -> PReLU (or ReLU)."""

    def __init__(self, in_c: int, out_c: int, kernel: int = 1, stride: int = 1, padding: int = 0,
                 groups: int = 1, activation: str = "prelu") -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_c, out_c, kernel, stride=stride, padding=padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_c),
            _activation(activation, out_c),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class LinearBlock(nn.Module):
    """conv (no bias) -> BN, no activation (linear bottleneck)."""

    def __init__(self, in_c: int, out_c: int, kernel: int | tuple[int, int] = 1, stride: int = 1,
                 padding: int = 0, groups: int = 1) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_c, out_c, kernel, stride=stride, padding=padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_c),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class DepthWise(nn.Module):
    """Inverted bottleneck: 1x1 expand to ``hidden`` -> 3x3 depthwise (stride) -> 1x1 linear project (+x)."""

    def __init__(self, in_c: int, out_c: int, hidden: int, stride: int = 1, residual: bool = False,
                 activation: str = "prelu") -> None:
        super().__init__()
        if residual and (stride != 1 or in_c != out_c):
            raise ValueError(f"DepthWise: a residual block needs stride 1 and in_c == out_c, got {stride}, "
                             f"{in_c}->{out_c}")
        self.residual = residual
        self.layers = nn.Sequential(
            ConvBlock(in_c, hidden, 1, activation=activation),
            ConvBlock(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, activation=activation),
            LinearBlock(hidden, out_c, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(x)
        return x + out if self.residual else out


class Residual(nn.Module):
    """``num_block`` residual bottlenecks at constant width (may be empty)."""

    def __init__(self, channels: int, num_block: int, hidden: int, activation: str = "prelu") -> None:
        super().__init__()
        self.layers = nn.Sequential(*[DepthWise(channels, channels, hidden, residual=True, activation=activation)
                                      for _ in range(num_block)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class GDC(nn.Module):
    """Global depthwise convolution head: kxk depthwise linear conv -> flatten -> Linear (no bias) -> BN1d."""

    def __init__(self, channels: int, embedding_size: int, kernel: tuple[int, int]) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            LinearBlock(channels, channels, kernel=kernel, groups=channels),
            nn.Flatten(),
            nn.Linear(channels, embedding_size, bias=False),
            nn.BatchNorm1d(embedding_size),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class MobileFaceNet(nn.Module):
    """MobileFaceNet returning an (N, embedding_size) embedding.

    Args:
        blocks: residual bottlenecks in the four groups (layers.1 or its grouped conv, layers.3, .5, .7).
        scale: trunk width multiplier of the reference code (trunk 64*scale then 128*scale channels).
        embedding_size: output dimension D.
        width_mult: extra multiplier on every width, expansions and head included (1.0 = reference layout).
        input_size: (H, W) or one int, divisible by 16; sets the GDC kernel (112 -> 7x7).
        activation: ``prelu`` (published) or ``relu`` (quantizes fully in onnxruntime; see ``benchmarks/export.py``).
    """

    def __init__(
        self,
        blocks: Sequence[int] = (1, 4, 6, 2),
        scale: int = 2,
        embedding_size: int = 512,
        width_mult: float = 1.0,
        input_size: int | Sequence[int] = 112,
        activation: str = "prelu",
    ) -> None:
        super().__init__()
        if len(blocks) != 4 or blocks[0] < 1 or any(int(b) < 0 for b in blocks):
            raise ValueError(f"MobileFaceNet: blocks must be 4 counts with blocks[0] >= 1, got {tuple(blocks)}")
        if scale < 1 or width_mult <= 0:
            raise ValueError(f"MobileFaceNet: scale must be >= 1 and width_mult > 0, got {scale}, {width_mult}")
        size = (input_size, input_size) if isinstance(input_size, int) else tuple(int(v) for v in input_size)
        if any(s % 16 for s in size):
            raise ValueError(f"MobileFaceNet: input_size {size} must be divisible by 16 (four stride-2 layers)")
        _activation(activation, 1)
        self.input_size = size
        self.activation = activation
        self.embedding_size = int(embedding_size)

        def ch(c: float) -> int:
            return max(8, int(round(c * width_mult / 8)) * 8) if width_mult != 1.0 else int(c)

        c1, c2, head = ch(64 * scale), ch(128 * scale), ch(512)
        act = activation
        self.layers = nn.ModuleList([ConvBlock(3, c1, 3, stride=2, padding=1, activation=act)])
        if blocks[0] == 1:
            self.layers.append(ConvBlock(c1, c1, 3, padding=1, groups=math.gcd(ch(64), c1), activation=act))
        else:
            self.layers.append(Residual(c1, int(blocks[0]), ch(128), activation=act))
        self.layers.extend([
            DepthWise(c1, c1, ch(128), stride=2, activation=act),
            Residual(c1, int(blocks[1]), ch(128), activation=act),
            DepthWise(c1, c2, ch(256), stride=2, activation=act),
            Residual(c2, int(blocks[2]), ch(256), activation=act),
            DepthWise(c2, c2, ch(512), stride=2, activation=act),
            Residual(c2, int(blocks[3]), ch(256), activation=act),
        ])
        self.conv_sep = ConvBlock(c2, head, 1, activation=act)
        self.features = GDC(head, self.embedding_size, (size[0] // 16, size[1] // 16))
        self.num_features = head
        self.feature_info = [
            {"module": "layers.1", "num_chs": c1, "reduction": 2},
            {"module": "layers.3", "num_chs": c1, "reduction": 4},
            {"module": "layers.5", "num_chs": c2, "reduction": 8},
            {"module": "layers.7", "num_chs": c2, "reduction": 16},
            {"module": "conv_sep", "num_chs": head, "reduction": 16},
        ]
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Trunk and ``conv_sep``: (N, 3, H, W) -> (N, 512, H/16, W/16)."""
        for layer in self.layers:
            x = layer(x)
        return self.conv_sep(x)

    def forward_head(self, feat: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """GDC head; ``pre_logits`` returns the (N, 512) pooled vector before the Linear."""
        if pre_logits:
            return self.features.layers[1](self.features.layers[0](feat))
        return self.features(feat)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_head(self, embedding_size: int) -> None:
        """Replace the GDC head for a new embedding size (fresh weights), updating ``meta``."""
        self.embedding_size = int(embedding_size)
        kernel = (self.input_size[0] // 16, self.input_size[1] // 16)
        self.features = GDC(self.num_features, self.embedding_size, kernel)
        meta = getattr(self, "meta", None)
        if meta is not None:
            meta.embedding_size = self.embedding_size
            meta.arch_kwargs["embedding_size"] = self.embedding_size


def _create(name: str, fixed: dict[str, Any], defaults: dict[str, Any], overrides: dict[str, Any]) -> MobileFaceNet:
    check_overrides(name, MobileFaceNet, overrides, fixed=fixed)
    return MobileFaceNet(**{**fixed, **defaults, **overrides})


@register_model
def mobilefacenet(**overrides: Any) -> MobileFaceNet:
    """The original MobileFaceNet: blocks (1, 4, 6, 2), trunk 64/128, 128-d (≈1.0M params, 221M MACs)."""
    return _create("mobilefacenet", {"blocks": (1, 4, 6, 2), "scale": 1}, {"embedding_size": 128}, overrides)


@register_model
def mbf(**overrides: Any) -> MobileFaceNet:
    """insightface ``mbf``: blocks (1, 4, 6, 2), trunk 128/256, 512-d (2.06M params, 0.44G MACs)."""
    return _create("mbf", {"blocks": (1, 4, 6, 2), "scale": 2}, {"embedding_size": 512}, overrides)


@register_model
def mbf_large(**overrides: Any) -> MobileFaceNet:
    """insightface ``mbf_large``: blocks (2, 8, 12, 4), trunk 256/512, 512-d."""
    return _create("mbf_large", {"blocks": (2, 8, 12, 4), "scale": 4}, {"embedding_size": 512}, overrides)


@register_model("mbf_0.8m")
def mbf_0_8m(**overrides: Any) -> MobileFaceNet:
    """RCO student with 0.8M parameters (790,400 at the defaults, -1.2%).

    The original MobileFaceNet (scale 1) with blocks (1, 4, 3, 1) and a 256-d embedding. Residual blocks at
    14x14 (layers.5) cost ~68k parameters each but those at 28x28 (layers.3) only ~18k, so the budget is met by
    halving the 14x14 group (6 -> 3) and the 7x7 group (2 -> 1) while keeping the high-resolution depth that
    carries most of the compute. 256-d sits between the original 128-d and the 512-d teachers. Changing
    ``embedding_size`` changes the count (512-d: about 0.92M).
    """
    return _create("mbf_0.8m", {"blocks": (1, 4, 3, 1), "scale": 1}, {"embedding_size": 256}, overrides)
