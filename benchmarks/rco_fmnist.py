"""Closed-set RCO study on real Fashion-MNIST: do route strategies beat KD from the final teacher?

The pre-registered protocol (``benchmarks/README.md``, "RCO study protocol", written before the runs):

* **Data**: the Debian package ``dataset-fashion-mnist``. The 60,000 training images are split once by a seeded
  permutation (``--split-seed``) into 55,000 train / 5,000 validation; the 10,000 test images are read only to report
  each finished counted student (and the final teacher, once counted seeds ran) once. Every choice (``early``'s
  point, online GSS's probe decisions are on training images) reads validation or training data, never test; the
  pilot seed's runs and a run stopped by the gate compute no test number (issue 22, item 2).
* **Teacher**: ``cnn`` width 32 (114k parameters), 16 epochs, SGD lr 0.1 ×0.1 after epochs 8 and 12 (a step-decay
  route with three lr phases), one route point per epoch with its validation accuracy and lr.
* **Students**: ``cnn`` width 4 (4.2k parameters, 27× smaller), the teacher's full schedule (16 epochs, the same lr
  drops), Hinton KD ``(1-α)·CE + α·T²·KL`` with T=4, α=0.9, batch 256. Variants (all through the engine, the
  library's plans :func:`facerco.distill.planning.build_plan` (the strategy registry) and its
  :class:`~facerco.route.follow.RouteFollower`): ``scratch``, ``kd_final`` (the reference), the controls
  ``early`` and ``reverse``, and the primary route strategies ``rco_eeis_one``, ``rco_eeis_multi``, ``lockstep``,
  ``phase``, ``ensemble``, ``rco_gss_online``.
* **Pilot gate** (seed 0, validation only): teacher − scratch ≥ 4 points and kd_final − scratch ≥ +0.5 point, else
  the study stops and says so. Seed 0 is not counted.
* **Endpoint** test accuracy; paired analysis over the counted seeds in :mod:`_study` (one-sided paired t-test,
  Holm over the primary family, Wilcoxon as a check; success: adjusted p < 0.05, mean gain ≥ +0.2 point, ahead on
  ≥ 80 % of seeds, and ahead of ``early`` and ``reverse``). Also reported: the congruence T²·KL(final teacher ||
  student) on the test set (the paper's mechanism claim).

Anchor logits of every training image are computed once per route point (``OUT/teacher/logits``), so students never
run the teacher. Writes ``OUT/rco_fmnist.json`` (every run), ``.md`` and ``.png``.

    python benchmarks/rco_fmnist.py --jobs 2 --out bench_out/rco_fmnist               # pilot + 10 seeds, ~1 h
    python benchmarks/rco_fmnist.py --train-limit 2000 --teacher-epochs 4 --student-epochs 4 --seeds 0 1
"""

from __future__ import annotations

import argparse
import gzip
import math
import os
import platform
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _study  # noqa: E402

FMNIST = Path("/usr/share/datasets/fashion-mnist")
# the pre-registered variants (benchmarks/README.md, "RCO study protocol")
REFERENCE = "kd_final"
PRIMARY = ("rco_eeis_one", "rco_eeis_multi", "lockstep", "phase", "ensemble", "rco_gss_online")
CONTROLS = ("early", "reverse")
VARIANTS = ("scratch", REFERENCE, *CONTROLS, *PRIMARY)
# the distill section of each variant (facerco.config.DistillConfig keys, nested per strategy); scratch has none
DISTILL: dict[str, dict[str, Any]] = {
    "kd_final": {"strategy": "final"},
    "early": {"strategy": "early", "best": {"metric": "val_acc"}},
    "reverse": {"strategy": "reverse", "eeis": {"num_anchors": 4}},
    "rco_eeis_one": {"strategy": "eeis", "eeis": {"num_anchors": 4}, "schedule": "one_stage"},
    "rco_eeis_multi": {"strategy": "eeis", "eeis": {"num_anchors": 4}, "schedule": "multi_stage"},
    "lockstep": {"strategy": "lockstep"},
    "phase": {"strategy": "phase"},
    "ensemble": {"strategy": "ensemble"},
    "rco_gss_online": {"strategy": "gss_online", "gss": {"max_anchors": 4, "divergence": "kl"}},
}
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


