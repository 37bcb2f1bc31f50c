"""How hard are the generated faces? Train a small CNN quickly on CPU and score held-out identities.

Trains on ``--ids`` identities x ``--images`` aligned images (CosFace margin head, written inline), then embeds
``--test-ids`` *other* identities (never seen in training) and reports:
  - rank-1 identification: per identity one gallery image, every other image is a probe; a hit is the probe's
    nearest gallery image (cosine) having the same identity;
  - verification accuracy: all genuine pairs plus as many random impostor pairs, 10-fold best threshold;
  - train-set closed-set accuracy (is the model fitting at all?).
The generator is meant to be hard enough that such a quick, small model does *not* saturate (issue 2, item 6).

    python benchmarks/synthetic_difficulty.py                       # inline tiny CNN at 56 px (minutes on CPU)
    python benchmarks/synthetic_difficulty.py --model mbf_0.8m --size 112 --epochs 4   # registry student

Images go through a JPEG round trip at their drawn quality, like the written dataset.

Measured 2026-11-25 (inline tiny CNN, 0.32M params, 56 px, CosFace s=32 m=0.3, SGD lr 0.1 cosine, batch 128,
200x20 train, 100x10 held-out; shared 2-core CPU, 5-9 minutes per run):

    difficulty  epochs  rank-1   verification   train acc (with margin)
    0.5         8       94.2%    97.34 +- 0.37   92.7%
    1.0         8       70.7%    91.88 +- 1.05   30.1%
    1.0         16      79.2%    93.93 +- 0.78   88.3%
    1.6         8       18.3%    77.03 +- 1.18    0.1%  (does not take off in 8 epochs)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facerco.data.synthetic import Nuisance, SyntheticFaces, encode_jpeg
from facerco.utils.io import write_json

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _provenance import add_provenance_args, benchmark_recorder  # noqa: E402


def _render_set(gen: SyntheticFaces, ids: range, per: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    imgs = np.zeros((len(ids) * per, size, size, 3), dtype=np.uint8)
    labels = np.zeros(len(ids) * per, dtype=np.int64)
    n = 0
    for c, ident in enumerate(ids):
        for k in range(per):
            s = gen.render(ident, k)
            img = cv2.imdecode(np.frombuffer(encode_jpeg(s.image, s.params.jpeg_quality), np.uint8), cv2.IMREAD_COLOR)
            img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
            if size != img.shape[0]:
                img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
            imgs[n], labels[n] = img, c
            n += 1
    return imgs, labels


def _to_tensor(imgs: np.ndarray) -> torch.Tensor:
    return (torch.from_numpy(imgs).permute(0, 3, 1, 2).float() - 127.5) / 127.5


class TinyNet(nn.Module):
    """A small plain CNN (~0.3M params) for 56x56 faces: 4 stages, depthwise 7x7 global conv, linear embedding."""

    def __init__(self, emb: int = 128, width: int = 16) -> None:
        super().__init__()

        def block(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.PReLU(cout))

        w = width
        self.body = nn.Sequential(block(3, w, 1), block(w, 2 * w, 2), block(2 * w, 2 * w, 1), block(2 * w, 4 * w, 2),
                                  block(4 * w, 4 * w, 1), block(4 * w, 8 * w, 2), block(8 * w, 8 * w, 1))
        self.gdc = nn.Sequential(nn.Conv2d(8 * w, 8 * w, 7, 1, 0, groups=8 * w, bias=False), nn.BatchNorm2d(8 * w))
        self.fc = nn.Linear(8 * w, emb, bias=False)
        self.bn = nn.BatchNorm1d(emb)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.fc(self.gdc(self.body(x)).flatten(1)))


class CosFaceHead(nn.Module):
    """CosFace (Wang et al. 2018): logits s*(cos(theta_j) - m*[j == y]) on normalised features and centres."""

    def __init__(self, emb: int, classes: int, s: float = 32.0, m: float = 0.3) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, emb) * 0.01)
        self.s, self.m = s, m

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        cos = F.linear(F.normalize(x), F.normalize(self.weight))
        return self.s * (cos - self.m * F.one_hot(y, cos.shape[1]))


def _embed(model: nn.Module, imgs: np.ndarray, batch: int = 256) -> np.ndarray:
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(imgs), batch):
            x = _to_tensor(imgs[i:i + batch])
            e = model(x) + model(torch.flip(x, dims=[3]))  # flip-fused, as in the evaluation protocol
            out.append(F.normalize(e).numpy())
    return np.concatenate(out)


def rank1(emb: np.ndarray, labels: np.ndarray) -> float:
    """One gallery image per identity (its first), all others are probes; nearest gallery by cosine."""
    first = np.unique(labels, return_index=True)[1]
    gallery, g_lab = emb[first], labels[first]
    probe_mask = np.ones(len(labels), dtype=bool)
    probe_mask[first] = False
    sims = emb[probe_mask] @ gallery.T
    return float((g_lab[sims.argmax(axis=1)] == labels[probe_mask]).mean())


def verification(emb: np.ndarray, labels: np.ndarray, seed: int = 0, folds: int = 10) -> tuple[float, float]:
    """All genuine pairs plus as many random impostor pairs; best-threshold accuracy, 10-fold (mean, std)."""
    rng = np.random.default_rng(seed)
    ii, jj = np.triu_indices(len(labels), 1)
    same = labels[ii] == labels[jj]
    gen_i, gen_j = ii[same], jj[same]
    pick = rng.choice(np.flatnonzero(~same), size=len(gen_i), replace=False)
    a = np.concatenate([gen_i, ii[pick]])
    b = np.concatenate([gen_j, jj[pick]])
    issame = np.concatenate([np.ones(len(gen_i), bool), np.zeros(len(pick), bool)])
    order = rng.permutation(len(a))
    sim = np.sum(emb[a[order]] * emb[b[order]], axis=1)
    issame = issame[order]
    thresholds = np.linspace(-1, 1, 401)
    accs = []
    for f in np.array_split(np.arange(len(sim)), folds):
        train = np.ones(len(sim), dtype=bool)
        train[f] = False
        acc_t = [((sim[train] > t) == issame[train]).mean() for t in thresholds]
        t = thresholds[int(np.argmax(acc_t))]
        accs.append(((sim[f] > t) == issame[f]).mean())
    return float(np.mean(accs)), float(np.std(accs))


def _build_model(name: str, emb: int) -> nn.Module:
    if name == "tiny":
        return TinyNet(emb)
    from facerco.models import create_model

    return create_model(name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=int, default=200)
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--test-ids", type=int, default=100)
    parser.add_argument("--test-images", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--model", default="tiny", help="'tiny' (inline, 56 px) or a facerco.models name")
    parser.add_argument("--size", type=int, default=56, help="input side; the generator renders 112 and resizes")
    parser.add_argument("--emb", type=int, default=128)
    parser.add_argument("--difficulty", type=float, default=1.0, help="Nuisance().scaled(difficulty)")
    parser.add_argument("--spread", type=float, default=1.0, help="identity_spread of the generator")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    parser.add_argument("--out", default="bench_out/synthetic_difficulty.json")
    add_provenance_args(parser)
    args = parser.parse_args()
    recorder = benchmark_recorder(__file__, None, args)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(1)
    gen = SyntheticFaces(args.seed, Nuisance().scaled(args.difficulty), identity_spread=args.spread)
    t0 = time.perf_counter()
    x_tr, y_tr = _render_set(gen, range(args.ids), args.images, args.size)
    # Held-out identities come from a far-away index range of the same stream: never seen in training.
    x_te, y_te = _render_set(gen, range(100_000, 100_000 + args.test_ids), args.test_images, args.size)
    t_data = time.perf_counter() - t0
    model = _build_model(args.model, args.emb)
    emb_dim = getattr(getattr(model, "meta", None), "embedding_size", args.emb)
    head = CosFaceHead(emb_dim, args.ids)
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=5e-4)
    steps_per_epoch = math.ceil(len(x_tr) / args.batch)
    total = steps_per_epoch * args.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / steps_per_epoch) *
                                              0.5 * (1 + math.cos(math.pi * s / total)))
    rng = np.random.default_rng(args.seed)
    history = []
    t1 = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        order = rng.permutation(len(x_tr))
        losses, correct = [], 0
        for i in range(0, len(order), args.batch):
            idx = order[i:i + args.batch]
            x = _to_tensor(x_tr[idx])
            flip = torch.from_numpy(rng.random(len(idx)) < 0.5)
            x[flip] = torch.flip(x[flip], dims=[3])
            y = torch.from_numpy(y_tr[idx])
            logits = head(model(x), y)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            correct += int((logits.argmax(1) == y).sum())
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "train_acc": correct / len(x_tr)})
        print(f"epoch {epoch + 1}: loss {history[-1]['loss']:.3f} train acc {history[-1]['train_acc']:.3f} "
              f"({time.perf_counter() - t1:.0f}s)", flush=True)
    t_train = time.perf_counter() - t1
    emb = _embed(model, x_te)
    r1 = rank1(emb, y_te)
    vacc, vstd = verification(emb, y_te)
    emb_tr = _embed(model, x_tr[: args.ids * min(args.images, 5)])
    r1_train_ids = rank1(emb_tr, y_tr[: len(emb_tr)])
    result = {
        "model": args.model, "params": sum(p.numel() for p in model.parameters()), "size": args.size,
        "train": f"{args.ids}x{args.images}", "test": f"{args.test_ids}x{args.test_images} held-out identities",
        "epochs": args.epochs, "difficulty": args.difficulty, "spread": args.spread, "seed": args.seed,
        "rank1_heldout": r1, "verification_acc": vacc, "verification_std": vstd,
        "rank1_train_identities": r1_train_ids, "history": history,
        "seconds_data": t_data, "seconds_train": t_train,
    }
    print(f"{'model':10s} {'params':>8s} {'epochs':>6s} {'diff':>5s} {'rank-1':>7s} {'verif':>13s} {'train acc':>9s}")
    print(f"{args.model:10s} {result['params']:8d} {args.epochs:6d} {args.difficulty:5.2f} {r1 * 100:6.1f}% "
          f"{vacc * 100:6.2f}±{vstd * 100:4.2f}% {history[-1]['train_acc'] * 100:8.1f}%")
    write_json(args.out, {**result, "provenance": recorder.finish()})
    print(json.dumps({k: v for k, v in result.items() if k != "history"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
