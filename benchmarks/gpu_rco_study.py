"""The face RCO study on one GPU (issue 11, item 7): do route strategies beat mimicking the final teacher?

Run by ``benchmarks/gpu_rco_study.sh`` as four steps, each its own process under its own time limit (state lives in
``--work``, so a step that is rerun reuses what is finished):

1. ``data``: generated, aligned faces (:mod:`facerco.data.synthetic`, exact landmarks, JPEG round trip as
   ``facerco synth`` writes them), rendered at 112x112 on the CPU cores and resized to ``--image-size``. Disjoint
   identity ranges: train ``[0, T)``, validation ``[T, T+V)``, test ``[T+V, T+V+Te)``; singletons of the distractor
   stream ``[0, Vd)`` for validation and ``[Vd, Vd+Td)`` for test. Nothing is downloaded or carried.
2. ``teacher``: ``iresnet50`` with ArcFace (s=32, m=0.4) on the training identities, SGD lr 0.1 with a step-decay
   route (x0.1 at 50 % and 75 % of ``--epochs``), one route point per epoch recorded by
   :class:`~facerco.route.record.RouteRecorder` with its lr and its **validation** 1:N rank-1 (validation identities
   among the validation singletons). Then the anchor cache (:func:`facerco.route.cache.build_cache`) of every route
   point over the training set, and the final teacher's embeddings of the congruence probe set.
3. ``students``: ``mbf_0.8m`` trained by the library's job :func:`facerco.distill.job.run_distill` (the engine, the
   plans of :mod:`facerco.route.strategies`, ArcFace + 10 x L2 mimicking, targets read from the cache), the teacher's
   full schedule (same epochs, same lr drops), for ``scratch``, ``mimic_final`` (the reference), ``early`` (the
   control) and the route strategies ``--strategies`` (default ``phase`` and ``lockstep``), each variant's distill
   section taken from :data:`facerco.distill.compare.VARIANTS`. Seed 0 is the pilot: the **gate** (teacher - scratch >=
   4 points and mimic_final - scratch >= 0.5 point of validation rank-1, as in ``rco_fmnist.py``) decides whether the
   counted seeds run. Students run in ``--workers`` processes at once; ``--budget-s`` stops launching new seeds when
   the time left cannot fit one, and ``--job-limit-s`` stops a single run.
4. ``report``: the endpoint is **test** 1:N rank-1 (test identities as probes and gallery, all test singletons as
   distractors, flip-fused embeddings, :func:`facerco.eval.identification.evaluate_identification`), analysed over
   the counted seeds that finished for every variant by :func:`_study.analyse` (one-sided paired t-test, Holm over
   the route strategies, Wilcoxon; success = Holm p < 0.05, gain >= 0.2 point, ahead on >= 80 % of seeds, ahead of
   ``early``). Also: validation rank-1, test TAR@FAR=1e-3, and the congruence to the final teacher (the relational
   divergence of :func:`facerco.route.anchors.divergence` on 512 training probe images, as ``facerco compare``).
   Writes ``OUT/gpu_rco_study.json`` (every run, the route, the gate, the analysis) and ``OUT/gpu_rco_study.md``.

Sizing for <= 8 minutes on one H100/H200 (assumptions, not measurements: nothing here has run on a GPU yet):
iresnet50 trains at ~2,000 img/s at 112x112 with AMP on one card (the reference recipe's ~5,600 img/s on 8 GPUs,
scaled by the card; 1,500-2,500 assumed) and embeds at ~6,000 img/s; one mbf_0.8m student trains at ~8,000 img/s
alone and ~20,000 img/s summed over 8 concurrent processes (the engine synchronises every step, so one small
student leaves the card idle between kernels). With 12,800 training images (800 x 16) and 8 epochs: teacher ~60 s,
anchor cache (8 points x 12,800 x 2 views) ~35 s, 30 students (5 variants x seeds 0-5) x 102,400 samples ~155 s,
rendering ~10 s, start-up and evaluation ~40 s: ~300 s, leaving ~40 % for the assumptions to be wrong (the budget then
drops whole seeds, never parts of one). The dataset sits on the GPU as uint8 and batches are gathered there
(:meth:`DeviceFaces.get_batch`), so the CPU cores never feed pixels.

    python benchmarks/gpu_rco_study.py all --work /tmp/w --out /tmp/o                    # every step, one process
    bash benchmarks/gpu_rco_study.sh --dry-run                                           # tiny, on a CPU
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _provenance  # noqa: E402
import _study  # noqa: E402

REFERENCE = "mimic_final"
CONTROLS = ("early",)
BASELINES = ("scratch", REFERENCE, *CONTROLS)
DEFAULT_STRATEGIES = ("phase", "lockstep")
METRIC = "val/rank1"  # what the route, `early` and the gate read (validation identities only)
PROBE_IMAGES = 512  # congruence probe set: seeded training images, as `facerco compare`
RENDER_SIZE = 112


# ----------------------------------------------------------------------------------------------------------------
# Where things live
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Paths under the work folder (big files) and the output folder (the few files that come back)."""

    work: Path
    out: Path
    data: Path
    teacher: Path
    cache: Path
    runs: Path

    @classmethod
    def at(cls, work: str | Path, out: str | Path) -> Layout:
        w = Path(work)
        return cls(w, Path(out), w / "data", w / "teacher", w / "cache", w / "runs")

    def run(self, variant: str, seed: int) -> Path:
        return self.runs / variant / f"seed{seed}"


def variants_of(args: argparse.Namespace) -> list[str]:
    """scratch, the reference, the control, then the route strategies under test."""
    return [*BASELINES, *[s for s in args.strategies if s not in BASELINES]]


def milestones_of(args: argparse.Namespace) -> list[float]:
    """The teacher's lr drops (epochs); students run the same schedule."""
    return [0.5 * args.epochs, 0.75 * args.epochs]


# ----------------------------------------------------------------------------------------------------------------
# Step 1: generated faces
# ----------------------------------------------------------------------------------------------------------------


