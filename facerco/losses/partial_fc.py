"""Partial FC (An et al., ICCVW 2021): a margin-softmax classifier whose class-centre matrix is sharded over ranks.

Per step, on each of W ranks (FORMATS.md §5):

1. embeddings (B_r, D) and labels are all-gathered into the global batch (G = Σ B_r rows); the gather is
   autograd-aware: its backward all-reduces the gradient and returns this rank's rows;
2. this rank's rows of W (``num_local`` classes starting at ``class_start``), optionally sub-sampled, give
   cosines (G, n) and margin logits (the margin lands only on the rank that owns the target class);
3. the softmax is distributed: per-sample max all-reduced (MAX), then the exp-sum all-reduced (SUM); the
   target logit (one owner) is all-reduced too, so every rank gets the same loss, the mean over the G samples.

The all-reduces inside the loss have identity backward (each rank back-propagates the same replicated loss
into its own shard), so weight-shard gradients are exactly those of one full softmax over the global batch.
Embedding gradients are exact too, times ``W`` when ``ddp_compensation`` is on (the default): DDP then
*averages* the backbone gradients over ranks, which gives exactly the single-process gradient.

Sampling (``sample_rate < 1``): every class that is a positive in the global batch is kept, plus random
negatives up to ``int(sample_rate · num_local)`` rows of this shard (all positives are kept even beyond that).
The draw is deterministic: a generator seeded from (seed, rank, ``sample_step``), where ``sample_step`` is a
buffer counting training steps, so resuming from a checkpoint repeats the same draws. Classes not drawn get
no logit that step (and a zero gradient row).

With no process group (or world size 1) the module is a plain full-softmax margin classifier.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from facerco.losses.margin import CombinedMarginLoss

__all__ = ["PartialFC", "build_head", "shard_range"]


def shard_range(num_classes: int, world_size: int, rank: int) -> tuple[int, int]:
    """(class_start, num_local): contiguous row blocks, the first ``num_classes % world_size`` ranks one row larger."""
    base, extra = divmod(num_classes, world_size)
    return rank * base + min(rank, extra), base + (1 if rank < extra else 0)


class _AllGather(torch.autograd.Function):
    """Concatenate every rank's tensor along dim 0 (sizes may differ); backward: all-reduce, own rows, scale."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, sizes: tuple[int, ...], rank: int, group: Any,
                grad_scale: float) -> torch.Tensor:
        ctx.sizes, ctx.rank, ctx.group, ctx.grad_scale = sizes, rank, group, grad_scale
        return _gather_padded(x.detach(), sizes, group)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        start = sum(ctx.sizes[: ctx.rank])
        own = grad[start: start + ctx.sizes[ctx.rank]]
        return own * ctx.grad_scale if ctx.grad_scale != 1.0 else own, None, None, None, None


def _gather_padded(x: torch.Tensor, sizes: tuple[int, ...], group: Any) -> torch.Tensor:
    biggest = max(sizes)
    padded = x.new_zeros((biggest, *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)])


def _gather_sizes(n: int, device: torch.device, group: Any, world: int) -> tuple[int, ...]:
    local = torch.tensor([n], dtype=torch.int64, device=device)
    sizes = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(sizes, local, group=group)
    return tuple(int(s.item()) for s in sizes)


def _all_reduce(x: torch.Tensor, op: Any, group: Any) -> torch.Tensor:
    out = x.detach().clone()
    dist.all_reduce(out, op=op, group=group)
    return out


