"""Closed-set RCO companion on real Fashion-MNIST: KD from the final teacher vs RCO one-stage / multi-stage / GSS.

The paper's KD setting (Hinton KD on logits, ``(1 - α)·CE + α·T²·KL``, T=4, α=0.9) with a step-decay teacher route
(EVIDENCE.md, second probe), run through facerco's pieces: :class:`facerco.train.engine.Engine` trains teacher and
students (a :class:`~facerco.train.task.TrainTask` for a classifier), the route is one checkpoint per teacher
epoch, anchors come from :mod:`facerco.route.anchors` (EEIS; GSS with the KL of softened logits on a 512-image
probe set), stages and lr restarts from :mod:`facerco.route.plan`, the loss from :class:`facerco.losses.distill
.KDLoss`. Anchor logits of every training image are computed once per anchor (``OUT/teacher/logits``), so students
never run the teacher.

Models (sized for 2 CPU cores): teacher ``cnn`` = three strided 3x3/5x5 conv-BN-ReLU layers (32-64-128) and a linear
head, 114k parameters; student ``mlp`` = 784-32-10 with BatchNorm, 25.5k parameters (``--student-kind cnn
--student-width 12``: the teacher's layout at width 12, 21k parameters). Data: the Debian package
``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``, 60,000 train / 10,000 test); no augmentation.

Students (same epochs, batch, SGD lr 0.1 momentum 0.9, cosine per iteration, 3 seeds):

=============  ========================================================================================
scratch        cross-entropy only
kd_final       KD from the converged teacher (one schedule)
rco_one        RCO, EEIS anchors (``--anchors`` evenly spaced route points ending with the final), one-stage
rco_multi      the same anchors, multi-stage (each stage restarts the cosine schedule)
rco_gss        RCO, GSS anchors (KL threshold ``--gss-delta`` × KL(student@init, final)), one-stage
=============  ========================================================================================

The final teacher gets ``--final-share`` of the student budget, the other anchors split the rest. Reported per
variant: test accuracy (mean ± std), paired difference to kd_final (same seed), seeds ahead, and the congruence
``T²·KL(final teacher || student)`` on the test set. Writes ``OUT/rco_fmnist.json``, ``.md`` and ``.png``.

    python benchmarks/rco_fmnist.py --jobs 2 --out bench_out/rco_fmnist             # ~30 min on 2 cores
    python benchmarks/rco_fmnist.py --train-limit 2000 --teacher-epochs 4 --student-epochs 2 --seeds 0   # minutes
"""

from __future__ import annotations

import argparse
import gzip
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

FMNIST = Path("/usr/share/datasets/fashion-mnist")
VARIANTS = ("scratch", "kd_final", "rco_one", "rco_multi", "rco_gss")
RCO_VARIANTS = ("rco_one", "rco_multi", "rco_gss")
REFERENCE = "kd_final"
MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST training-set pixel mean and std (x / 255)


# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip or plain): uint8 images (N, H, W) or labels (N,); the header is checked."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 8 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {raw[:4].hex()})")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    size = int(np.prod(dims))
    if len(raw) - offset != size:
        raise ValueError(f"{path}: header says {dims} ({size} bytes) but the file holds {len(raw) - offset}")
    return np.frombuffer(raw, np.uint8, offset=offset).reshape(dims)


def load_split(root: Path, split: str, limit: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """(images (N, 1, 28, 28) normalized float32, labels int64) of ``train`` or ``t10k``; first ``limit`` if > 0."""
    files = [root / f"{split}-images-idx3-ubyte.gz", root / f"{split}-labels-idx1-ubyte.gz"]
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"{f}: Fashion-MNIST file missing (apt install dataset-fashion-mnist, or --data)")
    images, labels = read_idx(files[0]), read_idx(files[1])
    if len(images) != len(labels):
        raise ValueError(f"{files[0]} has {len(images)} images but {files[1]} has {len(labels)} labels")
    if limit > 0:
        images, labels = images[:limit], labels[:limit]
    x = (torch.from_numpy(images.astype(np.float32)) / 255.0 - MEAN) / STD
    return x.unsqueeze(1).contiguous(), labels.astype(np.int64)