def data_plan(args: argparse.Namespace) -> dict[str, Any]:
    """Identity ranges of every split (regular and distractor streams never overlap between splits)."""
    t, v, te = args.train_ids, args.val_ids, args.test_ids
    return {
        "seed": args.data_seed, "image_size": args.image_size, "render_size": RENDER_SIZE, "jpeg_round_trip": True,
        "splits": {
            "train": {"first": 0, "count": t, "per_id": args.images_per_id, "distractor": False},
            "val": {"first": t, "count": v, "per_id": args.eval_images_per_id, "distractor": False},
            "val_distractors": {"first": 0, "count": args.val_distractors, "per_id": 1, "distractor": True},
            "test": {"first": t + v, "count": te, "per_id": args.eval_images_per_id, "distractor": False},
            "test_distractors": {"first": args.val_distractors, "count": args.test_distractors, "per_id": 1,
                                 "distractor": True},
        }}


def render_block(seed: int, first: int, count: int, per_id: int, distractor: bool, size: int) -> np.ndarray:
    """uint8 (count * per_id, size, size, 3) RGB: identities ``first..first+count-1``, images ``0..per_id-1``."""
    import cv2

    from facerco.data.synthetic import SyntheticFaces, encode_jpeg

    gen = SyntheticFaces(seed, size=RENDER_SIZE)
    out = np.empty((count * per_id, size, size, 3), np.uint8)
    n = 0
    for ident in range(first, first + count):
        for k in range(per_id):
            sample = gen.render(ident, k, distractor)
            raw = np.frombuffer(encode_jpeg(sample.image, sample.params.jpeg_quality), np.uint8)
            img = cv2.cvtColor(cv2.imdecode(raw, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            if size != RENDER_SIZE:
                img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
            out[n] = img
            n += 1
    return out


def _blocks(first: int, count: int, parts: int) -> Iterator[tuple[int, int]]:
    step = max(1, math.ceil(count / max(1, parts)))
    for start in range(first, first + count, step):
        yield start, min(step, first + count - start)


def _render_split(pool: ProcessPoolExecutor | None, args: argparse.Namespace, split: dict[str, Any],
                  parts: int) -> np.ndarray:
    """One split's images, rendered in ``parts`` identity blocks (in this process when there is no pool)."""
    blocks = [(args.data_seed, a, c, split["per_id"], split["distractor"], args.image_size)
              for a, c in _blocks(split["first"], split["count"], parts)]
    if pool is None:
        return np.concatenate([render_block(*b) for b in blocks])
    return np.concatenate([f.result() for f in [pool.submit(render_block, *b) for b in blocks]])


def generate_data(args: argparse.Namespace, layout: Layout) -> dict[str, Any]:
    """Render every split over ``--render-workers`` processes (reused when the plan is unchanged)."""
    import multiprocessing as mp

    from facerco.utils.io import atomic_path, read_json, write_json

    plan = data_plan(args)
    manifest = layout.data / "manifest.json"
    if manifest.is_file() and read_json(manifest).get("plan") == plan:
        print(f"data: reusing {layout.data}", flush=True)
        return read_json(manifest)
    layout.data.mkdir(parents=True, exist_ok=True)
    start = time.time()
    counts = {}
    workers = max(1, args.render_workers)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) if workers > 1 else None
    try:
        for name, split in plan["splits"].items():
            images = _render_split(pool, args, split, 4 * workers)
            labels = np.repeat(np.arange(split["first"], split["first"] + split["count"]), split["per_id"])
            for suffix, arr in (("images", images), ("labels", labels.astype(np.int64))):
                with atomic_path(layout.data / f"{name}_{suffix}.npy") as tmp, open(tmp, "wb") as handle:
                    np.save(handle, arr)
            counts[name] = int(len(images))
    finally:
        if pool is not None:
            pool.shutdown()
    record = {"plan": plan, "counts": counts, "seconds": time.time() - start}
    write_json(manifest, record)
    print(f"data: {counts} in {record['seconds']:.1f} s -> {layout.data}", flush=True)
    return record


class FaceArray(Dataset):
    """Aligned faces held as uint8 (N, H, W, 3); items ``(normalized CHW float32, label)`` built on the CPU."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        if len(images) != len(labels):
            raise ValueError(f"FaceArray: {len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = np.asarray(labels, np.int64)
        self.num_classes = int(self.labels.max()) + 1 if len(self.labels) else 0

    @classmethod
    def load(cls, layout: Layout, split: str) -> FaceArray:
        """A split written by the data step (images memory-mapped)."""
        path = layout.data / f"{split}_images.npy"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; run the data step first")
        return cls(np.load(path, mmap_mode="r"), np.load(layout.data / f"{split}_labels.npy"))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from facerco.data.transforms import normalize

        return normalize(np.asarray(self.images[i])), int(self.labels[i])


class DeviceBatch(torch.Tensor):
    """A batch gathered on the GPU. The engine's DataLoader pins every batch (``pin_memory`` on CUDA), which a CUDA
    tensor refuses; this type leaves itself as it is there, and ``.to()`` hands the engine a plain tensor."""

    def pin_memory(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self

    def to(self, *args: Any, **kwargs: Any) -> torch.Tensor:  # type: ignore[override]
        return self.as_subclass(torch.Tensor).to(*args, **kwargs)


class DeviceFaces(FaceArray):
    """The training set with a uint8 copy on ``device``: batches are gathered and normalized there.

    ``get_batch`` is the engine's batch path (:meth:`facerco.train.sampler.KeyedDataset.__getitems__`) and
    ``__getitems__`` the anchor cache's; single items (cache fingerprints, GSS probes) come from the CPU copy with the
    same values.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, device: torch.device) -> None:
        super().__init__(images, labels)
        self.device = device
        self.pixels = torch.from_numpy(np.array(images)).to(device)  # a writable copy of the memory map
        self.targets = torch.from_numpy(self.labels)

    @classmethod
    def on(cls, layout: Layout, split: str, device: torch.device) -> DeviceFaces:
        host = FaceArray.load(layout, split)
        return cls(host.images, host.labels, device)

    def _gather(self, indices: torch.Tensor) -> torch.Tensor:
        from facerco.data.transforms import normalize_batch

        return normalize_batch(self.pixels[indices.to(self.device)])

    def get_batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._gather(indices).as_subclass(DeviceBatch), self.targets[indices.cpu()]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, int]]:
        idx = torch.as_tensor(list(indices), dtype=torch.int64)
        return list(zip(self._gather(idx).unbind(0), self.labels[idx.numpy()].tolist(), strict=True))


