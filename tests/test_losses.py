"""Margin logits (known answers by hand, both gradient conventions) and Partial FC (single process and 2 gloo ranks
against one full softmax)."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.nn.functional as F

from facerco.config import LossConfig
from facerco.losses.margin import CombinedMarginLoss, margin_params
from facerco.losses.partial_fc import PartialFC, build_head, shard_range

S = 64.0


# ------------------------------------------------------------------------------------------------ margin values


def _cos(rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_arcface_known_answer_and_overflow_rules():
    cos = _cos([[0.5, 0.2, -0.3], [0.1, -0.95, 0.4], [0.3, 0.6, 0.9]])
    labels = torch.tensor([0, 1, -1])
    expected_row0 = [S * math.cos(math.pi / 3 + 0.5), S * 0.2, S * -0.3]
    theta1 = math.acos(-0.95)
    assert theta1 + 0.5 > math.pi  # the overflow case
    row1_target = {
        "threshold": -0.95 - 0.5 * math.sin(0.5),
        "easy": -0.95,
        "none": math.cos(theta1 + 0.5),
    }
    for overflow, target in row1_target.items():
        out = CombinedMarginLoss.arcface(overflow=overflow, eps=0.0)(cos, labels)
        assert torch.allclose(out[0], _cos(expected_row0), atol=1e-9), overflow
        assert torch.allclose(out[1], _cos([S * 0.1, S * target, S * 0.4]), atol=1e-9), overflow
        assert torch.allclose(out[2], S * cos[2]), "label -1 rows carry no margin"


def test_cosface_and_combined_known_answer():
    cos = _cos([[0.5, 0.2], [0.7, -0.1]])
    labels = torch.tensor([0, 1])
    out = CombinedMarginLoss.cosface()(cos, labels)
    assert torch.allclose(out, S * _cos([[0.1, 0.2], [0.7, -0.5]]), atol=1e-9)
    # SphereFace-style m1 with all three margins: s * (cos(2*theta + 0.1) - 0.2)
    comb = CombinedMarginLoss(s=30.0, m1=2.0, m2=0.1, m3=0.2, eps=0.0)(cos, labels)
    assert comb[0, 0].item() == pytest.approx(30.0 * (math.cos(2 * math.acos(0.5) + 0.1) - 0.2), abs=1e-9)
    assert comb[1, 1].item() == pytest.approx(30.0 * (-0.1 - 0.1 * math.sin(0.1) - 0.2), abs=1e-9)  # overflow


def test_presets_and_config():
    assert margin_params("arcface") == (1.0, 0.5, 0.0)
    assert margin_params("cosface") == (1.0, 0.0, 0.4)
    assert margin_params("arcface", m2=0.3) == (1.0, 0.3, 0.0)
    with pytest.raises(ValueError, match="unknown margin loss 'arcfase'"):
        margin_params("arcfase")
    m = CombinedMarginLoss.from_config(LossConfig(name="cosface", gradient="straight_through"))
    assert (m.s, m.m1, m.m2, m.m3, m.gradient) == (64.0, 1.0, 0.0, 0.4, "straight_through")
    m = CombinedMarginLoss.from_config(LossConfig(name="combined", m1=1.0, m2=0.3, m3=0.1, overflow="easy", eps=0.0))
    assert (m.m2, m.m3, m.overflow, m.eps) == (0.3, 0.1, "easy", 0.0)
    with pytest.raises(ValueError, match="gradient must be"):
        CombinedMarginLoss(gradient="approx")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ margin gradients


@pytest.mark.parametrize("c", [0.5, -0.2, 0.95])
def test_exact_gradient_is_the_true_derivative(c):
    cos = torch.tensor([[c, 0.1]], dtype=torch.float64, requires_grad=True)
    out = CombinedMarginLoss.arcface(gradient="exact")(cos, torch.tensor([0]))
    out.sum().backward()
    theta = math.acos(c)
    assert cos.grad[0, 0].item() == pytest.approx(S * math.sin(theta + 0.5) / math.sin(theta), rel=1e-9)
    assert cos.grad[0, 1].item() == pytest.approx(S)
    # and against a central finite difference of the value
    h = 1e-6
    m = CombinedMarginLoss.arcface()
    fd = (m(_cos([[c + h, 0.1]]), torch.tensor([0]))[0, 0] - m(_cos([[c - h, 0.1]]), torch.tensor([0]))[0, 0]) / (2 * h)
    assert cos.grad[0, 0].item() == pytest.approx(fd.item(), rel=1e-5)


def test_exact_gradient_is_bounded_by_the_clamp():
    cos = torch.tensor([[1.0, 0.0], [1 - 1e-9, 0.0]], dtype=torch.float64, requires_grad=True)
    CombinedMarginLoss.arcface(eps=1e-6)(cos, torch.tensor([0, 0])).sum().backward()
    assert torch.isfinite(cos.grad).all()
    assert (cos.grad[:, 0] == 0).all()  # clamp active: no gradient through arccos


def test_straight_through_gradient_is_s_with_margin_value():
    cos = torch.tensor([[0.5, 0.1], [0.3, 0.9]], dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1])
    st = CombinedMarginLoss.arcface(gradient="straight_through")
    exact = CombinedMarginLoss.arcface(gradient="exact", eps=0.0)
    out = st(cos, labels)
    assert torch.allclose(out, exact(cos.detach(), labels), atol=1e-12)  # same values
    weights = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    (out * weights).sum().backward()
    assert torch.allclose(cos.grad, S * weights)


def test_cosface_gradient_identical_in_both_conventions():
    grads = []
    for mode in ("exact", "straight_through"):
        cos = torch.tensor([[0.5, 0.1]], dtype=torch.float64, requires_grad=True)
        CombinedMarginLoss.cosface(gradient=mode)(cos, torch.tensor([0])).sum().backward()
        grads.append(cos.grad)
    assert torch.equal(grads[0], grads[1]) and torch.allclose(grads[0], torch.full((1, 2), S, dtype=torch.float64))


# ------------------------------------------------------------------------------------------------ Partial FC, 1 rank


def _reference_loss(emb, labels, weight, margin, classes=None):
    """Plain full softmax over ``classes`` (all when None): margin logits then F.cross_entropy."""
    if classes is not None:
        weight = weight[classes]
        remap = {int(c): i for i, c in enumerate(classes)}
        labels = torch.tensor([remap[int(y)] for y in labels])
    cos = F.normalize(emb, dim=1) @ F.normalize(weight, dim=1).T
    return F.cross_entropy(margin(cos, labels), labels)


def test_shard_range():
    assert [shard_range(10, 3, r) for r in range(3)] == [(0, 4), (4, 3), (7, 3)]
    assert [shard_range(4, 4, r) for r in range(4)] == [(0, 1), (1, 1), (2, 1), (3, 1)]


def test_partial_fc_single_process_equals_full_softmax():
    torch.manual_seed(0)
    margin = CombinedMarginLoss.arcface()
    head = PartialFC(margin, embedding_size=8, num_classes=11)
    emb = torch.randn(6, 8, requires_grad=True)
    labels = torch.tensor([0, 3, 3, 10, 7, 1])
    loss = head(emb, labels)
    loss.backward()
    emb_ref = emb.detach().clone().requires_grad_(True)
    w_ref = head.weight.detach().clone().requires_grad_(True)
    ref = _reference_loss(emb_ref, labels, w_ref, margin)
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), abs=1e-6)
    assert torch.allclose(emb.grad, emb_ref.grad, atol=1e-6)
    assert torch.allclose(head.weight.grad, w_ref.grad, atol=1e-6)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 11\)"):
        head(emb, torch.tensor([0, 1, 2, 3, 4, 11]))


def test_partial_fc_logits_and_weight_helpers():
    head = PartialFC(CombinedMarginLoss.arcface(), embedding_size=4, num_classes=5)
    emb = torch.randn(3, 4)
    expected = S * F.normalize(emb, dim=1) @ F.normalize(head.weight.detach(), dim=1).T
    assert torch.allclose(head.logits(emb), expected, atol=1e-6)
    full = torch.randn(5, 4)
    head.load_full_weight(full)
    assert torch.equal(head.full_weight(), full)
    with pytest.raises(ValueError, match=r"full weight must be \(5, 4\)"):
        head.load_full_weight(torch.zeros(6, 4))
    # the init is the full seeded matrix, independent of the world size
    again = PartialFC(CombinedMarginLoss.arcface(), embedding_size=4, num_classes=5)
    assert torch.equal(again.weight, PartialFC(CombinedMarginLoss.arcface(), 4, 5, seed=0).weight)
    assert not torch.equal(again.weight, PartialFC(CombinedMarginLoss.arcface(), 4, 5, seed=1).weight)


def test_partial_fc_sampling_keeps_positives_and_is_deterministic():
    margin = CombinedMarginLoss.cosface()
    labels = torch.tensor([2, 17, 17, 40])
    emb = torch.randn(4, 8)
    draws = []
    for _ in range(2):
        head = PartialFC(margin, embedding_size=8, num_classes=50, sample_rate=0.2, seed=3)
        loss = head(emb, labels)
        draws.append(head.last_index.clone())
        assert head.last_index.numel() == 10
        assert {2, 17, 40} <= set(head.last_index.tolist())
        ref = _reference_loss(emb, labels, head.weight.detach(), margin, classes=head.last_index)
        assert loss.item() == pytest.approx(ref.item(), abs=1e-5)
        assert int(head.sample_step) == 1
        head(emb, labels)
        draws.append(head.last_index.clone())
    assert torch.equal(draws[0], draws[2]) and torch.equal(draws[1], draws[3])  # same seed and step, same draw
    assert not torch.equal(draws[0], draws[1])  # the next step draws other negatives


def test_build_head_from_config():
    from facerco.config import Config

    cfg = Config()
    cfg.loss.sample_rate = 0.5
    cfg.train.seed = 7
    head = build_head(cfg, 16, 20)
    assert head.sample_rate == 0.5 and head.seed == 7 and head.margin.m2 == 0.5 and head.num_local == 20


def test_one_margin_head_builder_for_teacher_and_student():
    """The teacher job and the student job both build their head with ``build_head``: same centres."""
    from facerco.config import Config
    from facerco.distill import job as student_job
    from facerco.train import teacher as teacher_job

    assert teacher_job.build_head is build_head and student_job.build_head is build_head
    cfg = Config()
    cfg.train.seed = 3
    expect = PartialFC.from_config(cfg.loss, 16, 20, seed=3)
    assert torch.equal(build_head(cfg, 16, 20).weight, expect.weight)
    assert not torch.equal(build_head(cfg.loss, 16, 20).weight, expect.weight)  # a bare LossConfig seeds from 0


# ------------------------------------------------------------------------------------------------ Partial FC, 2 ranks

WORLD = 2
D, C = 8, 11
BATCH = (3, 5)  # unequal local batches exercise the padded gather


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _global_inputs():
    g = torch.Generator().manual_seed(123)
    emb = torch.randn(sum(BATCH), D, generator=g)
    labels = torch.tensor([0, 5, 10, 5, 0, 10, 0, 5])  # few positives: sampling must add negatives
    weight = torch.randn(C, D, generator=g)
    return emb, labels, weight


CASES = [("exact", 1.0), ("straight_through", 0.5)]


def _dist_worker(rank: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        emb, labels, weight = _global_inputs()
        lo = sum(BATCH[:rank])
        results = {}
        for gradient, rate in CASES:
            head = PartialFC(CombinedMarginLoss.arcface(gradient=gradient), D, C, sample_rate=rate)
            head.load_full_weight(weight)
            local = emb[lo: lo + BATCH[rank]].clone().requires_grad_(True)
            loss = head(local, labels[lo: lo + BATCH[rank]])
            loss.backward()
            results[(gradient, rate)] = {
                "loss": loss.detach(), "emb_grad": local.grad, "w_grad": head.weight.grad.clone(),
                "index": head.last_index, "start": head.class_start, "n": head.num_local,
                "full": head.full_weight(),
            }
        head = PartialFC(CombinedMarginLoss.arcface(), D, C)
        results["init_shard"] = head.weight.detach().clone()
        head.load_full_weight(weight)
        local = emb[lo: lo + BATCH[rank]].clone().requires_grad_(True)
        logits = head.logits(local)
        (logits * torch.arange(C, dtype=torch.float32)).sum().backward()
        results["logits"] = {"logits": logits.detach(), "emb_grad": local.grad, "w_grad": head.weight.grad}
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_partial_fc_two_gloo_ranks_match_single_process(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_dist_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    emb, labels, weight = _global_inputs()
    for gradient, rate in CASES:
        res = [r[(gradient, rate)] for r in ranks]
        classes = None if rate == 1.0 else torch.cat([r["index"] for r in res])
        if classes is not None:
            assert set(labels.tolist()) < set(classes.tolist())  # all positives plus some negatives
            assert [len(r["index"]) for r in res] == [3, 2]  # int(0.5 * 6), int(0.5 * 5)
        emb_ref = emb.clone().requires_grad_(True)
        w_ref = weight.clone().requires_grad_(True)
        ref = _reference_loss(emb_ref, labels, w_ref, CombinedMarginLoss.arcface(gradient=gradient), classes)
        ref.backward()
        for rank, r in enumerate(res):
            lo = sum(BATCH[:rank])
            assert r["loss"].item() == pytest.approx(ref.item(), abs=1e-5), (gradient, rate, rank)
            # DDP compensation: the embedding gradient is world x exact, DDP's averaging brings it back
            assert torch.allclose(r["emb_grad"] / WORLD, emb_ref.grad[lo: lo + BATCH[rank]], atol=1e-5)
            assert torch.allclose(r["w_grad"], w_ref.grad[r["start"]: r["start"] + r["n"]], atol=1e-5)
            assert torch.equal(r["full"], weight)
    # the class-centre init does not depend on the world size
    assert torch.equal(torch.cat([r["init_shard"] for r in ranks]), PartialFC(CombinedMarginLoss(), D, C).weight.data)
    # KD logits: every class, for the local batch; weight gradients averaged over ranks
    w_ref = weight.clone().requires_grad_(True)
    logits_ref = S * F.normalize(emb, dim=1) @ F.normalize(w_ref, dim=1).T
    (logits_ref * torch.arange(C, dtype=torch.float32)).sum().backward()
    for rank, r in enumerate(ranks):
        lo = sum(BATCH[:rank])
        assert torch.allclose(r["logits"]["logits"], logits_ref[lo: lo + BATCH[rank]].detach(), atol=1e-5)
        start, n = shard_range(C, WORLD, rank)
        assert torch.allclose(r["logits"]["w_grad"], w_ref.grad[start: start + n] / WORLD, atol=1e-5)