class BasicBlock(nn.Module):
    """Two 3×3 convs with a (projected when the shape changes) shortcut: the ResNet teacher's unit."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                                  nn.ReLU(inplace=True), nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(cout))
        self.shortcut = (nn.Identity() if stride == 1 and cin == cout else
                         nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


def build_net(kind: str, width: int) -> nn.Module:
    """``cnn`` (28 -> 14 -> 7 -> 4 with width, 2w, 4w channels), ``resnet`` (a 3×3 stem at 28 px, then three
    strided basic blocks of 2w, 4w, 8w channels, global pooling; the stronger teacher that gives the closed-set study
    its gap), ``resnet_s2`` (the same with a stride-2 stem: 3× cheaper) or ``mlp`` (784-width-10)."""
    if kind == "cnn":
        return nn.Sequential(_conv(1, width, 5), _conv(width, 2 * width, 3), _conv(2 * width, 4 * width, 3),
                             nn.Flatten(), nn.Linear(4 * width * 16, 10))
    if kind in ("resnet", "resnet_s2"):
        stem_stride = 2 if kind == "resnet_s2" else 1
        return nn.Sequential(nn.Conv2d(1, width, 3, stem_stride, 1, bias=False), nn.BatchNorm2d(width),
                             nn.ReLU(inplace=True), BasicBlock(width, 2 * width, 2),
                             BasicBlock(2 * width, 4 * width, 2), BasicBlock(4 * width, 8 * width, 2),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8 * width, 10))
    if kind == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, width), nn.BatchNorm1d(width), nn.ReLU(inplace=True),
                             nn.Linear(width, 10))
    raise ValueError(f"unknown network kind {kind!r}; valid: cnn, resnet, resnet_s2, mlp")


def make_task(net: nn.Module, targets: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
              follower: Any = None, alpha: float = 0.9, temperature: float = 4.0) -> Any:
    """A :class:`~facerco.train.task.TrainTask`: CE alone, or ``(1-α)·CE + α·KD`` to the followed anchor's logits.

    ``targets(point, indices)`` returns a route point's logits of those training images (the engine passes
    ``keys = [index, flip]`` because the task sets ``wants_keys``). ``follower`` is the library's
    :class:`~facerco.route.follow.RouteFollower` (stage plan, online-GSS decisions, saved in ``last.pt``);
    an ensemble anchor averages its members' probabilities (:func:`~facerco.route.follow.ensemble_logits`).
    """
    from facerco.losses.distill import KDLoss
    from facerco.route.follow import ensemble_logits
    from facerco.route.strategies import ensemble_members
    from facerco.train.task import TrainTask

    class _Task(TrainTask):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = net
            self.wants_keys = targets is not None
            self.kd = KDLoss(temperature)

        def extra_state(self) -> dict[str, Any]:
            return follower.state() if follower is not None else {}

        def load_extra_state(self, state: dict[str, Any]) -> None:
            if follower is not None:
                follower.load_state(state)

        def training_step(self, images: torch.Tensor, labels: torch.Tensor, step: int,
                          keys: torch.Tensor | None = None, **kwargs: Any) -> dict[str, torch.Tensor]:
            logits = self.backbone(images)
            ce = F.cross_entropy(logits, labels)
            if targets is None:
                return {"loss": ce, "ce": ce.detach()}
            if keys is None:
                raise ValueError("KD targets need the dataset keys (task.wants_keys)")
            anchor = follower.anchor_at(step)
            target = ensemble_logits([targets(m, keys[:, 0]) for m in ensemble_members(anchor)], temperature)
            kd = self.kd(logits, target)
            return {"loss": (1 - alpha) * ce + alpha * kd, "ce": ce.detach(), "kd": kd.detach(),
                    "stage": torch.tensor(float(follower.plan.stage_at(step).index))}

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
# Data split, teacher and its route
# ----------------------------------------------------------------------------------------------------------------


def split_train_val(x: torch.Tensor, y: np.ndarray, val_size: int, seed: int
                    ) -> tuple[ArrayDataset, tuple[torch.Tensor, np.ndarray]]:
    """Seeded split of the training file into (train dataset, (validation images, labels))."""
    if not 0 < val_size < len(y):
        raise ValueError(f"--val-size {val_size} must be between 1 and {len(y) - 1}")
    order = np.random.default_rng(seed).permutation(len(y))
    val_idx, train_idx = np.sort(order[:val_size]), np.sort(order[val_size:])
    return ArrayDataset(x[train_idx], y[train_idx]), (x[val_idx], y[val_idx])


def accuracy(net: nn.Module, data: tuple[torch.Tensor, np.ndarray]) -> float:
    return float((predict(net, data[0]).argmax(1).numpy() == data[1]).mean())


def milestones_of(args: argparse.Namespace, epochs: float) -> list[float]:
    """The teacher's lr drops (epochs), scaled to a run of ``epochs`` epochs (students run the same schedule)."""
    drops = args.teacher_milestones or [0.5 * args.teacher_epochs, 0.75 * args.teacher_epochs]
    return [d * epochs / args.teacher_epochs for d in drops]