# ----------------------------------------------------------------------------------------------------------------
# Evaluation: 1:N rank-1 of held-out identities among singletons
# ----------------------------------------------------------------------------------------------------------------


class RankOne:
    """Validation (choices) or test (endpoint): probes/gallery of one split's identities among its distractors."""

    def __init__(self, layout: Layout, split: str, device: torch.device, precision: Any) -> None:
        self.split = split
        self.probes = FaceArray.load(layout, split)
        self.distractors = FaceArray.load(layout, f"{split}_distractors")
        self.device, self.precision = device, precision

    def embed(self, model: torch.nn.Module, source: Dataset) -> np.ndarray:
        """Flip-fused, L2-normalized embeddings through the library's one extraction path, under AMP."""
        from facerco.eval.features import extract_embeddings

        with self.precision.autocast():
            return extract_embeddings(model, source, batch_size=512, device=str(self.device), flip=True,
                                      progress=False).emb

    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        from facerco.eval.identification import evaluate_identification

        probes, distractors = self.embed(model, self.probes), self.embed(model, self.distractors)
        res = evaluate_identification(probes, self.probes.labels, distractors, sizes=[len(distractors)], ranks=5,
                                      fars=[1e-3], backend="torch", device=str(self.device), progress=False)
        size = res["sizes"][-1]
        return {f"{self.split}/rank1": float(size["rank1"]), f"{self.split}/tar_far1e-3":
                float(size["tar_at_far"]["0.001"])}


@torch.no_grad()
def embed_plain(model: torch.nn.Module, images: torch.Tensor, device: torch.device, precision: Any) -> np.ndarray:
    """Embeddings (no flip) of a CPU image tensor, in eval mode; the congruence probe path for every model."""
    was = model.training
    model.eval()
    with precision.autocast():
        out = torch.cat([model(chunk.to(device)).float().cpu() for chunk in torch.split(images, 256)])
    model.train(was)
    return out.double().numpy()


def congruence(student: np.ndarray, teacher: np.ndarray) -> float:
    """Relational divergence of probe cosine-similarity matrices (dimension-free), as ``facerco compare``."""
    from facerco.route.anchors import ProbeOutput, divergence

    return float(divergence(ProbeOutput.from_arrays(student), ProbeOutput.from_arrays(teacher), "relational")[0])


# ----------------------------------------------------------------------------------------------------------------
# Configs (typed facerco Config, built from one mapping plus the compare variants' overrides)
# ----------------------------------------------------------------------------------------------------------------


def base_mapping(args: argparse.Namespace, layout: Layout, kind: str, output: Path, seed: int) -> dict[str, Any]:
    """Teacher and students share data, loss, optimizer, schedule and precision; only model and job differ."""
    return {
        "kind": kind,
        "data": {"format": "folder", "train": str(layout.data / "train_images.npy"), "num_workers": 0,
                 "image_size": args.image_size, "flip": True},
        "model": {"name": args.teacher if kind == "teacher" else args.student},
        "loss": {"name": "arcface", "s": 32.0, "m2": 0.4},
        "optim": {"name": "sgd", "lr": args.lr, "momentum": 0.9, "weight_decay": 5e-4},
        "schedule": {"warmup_epochs": args.warmup_epochs, "decay": "step", "milestones": milestones_of(args),
                     "gamma": 0.1},
        "train": {"output": str(output), "epochs": float(args.epochs), "batch_size": args.batch, "grad_clip": 5.0,
                  "amp": args.amp, "seed": seed, "deterministic": args.device == "cpu", "device": args.device,
                  "log_every": 20, "val_every_epochs": 1.0 if kind == "teacher" else 0.0,
                  "checkpoint_every_steps": 0, "resume": True, "tensorboard": False, "progress": False},
        "route": {"every_epochs": 1.0, "keep": "all", "save_classifier": True},
    }


def teacher_config(args: argparse.Namespace, layout: Layout) -> Any:
    from facerco.config import config_from_dict

    return config_from_dict(base_mapping(args, layout, "teacher", layout.teacher, 0), "gpu_rco_study teacher")


def student_config(args: argparse.Namespace, layout: Layout, variant: str, seed: int) -> Any:
    """The base student plus the variant's distill overrides from :data:`facerco.distill.compare.VARIANTS`."""
    from facerco.config import apply_overrides, config_from_dict
    from facerco.distill.compare import VARIANTS

    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
    data = base_mapping(args, layout, "student", layout.run(variant, seed), seed)
    data["distill"] = {"teacher_run": str(layout.teacher), "cache": str(layout.cache), "strategy": "final",
                       "mimic_weight": 10.0, "mimic_type": "l2", "kd_weight": 0.0, "arcface_weight": 1.0,
                       "best_metric": METRIC, "final_share": 0.25, "num_anchors": 4,
                       "gss_probe_images": PROBE_IMAGES}
    return config_from_dict(apply_overrides(data, list(VARIANTS[variant][1])), f"gpu_rco_study {variant}")


# ----------------------------------------------------------------------------------------------------------------
# Step 2: teacher, route, anchor cache, probe embeddings of the final teacher
# ----------------------------------------------------------------------------------------------------------------