class ArrayDataset(Dataset):
    """In-memory ``(image, label)`` items with the ``labels`` / ``num_classes`` attributes the engine's jobs use."""

    def __init__(self, images: torch.Tensor, labels: np.ndarray) -> None:
        self.images, self.labels, self.num_classes = images, labels, 10

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])

    def get_batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch by one tensor indexing (the engine's batch path, :meth:`KeyedDataset.__getitems__`)."""
        return self.images[indices], torch.from_numpy(self.labels)[indices]


# ----------------------------------------------------------------------------------------------------------------
# Models and the classifier task
# ----------------------------------------------------------------------------------------------------------------


def _conv(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, 2, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def build_net(kind: str, width: int) -> nn.Module:
    """``cnn`` teacher (28 -> 14 -> 7 -> 4 with width, 2w, 4w channels) or ``mlp`` student (784-width-10)."""
    if kind == "cnn":
        return nn.Sequential(_conv(1, width, 5), _conv(width, 2 * width, 3), _conv(2 * width, 4 * width, 3),
                             nn.Flatten(), nn.Linear(4 * width * 16, 10))
    if kind == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, width), nn.BatchNorm1d(width), nn.ReLU(inplace=True),
                             nn.Linear(width, 10))
    raise ValueError(f"unknown network kind {kind!r}; valid: cnn, mlp")


def make_task(net: nn.Module, targets: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
              plan: Any = None, alpha: float = 0.9, temperature: float = 4.0) -> Any:
    """A :class:`~facerco.train.task.TrainTask`: CE alone, or ``(1-α)·CE + α·KD`` to the stage's anchor logits.

    ``targets(anchor, indices)`` returns the anchor's logits of those training images (the engine passes
    ``keys = [index, flip]`` because the task sets ``wants_keys``).
    """
    from facerco.losses.distill import KDLoss
    from facerco.train.task import TrainTask

    class _Task(TrainTask):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = net
            self.wants_keys = targets is not None
            self.kd = KDLoss(temperature)

        def training_step(self, images: torch.Tensor, labels: torch.Tensor, step: int,
                          keys: torch.Tensor | None = None, **kwargs: Any) -> dict[str, torch.Tensor]:
            logits = self.backbone(images)
            ce = F.cross_entropy(logits, labels)
            if targets is None:
                return {"loss": ce, "ce": ce.detach()}
            if keys is None:
                raise ValueError("KD targets need the dataset keys (task.wants_keys)")
            stage = plan.stage_at(step)
            kd = self.kd(logits, targets(stage.anchor, keys[:, 0]))
            return {"loss": (1 - alpha) * ce + alpha * kd, "ce": ce.detach(), "kd": kd.detach(),
                    "stage": torch.tensor(float(stage.index))}

    return _Task()


@torch.no_grad()
def predict(net: nn.Module, images: torch.Tensor, batch: int = 2000) -> torch.Tensor:
    """Logits of ``images`` in eval mode (the net's train/eval mode is restored)."""
    was = net.training
    net.eval()
    out = torch.cat([net(chunk) for chunk in torch.split(images, batch)])
    net.train(was)
    return out


def kd_divergence(teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float) -> float:
    """``T²·mean KL(softmax(t/T) || softmax(s/T))``, the KD loss value (congruence to the teacher)."""
    from facerco.losses.distill import KDLoss

    return float(KDLoss(temperature)(student_logits, teacher_logits))


