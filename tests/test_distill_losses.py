"""Known-answer tests of the distillation losses against hand computation and brute force."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from facerco.losses.distill import FeatureHooks, HintLoss, KDLoss, MimicLoss, find_module


def test_mimic_l2_and_cosine_known_answer():
    s = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    t = torch.tensor([[4.0, 3.0], [0.0, 2.0]])
    # normalized: s=[.6,.8],[1,0]; t=[.8,.6],[0,1]; cos = .96, 0
    assert MimicLoss("cosine")(s, t).item() == pytest.approx(((1 - 0.96) + 1.0) / 2, abs=1e-6)
    assert MimicLoss("l2")(s, t).item() == pytest.approx(((2 - 2 * 0.96) + 2.0) / 2, abs=1e-6)
    assert MimicLoss("l2")(t, t).item() == pytest.approx(0.0, abs=1e-7)


def test_mimic_projector_only_when_sizes_differ_and_teacher_detached():
    assert MimicLoss("l2", 8, 8).projector is None
    loss = MimicLoss("l2", 4, 6)
    assert isinstance(loss.projector, nn.Linear) and loss.projector.weight.shape == (6, 4)
    s = torch.randn(5, 4, requires_grad=True)
    t = torch.randn(5, 6, requires_grad=True)
    loss(s, t).backward()
    assert s.grad is not None and t.grad is None
    with pytest.raises(ValueError, match="projector"):
        MimicLoss("l2")(torch.randn(2, 4), torch.randn(2, 6))
    with pytest.raises(ValueError, match="kind"):
        MimicLoss("dot")  # type: ignore[arg-type]


def test_kd_matches_brute_force_and_t_squared():
    torch.manual_seed(0)
    zs, zt = torch.randn(3, 5), torch.randn(3, 5)
    t = 3.0
    expected = 0.0
    for i in range(3):
        ps = [math.exp(v / t) for v in zs[i].tolist()]
        pt = [math.exp(v / t) for v in zt[i].tolist()]
        ps = [v / sum(ps) for v in ps]
        pt = [v / sum(pt) for v in pt]
        expected += sum(b * math.log(b / a) for a, b in zip(ps, pt, strict=True))
    expected = expected / 3 * t * t
    assert KDLoss(t)(zs, zt).item() == pytest.approx(expected, rel=1e-5)
    assert KDLoss(t)(zt, zt).item() == pytest.approx(0.0, abs=1e-6)
    ref = F.kl_div(F.log_softmax(zs / t, 1), F.log_softmax(zt / t, 1), reduction="batchmean", log_target=True) * t * t
    assert KDLoss(t)(zs, zt).item() == pytest.approx(ref.item(), rel=1e-5)
    with pytest.raises(ValueError, match="temperature"):
        KDLoss(0.0)


def test_hint_regressor_and_resize():
    torch.manual_seed(0)
    loss = HintLoss(4, 6)
    fs, ft = torch.randn(2, 4, 8, 8), torch.randn(2, 6, 4, 4)
    value = loss(fs, ft)
    resized = F.interpolate(fs, size=(4, 4), mode="bilinear", align_corners=False)
    expected = (loss.regressor(resized) - ft).pow(2).mean()
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)
    value.backward()
    assert loss.regressor[0].weight.grad is not None


def test_feature_hooks_by_name():
    model = nn.Sequential()
    model.add_module("stem", nn.Conv2d(3, 4, 1))
    model.add_module("layer1", nn.Conv2d(4, 5, 1))
    hooks = FeatureHooks(model, ["layer1"])
    model(torch.randn(1, 3, 2, 2))
    assert hooks.features["layer1"].shape == (1, 5, 2, 2)
    hooks.remove()
    with pytest.raises(ValueError, match="layer9"):
        find_module(model, "layer9")