def setup_device(args: argparse.Namespace) -> tuple[torch.device, Any]:
    """The device and its AMP settings; on CUDA, cuDNN autotuning (fixed shapes) and TF32 outside autocast."""
    from facerco.train.precision import resolve_precision

    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda but torch sees no CUDA GPU (use the --dry-run sizes on a CPU)")
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device, resolve_precision(args.amp, device)


def teacher_complete(run: Path) -> bool:
    """The route is recorded up to its last step."""
    from facerco.utils.io import read_json

    path = run / "route.json"
    if not path.is_file():
        return False
    route = read_json(path)
    points = {p["name"]: p for p in route.get("points", [])}
    final = route.get("final")
    return bool(final) and final in points and int(points[final]["step"]) == int(route.get("total_steps", -1))


def train_teacher(args: argparse.Namespace, layout: Layout, train: DeviceFaces, device: torch.device,
                  precision: Any) -> dict[str, Any]:
    """The teacher job's pieces (task, margin head, route recorder, engine) on the GPU-resident training set."""
    from facerco.config import dump_config
    from facerco.route.record import RouteRecorder
    from facerco.train.engine import Engine, check_resume_config, seed_everything
    from facerco.train.teacher import TeacherTask, build_backbone, build_margin_head
    from facerco.utils.io import atomic_write_text

    cfg = teacher_config(args, layout)
    run = layout.teacher
    check_resume_config(run, cfg)
    run.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run / "config.yaml", dump_config(cfg))
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    backbone = build_backbone(cfg)
    meta = backbone.meta  # type: ignore[union-attr]
    task = TeacherTask(backbone, build_margin_head(cfg, int(meta.embedding_size), train.num_classes))
    recorder = RouteRecorder(run, cfg.route, classifier_fn=task.full_classifier, metadata={"job": "teacher"},
                             info={"arch": meta.name, "arch_kwargs": dict(meta.arch_kwargs),
                                   "embedding_size": int(meta.embedding_size), "num_classes": train.num_classes,
                                   "dataset": cfg.data.train})
    validator = RankOne(layout, "val", device, precision)
    engine = Engine(task, train, cfg, run_dir=run, callbacks=[recorder], validator=validator)
    params = sum(p.numel() for p in backbone.parameters())
    print(f"teacher: {meta.name} ({params / 1e6:.2f}M params), {len(train)} images / {train.num_classes} "
          f"identities, {engine.total_steps} steps of {cfg.train.batch_size}, {precision.describe()}", flush=True)
    result = engine.fit()
    trained = (result.step - result.resumed_from) * engine.global_batch
    return {"model": meta.name, "params": params, "seconds": result.seconds, "steps": result.step,
            "samples_per_s": trained / max(result.seconds, 1e-9), "train_samples_per_s": logged_rate(run)}


def logged_rate(run: Path) -> float:
    """Median training samples/s the engine logged (windows of ``log_every`` steps): the card's training speed,
    where ``samples_per_s`` (the whole fit's wall clock) also pays for validation and checkpoints."""
    import json

    path = run / "log.jsonl"
    rates = [rec["samples_per_s"] for rec in map(json.loads, path.read_text(encoding="utf-8").splitlines())
             if rec.get("event") == "train" and "samples_per_s" in rec] if path.is_file() else []
    return float(np.median(rates)) if rates else math.nan


def build_anchor_cache(layout: Layout, train: DeviceFaces, device: torch.device, precision: Any) -> float:
    """Every route point's embeddings (plain and flipped) of every training image, under AMP; returns seconds."""
    from facerco.route.cache import build_cache
    from facerco.route.io import load_route

    route = load_route(layout.teacher)

    def loader(name: str) -> Callable[[], torch.nn.Module]:
        return lambda: route.load_point(name, verify=True).model

    anchors = {p.name: (loader(p.name), p.sha256) for p in route.points}
    start = time.time()
    with precision.autocast():
        build_cache(layout.cache, anchors, train, batch_size=512, device=device, num_workers=0,
                    meta={"teacher_run": str(layout.teacher), "dataset": str(layout.data / "train_images.npy"),
                          "image_size": train.images.shape[1]}, progress=False)
    return time.time() - start


def nonfinite_rows(cache: Path) -> dict[str, int]:
    """Rows per anchor whose cached fp16 embedding overflowed (|x| > 65504 becomes inf, seen with 16-step teachers on
    a CPU): a student following that anchor would stop on a NaN loss, so the record says which anchors they are."""
    from facerco.utils.io import read_json

    counts = {}
    for name, entry in read_json(cache / "manifest.json")["anchors"].items():
        bad = sum(int((~np.isfinite(np.load(cache / s["file"], mmap_mode="r"))).any(axis=(1, 2)).sum())
                  for s in entry["shards"])
        if bad:
            counts[name] = bad
            print(f"WARNING anchor cache {name}: {bad} rows are not finite (fp16 overflow)", flush=True)
    return counts


def probe_set(train: FaceArray) -> torch.Tensor:
    """The congruence probe images: the GSS probe set of the library (seeded, no flip)."""
    from facerco.distill.planning import probe_images

    return probe_images(train, PROBE_IMAGES, 0)


def teacher_step(args: argparse.Namespace, layout: Layout) -> dict[str, Any]:
    """Train (or reuse) the teacher, cache its route, embed the probe set with the final point."""
    from facerco.route.anchors import route_points
    from facerco.route.io import load_route
    from facerco.utils.io import atomic_path, read_json, write_json

    device, precision = setup_device(args)
    train = DeviceFaces.on(layout, "train", device)
    summary_path = layout.work / "teacher.json"
    if teacher_complete(layout.teacher) and summary_path.is_file():
        info = read_json(summary_path)
        print(f"teacher: reusing {layout.teacher}", flush=True)
    else:
        info = train_teacher(args, layout, train, device, precision)
        info["device_name"] = (torch.cuda.get_device_name(device) if device.type == "cuda"
                               else f"cpu ({platform.machine()}, {os.cpu_count()} cores)")
        write_json(summary_path, info)  # a rerun after a failed cache does not train again
    info["cache_seconds"] = build_anchor_cache(layout, train, device, precision)
    info["cache_nonfinite_rows"] = nonfinite_rows(layout.cache)
    route = load_route(layout.teacher)
    final = route.load_point(route_points(route)[-1].name, verify=True).model.to(device)
    with atomic_path(layout.work / "teacher_probe.npy") as tmp, open(tmp, "wb") as handle:
        np.save(handle, embed_plain(final, probe_set(train), device, precision))
    write_json(summary_path, info)
    print(f"teacher: {info['train_samples_per_s']:.0f} img/s training ({info['samples_per_s']:.0f} with validation "
          f"and checkpoints), anchor cache {info['cache_seconds']:.1f} s", flush=True)
    return info