def base_config(out: Path, epochs: float, batch: int, lr: float, seed: int, decay: str,
                milestones: Sequence[float] = ()) -> Any:
    """A facerco Config for the engine: SGD, per-iteration schedule, no flip, no workers, no tensorboard."""
    from facerco.config import Config, DataConfig, OptimConfig, ScheduleConfig, TrainConfig

    return Config(
        kind="teacher",
        data=DataConfig(num_workers=0, flip=False, image_size=28),
        optim=OptimConfig(name="sgd", lr=lr, momentum=0.9, weight_decay=5e-4),
        schedule=ScheduleConfig(warmup_epochs=0.0, decay=decay, milestones=list(milestones), gamma=0.1),
        train=TrainConfig(output=str(out), epochs=epochs, batch_size=batch, grad_clip=0.0, amp="off", seed=seed,
                          device="cpu", log_every=100, val_every_epochs=0.0, checkpoint_every_steps=0,
                          resume=True, tensorboard=False, progress=False),
    )


# ----------------------------------------------------------------------------------------------------------------
# Teacher and its route
# ----------------------------------------------------------------------------------------------------------------


def train_teacher(args: argparse.Namespace, train: ArrayDataset, test: tuple[torch.Tensor, np.ndarray]
                  ) -> list[dict[str, Any]]:
    """Train (or resume, or reuse) the step-decay teacher; route.json lists one point per epoch with test acc."""
    from facerco.train.engine import Callback, Engine, seed_everything
    from facerco.utils.io import atomic_path, read_json, sha256_file, write_json

    run = Path(args.out) / "teacher"
    route_json = run / "route.json"
    if route_json.is_file():
        route = read_json(route_json)
        if route.get("complete") and route.get("epochs") == args.teacher_epochs and \
                route.get("train_images") == len(train):
            return route["points"]
    milestones = args.teacher_milestones or [0.5 * args.teacher_epochs, 0.75 * args.teacher_epochs]
    cfg = base_config(run, args.teacher_epochs, args.batch, args.lr, 0, "step", milestones)
    seed_everything(0)
    net = build_net("cnn", args.teacher_width)
    x_test, y_test = test

    class RouteCallback(Callback):
        name = "fmnist_route"

        def __init__(self) -> None:
            self.points: list[dict[str, Any]] = read_json(route_json)["points"] if route_json.is_file() else []

        def on_epoch_end(self, engine: Engine, epoch: int) -> None:
            from safetensors.torch import save_file

            name = f"epoch_{epoch + 1:03d}"
            path = run / "route" / f"{name}.safetensors"
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(tmp))
            acc = float((predict(net, x_test).argmax(1).numpy() == y_test).mean())
            self.points = [p for p in self.points if p["name"] != name]
            self.points.append({"name": name, "epoch": epoch + 1, "step": engine.step, "lr": engine.lr,
                                "test_acc": acc, "file": str(path.relative_to(run)), "sha256": sha256_file(path)})
            write_json(route_json, {"points": self.points, "complete": False, "epochs": args.teacher_epochs,
                                    "milestones": milestones, "train_images": len(train)})
            print(f"teacher {name}: lr {engine.lr:.4f} test acc {100 * acc:.2f}%", flush=True)

    callback = RouteCallback()
    start = time.time()
    Engine(make_task(net), train, cfg, run_dir=run, callbacks=[callback]).fit()
    write_json(route_json, {"points": callback.points, "complete": True, "epochs": args.teacher_epochs,
                            "milestones": milestones, "train_images": len(train), "seconds": time.time() - start})
    return callback.points


def load_point(args: argparse.Namespace, point: dict[str, Any]) -> nn.Module:
    """A route point's teacher network (sha256 checked)."""
    from safetensors.torch import load_file

    from facerco.utils.io import sha256_file

    path = Path(args.out) / "teacher" / point["file"]
    if sha256_file(path) != point["sha256"]:
        raise ValueError(f"{path}: sha256 differs from {Path(args.out) / 'teacher' / 'route.json'}")
    net = build_net("cnn", args.teacher_width)
    net.load_state_dict(load_file(str(path)))
    return net.eval()