def train_teacher(args: argparse.Namespace, train: ArrayDataset, val: tuple[torch.Tensor, np.ndarray]
                  ) -> list[dict[str, Any]]:
    """Train (or resume, or reuse) the step-decay teacher; route.json: a point per epoch with lr and val acc."""
    from facerco.train.engine import Callback, Engine, seed_everything
    from facerco.utils.io import atomic_path, read_json, sha256_file, write_json

    run = Path(args.out) / "teacher"
    route_json = run / "route.json"
    key = {"epochs": args.teacher_epochs, "train_images": len(train), "val_images": len(val[1]),
           "split_seed": args.split_seed, "width": args.teacher_width, "batch": args.batch,
           **({"kind": args.teacher_kind} if args.teacher_kind != "cnn" else {})}
    if route_json.is_file():
        route = read_json(route_json)
        if route.get("complete") and all(route.get(k) == v for k, v in key.items()):
            return route["points"]
    milestones = milestones_of(args, args.teacher_epochs)
    cfg = base_config(run, args.teacher_epochs, args.batch, args.lr, 0, "step", milestones)
    seed_everything(0)
    net = build_net(args.teacher_kind, args.teacher_width)

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
            acc = accuracy(net, val)
            self.points = [p for p in self.points if p["name"] != name]
            self.points.append({"name": name, "epoch": epoch + 1, "step": engine.step, "lr": engine.lr,
                                "val": {"val_acc": acc}, "file": str(path.relative_to(run)),
                                "sha256": sha256_file(path)})
            write_json(route_json, {"points": self.points, "complete": False, "milestones": milestones, **key})
            print(f"teacher {name}: lr {engine.lr:.4f} val acc {100 * acc:.2f}%", flush=True)

    callback = RouteCallback()
    start = time.time()
    Engine(make_task(net), train, cfg, run_dir=run, callbacks=[callback]).fit()
    write_json(route_json, {"points": callback.points, "complete": True, "milestones": milestones, **key,
                            "seconds": time.time() - start})
    return callback.points


def load_point(args: argparse.Namespace, point: dict[str, Any]) -> nn.Module:
    """A route point's teacher network (sha256 checked)."""
    from safetensors.torch import load_file

    from facerco.utils.io import sha256_file

    path = Path(args.out) / "teacher" / point["file"]
    if sha256_file(path) != point["sha256"]:
        raise ValueError(f"{path}: sha256 differs from {Path(args.out) / 'teacher' / 'route.json'}")
    net = build_net(args.teacher_kind, args.teacher_width)
    net.load_state_dict(load_file(str(path)))
    return net.eval()


class AnchorLogits:
    """Logits of every training image under each route point, computed once and kept in ``OUT/teacher/logits``."""

    def __init__(self, args: argparse.Namespace, points: list[dict[str, Any]], images: torch.Tensor) -> None:
        self.args, self.points, self.images = args, {p["name"]: p for p in points}, images
        self.folder = Path(args.out) / "teacher" / "logits"
        self._memory: dict[str, torch.Tensor] = {}

    def all(self, name: str) -> torch.Tensor:
        if name not in self._memory:
            from facerco.utils.io import atomic_path

            path = self.folder / f"{name}_{len(self.images)}_{self.points[name]['sha256'][:12]}.npy"
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