# ----------------------------------------------------------------------------------------------------------------
# Step 3: students (worker processes, pilot gate, seeds within the budget)
# ----------------------------------------------------------------------------------------------------------------


class _Worker:
    """What a student worker process holds once: the GPU training set, the evaluators, the probe set."""

    def __init__(self, args: argparse.Namespace, layout: Layout, deadline: float) -> None:
        self.args, self.layout, self.deadline = args, layout, deadline
        self.device, self.precision = setup_device(args)
        self.train = DeviceFaces.on(layout, "train", self.device)
        self.val = RankOne(layout, "val", self.device, self.precision)
        self.test = RankOne(layout, "test", self.device, self.precision)
        self.probe = probe_set(self.train)
        self.teacher_probe = np.load(layout.work / "teacher_probe.npy")


_WORKER: _Worker | None = None


def init_worker(args: argparse.Namespace, layout: Layout, deadline: float, threads: int) -> None:
    """Process-pool initializer: load the data once per process."""
    global _WORKER
    torch.set_num_threads(threads)
    _WORKER = _Worker(args, layout, deadline)


def _alarm(signum: int, frame: Any) -> None:
    raise TimeoutError("the run exceeded --job-limit-s or ran past the study's deadline")


def run_job(variant: str, seed: int) -> dict[str, Any]:
    """Train one (variant, seed) student and score it; a finished run's result.json is reused."""
    from facerco.distill.job import run_distill
    from facerco.models.checkpoint import load_model
    from facerco.utils.io import read_json, write_json

    w = _WORKER
    if w is None:
        raise RuntimeError("run_job outside a worker process (init_worker was not called)")
    run = w.layout.run(variant, seed)
    result_path = run / "result.json"
    if result_path.is_file():
        return read_json(result_path)
    base = {"variant": variant, "seed": seed, "pid": os.getpid(), "code": _study.code_stamp()}
    if time.time() > w.deadline:
        return {**base, "error": "not started: the study's time budget ran out"}
    start = time.time()
    previous = signal.signal(signal.SIGALRM, _alarm)
    # past the study's deadline a run cannot count: stop it soon after, so the step still records what finished
    signal.alarm(max(1, int(min(w.args.job_limit_s, w.deadline + 15 - start))))
    try:
        res = run_distill(student_config(w.args, w.layout, variant, seed), dataset=w.train, validator=w.val)
        student = load_model(res.student_path, device=w.device).model  # type: ignore[arg-type]
        test = w.test(student) if seed != w.args.pilot_seed else {}  # test is read by counted runs only
        summary = read_json(run / "summary.json")
    except Exception as exc:  # one failed run must not stop the others: it is recorded and its seed left out
        return {**base, "error": f"{type(exc).__name__}: {exc}", "seconds": time.time() - start}
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    teacher_free = variant == "scratch"
    result = {**base, "complete": res.step == res.stage_plan.total_steps,
              "anchors": [] if teacher_free else list(summary.get("anchors", [])),
              "steps": res.step, "val_rank1": res.val.get(METRIC, math.nan),
              "val_tar_far1e-3": res.val.get("val/tar_far1e-3", math.nan),
              "test_rank1": test.get("test/rank1"), "test_tar_far1e-3": test.get("test/tar_far1e-3"),
              "congruence_final": congruence(embed_plain(student, w.probe, w.device, w.precision), w.teacher_probe),
              "train_seconds": res.seconds, "seconds": time.time() - start,
              "samples_per_s": res.step * w.args.batch / max(res.seconds, 1e-9)}
    write_json(result_path, result)
    shown = "" if result["test_rank1"] is None else f"  test {100 * result['test_rank1']:.2f}"
    print(f"{variant} seed {seed}: val {100 * result['val_rank1']:.2f}{shown}  "
          f"anchors {result['anchors']}  {result['seconds']:.0f} s", flush=True)
    return result


def seed_fits(now: float, deadline: float, inflight: int, new_jobs: int, workers: int, job_seconds: float,
              margin: float = 1.15) -> bool:
    """Whether a seed's ``new_jobs`` launched now would finish by ``deadline``.

    The pool runs ``workers`` jobs at a time; the seed's last job ends after the jobs already queued, so it needs
    ``ceil((inflight + new_jobs) / workers)`` job durations (``margin`` for contention growing with the queue).
    """
    waves = math.ceil((inflight + new_jobs) / max(1, workers))
    return now + waves * job_seconds * margin <= deadline


def complete_seeds(results: Sequence[dict[str, Any]], variants: Sequence[str], seeds: Sequence[int]) -> list[int]:
    """Seeds whose run finished without error for every variant (a table is built from whole seeds only)."""
    done = {(r["variant"], r["seed"]) for r in results if r.get("complete") and "error" not in r}
    return [s for s in seeds if all((v, s) in done for v in variants)]