class AnchorLogits:
    """Logits of every training image under each anchor, computed once and kept in ``OUT/teacher/logits``."""

    def __init__(self, args: argparse.Namespace, points: list[dict[str, Any]], images: torch.Tensor) -> None:
        self.args, self.points, self.images = args, {p["name"]: p for p in points}, images
        self.folder = Path(args.out) / "teacher" / "logits"
        self._memory: dict[str, torch.Tensor] = {}

    def all(self, name: str) -> torch.Tensor:
        if name not in self._memory:
            from facerco.utils.io import atomic_path

            path = self.folder / f"{name}_{len(self.images)}.npy"
            if path.is_file():
                arr = np.load(path)
            else:
                arr = predict(load_point(self.args, self.points[name]), self.images).numpy()
                self.folder.mkdir(parents=True, exist_ok=True)
                with atomic_path(path) as tmp, open(tmp, "wb") as handle:
                    np.save(handle, arr)
            self._memory[name] = torch.from_numpy(arr)
        return self._memory[name]

    def __call__(self, name: str, indices: torch.Tensor) -> torch.Tensor:
        return self.all(name)[indices.cpu()]


# ----------------------------------------------------------------------------------------------------------------
# Students
# ----------------------------------------------------------------------------------------------------------------


def plan_for(args: argparse.Namespace, variant: str, points: list[dict[str, Any]], student: nn.Module,
             probe: torch.Tensor, logits: AnchorLogits, probe_idx: np.ndarray) -> Any:
    """The anchor plan of a variant (facerco.route.anchors), from the route and the freshly initialised student."""
    from facerco.route.anchors import PointInfo, ProbeOutput, select_eeis, select_final, select_gss

    infos = [PointInfo(p["name"], float(p["epoch"]), int(p["step"]), {"test_acc": p["test_acc"]},
                       i == len(points) - 1) for i, p in enumerate(points)]
    if variant == "kd_final":
        return select_final(infos)
    if variant in ("rco_one", "rco_multi"):
        return select_eeis(infos, num_anchors=args.anchors)
    if variant == "rco_gss":
        outputs = {}
        for p in points:
            z = logits.all(p["name"])[torch.from_numpy(probe_idx)].double().numpy()
            outputs[p["name"]] = ProbeOutput.from_arrays(z, z)
        s = predict(student, probe).double().numpy()
        return select_gss(infos, outputs, ProbeOutput.from_arrays(s, s), args.gss_delta, "relative", "kl",
                          args.temperature, args.anchors)
    raise ValueError(f"variant {variant!r} has no anchor plan")


def run_student(args: argparse.Namespace, variant: str, seed: int, train: ArrayDataset,
                test: tuple[torch.Tensor, np.ndarray], points: list[dict[str, Any]], logits: AnchorLogits,
                final_test: torch.Tensor) -> dict[str, Any]:
    """Train one (variant, seed) student through the engine, or reuse its summary.json."""
    from facerco.route.anchors import format_plan, probe_indices
    from facerco.route.plan import StagedSchedule, build_stage_plan, format_stages
    from facerco.train.engine import Engine, seed_everything
    from facerco.train.schedule import build_schedule
    from facerco.utils.io import read_json, write_json

    run = Path(args.out) / "runs" / variant / f"seed{seed}"
    summary_path = run / "summary.json"
    if summary_path.is_file():
        return read_json(summary_path)
    run.mkdir(parents=True, exist_ok=True)
    cfg = base_config(run, args.student_epochs, args.batch, args.lr, seed, "cosine")
    seed_everything(seed)
    student = build_net(args.student_kind, args.student_width)
    spe = len(train) // args.batch
    total = max(1, round(args.student_epochs * spe))
    targets, plan, anchors, schedule = None, None, [], None
    if variant != "scratch":
        probe_idx = probe_indices(len(train), args.probe_images, 0)
        anchor_plan = plan_for(args, variant, points, student, train.images[torch.from_numpy(probe_idx)], logits,
                               probe_idx)
        kind = "multi_stage" if variant == "rco_multi" else "one_stage"
        plan = build_stage_plan(anchor_plan.anchors, total, spe, kind, args.final_share, True)
        schedule = StagedSchedule(plan, lambda n: build_schedule(cfg.schedule, spe, n, args.lr))
        targets, anchors = logits, plan.anchors
        (run / "plan.txt").write_text(format_plan(anchor_plan) + "\n" + format_stages(plan, spe) + "\n",
                                      encoding="utf-8")
    task = make_task(student, targets, plan, args.alpha, args.temperature)
    start = time.time()
    result = Engine(task, train, cfg, run_dir=run, schedule=schedule, total_steps=total).fit()
    x_test, y_test = test
    z = predict(student, x_test)
    summary = {"variant": variant, "seed": seed, "anchors": anchors, "steps": result.step,
               "test_acc": float((z.argmax(1).numpy() == y_test).mean()),
               "congruence_final": kd_divergence(final_test, z, args.temperature),
               "seconds": time.time() - start}
    write_json(summary_path, summary)
    print(f"{variant} seed {seed}: test acc {100 * summary['test_acc']:.2f}%  anchors {anchors}  "
          f"{summary['seconds']:.0f} s", flush=True)
    return summary