def variant_plan(args: argparse.Namespace, variant: str, points: list[dict[str, Any]], total: int,
                 spe: int) -> tuple[Any, Any]:
    """(anchor plan, stage plan) of a variant through the library's single planning function."""
    from facerco.config import Config, DistillConfig, OptimConfig, config_from_dict
    from facerco.distill.planning import build_plan
    from facerco.route.anchors import route_points

    spec = DISTILL[variant]
    raw = {"final_share": args.final_share, "kd_temperature": args.temperature, **spec,
           "gss": {"delta": args.gss_delta, **spec.get("gss", {})}}
    d = config_from_dict(raw, f"variant {variant}", cls=DistillConfig)
    cfg = Config(kind="student", distill=d, optim=OptimConfig(lr=args.lr))
    return build_plan(cfg, route_points(points), spe, total)


def online_gss(args: argparse.Namespace, follower: Any, points: list[dict[str, Any]], logits: AnchorLogits,
               student: nn.Module, train: ArrayDataset, run: Path) -> Any:
    """The library's online-GSS callback with probe logits read from the anchor logits (no teacher runs)."""
    from facerco.route.anchors import ProbeOutput, probe_indices
    from facerco.route.follow import OnlineGSSCallback
    from facerco.utils.io import write_json

    idx = torch.from_numpy(probe_indices(len(train), args.probe_images, 0))
    probe_logits = {p["name"]: logits(p["name"], idx).double().numpy() for p in points}
    outputs = {name: ProbeOutput.from_arrays(z, z) for name, z in probe_logits.items()}
    probe = train.images[idx]

    def student_output() -> Any:
        z = predict(student, probe).double().numpy()
        return ProbeOutput.from_arrays(z, z)

    def on_decide(records: list[dict[str, Any]]) -> None:
        write_json(run / "plan.json", {"online_decisions": records, "resolved": follower.resolved_anchors()})

    return OnlineGSSCallback(follower, [p["name"] for p in points], outputs, student_output, args.gss_delta,
                             "relative", "kl", args.temperature, on_decide)


def run_student(args: argparse.Namespace, variant: str, seed: int, train: ArrayDataset,
                evals: dict[str, tuple[torch.Tensor, np.ndarray]], points: list[dict[str, Any]],
                logits: AnchorLogits, final_test: torch.Tensor | None) -> dict[str, Any]:
    """Train one (variant, seed) student through the engine, or reuse its summary.json; test accuracy and the
    congruence on test images only for a counted seed (the pilot's ``test_acc``/``congruence_final`` are None)."""
    from facerco.route.anchors import format_plan
    from facerco.route.follow import RouteFollower
    from facerco.route.plan import StagedSchedule, format_stages
    from facerco.train.engine import Engine, seed_everything
    from facerco.train.schedule import stage_schedule_factory
    from facerco.utils.io import atomic_write_text, read_json, write_json

    run = Path(args.out) / "runs" / variant / f"seed{seed}"
    summary_path = run / "summary.json"
    if summary_path.is_file():
        return read_json(summary_path)
    run.mkdir(parents=True, exist_ok=True)
    code = _study.code_stamp()  # the code this run is trained with (a rerun reuses summary.json and its stamp)
    cfg = base_config(run, args.student_epochs, args.batch, args.lr, seed, "step",
                      milestones_of(args, args.student_epochs))
    seed_everything(seed)
    student = build_net(args.student_kind, args.student_width)
    spe = len(train) // args.batch
    total = max(1, round(args.student_epochs * spe))
    targets, follower, schedule, callbacks = None, None, None, []
    if variant != "scratch":
        anchor_plan, plan = variant_plan(args, variant, points, total, spe)
        schedule = StagedSchedule(plan, stage_schedule_factory(cfg.schedule, spe, plan.total_steps, args.lr))
        follower, targets = RouteFollower(plan), logits
        if variant == "rco_gss_online":
            callbacks.append(online_gss(args, follower, points, logits, student, train, run))
        atomic_write_text(run / "plan.txt", format_plan(anchor_plan) + "\n" + format_stages(plan, spe) + "\n")
    task = make_task(student, targets, follower, args.alpha, args.temperature)
    start = time.time()
    result = Engine(task, train, cfg, run_dir=run, schedule=schedule, total_steps=total, callbacks=callbacks).fit()
    summary = {"variant": variant, "seed": seed, "anchors": follower.resolved_anchors() if follower else [],
               "steps": result.step, "val_acc": accuracy(student, evals["val"]), "test_acc": None,
               "congruence_final": None, "seconds": time.time() - start, "code": code}
    if seed != args.pilot_seed:  # test is read by counted runs only
        z_test = predict(student, evals["test"][0])
        summary["test_acc"] = float((z_test.argmax(1).numpy() == evals["test"][1]).mean())
        summary["congruence_final"] = kd_divergence(final_test, z_test, args.temperature)
    write_json(summary_path, summary)
    test = "" if summary["test_acc"] is None else f"  test {100 * summary['test_acc']:.2f}%"
    print(f"{variant} seed {seed}: val {100 * summary['val_acc']:.2f}%{test}  anchors {summary['anchors']}  "
          f"{summary['seconds']:.0f} s", flush=True)
    return summary