def pilot_gate(results: Sequence[dict[str, Any]], teacher_val: float, args: argparse.Namespace) -> dict[str, Any]:
    """The pre-registered gate on the pilot seed (validation rank-1 only)."""
    pilot = {r["variant"]: r.get("val_rank1", math.nan) for r in results
             if r["seed"] == args.pilot_seed and r.get("complete")}
    scratch = pilot.get("scratch", math.nan)
    gap, gain = teacher_val - scratch, pilot.get(REFERENCE, math.nan) - scratch
    return {"seed": args.pilot_seed, "metric": METRIC, "teacher_val": teacher_val, "scratch_val": scratch,
            "mimic_final_val": pilot.get(REFERENCE, math.nan), "teacher_minus_scratch": gap,
            "mimic_minus_scratch": gain,
            "required": {"teacher_minus_scratch": args.gate_gap / 100, "mimic_minus_scratch": args.gate_mimic / 100},
            "passed": bool(gap >= args.gate_gap / 100 and gain >= args.gate_mimic / 100),
            "ignored": bool(args.ignore_gate)}


def _collect(futures: dict[Future, tuple[str, int]], done: set[Future], results: list[dict[str, Any]]) -> None:
    for fut in done:
        variant, seed = futures.pop(fut)
        try:
            results.append(fut.result())
        except Exception as exc:  # a worker process that died (CUDA error, OOM): its jobs are recorded as failed
            results.append({"variant": variant, "seed": seed, "error": f"{type(exc).__name__}: {exc}"})


def _job_seconds(results: Sequence[dict[str, Any]], workers: int) -> float:
    """Recent mean duration of a finished job (what the pool's contention makes it now)."""
    secs = [r["seconds"] for r in results if r.get("complete")][-max(1, workers):]
    return float(np.mean(secs)) if secs else math.inf


def students_step(args: argparse.Namespace, layout: Layout) -> dict[str, Any]:
    """Pilot seed, gate, then counted seeds while the budget allows; writes ``work/students.json``."""
    import multiprocessing as mp

    from facerco.utils.io import read_json, write_json

    start = time.time()
    deadline = start + args.budget_s
    variants = variants_of(args)
    route = read_json(layout.teacher / "route.json")
    final = next(p for p in route["points"] if p["name"] == route["final"])
    counted = [s for s in args.seeds if s != args.pilot_seed]
    results: list[dict[str, Any]] = []
    futures: dict[Future, tuple[str, int]] = {}
    launched: list[int] = []
    not_launched: list[int] = []
    gate: dict[str, Any] = {}

    def save() -> dict[str, Any]:  # after every finished run, so a killed step still leaves the gate and results
        record = {"variants": variants, "gate": gate, "pilot_seed": args.pilot_seed, "counted_requested": counted,
                  "counted_launched": launched, "not_launched_for_budget": not_launched,
                  "stopped_by_gate": bool(gate) and not (gate["passed"] or args.ignore_gate),
                  "budget_s": args.budget_s, "seconds": time.time() - start, "workers": args.workers,
                  "results": results}
        write_json(layout.work / "students.json", record)
        return record

    threads = max(1, (os.cpu_count() or 2) // max(1, args.workers))
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=mp.get_context("spawn"), initializer=init_worker,
                             initargs=(args, layout, deadline, threads)) as pool:
        futures.update({pool.submit(run_job, v, args.pilot_seed): (v, args.pilot_seed) for v in variants})
        while futures:
            _collect(futures, wait(futures, return_when=FIRST_COMPLETED)[0], results)
            save()
        gate = pilot_gate(results, float(final["val"].get(METRIC, math.nan)), args)
        print(f"pilot gate: teacher - scratch {100 * gate['teacher_minus_scratch']:+.2f}, mimic_final - scratch "
              f"{100 * gate['mimic_minus_scratch']:+.2f} points of validation rank-1: "
              f"{'passed' if gate['passed'] else 'FAILED'}{' (ignored)' if args.ignore_gate else ''}", flush=True)
        queue = list(counted) if gate["passed"] or args.ignore_gate else []
        while queue or futures:
            while queue and len(futures) < args.workers:
                if not seed_fits(time.time(), deadline, len(futures), len(variants), args.workers,
                                 _job_seconds(results, args.workers)):
                    not_launched, queue = queue, []
                    print(f"budget: seeds {not_launched} not launched ({deadline - time.time():.0f} s left)",
                          flush=True)
                    break
                seed = queue.pop(0)
                launched.append(seed)
                futures.update({pool.submit(run_job, v, seed): (v, seed) for v in variants})
            save()
            if futures:
                _collect(futures, wait(futures, return_when=FIRST_COMPLETED)[0], results)
    return save()


# ----------------------------------------------------------------------------------------------------------------
# Step 4: analysis, table, JSON
# ----------------------------------------------------------------------------------------------------------------


def summarize(results: Sequence[dict[str, Any]], variants: Sequence[str], seeds: Sequence[int],
              strategies: Sequence[str], endpoint: str = "test_rank1") -> dict[str, Any]:
    """Rows (mean ± std over ``seeds``) and the pre-registered analysis of ``endpoint`` (test rank-1; ``val_rank1``
    for a pilot-only table, which holds no test number: those entries are None)."""
    mine = [r for r in results if r["seed"] in set(seeds) and r.get("complete") and "error" not in r]
    rows = []

    def stat(vr: Sequence[dict[str, Any]], key: str) -> tuple[float, float] | None:
        values = [r.get(key) for r in vr]
        return None if any(v is None for v in values) else _study.mean_std(values)

    for v in variants:
        vr = sorted((r for r in mine if r["variant"] == v), key=lambda r: r["seed"])
        rows.append({"variant": v, "n": len(vr), "anchors": vr[0]["anchors"] if vr else [],
                     **{k: stat(vr, k) for k in
                        ("test_rank1", "test_tar_far1e-3", "val_rank1", "congruence_final", "seconds")}})
    values = {v: {r["seed"]: r[endpoint] for r in mine if r["variant"] == v} for v in variants}
    analysis = _study.analyse(values, REFERENCE, [s for s in strategies if s in variants],
                              [c for c in CONTROLS if c in variants], min_gain=0.002)
    return {"endpoint": endpoint, "rows": rows, "analysis": analysis}