def run_group(args: argparse.Namespace, variants: Sequence[str]) -> list[dict[str, Any]]:
    """Every (variant, seed) of ``variants``, seed by seed (whole seeds first if the run is stopped early)."""
    train, test, points = prepare(args)
    logits = AnchorLogits(args, points, train.images)
    final_test = predict(load_point(args, points[-1]), test[0])
    return [run_student(args, v, s, train, test, points, logits, final_test) for s in args.seeds for v in variants]


def prepare(args: argparse.Namespace) -> tuple[ArrayDataset, tuple[torch.Tensor, np.ndarray], list[dict[str, Any]]]:
    x, y = load_split(Path(args.data), "train", args.train_limit)
    test = load_split(Path(args.data), "t10k", args.test_limit)
    train = ArrayDataset(x, y)
    return train, test, train_teacher(args, train, test)


# ----------------------------------------------------------------------------------------------------------------
# Table and plot
# ----------------------------------------------------------------------------------------------------------------


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    vals = [float(v) for v in values if not math.isnan(float(v))]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def paired_test(diffs: Sequence[float]) -> tuple[float, float]:
    """(t, two-sided p) of the one-sample t-test of paired differences against 0; nan when it is undefined."""
    vals = [float(d) for d in diffs if not math.isnan(float(d))]
    if len(vals) < 2 or statistics.stdev(vals) == 0:
        return math.nan, math.nan
    from scipy import stats

    res = stats.ttest_1samp(vals, 0.0)
    return float(res.statistic), float(res.pvalue)


def summarize(runs: Sequence[dict[str, Any]], variants: Sequence[str]) -> list[dict[str, Any]]:
    ref = {r["seed"]: r["test_acc"] for r in runs if r["variant"] == REFERENCE}
    rows = []
    for v in variants:
        mine = [r for r in runs if r["variant"] == v]
        row = {"variant": v, "n": len(mine), "anchors": mine[0]["anchors"] if mine else [],
               "test_acc": mean_std([r["test_acc"] for r in mine]),
               "congruence_final": mean_std([r["congruence_final"] for r in mine]),
               "seconds": mean_std([r["seconds"] for r in mine])}
        if ref and v != REFERENCE:
            diffs = [r["test_acc"] - ref[r["seed"]] for r in mine if r["seed"] in ref]
            row["delta_vs_kd_final"] = mean_std(diffs)
            row["ahead"] = [int(sum(d > 0 for d in diffs)), len(diffs)]
            row["paired_t_p"] = paired_test(diffs)
        rows.append(row)
    return rows