def prepare(args: argparse.Namespace) -> tuple[ArrayDataset, dict[str, tuple[torch.Tensor, np.ndarray]],
                                                 list[dict[str, Any]]]:
    """(the students' training set, validation and test, the teacher's route): the teacher trains on the whole
    training split; with ``--student-images N`` students see a fixed seeded subset of it (the data-limited regime,
    the same subset for every variant and seed, so runs stay paired)."""
    x, y = load_split(Path(args.data), "train", args.train_limit)
    train, val = split_train_val(x, y, args.val_size, args.split_seed)
    test = load_split(Path(args.data), "t10k", args.test_limit)
    points = train_teacher(args, train, val)
    return student_subset(train, args.student_images, args.split_seed), {"val": val, "test": test}, points


def student_subset(train: ArrayDataset, count: int, seed: int) -> ArrayDataset:
    """The first ``count`` images of a seeded permutation of ``train`` (in index order); all of it if 0."""
    if count <= 0 or count >= len(train):
        return train
    keep = np.sort(np.random.default_rng(seed + 1).permutation(len(train))[:count])
    return ArrayDataset(train.images[keep], train.labels[keep])


def run_group(args: argparse.Namespace, variants: Sequence[str], seeds: Sequence[int]) -> list[dict[str, Any]]:
    """Every (variant, seed), seed by seed (whole seeds first if the run is stopped early)."""
    train, evals, points = prepare(args)
    logits = AnchorLogits(args, points, train.images)
    counted = any(s != args.pilot_seed for s in seeds)
    final_test = predict(load_point(args, points[-1]), evals["test"][0]) if counted else None
    return [run_student(args, v, s, train, evals, points, logits, final_test) for s in seeds for v in variants]


# ----------------------------------------------------------------------------------------------------------------
# Gate, analysis, table and plot
# ----------------------------------------------------------------------------------------------------------------


def pilot_gate(args: argparse.Namespace, runs: Sequence[dict[str, Any]], points: list[dict[str, Any]]
               ) -> dict[str, Any]:
    """The pre-registered gate on the pilot seed, validation accuracy only."""
    pilot = {r["variant"]: r["val_acc"] for r in runs if r["seed"] == args.pilot_seed}
    teacher = points[-1]["val"]["val_acc"]
    gap = teacher - pilot.get("scratch", math.nan)
    kd_gain = pilot.get(REFERENCE, math.nan) - pilot.get("scratch", math.nan)
    passed = gap >= args.gate_gap / 100 and kd_gain >= args.gate_kd / 100
    return {"seed": args.pilot_seed, "teacher_val": teacher, "scratch_val": pilot.get("scratch"),
            "kd_final_val": pilot.get(REFERENCE), "teacher_minus_scratch": gap, "kd_minus_scratch": kd_gain,
            "required": {"teacher_minus_scratch": args.gate_gap / 100, "kd_minus_scratch": args.gate_kd / 100},
            "passed": bool(passed)}