def _role(variant: str, strategies: Sequence[str]) -> str:
    if variant == REFERENCE:
        return "reference"
    return "control" if variant in CONTROLS else "primary" if variant in strategies else "baseline"


def _short_anchors(anchors: Sequence[str]) -> str:
    names = [a.replace("epoch_", "ep") for a in anchors]
    return " → ".join(names if len(names) <= 6 else [*names[:2], "…", *names[-2:]]) or "–"


def _pct(ms: Sequence[float] | None) -> str:
    return "–" if ms is None or math.isnan(ms[0]) else f"{100 * ms[0]:.2f} ± {100 * ms[1]:.2f}"


def _header(result: dict[str, Any]) -> str:
    """One line: device, data, models, schedule and which seeds the table holds (missing steps say so)."""
    t, d = result["teacher"], result["data"]
    parts = ["DRY RUN (tiny sizes, CPU)"] if result["dry_run"] else []
    parts.append(f"device {t.get('device_name', '?')}")
    if d:
        sp, n = d["plan"]["splits"], d["counts"]
        parts.append(f"generated faces at {d['plan']['image_size']} px: {n['train']} train images of "
                     f"{sp['train']['count']} identities; validation {sp['val']['count']} identities + "
                     f"{n['val_distractors']} singletons; test {sp['test']['count']} identities ({n['test']} images) "
                     f"+ {n['test_distractors']} singletons")
    else:
        parts.append("NO DATA (the data step failed)")
    parts.append(f"teacher {t['model']} ({t['params'] / 1e6:.1f}M params, {t['train_samples_per_s']:.0f} img/s "
                 f"training)" if t
                 else "NO TEACHER (the teacher step failed)")
    parts.append(f"student {result['student']} ({result['student_params'] / 1e6:.2f}M), {result['epochs']} epochs, "
                 f"lr x0.1 at {result['milestones']}")
    parts.append(f"counted seeds {result['counted_seeds']}" if result["counted_seeds"]
                 else f"PILOT SEED {result['table_seeds']} ONLY (no counted seeds)")
    return " · ".join(parts)


def format_markdown(result: dict[str, Any]) -> str:
    """The study's table: route, gate, one row per variant, verdicts by the pre-registered rule."""
    gate = result["gate"]
    lines = [_header(result), "", "Teacher route (validation rank-1 %): " + (" · ".join(
        f"ep{p['epoch']:g} {100 * p['val'].get(METRIC, math.nan):.1f}" for p in result["route"]) or "–"), ""]
    if gate:
        need = gate["required"]
        lines += [f"Pilot gate (seed {gate['seed']}, validation rank-1): teacher − scratch "
                  f"{100 * gate['teacher_minus_scratch']:+.2f} (need ≥ {100 * need['teacher_minus_scratch']:.1f}), "
                  f"mimic_final − scratch {100 * gate['mimic_minus_scratch']:+.2f} (need ≥ "
                  f"{100 * need['mimic_minus_scratch']:.1f}): **{'passed' if gate['passed'] else 'FAILED'}**"
                  f"{' (ignored)' if gate['ignored'] else ''}", ""]
    comps = result["summary"]["analysis"]["comparisons"]
    lines += ["| student | role | anchors | test rank-1 % | Δ vs mimic_final (95 % CI) | seeds ahead | "
              "val rank-1 % | test TAR@FAR=1e-3 % | congruence to final | s / run |", "|---" * 10 + "|"]
    for r in result["summary"]["rows"]:
        c = comps.get(r["variant"])
        delta = ("–" if not c or math.isnan(c["mean"]) else
                 f"{100 * c['mean']:+.2f} ({100 * c['ci95'][0]:+.2f} … {100 * c['ci95'][1]:+.2f})")
        ahead = f"{c['wins']}/{c['n']}" if c else "–"
        lines.append(f"| {r['variant']} | {_role(r['variant'], result['strategies'])} | "
                     f"{_short_anchors(r['anchors'])} | {_pct(r['test_rank1'])} | {delta} | {ahead} | "
                     f"{_pct(r['val_rank1'])} | {_pct(r['test_tar_far1e-3'])} | {r['congruence_final'][0]:.4f} | "
                     f"{r['seconds'][0]:.0f} |")
    lines += ["", "Verdicts by the pre-registered rule (Holm-adjusted one-sided paired t-test over the counted seeds):",
              *_study.verdict_lines(result["summary"]["analysis"])]
    return "\n".join(lines) + "\n"