def format_markdown(result: dict[str, Any]) -> str:
    route = result["route"]
    lines = [f"Fashion-MNIST ({result['train_images']} train / {result['test_images']} test) · teacher cnn "
             f"({result['teacher_params']} params, {result['teacher_epochs']} epochs, lr ×0.1 at "
             f"{result['teacher_milestones']}) · student {result.get('student_kind', 'mlp')} "
             f"({result['student_params']} params, "
             f"{result['student_epochs']} epochs) · KD T={result['temperature']}, α={result['alpha']} · "
             f"seeds {result['seeds']}", "",
             "Teacher route (test acc %): " + " · ".join(f"ep{p['epoch']} {100 * p['test_acc']:.1f}" for p in route),
             "", "| student | anchors | test acc % | Δ vs kd_final (paired) | seeds ahead | T²·KL to final | s / run |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        anchors = " → ".join(a.replace("epoch_0", "ep").replace("epoch_", "ep") for a in r["anchors"]) or "–"
        acc = f"{100 * r['test_acc'][0]:.2f} ± {100 * r['test_acc'][1]:.2f}"
        d = r.get("delta_vs_kd_final")
        delta = f"{100 * d[0]:+.2f} ± {100 * d[1]:.2f}" if d else "–"
        ahead = f"{r['ahead'][0]}/{r['ahead'][1]}" if "ahead" in r else "–"
        lines.append(f"| {r['variant']} | {anchors} | {acc} | {delta} | {ahead} | {r['congruence_final'][0]:.3f} | "
                     f"{r['seconds'][0]:.0f} |")
    lines += ["", "Verdict (beats/loses = paired t-test over seeds, two-sided p < 0.05):"]
    for r in result["rows"]:
        if r["variant"] in RCO_VARIANTS and "delta_vs_kd_final" in r:
            mean, _ = r["delta_vs_kd_final"]
            _, pval = r.get("paired_t_p", (math.nan, math.nan))
            clear = not math.isnan(pval) and pval < 0.05
            word = ("beats kd_final" if mean > 0 else "loses to kd_final") if clear else "no clear difference"
            ptxt = "" if math.isnan(pval) else f", p={pval:.2f}"
            lines.append(f"- {r['variant']}: {100 * mean:+.2f} points, {word}{ptxt} "
                         f"(ahead on {r['ahead'][0]}/{r['ahead'][1]} seeds)")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from facerco.utils.io import atomic_path

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12, 4))
    route = result["route"]
    ax0.plot([p["epoch"] for p in route], [100 * p["test_acc"] for p in route], marker="o", label="teacher route")
    scratch = next((r for r in result["rows"] if r["variant"] == "scratch"), None)
    if scratch is not None:
        ax0.axhline(100 * scratch["test_acc"][0], ls="--", color="0.5", label="student alone (scratch)")
    ax0.set_xlabel("teacher epoch")
    ax0.set_ylabel("test accuracy %")
    ax0.set_title("teacher route", fontsize=9)
    ax0.legend(fontsize=7)
    rows = result["rows"]
    x = np.arange(len(rows))
    means = [100 * r["test_acc"][0] for r in rows]
    stds = [100 * r["test_acc"][1] for r in rows]
    colors = ["0.6" if r["variant"] == "scratch" else ("C0" if r["variant"] in RCO_VARIANTS else "C1") for r in rows]
    ax1.bar(x, means, yerr=stds, color=colors, capsize=3, alpha=0.8)
    for i, r in enumerate(rows):
        vals = [100 * run["test_acc"] for run in result["runs"] if run["variant"] == r["variant"]]
        ax1.scatter([i] * len(vals), vals, color="k", s=8, zorder=3)
    finite = [m for m in means if not math.isnan(m)]
    if finite:
        ax1.set_ylim(min(finite) - 1.5, max(finite) + 1.0)
    ax1.set_xticks(x, [r["variant"] for r in rows], rotation=30, ha="right", fontsize=8)
    ax1.set_title(f"students ({result['student_epochs']} epochs, seeds {result['seeds']})", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(FMNIST), help="folder with the four *-ubyte.gz files")
    parser.add_argument("--train-limit", type=int, default=0, help="use the first N training images (0 = all)")
    parser.add_argument("--test-limit", type=int, default=0, help="use the first N test images (0 = all)")
    parser.add_argument("--teacher-epochs", type=int, default=16)
    parser.add_argument("--teacher-milestones", type=float, nargs="*", default=None,
                        help="epochs where the teacher lr drops x0.1 (default: 50%% and 75%% of the epochs)")
    parser.add_argument("--teacher-width", type=int, default=32)
    parser.add_argument("--student-epochs", type=float, default=10.0)
    parser.add_argument("--student-kind", choices=["mlp", "cnn"], default="mlp",
                        help="mlp: 784-W-10; cnn: the teacher's three strided convs at width W (W=12: 21k params)")
    parser.add_argument("--student-width", type=int, default=32)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--alpha", type=float, default=0.9)
    parser.add_argument("--anchors", type=int, default=4, help="EEIS anchors / GSS cap (final included)")
    parser.add_argument("--final-share", type=float, default=0.5, help="share of the budget for the final teacher")
    parser.add_argument("--gss-delta", type=float, default=0.5, help="GSS threshold relative to KL(init, final)")
    parser.add_argument("--probe-images", type=int, default=512)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=1, help="student processes (variants split between them)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--out", default="bench_out/rco_fmnist")
    parser.add_argument("--worker-variants", nargs="+", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if REFERENCE not in args.variants:
        parser.error(f"--variants must include {REFERENCE}")
    if args.jobs < 1 or args.threads < 1:
        parser.error("--jobs and --threads must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    from facerco.utils.io import write_json

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.worker_variants:
        run_group(args, args.worker_variants)
        return 0
    start = time.time()
    train, test, points = prepare(args)  # the teacher is trained here, once, before any student
    groups = [g for g in (list(args.variants[k::args.jobs]) for k in range(args.jobs)) if g]
    if len(groups) > 1:
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        procs = []
        for k, group in enumerate(groups):
            log = open(out / f"worker{k}.log", "a", encoding="utf-8")  # noqa: SIM115 (closed below)
            cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--worker-variants", *group]
            procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log))
        codes = [proc.wait() for proc, _ in procs]
        for _, log in procs:
            log.close()
        if any(codes):
            raise RuntimeError(f"rco_fmnist: a worker failed (exit codes {codes}); see {out}/worker<k>.log")
    runs = run_group(args, args.variants)  # reuses every finished summary.json
    teacher = build_net("cnn", args.teacher_width)
    student = build_net(args.student_kind, args.student_width)
    from facerco.utils.io import read_json

    route_info = read_json(out / "teacher" / "route.json")
    result = {
        "benchmark": "rco_fmnist", "seeds": list(args.seeds), "variants": list(args.variants),
        "train_images": len(train), "test_images": len(test[1]),
        "teacher_params": sum(p.numel() for p in teacher.parameters()), "teacher_epochs": args.teacher_epochs,
        "teacher_milestones": route_info.get("milestones"), "teacher_seconds": route_info.get("seconds"),
        "student_kind": args.student_kind, "student_width": args.student_width,
        "student_params": sum(p.numel() for p in student.parameters()), "student_epochs": args.student_epochs,
        "temperature": args.temperature, "alpha": args.alpha, "final_share": args.final_share,
        "gss_delta": args.gss_delta, "anchors": args.anchors, "batch": args.batch, "lr": args.lr,
        "route": points, "rows": summarize(runs, args.variants), "runs": runs,
        "seconds_total": time.time() - start,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "jobs": args.jobs, "threads_per_job": args.threads},
        "command": "python benchmarks/rco_fmnist.py " + " ".join(argv),
    }
    write_json(out / "rco_fmnist.json", result)
    (out / "rco_fmnist.md").write_text(format_markdown(result), encoding="utf-8")
    plot(result, out / "rco_fmnist.png")
    print(format_markdown(result), end="")
    print(f"rco_fmnist: {time.time() - start:.0f} s; written {out}/rco_fmnist.json, .md, .png", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