def summarize(runs: Sequence[dict[str, Any]], variants: Sequence[str], counted: Sequence[int],
              endpoint: str = "test_acc") -> dict[str, Any]:
    """Rows (mean ± std per variant over the counted seeds) and the pre-registered analysis of ``endpoint`` (test
    accuracy; ``val_acc`` for a pilot-only table, which holds no test number: those entries are None)."""
    mine = [r for r in runs if r["seed"] in set(counted)]
    rows = []

    def stat(vr: Sequence[dict[str, Any]], key: str) -> tuple[float, float] | None:
        values = [r[key] for r in vr]
        return None if any(v is None for v in values) else _study.mean_std(values)

    for v in variants:
        vr = [r for r in mine if r["variant"] == v]
        rows.append({"variant": v, "n": len(vr), "anchors": vr[0]["anchors"] if vr else [],
                     **{k: stat(vr, k) for k in ("test_acc", "val_acc", "congruence_final", "seconds")}})
    values = {v: {r["seed"]: r[endpoint] for r in mine if r["variant"] == v} for v in variants}
    analysis = _study.analyse(values, REFERENCE, [v for v in PRIMARY if v in variants],
                              [v for v in CONTROLS if v in variants], min_gain=0.002)
    return {"endpoint": endpoint, "rows": rows, "analysis": analysis}


def _anchors_text(anchors: Sequence[str]) -> str:
    short = [a.replace("epoch_0", "ep").replace("epoch_", "ep") for a in anchors]
    if len(short) > 6:
        short = [*short[:2], "…", *short[-2:]]
    return " → ".join(short) or "–"


def _images_text(result: dict[str, Any]) -> str:
    n = result.get("student_images", result["train_images"])
    return f", on a fixed subset of {n} training images" if n != result["train_images"] else ""


def _pct(value: float | None) -> str:
    return "not read" if value is None else f"{100 * value:.2f} %"