class PartialFC(nn.Module):
    """Sharded margin-softmax classifier; ``forward(embeddings, labels)`` returns the global-batch mean loss.

    Args:
        margin: the margin logits (:class:`CombinedMarginLoss`).
        embedding_size: D.
        num_classes: total classes C over all ranks.
        sample_rate: fraction of this shard's classes per step (1.0 = all; positives always kept).
        seed: seeds the class-centre init (the full C x D matrix, so any world size starts from the same
            weights) and the negative sampling.
        ddp_compensation: scale embedding gradients by the world size so DDP's averaging yields the exact gradient.
        process_group: defaults to the global group when torch.distributed is initialised.
        init_std: std of the normal init of class centres.
    """

    sharded = True  # rank-local state: DDP must ignore it, resume checkpoints keep it per rank

    def __init__(self, margin: CombinedMarginLoss, embedding_size: int, num_classes: int, sample_rate: float = 1.0,
                 seed: int = 0, ddp_compensation: bool = True, process_group: Any = None,
                 init_std: float = 0.01) -> None:
        super().__init__()
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"PartialFC: sample_rate must be in (0, 1], got {sample_rate}")
        self.group = process_group
        if dist.is_available() and dist.is_initialized():
            self.world_size, self.rank = dist.get_world_size(process_group), dist.get_rank(process_group)
        else:
            self.world_size, self.rank = 1, 0
        if num_classes < self.world_size:
            raise ValueError(f"PartialFC: {num_classes} classes cannot be sharded over {self.world_size} ranks")
        self.margin = margin
        self.embedding_size, self.num_classes = int(embedding_size), int(num_classes)
        self.sample_rate, self.seed, self.ddp_compensation = float(sample_rate), int(seed), bool(ddp_compensation)
        self.class_start, self.num_local = shard_range(self.num_classes, self.world_size, self.rank)
        self.weight = nn.Parameter(self._init_shard(init_std))
        self.register_buffer("sample_step", torch.zeros((), dtype=torch.int64))
        self.last_index: torch.Tensor | None = None  # global class ids used in the last sampled step

    @classmethod
    def from_config(cls, loss_cfg: Any, embedding_size: int, num_classes: int, seed: int = 0) -> PartialFC:
        """From a :class:`facerco.config.LossConfig`: margin preset/values, gradient convention, sample_rate."""
        return cls(CombinedMarginLoss.from_config(loss_cfg), embedding_size, num_classes,
                   sample_rate=loss_cfg.sample_rate, seed=seed)

    def _init_shard(self, std: float) -> torch.Tensor:
        """This rank's rows of a full N(0, std²) matrix drawn row-block by row-block from ``seed``."""
        gen = torch.Generator().manual_seed(self.seed)
        out = torch.empty(self.num_local, self.embedding_size)
        end = self.class_start + self.num_local
        chunk = 65536
        for lo in range(0, end, chunk):
            rows = torch.randn(min(chunk, end - lo), self.embedding_size, generator=gen) * std
            a, b = max(lo, self.class_start), min(lo + rows.shape[0], end)
            if a < b:
                out[a - self.class_start: b - self.class_start] = rows[a - lo: b - lo]
        return out

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def scale(self) -> float:
        return self.margin.s

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, embedding_size={self.embedding_size}, rank={self.rank}/"
                f"{self.world_size}, rows=[{self.class_start}, {self.class_start + self.num_local}), "
                f"sample_rate={self.sample_rate}")

    # -- forward ----------------------------------------------------------------------------------------------------
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean margin-softmax cross-entropy over the global batch (same value on every rank).

        Args:
            embeddings: (B, D) this rank's raw (unnormalised) embeddings.
            labels: (B,) int64 class ids in [0, num_classes).
        """
        if embeddings.dim() != 2 or embeddings.shape[1] != self.embedding_size:
            raise ValueError(f"PartialFC: embeddings must be (B, {self.embedding_size}), got {tuple(embeddings.shape)}")
        if labels.shape != embeddings.shape[:1]:
            raise ValueError(f"PartialFC: labels must be ({embeddings.shape[0]},), got {tuple(labels.shape)}")
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            emb, labels = embeddings.float(), labels.long()
            if self.distributed:
                sizes = _gather_sizes(emb.shape[0], emb.device, self.group, self.world_size)
                scale = float(self.world_size) if self.ddp_compensation else 1.0
                emb = _AllGather.apply(emb, sizes, self.rank, self.group, scale)
                labels = _gather_padded(labels, sizes, self.group)
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
                raise ValueError(f"PartialFC: labels must lie in [0, {self.num_classes}), got "
                                 f"[{int(labels.min())}, {int(labels.max())}]")
            index, local_labels = self._select(labels)
            weight = self.weight if index is None else self.weight[index]
            cos = F.linear(F.normalize(emb, dim=1), F.normalize(weight.float(), dim=1))
            logits = self.margin(cos, local_labels)
            return self._cross_entropy(logits, local_labels)

    def _select(self, labels: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Rows of this shard to use (None = all) and each sample's target column (-1 if not in this shard)."""
        local = labels - self.class_start
        in_shard = (local >= 0) & (local < self.num_local)
        if self.sample_rate >= 1.0:
            self.last_index = None
            return None, torch.where(in_shard, local, torch.full_like(local, -1))
        positives = torch.unique(local[in_shard])
        num_sample = min(self.num_local, max(int(self.sample_rate * self.num_local), positives.numel()))
        state = np.random.SeedSequence([self.seed, self.rank, int(self.sample_step)]).generate_state(1)
        gen = torch.Generator().manual_seed(int(state[0]))
        score = torch.rand(self.num_local, generator=gen).to(labels.device)
        score[positives] = 2.0  # positives first
        index = torch.topk(score, num_sample).indices.sort().values
        remap = torch.full((self.num_local,), -1, dtype=torch.long, device=labels.device)
        remap[index] = torch.arange(num_sample, device=labels.device)
        mapped = torch.where(in_shard, remap[local.clamp(0, self.num_local - 1)], torch.full_like(local, -1))
        if self.training:
            self.sample_step += 1
        self.last_index = index + self.class_start
        return index, mapped

    def _cross_entropy(self, logits: torch.Tensor, local_labels: torch.Tensor) -> torch.Tensor:
        """Distributed softmax CE: all-reduce max, then exp-sum and target logit; identity backward."""
        row_max = logits.detach().max(dim=1).values
        if self.distributed:
            row_max = _all_reduce(row_max, dist.ReduceOp.MAX, self.group)
        shifted = logits - row_max[:, None]
        sum_exp = shifted.exp().sum(dim=1)
        has_target = local_labels >= 0
        target = torch.where(has_target, shifted.gather(1, local_labels.clamp(min=0)[:, None])[:, 0],
                             torch.zeros_like(row_max))
        if self.distributed:
            sum_exp = sum_exp + (_all_reduce(sum_exp, dist.ReduceOp.SUM, self.group) - sum_exp.detach())
            target = target + (_all_reduce(target, dist.ReduceOp.SUM, self.group) - target.detach())
        return (sum_exp.log() - target).mean()

    # -- KD logits and checkpoint helpers ---------------------------------------------------------------------------
    def logits(self, embeddings: torch.Tensor, shard_only: bool = False, scaled: bool = True) -> torch.Tensor:
        """Margin-free logits ``s·cos θ`` of this rank's (B, D) embeddings against every class, (B, num_classes).

        Under sharding the normalised class centres are all-gathered with gradient; a class row's gradient is
        the sum over ranks divided by the world size (the mean, matching DDP's averaging of the backbone).
        ``shard_only=True`` returns only this rank's columns (B, num_local) without communication.
        """
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            weight = F.normalize(self.weight.float(), dim=1)
            if self.distributed and not shard_only:
                sizes = tuple(shard_range(self.num_classes, self.world_size, r)[1] for r in range(self.world_size))
                weight = _AllGather.apply(weight, sizes, self.rank, self.group, 1.0 / self.world_size)
            cos = F.linear(F.normalize(embeddings.float(), dim=1), weight)
            return self.margin.s * cos if scaled else cos

    @torch.no_grad()
    def full_weight(self) -> torch.Tensor:
        """The whole (num_classes, D) class-centre matrix (a collective: every rank must call it)."""
        if not self.distributed:
            return self.weight.detach().clone()
        sizes = tuple(shard_range(self.num_classes, self.world_size, r)[1] for r in range(self.world_size))
        return _gather_padded(self.weight.detach(), sizes, self.group)

    @torch.no_grad()
    def load_full_weight(self, full: torch.Tensor) -> None:
        """Copy this rank's rows out of a full (num_classes, D) matrix (e.g. a route checkpoint's classifier)."""
        if tuple(full.shape) != (self.num_classes, self.embedding_size):
            raise ValueError(f"PartialFC: full weight must be ({self.num_classes}, {self.embedding_size}), "
                             f"got {tuple(full.shape)}")
        self.weight.copy_(full[self.class_start: self.class_start + self.num_local].to(self.weight))


def build_head(cfg: Any, embedding_size: int, num_classes: int) -> PartialFC:
    """The margin head from a whole :class:`facerco.config.Config` or a ``LossConfig``: the one builder.

    Class centres are seeded from ``train.seed`` (0 for a bare LossConfig), so every world size draws the same matrix.
    The teacher job, the student job and the benchmarks all build their head here.
    """
    loss_cfg = getattr(cfg, "loss", cfg)
    train_cfg = getattr(cfg, "train", None)
    seed = int(train_cfg.seed) if train_cfg is not None else 0
    return PartialFC.from_config(loss_cfg, embedding_size, num_classes, seed=seed)