def report_step(args: argparse.Namespace, layout: Layout) -> dict[str, Any]:
    """Gather what the steps left in ``--work`` into ``OUT/gpu_rco_study.json`` and ``.md`` (whole seeds only)."""
    from facerco.models import create_model
    from facerco.utils.io import read_json, write_json

    def read(path: Path) -> Any:  # a step that failed left nothing: the report says what there is
        return read_json(path) if path.is_file() else {}

    students = read(layout.work / "students.json")
    variants = students.get("variants") or variants_of(args)
    results = list(students.get("results", []))
    seen = {(r["variant"], r["seed"]) for r in results}
    for path in sorted(layout.runs.glob("*/seed*/result.json")):  # runs a killed students step finished
        r = read_json(path)
        if (r["variant"], r["seed"]) not in seen:
            results.append(r)
    counted = complete_seeds(results, variants, [s for s in args.seeds if s != args.pilot_seed])
    pilot = complete_seeds(results, variants, [args.pilot_seed])
    route = read(layout.teacher / "route.json")
    steps = read(Path(args.steps_json)) if args.steps_json else []
    result = {
        "benchmark": "gpu_rco_study", "dry_run": bool(args.dry_run), "steps": steps,
        "data": read(layout.data / "manifest.json"), "teacher": read(layout.work / "teacher.json"),
        "route": route.get("points", []), "student": args.student,
        "student_params": sum(p.numel() for p in create_model(args.student, input_size=args.image_size).parameters()),
        "epochs": args.epochs, "milestones": milestones_of(args), "batch": args.batch, "lr": args.lr,
        "amp": args.amp, "variants": variants, "strategies": list(args.strategies), "reference": REFERENCE,
        "controls": list(CONTROLS), "seeds": list(args.seeds), "pilot_seed": args.pilot_seed,
        "gate": students.get("gate"), "counted_seeds": counted, "table_seeds": counted or pilot,
        "not_launched_for_budget": students.get("not_launched_for_budget", []),
        "stopped_by_gate": students.get("stopped_by_gate"), "students_seconds": students.get("seconds"),
        "workers": students.get("workers"), "runs": sorted(results, key=lambda r: (r["seed"], r["variant"])),
        "summary": summarize(results, variants, counted or pilot, args.strategies,
                             "test_rank1" if counted else "val_rank1"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "python": platform.python_version()},
    }
    blocks = {p.stem.removeprefix("provenance_"): read_json(p) for p in sorted(layout.work.glob("provenance_*.json"))}
    recorder = _provenance.Recorder(counted=False, argv=_provenance.command_line(__file__, getattr(args, "argv", None)))
    result["provenance"] = recorder.finish(steps=blocks, run_codes=_study.run_codes(results))
    layout.out.mkdir(parents=True, exist_ok=True)
    write_json(layout.out / "gpu_rco_study.json", result)
    (layout.out / "gpu_rco_study.md").write_text(format_markdown(result), encoding="utf-8")
    print(format_markdown(result), end="", flush=True)
    return result


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------

STEPS: dict[str, Callable[[argparse.Namespace, Layout], Any]] = {
    "data": generate_data, "teacher": teacher_step, "students": students_step, "report": report_step}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    from facerco.distill.compare import VARIANTS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("step", choices=[*STEPS, "all"], help="one step (the shell script runs them in order) or all")
    p.add_argument("--work", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "facerco_gpu_rco"),
                   help="big files: data, teacher run, anchor cache, student runs")
    p.add_argument("--out", default="bench_out/gpu_rco_study", help="gpu_rco_study.json and .md")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--amp", default="bf16", choices=["bf16", "fp16", "off"])
    p.add_argument("--dry-run", action="store_true", help="recorded in the JSON (the shell passes the tiny sizes)")
    g = p.add_argument_group("data")
    g.add_argument("--data-seed", type=int, default=0)
    g.add_argument("--image-size", type=int, default=112)
    g.add_argument("--train-ids", type=int, default=800)
    g.add_argument("--images-per-id", type=int, default=16)
    g.add_argument("--val-ids", type=int, default=200)
    g.add_argument("--val-distractors", type=int, default=1000)
    g.add_argument("--test-ids", type=int, default=600)
    g.add_argument("--test-distractors", type=int, default=5000)
    g.add_argument("--eval-images-per-id", type=int, default=6)
    g.add_argument("--render-workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    g = p.add_argument_group("models and schedule")
    g.add_argument("--teacher", default="iresnet50")
    g.add_argument("--student", default="mbf_0.8m")
    g.add_argument("--epochs", type=int, default=8, help="teacher and students; lr x0.1 at 50%% and 75%%")
    g.add_argument("--warmup-epochs", type=float, default=0.5)
    g.add_argument("--batch", type=int, default=128)
    g.add_argument("--lr", type=float, default=0.1)
    g = p.add_argument_group("study")
    g.add_argument("--strategies", nargs="+", default=list(DEFAULT_STRATEGIES),
                   choices=[v for v in VARIANTS if v not in BASELINES], help="route strategies under test")
    g.add_argument("--seeds", type=int, nargs="+", default=list(range(6)))
    g.add_argument("--pilot-seed", type=int, default=0)
    g.add_argument("--gate-gap", type=float, default=4.0, help="points: teacher − scratch needed (validation)")
    g.add_argument("--gate-mimic", type=float, default=0.5, help="points: mimic_final − scratch needed")
    g.add_argument("--ignore-gate", action="store_true", help="run the counted seeds even if the gate fails")
    g.add_argument("--workers", type=int, default=8, help="student processes at once")
    g.add_argument("--budget-s", type=float, default=300.0, help="students step: no new seed once it cannot fit")
    g.add_argument("--job-limit-s", type=float, default=240.0, help="one student run's limit")
    g.add_argument("--steps-json", default="", help="report: the shell's record of the steps so far")
    _provenance.add_provenance_args(p)
    args = p.parse_args(argv)
    if args.pilot_seed not in args.seeds:
        p.error(f"--pilot-seed {args.pilot_seed} must be one of --seeds {args.seeds}")
    if args.epochs < 2 or args.epochs % 4:
        p.error(f"--epochs {args.epochs}: use a multiple of 4 so the lr drops (50 %, 75 %) fall on route points")
    if args.workers < 1 or args.batch < 1:
        p.error("--workers and --batch must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    from facerco.utils.io import write_json

    args = parse_args(argv)
    args.argv = argv
    layout = Layout.at(args.work, args.out)
    layout.work.mkdir(parents=True, exist_ok=True)
    # a step that trains counted seeds is counted (never a dry run): a dirty tree is refused unless --allow-dirty
    counted = not args.dry_run and args.step in ("students", "all") and any(s != args.pilot_seed for s in args.seeds)
    recorder = _provenance.Recorder(counted=counted, allow_dirty=args.allow_dirty,
                                    argv=_provenance.command_line(__file__, argv))
    for name in (list(STEPS) if args.step == "all" else [args.step]):
        start = time.time()
        if name != "report":  # the report reads these blocks into gpu_rco_study.json
            write_json(layout.work / f"provenance_{name}.json", recorder.finish(step=name, finished=False))
        STEPS[name](args, layout)
        if name != "report":
            write_json(layout.work / f"provenance_{name}.json", recorder.finish(step=name, finished=True))
        print(f"gpu_rco_study {name}: {time.time() - start:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