def format_markdown(result: dict[str, Any]) -> str:
    route, gate, summary = result["route"], result["gate"], result["summary"]
    endpoint = summary.get("endpoint", "test_acc")
    comps = summary["analysis"]["comparisons"]
    lines = [f"Fashion-MNIST ({result['train_images']} train / {result['val_images']} validation / "
             f"{result['test_images']} test) · teacher {result.get('teacher_kind', 'cnn')} "
             f"({result['teacher_params']} params, "
             f"{result['teacher_epochs']} epochs, lr ×0.1 at {result['teacher_milestones']}, test "
             f"{_pct(result['teacher_test_acc'])}) · student {result['student_kind']} width "
             f"{result['student_width']} ({result['student_params']} params, {result['student_epochs']} epochs, same "
             f"lr drops{_images_text(result)}) · KD T={result['temperature']}, α={result['alpha']} · "
             + (f"counted seeds {result['counted_seeds']}" if result["counted_seeds"]
                else f"PILOT SEED {result['table_seeds']} ONLY (no counted seeds)"),
             "", "Teacher route (validation acc %): "
             + " · ".join(f"ep{p['epoch']} {100 * p['val']['val_acc']:.1f}" for p in route), "",
             f"Pilot gate (seed {gate['seed']}, validation): teacher − scratch "
             f"{100 * gate['teacher_minus_scratch']:+.2f} "
             f"(need ≥ {100 * gate['required']['teacher_minus_scratch']:.1f})"
             f", kd_final − scratch {100 * gate['kd_minus_scratch']:+.2f} (need ≥ "
             f"{100 * gate['required']['kd_minus_scratch']:.1f}): **{'passed' if gate['passed'] else 'FAILED'}**", "",
             f"| student | role | anchors | test acc % | Δ {'' if endpoint == 'test_acc' else 'val acc '}vs kd_final "
             "(95 % CI) | seeds ahead | val acc % | T²·KL to final | s / run |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in summary["rows"]:
        v = r["variant"]
        role = ("reference" if v == REFERENCE else "control" if v in CONTROLS else "primary" if v in PRIMARY
                else "baseline")
        c = comps.get(v)
        delta = (f"{100 * c['mean']:+.2f} ({100 * c['ci95'][0]:+.2f} … {100 * c['ci95'][1]:+.2f})"
                 if c and not math.isnan(c["mean"]) else "–")
        ahead = f"{c['wins']}/{c['n']}" if c else "–"
        test, kl = r["test_acc"], r["congruence_final"]
        lines.append(f"| {v} | {role} | {_anchors_text(r['anchors'])} | "
                     + ("–" if test is None else f"{100 * test[0]:.2f} ± {100 * test[1]:.2f}")
                     + f" | {delta} | {ahead} | {100 * r['val_acc'][0]:.2f} | "
                     + ("–" if kl is None else f"{kl[0]:.3f}") + f" | {r['seconds'][0]:.0f} |")
    lines += ["", "Verdicts by the pre-registered rule (primary family, Holm-adjusted one-sided paired t-test):"]
    lines += _study.verdict_lines(summary["analysis"])
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from facerco.utils.io import atomic_path

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(13, 4))
    route = result["route"]
    ax0.plot([p["epoch"] for p in route], [100 * p["val"]["val_acc"] for p in route], marker="o",
             label="teacher route (validation)")
    rows = {r["variant"]: r for r in result["summary"]["rows"]}
    if "scratch" in rows:
        ax0.axhline(100 * rows["scratch"]["val_acc"][0], ls="--", color="0.5", label="student alone (validation)")
    ax0.set_xlabel("teacher epoch")
    ax0.set_ylabel("accuracy %")
    ax0.legend(fontsize=7)
    ref = {r["seed"]: r["test_acc"] for r in result["runs"] if r["variant"] == REFERENCE}
    names = [v for v in result["variants"] if v not in ("scratch", REFERENCE)]
    for i, v in enumerate(names):
        diffs = [100 * (r["test_acc"] - ref[r["seed"]]) for r in result["runs"]
                 if r["variant"] == v and r["seed"] in ref and r["seed"] in set(result["counted_seeds"])]
        ax1.scatter([i] * len(diffs), diffs, s=10, color="C0" if v in PRIMARY else "C1")
        if diffs:
            ax1.errorbar([i], [np.mean(diffs)], yerr=[np.std(diffs, ddof=1) if len(diffs) > 1 else 0], fmt="_",
                         color="k", capsize=4)
    ax1.axhline(0, color="0.5", lw=0.8)
    ax1.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax1.set_ylabel("test acc − kd_final (points, paired by seed)")
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
    parser.add_argument("--train-limit", type=int, default=0, help="use the first N training-file images (0 = all)")
    parser.add_argument("--test-limit", type=int, default=0, help="use the first N test images (0 = all)")
    parser.add_argument("--val-size", type=int, default=5000, help="validation images split off the training file")
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--teacher-epochs", type=int, default=16)
    parser.add_argument("--teacher-milestones", type=float, nargs="*", default=None,
                        help="epochs where the teacher lr drops x0.1 (default: 50%% and 75%% of the epochs)")
    parser.add_argument("--teacher-kind", choices=["cnn", "resnet", "resnet_s2"], default="cnn",
                        help="cnn: three strided convs (114k at width 32); resnet: stem + three basic blocks")
    parser.add_argument("--teacher-width", type=int, default=32)
    parser.add_argument("--student-epochs", type=float, default=16.0)
    parser.add_argument("--student-images", type=int, default=0,
                        help="students train on a fixed seeded subset of N training images (0 = all; the teacher "
                             "always trains on all): the data-limited regime")
    parser.add_argument("--student-kind", choices=["mlp", "cnn"], default="cnn",
                        help="cnn: the teacher's three strided convs at width W; mlp: 784-W-10")
    parser.add_argument("--student-width", type=int, default=4)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--alpha", type=float, default=0.9)
    parser.add_argument("--final-share", type=float, default=0.25, help="share of the budget for the final teacher")
    parser.add_argument("--gss-delta", type=float, default=0.5, help="GSS threshold relative to KL(student, final)")
    parser.add_argument("--probe-images", type=int, default=512)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(11)),
                        help="student seeds; the --pilot-seed among them is the gate's and is not counted")
    parser.add_argument("--pilot-seed", type=int, default=0)
    parser.add_argument("--gate-gap", type=float, default=4.0, help="points: teacher − scratch needed (validation)")
    parser.add_argument("--gate-kd", type=float, default=0.5, help="points: kd_final − scratch needed (validation)")
    parser.add_argument("--ignore-gate", action="store_true", help="run the counted seeds even if the gate fails")
    _study.add_runner_args(parser, "bench_out/rco_fmnist")
    args = parser.parse_args(argv)
    _study.check_runner_args(parser, args, REFERENCE)
    return args


def _train_seeds(args: argparse.Namespace, argv: Sequence[str], seeds: Sequence[int]) -> None:
    groups = _study.split_groups(args.variants, args.jobs)
    if len(groups) > 1:
        _study.run_workers(Path(__file__).resolve(), [*argv, "--worker-seeds", *map(str, seeds)], groups,
                           Path(args.out), args.threads)
    else:
        run_group(args, args.variants, seeds)


def main(argv: Sequence[str] | None = None) -> int:
    from facerco.utils.io import read_json, write_json

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.worker_variants:
        run_group(args, args.worker_variants, args.worker_seeds or args.seeds)
        return 0
    recorder = _study.study_recorder(__file__, argv, args)
    start = time.time()
    train, evals, points = prepare(args)  # the teacher is trained here, once, before any student
    precompute = AnchorLogits(args, points, train.images)
    for point in points:  # once, here, so that parallel workers read the files instead of each computing them
        precompute.all(point["name"])
    pilot = [s for s in args.seeds if s == args.pilot_seed]
    counted = [s for s in args.seeds if s != args.pilot_seed]
    _train_seeds(args, argv, pilot)
    runs = run_group(args, args.variants, pilot)
    gate = pilot_gate(args, runs, points)
    print(f"pilot gate: teacher − scratch {100 * gate['teacher_minus_scratch']:+.2f}, kd_final − scratch "
          f"{100 * gate['kd_minus_scratch']:+.2f} points (validation): {'passed' if gate['passed'] else 'FAILED'}",
          flush=True)
    go = bool(counted) and (gate["passed"] or args.ignore_gate)
    if go:
        _train_seeds(args, argv, counted)
        runs = run_group(args, args.variants, [*pilot, *counted])
    counted_done = [s for s in counted if any(r["seed"] == s for r in runs)] if go else []
    teacher = load_point(args, points[-1])
    student = build_net(args.student_kind, args.student_width)
    route_info = read_json(out / "teacher" / "route.json")
    result = {
        "benchmark": "rco_fmnist", "seeds": list(args.seeds), "pilot_seed": args.pilot_seed,
        "counted_seeds": counted_done, "variants": list(args.variants), "gate": gate,
        "train_images": route_info.get("train_images", len(train)), "val_images": len(evals["val"][1]),
        "test_images": len(evals["test"][1]),
        "teacher_kind": args.teacher_kind, "teacher_width": args.teacher_width,
        "teacher_params": sum(p.numel() for p in teacher.parameters()), "teacher_epochs": args.teacher_epochs,
        "teacher_milestones": route_info.get("milestones"), "teacher_seconds": route_info.get("seconds"),
        "teacher_test_acc": accuracy(teacher, evals["test"]) if counted_done else None,
        "student_kind": args.student_kind, "student_width": args.student_width,
        "student_params": sum(p.numel() for p in student.parameters()), "student_epochs": args.student_epochs,
        "student_images": len(train),
        "temperature": args.temperature, "alpha": args.alpha, "final_share": args.final_share,
        "gss_delta": args.gss_delta, "batch": args.batch, "lr": args.lr,
        "route": points, "runs": runs,
        "summary": summarize(runs, args.variants, counted_done or pilot, "test_acc" if counted_done else "val_acc"),
        "table_seeds": counted_done or pilot,
        "seconds_total": time.time() - start,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "jobs": args.jobs, "threads_per_job": args.threads},
        "command": "python benchmarks/rco_fmnist.py " + " ".join(argv),
    }
    result["provenance"] = recorder.finish(run_codes=_study.run_codes(runs))
    write_json(out / "rco_fmnist.json", result)
    (out / "rco_fmnist.md").write_text(format_markdown(result), encoding="utf-8")
    plot(result, out / "rco_fmnist.png")
    print(format_markdown(result), end="")
    print(f"rco_fmnist: {time.time() - start:.0f} s; written {out}/rco_fmnist.json, .md, .png", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
