"""The face RCO study on one GPU (issue 22, item 4): on real faces, does a route strategy beat mimicking the final
teacher? The protocol is written in ``benchmarks/README.md`` (section "GPU RCO study protocol") before any run.

Run by ``benchmarks/gpu_rco_study.sh`` as four steps, each its own process under its own time limit (state lives in
``--work``, so a step that is rerun reuses what is finished):

1. ``data``: LFW at 112x112 from a pack (:mod:`_lfw_pack`: the identity split of :mod:`facerco.data.lfw_split` --
   400 train people, 170 validation people + 600 validation singletons, 1,110 test people + 3,469 test singletons;
   validation never shares a person with test -- aligned by :func:`facerco.prep.align.align_tree` with the dlib
   detector, ``--select central``). The pack is built on a CPU before the run (``pack`` step) and carried to the GPU
   machine, which has no ``../shared`` and no dlib; with the raw photos at hand and no pack the step builds one.
   A dry run on a CPU packs a few people (or, without LFW, renders generated faces).
2. ``teacher``: ``iresnet50`` with ArcFace (s=32, m=0.4), SGD lr 0.1, a step route (x0.1 after 50 % and 75 % of
   ``--epochs``), a route point per epoch validated on the **validation** part only: 1:N rank-1 of the validation
   people among the validation singletons, TAR@FAR=1e-3, and accuracy on ``pairs_val.txt``. Then the anchor cache of
   every point over the training images (plain and flipped), and the final teacher's embeddings of the probe set.
3. ``students``: ``mbf_0.8m`` through the library's job (:func:`facerco.distill.job.run_distill`: ArcFace + 10 x L2
   mimicking of cached targets, the teacher's schedule). Pilot seed 0 runs ``scratch`` (pilot only), ``mimic_final``
   (the reference), ``early`` (the control) and the route strategies (default ``rco_eeis_multi``, ``lockstep``,
   ``phase``); the **gate** reads validation only. Counted seeds then run every variant but scratch, in
   ``--workers`` processes, while the time left fits a whole seed; a run past the deadline is stopped.
4. ``report``: test is read by counted runs only; the endpoint is test 1:N rank-1 of the counted seeds that finished
   for every variant, analysed by :func:`_study.analyse` (one-sided paired t-test, Holm over the route strategies,
   Wilcoxon; success = Holm p < 0.05, gain >= 0.2 point, ahead on >= 80 % of seeds, ahead of ``early``). Secondary:
   held-out pairs accuracy and 1:N TAR@FAR=1e-3 (analysed the same way, marked secondary), the congruence to the final
   teacher. Also the smallest effect the seeds that finished can detect, from the LFW CPU study's per-seed SD
   (planned) and from this run's (observed), the time plan beside the measured steps, and a provenance block.
   Writes ``OUT/gpu_rco_study.json`` and ``OUT/gpu_rco_study.md``.

Sizing (``plan`` prints the arithmetic; the assumptions and their sources are in benchmarks/README.md)::

    python benchmarks/gpu_rco_study.py pack                       # on a CPU, once: bench_out/lfw112_pack (49 MiB)
    python benchmarks/gpu_rco_study.py plan                       # the time plan and the detectable effects
    bash benchmarks/gpu_rco_study.sh                              # on the GPU machine (carry bench_out/lfw112_pack)
    bash benchmarks/gpu_rco_study.sh --dry-run                    # tiny, on a CPU
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
import _gpu_rco_plan as _plan  # noqa: E402
import _lfw_pack  # noqa: E402
import _provenance  # noqa: E402
import _study  # noqa: E402

REFERENCE = "mimic_final"
CONTROLS = ("early",)
PILOT_ONLY = ("scratch",)
DEFAULT_STRATEGIES = ("rco_eeis_multi", "lockstep", "phase")
ROUTE_METRIC = "val/pairs_acc"  # the route's choice metric (`early`), as rco_lfw.py: validation pairs accuracy
GATE_METRIC = "val/rank1"  # the pilot gate, as rco_lfw.py: validation 1:N rank-1
ENDPOINT = "test_rank1"
SECONDARY = ("test_pairs_acc", "test_tar_far1e-3")
MIN_GAIN = 0.002  # +0.2 point
PROBE_IMAGES = 512  # congruence probe set: seeded training images, as `facerco compare`
RENDER_SIZE = 112
PARTS = _lfw_pack.PARTS



# ----------------------------------------------------------------------------------------------------------------
# Where things live; which variants run where
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


def counted_variants(args: argparse.Namespace) -> list[str]:
    """What every counted seed runs: the reference, the control, then the route strategies under test."""
    return [REFERENCE, *CONTROLS, *[s for s in args.strategies if s not in (REFERENCE, *CONTROLS, *PILOT_ONLY)]]


def pilot_variants(args: argparse.Namespace) -> list[str]:
    """The pilot seed runs scratch (for the gate) and every counted variant (so a broken one shows before seeds)."""
    return [*PILOT_ONLY, *counted_variants(args)]


def milestones_of(args: argparse.Namespace) -> list[float]:
    """The teacher's lr drops (epochs); students run the same schedule."""
    return [0.5 * args.epochs, 0.75 * args.epochs]


# ----------------------------------------------------------------------------------------------------------------
# Step 1: data (an LFW pack, a tiny pack for a dry run, or generated faces for a dry run without LFW)
# ----------------------------------------------------------------------------------------------------------------


def tiny_limits(args: argparse.Namespace) -> dict[str, int]:
    """People per part of a dry run's pack (the first of each seeded list)."""
    return {"train": args.train_ids, "val": args.val_ids, "val_distractors": args.val_distractors,
            "test": args.test_ids, "test_distractors": args.test_distractors}


def resolve_source(args: argparse.Namespace, layout: Layout) -> tuple[str, Path | None]:
    """``("pack", folder)`` or ``("generated", None)``; builds a pack from the raw photos where there is none.

    A study run reads ``--pack`` (or the first pack :func:`_lfw_pack.find_pack` finds), else packs the LFW photos
    :func:`_lfw_pack.find_lfw` finds (dlib alignment where dlib and its model load, else the fixed box), else stops:
    the study is on real faces. A dry run packs a few people of LFW when the photos are there, else generates faces.
    """
    lfw = _lfw_pack.find_lfw(args.lfw)
    if args.dry_run:
        if lfw is None:
            return "generated", None
        out = layout.work / "lfw_pack_tiny"
        if not (out / "manifest.json").is_file():
            _lfw_pack.build_pack(lfw, out, alignment=alignment_available(), align_dir=layout.work / "lfw_aligned",
                                 limits=tiny_limits(args), per_id=args.images_per_id, workers=1)
        return "pack", out
    pack = _lfw_pack.find_pack(args.pack)
    if pack is not None:
        return "pack", pack
    if lfw is None:
        raise SystemExit("gpu_rco_study: no LFW pack (--pack, $FACERCO_LFW_PACK, bench_out/lfw112_pack) and no LFW "
                         "photos ($FACERCO_REAL_DATA, shared/data, ../shared/data): build the pack on a CPU with "
                         "`python benchmarks/gpu_rco_study.py pack` and carry bench_out/lfw112_pack")
    out = layout.work / "lfw_pack"
    if not (out / "manifest.json").is_file():
        _lfw_pack.build_pack(lfw, out, alignment=alignment_available(), align_dir=layout.work / "lfw_aligned",
                             workers=max(1, (os.cpu_count() or 2) - 1))
    return "pack", out


def alignment_available() -> str:
    """``dlib`` when dlib and its 5-point model load here, else ``fixed_box`` (the manifest records which)."""
    try:
        import dlib  # noqa: F401

        from facerco.prep.detectors._dlib import MODEL_FILES, find_dlib_model

        find_dlib_model(MODEL_FILES["5"])
    except (ImportError, FileNotFoundError):
        return "fixed_box"
    return "dlib"


def pack_data(pack_dir: Path, args: argparse.Namespace) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Every part's arrays and pairs from a pack, and what the manifest says about it."""
    pack = _lfw_pack.read_pack(pack_dir)
    start = time.time()
    arrays = _lfw_pack.pack_arrays(pack, args.image_size, workers=os.cpu_count() or 1)
    decode_s = time.time() - start
    pairs = {}
    for part in ("val", "test"):
        pairs[part], pairs[f"{part}_source"] = _lfw_pack.pack_pairs(pack, arrays, part)
    info = {"source": "lfw", "pack": str(pack_dir), "pack_manifest": pack.manifest, "decode_seconds": decode_s,
            "pairs_source": {p: pairs.pop(f"{p}_source") for p in ("val", "test")}}
    return {part: {**arrays[part], "pairs": pairs.get(part)} for part in PARTS}, info


def generated_plan(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Identity ranges of generated faces (regular and distractor streams never overlap between parts)."""
    t, v = args.train_ids, args.val_ids
    return {"train": {"first": 0, "count": t, "per_id": args.images_per_id, "distractor": False},
            "val": {"first": t, "count": v, "per_id": args.eval_images_per_id, "distractor": False},
            "val_distractors": {"first": 0, "count": args.val_distractors, "per_id": 1, "distractor": True},
            "test": {"first": t + v, "count": args.test_ids, "per_id": args.eval_images_per_id, "distractor": False},
            "test_distractors": {"first": args.val_distractors, "count": args.test_distractors, "per_id": 1,
                                 "distractor": True}}


def render_block(seed: int, first: int, count: int, per_id: int, distractor: bool, size: int) -> np.ndarray:
    """uint8 (count * per_id, size, size, 3) RGB generated faces: identities ``first..first+count-1``."""
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
            out[n] = img if size == RENDER_SIZE else cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
            n += 1
    return out


def _blocks(first: int, count: int, parts: int) -> Iterator[tuple[int, int]]:
    step = max(1, math.ceil(count / max(1, parts)))
    for start in range(first, first + count, step):
        yield start, min(step, first + count - start)


def generated_data(args: argparse.Namespace) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Generated faces in the pack's part layout (labels: people 0..P-1, then one per distractor), synthetic pairs."""
    plan = generated_plan(args)
    data = {}
    for part, p in plan.items():
        images = np.concatenate([render_block(args.data_seed, a, c, p["per_id"], p["distractor"], args.image_size)
                                 for a, c in _blocks(p["first"], p["count"], 4)])
        offset = plan[part.removesuffix("_distractors")]["count"] if p["distractor"] else 0
        data[part] = {"images": images, "labels": offset + np.repeat(np.arange(p["count"]), p["per_id"]),
                      "files": [], "pairs": None}
    for k, part in enumerate(("val", "test")):
        labels = np.concatenate([data[part]["labels"], data[f"{part}_distractors"]["labels"]])
        data[part]["pairs"] = _lfw_pack.synthetic_pairs(labels, 6, np.random.default_rng([args.data_seed, k + 1]))
    return data, {"source": "generated", "plan": plan, "pairs_source": {"val": "synthetic", "test": "synthetic"}}


def data_step(args: argparse.Namespace, layout: Layout) -> dict[str, Any]:
    """Write every part as ``work/data/<part>_{images,labels}.npy`` (+ ``<part>_pairs.npy`` for val and test)."""
    from facerco.utils.io import atomic_path, read_json, write_json

    key = {"image_size": args.image_size, "dry_run": bool(args.dry_run), "pack": args.pack, "lfw": args.lfw,
           "tiny": tiny_limits(args) if args.dry_run else None}
    manifest = layout.data / "manifest.json"
    if manifest.is_file() and read_json(manifest).get("key") == key:
        print(f"data: reusing {layout.data}", flush=True)
        return read_json(manifest)
    start = time.time()
    kind, folder = resolve_source(args, layout)
    data, info = pack_data(folder, args) if kind == "pack" else generated_data(args)
    layout.data.mkdir(parents=True, exist_ok=True)
    for part, d in data.items():
        for suffix in ("images", "labels", "pairs"):
            if d.get(suffix) is not None:
                with atomic_path(layout.data / f"{part}_{suffix}.npy") as tmp, open(tmp, "wb") as handle:
                    np.save(handle, np.asarray(d[suffix]))
    counts = {part: int(len(d["labels"])) for part, d in data.items()}
    people = {part: int(len(np.unique(d["labels"]))) for part, d in data.items()}
    pairs = {part: int(len(data[part]["pairs"])) for part in ("val", "test")}
    record = {"key": key, **info, "counts": counts, "people": people, "pairs": pairs, "seconds": time.time() - start}
    write_json(manifest, record)
    print(f"data: {info['source']}, images {counts}, pairs {pairs} in {record['seconds']:.1f} s", flush=True)
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
        """A part written by the data step (images memory-mapped)."""
        path = layout.data / f"{split}_images.npy"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; run the data step first")
        return cls(np.load(path, mmap_mode="r"), np.load(layout.data / f"{split}_labels.npy"))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from facerco.data.transforms import normalize

        return normalize(np.asarray(self.images[i])), int(self.labels[i])

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, int]]:
        """A batch normalized at once (the DataLoader's batch path; the same values as ``__getitem__``): evaluation
        embeds ~9,000 images per student run, and one normalization per image dominated it on a CPU."""
        from facerco.data.transforms import normalize_batch

        idx = np.asarray(list(indices), np.int64)
        x = normalize_batch(torch.from_numpy(np.asarray(self.images[idx]))).contiguous()
        return list(zip(x.unbind(0), self.labels[idx].tolist(), strict=True))


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
# Evaluation: 1:N of a part's people among its singletons, and its pairs
# ----------------------------------------------------------------------------------------------------------------


class Evaluator:
    """Validation (choices) or test (endpoint): 1:N rank-1 and TAR@FAR=1e-3 of the part's people among its
    singletons, and 10-fold accuracy on its pairs (rows into ``[people; singletons]``)."""

    def __init__(self, layout: Layout, split: str, device: torch.device, precision: Any) -> None:
        self.split = split
        self.probes = FaceArray.load(layout, split)
        self.distractors = FaceArray.load(layout, f"{split}_distractors")
        self.pairs = np.load(layout.data / f"{split}_pairs.npy")
        self.device, self.precision = device, precision

    def embed(self, model: torch.nn.Module, source: Dataset) -> np.ndarray:
        """Flip-fused, L2-normalized embeddings through the library's one extraction path, under AMP."""
        from facerco.eval.features import extract_embeddings

        with self.precision.autocast():
            return extract_embeddings(model, source, batch_size=512, device=str(self.device), flip=True,
                                      progress=False).emb

    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        from facerco.eval.identification import evaluate_identification
        from facerco.eval.verification import evaluate_verification

        probes, distractors = self.embed(model, self.probes), self.embed(model, self.distractors)
        res = evaluate_identification(probes, self.probes.labels, distractors, sizes=[len(distractors)], ranks=5,
                                      fars=[1e-3], backend="torch", device=str(self.device), progress=False)
        size = res["sizes"][-1]
        every = np.concatenate([probes, distractors])
        i, j, same = self.pairs.T
        pairs = evaluate_verification(every[i], every[j], same.astype(bool), fars=(1e-3,))
        return {f"{self.split}/rank1": float(size["rank1"]),
                f"{self.split}/tar_far1e-3": float(size["tar_at_far"]["0.001"]),
                f"{self.split}/pairs_acc": float(pairs["accuracy"])}


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
    """The base student plus the variant's distill overrides from :data:`facerco.distill.compare.VARIANTS`; a
    multi-stage student's warm-up is scaled to one stage, as in ``rco_lfw.py`` (:func:`stage_scaled_schedule`)."""
    from rco_lfw import stage_scaled_schedule

    from facerco.config import apply_overrides, config_from_dict
    from facerco.distill.compare import VARIANTS

    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
    data = base_mapping(args, layout, "student", layout.run(variant, seed), seed)
    data["distill"] = {"teacher_run": str(layout.teacher), "cache": str(layout.cache), "strategy": "final",
                       "mimic_weight": 10.0, "mimic_type": "l2", "kd_weight": 0.0, "arcface_weight": 1.0,
                       "best": {"metric": ROUTE_METRIC}, "final_share": 0.25, "eeis": {"num_anchors": 4},
                       "gss": {"probe_images": PROBE_IMAGES}}
    return stage_scaled_schedule(config_from_dict(apply_overrides(data, list(VARIANTS[variant][1])),
                                                  f"gpu_rco_study {variant}"))


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


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine()}, {os.cpu_count()} cores)"


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
    from facerco.losses.partial_fc import build_head
    from facerco.route.record import RouteRecorder
    from facerco.train.distributed import DistInfo
    from facerco.train.engine import Engine, seed_everything
    from facerco.train.job import build_backbone, prepare_run_dir
    from facerco.train.teacher import TeacherTask

    cfg = teacher_config(args, layout)
    # the teacher job's own resume check and first-start config.yaml (a resume no longer rewrites it)
    run = prepare_run_dir(cfg, DistInfo(device=device), unread=("distill",))
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    backbone = build_backbone(cfg)
    meta = backbone.meta  # type: ignore[union-attr]
    task = TeacherTask(backbone, build_head(cfg, int(meta.embedding_size), train.num_classes))
    recorder = RouteRecorder(run, cfg.route, classifier_fn=task.full_classifier, metadata={"job": "teacher"},
                             info={"arch": meta.name, "arch_kwargs": dict(meta.arch_kwargs),
                                   "embedding_size": int(meta.embedding_size), "num_classes": train.num_classes,
                                   "dataset": cfg.data.train})
    validator = Evaluator(layout, "val", device, precision)
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
    from facerco.route.cache_writer import build_cache
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
    from facerco.distill.probe import probe_images

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
        info["device_name"] = device_name(device)
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
        self.val = Evaluator(layout, "val", self.device, self.precision)
        self.test = Evaluator(layout, "test", self.device, self.precision)
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


def _train_and_score(w: _Worker, variant: str, seed: int) -> dict[str, Any]:
    """Train one student and score it: validation always, test only on a counted seed (never the pilot)."""
    from facerco.distill.job import run_distill
    from facerco.models.checkpoint import load_model
    from facerco.utils.io import read_json

    start = time.time()
    res = run_distill(student_config(w.args, w.layout, variant, seed), dataset=w.train, validator=w.val)
    student = load_model(res.student_path, device=w.device).model  # type: ignore[arg-type]
    test = w.test(student) if seed != w.args.pilot_seed else {}
    summary = read_json(w.layout.run(variant, seed) / "summary.json")
    return {"complete": res.step == res.stage_plan.total_steps,
            "anchors": [] if variant in PILOT_ONLY else list(summary.get("anchors", [])), "steps": res.step,
            **{f"val_{k.split('/', 1)[1]}": res.val.get(k, math.nan)
               for k in ("val/rank1", "val/tar_far1e-3", "val/pairs_acc")},
            **{f"test_{k.split('/', 1)[1]}": test.get(k) for k in ("test/rank1", "test/tar_far1e-3", "test/pairs_acc")},
            "congruence_final": congruence(embed_plain(student, w.probe, w.device, w.precision), w.teacher_probe),
            "train_seconds": res.seconds, "seconds": time.time() - start,
            "samples_per_s": res.step * w.args.batch / max(res.seconds, 1e-9)}


def run_job(variant: str, seed: int) -> dict[str, Any]:
    """Train one (variant, seed) student and score it; a finished run's result.json is reused."""
    from facerco.utils.io import read_json, write_json

    w = _WORKER
    if w is None:
        raise RuntimeError("run_job outside a worker process (init_worker was not called)")
    result_path = w.layout.run(variant, seed) / "result.json"
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
        result = {**base, **_train_and_score(w, variant, seed)}
    except Exception as exc:  # one failed run must not stop the others: it is recorded and its seed left out
        return {**base, "error": f"{type(exc).__name__}: {exc}", "seconds": time.time() - start}
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
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
    return {"seed": args.pilot_seed, "metric": GATE_METRIC, "teacher_val": teacher_val, "scratch_val": scratch,
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


class _Students:
    """The students step's state: the pool's futures, the results, the gate and the seeds launched or not."""

    def __init__(self, args: argparse.Namespace, layout: Layout) -> None:
        self.args, self.layout = args, layout
        self.start = time.time()
        self.deadline = self.start + args.budget_s
        self.counted = [s for s in args.seeds if s != args.pilot_seed]
        self.results: list[dict[str, Any]] = []
        self.futures: dict[Future, tuple[str, int]] = {}
        self.launched: list[int] = []
        self.not_launched: list[int] = []
        self.gate: dict[str, Any] = {}

    def save(self) -> dict[str, Any]:
        """After every finished run, so a killed step still leaves the gate and the results."""
        from facerco.utils.io import write_json

        a = self.args
        record = {"pilot_variants": pilot_variants(a), "variants": counted_variants(a), "gate": self.gate,
                  "pilot_seed": a.pilot_seed, "counted_requested": self.counted, "counted_launched": self.launched,
                  "not_launched_for_budget": self.not_launched,
                  "stopped_by_gate": bool(self.gate) and not (self.gate["passed"] or a.ignore_gate),
                  "budget_s": a.budget_s, "seconds": time.time() - self.start, "workers": a.workers,
                  "results": self.results}
        write_json(self.layout.work / "students.json", record)
        return record

    def drain(self, until_empty: bool) -> None:
        while self.futures:
            _collect(self.futures, wait(self.futures, return_when=FIRST_COMPLETED)[0], self.results)
            self.save()
            if not until_empty:
                return

    def launch_seeds(self, pool: ProcessPoolExecutor) -> None:
        """Counted seeds, whole, while the time left fits one (each seed's jobs go in together)."""
        variants, queue = counted_variants(self.args), list(self.counted)
        while queue or self.futures:
            while queue and len(self.futures) < self.args.workers:
                if not seed_fits(time.time(), self.deadline, len(self.futures), len(variants), self.args.workers,
                                 _job_seconds(self.results, self.args.workers)):
                    self.not_launched, queue = queue, []
                    print(f"budget: seeds {self.not_launched} not launched ({self.deadline - time.time():.0f} s "
                          "left)", flush=True)
                    break
                seed = queue.pop(0)
                self.launched.append(seed)
                self.futures.update({pool.submit(run_job, v, seed): (v, seed) for v in variants})
            self.save()
            self.drain(until_empty=False)


def students_step(args: argparse.Namespace, layout: Layout) -> dict[str, Any]:
    """Pilot seed, gate, then counted seeds while the budget allows; writes ``work/students.json``."""
    import multiprocessing as mp

    from facerco.utils.io import read_json

    state = _Students(args, layout)
    route = read_json(layout.teacher / "route.json")
    final = next(p for p in route["points"] if p["name"] == route["final"])
    threads = max(1, (os.cpu_count() or 2) // max(1, args.workers))
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=mp.get_context("spawn"), initializer=init_worker,
                             initargs=(args, layout, state.deadline, threads)) as pool:
        state.futures.update({pool.submit(run_job, v, args.pilot_seed): (v, args.pilot_seed)
                              for v in pilot_variants(args)})
        state.drain(until_empty=True)
        state.gate = pilot_gate(state.results, float(final["val"].get(GATE_METRIC, math.nan)), args)
        g = state.gate
        print(f"pilot gate: teacher - scratch {100 * g['teacher_minus_scratch']:+.2f}, mimic_final - scratch "
              f"{100 * g['mimic_minus_scratch']:+.2f} points of validation rank-1: "
              f"{'passed' if g['passed'] else 'FAILED'}{' (ignored)' if args.ignore_gate else ''}", flush=True)
        if g["passed"] or args.ignore_gate:
            state.launch_seeds(pool)
    return state.save()


# ----------------------------------------------------------------------------------------------------------------
# The plan: time per step from the assumed rates and the data sizes; the effect the seeds can detect
# ----------------------------------------------------------------------------------------------------------------


def plan_step(args: argparse.Namespace, layout: Layout) -> dict[str, Any]:
    """Print (and write ``OUT/gpu_rco_plan.json``) the time plan for the full study and the detectable effects."""
    from facerco.utils.io import write_json

    counts = full_counts(args)
    plan = {"counts": counts, "time": _plan.time_plan(counts, args.epochs, args.workers, args.plan_budget_s,
                                                      len(args.strategies))}
    slow = {k: v / 2 if "img_s" in k else v for k, v in _plan.ASSUMED.items()}
    plan["time_at_half_rates"] = _plan.time_plan(counts, args.epochs, args.workers, args.plan_budget_s,
                                                 len(args.strategies), slow)
    sd = _plan.cpu_study_sd()
    plan["power"] = _plan.power_plan(sd, [5, 8, 10, 12, 13, 15, 20, 25, 30], len(args.strategies), MIN_GAIN)
    if args.measure:
        plan["measured_here"] = measure_here(args)
    layout.out.mkdir(parents=True, exist_ok=True)
    write_json(layout.out / "gpu_rco_plan.json", {**plan, "provenance": _provenance.Recorder(counted=False).finish()})
    print(_plan.format_plan(plan), end="", flush=True)
    for key, value in plan.get("measured_here", {}).items():
        print(f"measured here: {key} = {value}", flush=True)
    return plan


def step_cost(name: str, size: int = 16, batch: int = 2, repeats: int = 10) -> dict[str, float]:
    """One SGD training step of ``name`` on this CPU at a size where compute is small: the framework's per-step time
    (an upper bound of what a GPU host spends launching the step) and the top-level calls it makes."""
    from torch.profiler import ProfilerActivity, profile

    from facerco.models import create_model

    model = create_model(name, input_size=size)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(batch, 3, size, size)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        model(x).float().pow(2).mean().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    calls = sum(1 for e in prof.events() if e.cpu_parent is None)
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return {"ms_per_step": 1000 * (time.perf_counter() - start) / repeats, "top_level_calls": calls}


def measure_here(args: argparse.Namespace) -> dict[str, Any]:
    """What this CPU can tell about the plan: per-step framework cost of student and teacher (1 thread, 16 px, batch
    2) and the pack's decode rate (the data step's work)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out: dict[str, Any] = {f"step_{name}": step_cost(name) for name in (args.student, args.teacher)}
    finally:
        torch.set_num_threads(threads)
    pack = _lfw_pack.find_pack(args.pack)
    if pack is not None:
        p = _lfw_pack.read_pack(pack)
        start = time.perf_counter()
        n = min(2000, len(p.files))
        for i in range(n):
            p.decode(i)
        out["pack"] = {"images": len(p.files), "mib": round(p.manifest["bytes"] / 2**20, 1),
                       "decode_img_s_one_thread": round(n / (time.perf_counter() - start))}
    return out


def full_counts(args: argparse.Namespace) -> dict[str, int]:
    """Images per part of the study's split (the pack's manifest when there is one, else lfw_split on the photos)."""
    pack = _lfw_pack.find_pack(args.pack)
    if pack is not None:
        c = _lfw_pack.read_pack(pack).manifest["split"]["counts"]
    else:
        from facerco.data.lfw_split import lfw_split

        lfw = _lfw_pack.find_lfw(args.lfw)
        if lfw is None:
            raise SystemExit("plan: no LFW pack and no LFW photos to count the split from")
        c = lfw_split(lfw).summary()
    return {"train": c["train_images"], "val": c["val_images"], "val_distractors": c["val_distractors"],
            "test": c["test_images"], "test_distractors": c["test_distractors"]}


# ----------------------------------------------------------------------------------------------------------------
# Step 4: analysis, table, JSON
# ----------------------------------------------------------------------------------------------------------------


def summarize(results: Sequence[dict[str, Any]], variants: Sequence[str], seeds: Sequence[int],
              strategies: Sequence[str], endpoint: str = ENDPOINT) -> dict[str, Any]:
    """Rows (mean ± std over ``seeds``) and the pre-registered analysis of ``endpoint`` (test rank-1; ``val_rank1``
    for a pilot-only table, which holds no test number: those entries are None)."""
    mine = [r for r in results if r["seed"] in set(seeds) and r.get("complete") and "error" not in r]

    def stat(vr: Sequence[dict[str, Any]], key: str) -> tuple[float, float] | None:
        values = [r.get(key) for r in vr]
        return None if not values or any(v is None for v in values) else _study.mean_std(values)

    keys = ("test_rank1", "test_pairs_acc", "test_tar_far1e-3", "val_rank1", "val_pairs_acc", "congruence_final",
            "seconds")
    rows = []
    for v in variants:
        vr = sorted((r for r in mine if r["variant"] == v), key=lambda r: r["seed"])
        rows.append({"variant": v, "n": len(vr), "anchors": sorted({tuple(r["anchors"]) for r in vr}),
                     **{k: stat(vr, k) for k in keys}})

    def analysis(key: str) -> dict[str, Any]:
        values = {v: {r["seed"]: r[key] for r in mine if r["variant"] == v} for v in variants}
        return _study.analyse(values, REFERENCE, [s for s in strategies if s in variants],
                              [c for c in CONTROLS if c in variants], min_gain=MIN_GAIN)

    secondary = {k: analysis(k) for k in SECONDARY} if endpoint == ENDPOINT else {}
    return {"endpoint": endpoint, "rows": rows, "analysis": analysis(endpoint), "secondary": secondary}


def gather_results(layout: Layout) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``students.json`` and every run result, including runs a killed students step finished."""
    from facerco.utils.io import read_json

    students = read_json(layout.work / "students.json") if (layout.work / "students.json").is_file() else {}
    results = list(students.get("results", []))
    seen = {(r["variant"], r["seed"]) for r in results}
    for path in sorted(layout.runs.glob("*/seed*/result.json")):
        r = read_json(path)
        if (r["variant"], r["seed"]) not in seen:
            results.append(r)
    return students, results


def measured_rates(teacher: dict[str, Any], results: Sequence[dict[str, Any]], counted: Sequence[int],
                   steps: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """What the card did, beside :data:`ASSUMED`: teacher img/s, anchor cache seconds, student img/s per process,
    and the students step's seconds per counted seed."""
    runs = [r for r in results if r.get("complete") and "error" not in r]
    students = next((s for s in steps if s.get("step") == "students"), {})
    return {"teacher_train_img_s": teacher.get("train_samples_per_s"), "cache_seconds": teacher.get("cache_seconds"),
            "student_img_s_per_process": float(np.median([r["samples_per_s"] for r in runs])) if runs else None,
            "student_run_seconds": float(np.median([r["seconds"] for r in runs])) if runs else None,
            "students_step_seconds": students.get("seconds"), "counted_seeds": len(counted)}


def power_report(summary: dict[str, Any], n: int, strategies: int) -> dict[str, Any]:
    """The detectable effect for the ``n`` counted seeds that finished: planned (the CPU study's SD) and observed
    (this run's pooled SD, a post-hoc number for planning the next run, not part of the rule)."""
    planned = _plan.cpu_study_sd() if _plan.CPU_STUDY.is_file() else math.nan
    observed = _study.pooled_sd(summary["analysis"]) if n >= 2 else math.nan
    def at(sd: float) -> dict[str, float] | None:
        return _plan.power_plan(sd, [n], strategies, MIN_GAIN)[0] if n >= 2 and sd > 0 else None

    return {"seeds": n, "planned": at(planned), "observed": at(observed)}


def report_step(args: argparse.Namespace, layout: Layout) -> dict[str, Any]:
    """Gather what the steps left in ``--work`` into ``OUT/gpu_rco_study.json`` and ``.md`` (whole seeds only)."""
    from facerco.models import create_model
    from facerco.utils.io import read_json, write_json

    def read(path: Path) -> Any:  # a step that failed left nothing: the report says what there is
        return read_json(path) if path.is_file() else {}

    students, results = gather_results(layout)
    variants = students.get("variants") or counted_variants(args)
    counted = complete_seeds(results, variants, [s for s in args.seeds if s != args.pilot_seed])
    pilot = complete_seeds(results, students.get("pilot_variants") or pilot_variants(args), [args.pilot_seed])
    steps = read(Path(args.steps_json)) if args.steps_json else []
    teacher = read(layout.work / "teacher.json")
    summary = (summarize(results, variants, counted, args.strategies) if counted
               else summarize(results, pilot_variants(args), pilot, args.strategies, "val_rank1"))
    data = read(layout.data / "manifest.json")
    result = {
        "benchmark": "gpu_rco_study", "dry_run": bool(args.dry_run), "steps": steps, "data": data,
        "teacher": teacher, "route": read(layout.teacher / "route.json").get("points", []), "student": args.student,
        "student_params": sum(p.numel() for p in create_model(args.student, input_size=args.image_size).parameters()),
        "epochs": args.epochs, "milestones": milestones_of(args), "batch": args.batch, "lr": args.lr,
        "amp": args.amp, "image_size": args.image_size, "variants": variants, "pilot_variants": pilot_variants(args),
        "strategies": list(args.strategies), "reference": REFERENCE, "controls": list(CONTROLS),
        "route_metric": ROUTE_METRIC, "gate_metric": GATE_METRIC, "endpoint": ENDPOINT, "secondary": list(SECONDARY),
        "seeds": list(args.seeds), "pilot_seed": args.pilot_seed, "gate": students.get("gate"),
        "counted_seeds": counted, "table_seeds": counted or pilot,
        "not_launched_for_budget": students.get("not_launched_for_budget", []),
        "stopped_by_gate": students.get("stopped_by_gate"), "students_seconds": students.get("seconds"),
        "workers": students.get("workers"), "runs": sorted(results, key=lambda r: (r["seed"], r["variant"])),
        "pilot": summarize(results, pilot_variants(args), pilot, args.strategies, "val_rank1")["rows"],
        "summary": summary, "power": power_report(summary, len(counted), len(args.strategies)),
        "plan": (_plan.time_plan(data["counts"], args.epochs, args.workers, args.plan_budget_s, len(args.strategies))
                 if data.get("counts") else None),
        "measured": measured_rates(teacher, results, counted, steps),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "python": platform.python_version(), "device": teacher.get("device_name")},
    }
    blocks = {p.stem.removeprefix("provenance_"): read_json(p) for p in sorted(layout.work.glob("provenance_*.json"))}
    recorder = _provenance.Recorder(counted=False, argv=_provenance.command_line(__file__, getattr(args, "argv", None)))
    result["provenance"] = recorder.finish(steps=blocks, run_codes=_study.run_codes(results),
                                           **source_identity())
    layout.out.mkdir(parents=True, exist_ok=True)
    write_json(layout.out / "gpu_rco_study.json", result)
    (layout.out / "gpu_rco_study.md").write_text(format_markdown(result), encoding="utf-8")
    print(format_markdown(result), end="", flush=True)
    return result


def source_identity() -> dict[str, Any]:
    """Where ``.git`` is missing (the GPU machine gets a copy of the tree): the commit the caller declared in
    ``$FACERCO_SOURCE_COMMIT`` (unverified) and a hash of the source files, which anyone can recompute at that
    commit (:func:`_provenance.tree_fingerprint`)."""
    return {"declared_commit": os.environ.get("FACERCO_SOURCE_COMMIT"), "source_tree": _provenance.tree_fingerprint()}


def _role(variant: str, strategies: Sequence[str]) -> str:
    if variant == REFERENCE:
        return "reference"
    if variant in PILOT_ONLY:
        return "pilot only"
    return "control" if variant in CONTROLS else "primary" if variant in strategies else "baseline"


def _short_anchors(anchor_sets: Sequence[Sequence[str]]) -> str:
    """One route per distinct anchor list (``early``'s point, say, may differ by seed)."""
    def one(anchors: Sequence[str]) -> str:
        names = [f"ep{int(a.rsplit('_', 1)[1])}" if a.rsplit("_", 1)[-1].isdigit() else a for a in anchors]
        return " → ".join(names if len(names) <= 6 else [*names[:2], "…", *names[-2:]]) or "–"

    return " / ".join(one(a) for a in anchor_sets) or "–"


def _pct(ms: Sequence[float] | None) -> str:
    return "–" if ms is None or math.isnan(ms[0]) else f"{100 * ms[0]:.2f} ± {100 * ms[1]:.2f}"


def _header(result: dict[str, Any]) -> str:
    """One line: device, data, models, schedule and which seeds the table holds (missing steps say so)."""
    t, d = result["teacher"], result["data"]
    parts = ["DRY RUN (tiny sizes, CPU)"] if result["dry_run"] else []
    parts.append(f"device {result['machine'].get('device') or '?'}")
    if d.get("source") == "lfw":
        al = d["pack_manifest"]["alignment"]
        how = (f"aligned by align_tree (dlib, {al['policy']}; {al['median']} of {d['pack_manifest']['images']} photos "
               "missed, warped with the median points)" if al["method"] == "dlib" else "fixed-box crop")
        parts.append(f"LFW at {result['image_size']} px, {how}: train {d['counts']['train']} images of "
                     f"{d['people']['train']} people; validation {d['people']['val']} people + "
                     f"{d['counts']['val_distractors']} singletons, {d['pairs']['val']} pairs; test "
                     f"{d['people']['test']} people ({d['counts']['test']} images) + {d['counts']['test_distractors']}"
                     f" singletons, {d['pairs']['test']} pairs")
    elif d:
        parts.append(f"generated faces at {result['image_size']} px: {d['counts']}")
    else:
        parts.append("NO DATA (the data step failed)")
    parts.append(f"teacher {t['model']} ({t['params'] / 1e6:.1f}M params, {t['train_samples_per_s']:.0f} img/s "
                 "training)" if t.get("model") else "NO TEACHER (the teacher step failed)")
    parts.append(f"student {result['student']} ({result['student_params'] / 1e6:.2f}M), {result['epochs']} epochs, "
                 f"lr x0.1 at {result['milestones']}")
    parts.append(f"counted seeds {result['counted_seeds']}" if result["counted_seeds"]
                 else f"PILOT SEED {result['table_seeds']} ONLY (no counted seeds)")
    return " · ".join(parts)


def _route_line(result: dict[str, Any]) -> str:
    return "Teacher route (validation rank-1 % / pairs acc %): " + (" · ".join(
        f"ep{p['epoch']:g} {100 * p['val'].get(GATE_METRIC, math.nan):.1f}/"
        f"{100 * p['val'].get(ROUTE_METRIC, math.nan):.1f}" for p in result["route"]) or "–")


def _gate_line(gate: dict[str, Any]) -> str:
    need = gate["required"]
    return (f"Pilot gate (seed {gate['seed']}, validation rank-1): teacher − scratch "
            f"{100 * gate['teacher_minus_scratch']:+.2f} (need ≥ {100 * need['teacher_minus_scratch']:.1f}), "
            f"mimic_final − scratch {100 * gate['mimic_minus_scratch']:+.2f} (need ≥ "
            f"{100 * need['mimic_minus_scratch']:.1f}): **{'passed' if gate['passed'] else 'FAILED'}**"
            f"{' (ignored)' if gate['ignored'] else ''}")


def _table(result: dict[str, Any]) -> list[str]:
    summary = result["summary"]
    comps = summary["analysis"]["comparisons"]
    lines = ["| student | role | anchors | test rank-1 % | Δ vs mimic_final (95 % CI) | seeds ahead | test pairs acc % "
             "| test TAR@FAR=1e-3 % | val rank-1 % | val pairs acc % | congruence to final | s / run |",
             "|---" * 12 + "|"]
    rows = list(summary["rows"])
    if summary["endpoint"] == ENDPOINT:  # scratch ran on the pilot seed only: its validation numbers, no test
        rows = [dict(r, pilot=True) for r in result["pilot"] if r["variant"] in PILOT_ONLY] + rows
    for r in rows:
        c = None if r.get("pilot") else comps.get(r["variant"])
        delta = ("–" if not c or math.isnan(c["mean"]) else
                 f"{100 * c['mean']:+.2f} ({100 * c['ci95'][0]:+.2f} … {100 * c['ci95'][1]:+.2f})")
        cong = "–" if r["congruence_final"] is None else f"{r['congruence_final'][0]:.4f}"
        secs = "–" if r["seconds"] is None else f"{r['seconds'][0]:.0f}"
        ahead = f"{c['wins']}/{c['n']}" if c else "–"
        lines.append(f"| {r['variant']} | {_role(r['variant'], result['strategies'])} | "
                     f"{_short_anchors(r['anchors'])} | {_pct(r['test_rank1'])} | {delta} | "
                     f"{ahead} | {_pct(r['test_pairs_acc'])} | "
                     f"{_pct(r['test_tar_far1e-3'])} | {_pct(r['val_rank1'])} | {_pct(r['val_pairs_acc'])} | {cong} | "
                     f"{secs} |")
    return lines


def _power_lines(power: dict[str, Any]) -> list[str]:
    out = []
    for label, p in (("planned, from the LFW CPU study's per-seed SD", power.get("planned")),
                     ("observed, from this run's SD (post hoc, for planning only)", power.get("observed"))):
        if p:
            out.append(f"- Detectable effect with {power['seeds']} counted seeds at 80 % power ({label}, "
                       f"{100 * p['sd']:.2f} points): t-test {100 * p['t_test']:.2f} points at Holm's level, "
                       f"the whole rule {100 * p['rule']:.2f} points.")
    return out


def format_markdown(result: dict[str, Any]) -> str:
    """The study's table: route, gate, one row per variant, verdicts by the pre-registered rule, secondary analyses,
    power, and the time plan beside what the card did."""
    summary = result["summary"]
    lines = [_header(result), "", _route_line(result), ""]
    if result["gate"]:
        lines += [_gate_line(result["gate"]), ""]
    lines += _table(result)
    lines += ["", "Verdicts by the pre-registered rule (Holm-adjusted one-sided paired t-test over the counted seeds):",
              *_study.verdict_lines(summary["analysis"])]
    for key, analysis in summary.get("secondary", {}).items():
        lines += ["", f"Secondary endpoint {key} (reported, not part of the rule):", *_study.verdict_lines(analysis)]
    lines += ["", *_power_lines(result["power"])]
    m, plan = result["measured"], result.get("plan")
    if plan:
        a = plan["assumed"]
        lines.append(f"- Time: plan (assumed rates) {plan['fixed_s']:.0f} s fixed + {plan['seed_s']:.1f} s per counted "
                     f"seed ({plan['counted_seeds_fit']} seeds fit); measured: teacher "
                     f"{m['teacher_train_img_s'] or math.nan:.0f} img/s (assumed {a['teacher_train_img_s']:.0f}), "
                     f"student {m['student_img_s_per_process'] or math.nan:.0f} img/s per process (assumed "
                     f"{a['student_img_s_per_process']:.0f}), {m['counted_seeds']} counted seeds finished.")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------


def pack_step(args: argparse.Namespace, layout: Layout) -> dict[str, Any]:
    """Build the full study pack on this (CPU) machine: ``--pack`` (default bench_out/lfw112_pack), its manifest with
    a provenance block (the code that aligned and packed it)."""
    from facerco.utils.io import write_json

    lfw = _lfw_pack.find_lfw(args.lfw)
    if lfw is None:
        raise SystemExit("pack: no LFW photos (--lfw, $FACERCO_REAL_DATA, shared/data, ../shared/data)")
    out = Path(args.pack or _lfw_pack.REPO / _lfw_pack.DEFAULT_PACK)
    recorder = _provenance.Recorder(counted=False, argv=_provenance.command_line(__file__, getattr(args, "argv", None)))
    manifest = _lfw_pack.build_pack(lfw, out, alignment=args.alignment or alignment_available(),
                                    align_dir=args.align_dir or out.parent / "lfw_aligned", quality=args.quality,
                                    workers=args.align_workers)
    manifest["provenance"] = recorder.finish(source_tree=_provenance.tree_fingerprint())
    write_json(out / "manifest.json", manifest)
    print(f"pack: {manifest['images']} crops, {manifest['bytes'] / 2**20:.1f} MiB, alignment "
          f"{manifest['alignment']['method']}, {manifest['seconds']:.0f} s -> {out}", flush=True)
    return manifest


STEPS: dict[str, Callable[[argparse.Namespace, Layout], Any]] = {
    "data": data_step, "teacher": teacher_step, "students": students_step, "report": report_step}
TOOLS: dict[str, Callable[[argparse.Namespace, Layout], Any]] = {"pack": pack_step, "plan": plan_step}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    from facerco.distill.compare import VARIANTS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("step", choices=[*STEPS, "all", *TOOLS],
                   help="one step (the shell script runs them in order), all, or pack / plan (on a CPU, before)")
    p.add_argument("--work", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "facerco_gpu_rco"),
                   help="big files: data, teacher run, anchor cache, student runs")
    p.add_argument("--out", default="bench_out/gpu_rco_study", help="gpu_rco_study.json and .md")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--amp", default="bf16", choices=["bf16", "fp16", "off"])
    p.add_argument("--dry-run", action="store_true", help="tiny data (a few LFW people, else generated faces)")
    g = p.add_argument_group("data")
    g.add_argument("--pack", default=None, help="LFW pack folder (default: $FACERCO_LFW_PACK, bench_out/lfw112_pack)")
    g.add_argument("--lfw", default=None, help="lfw_deepfunneled (default: $FACERCO_REAL_DATA, (../)shared/data)")
    g.add_argument("--image-size", type=int, default=112)
    g.add_argument("--data-seed", type=int, default=0, help="generated faces only")
    g.add_argument("--train-ids", type=int, default=4, help="dry run: people per part (first of each seeded list)")
    g.add_argument("--val-ids", type=int, default=4)
    g.add_argument("--val-distractors", type=int, default=6)
    g.add_argument("--test-ids", type=int, default=4)
    g.add_argument("--test-distractors", type=int, default=8)
    g.add_argument("--images-per-id", type=int, default=4, help="dry run: photos per person at most")
    g.add_argument("--eval-images-per-id", type=int, default=3, help="generated faces: per validation/test person")
    g = p.add_argument_group("pack (on a CPU)")
    g.add_argument("--alignment", choices=["dlib", "fixed_box"], default=None, help="default: dlib when it loads")
    g.add_argument("--align-dir", default=None, help="align_tree's output (resumable; default beside the pack)")
    g.add_argument("--align-workers", type=int, default=max(1, (os.cpu_count() or 2)))
    g.add_argument("--quality", type=int, default=90, help="JPEG quality of the packed crops")
    g = p.add_argument_group("models and schedule")
    g.add_argument("--teacher", default="iresnet50")
    g.add_argument("--student", default="mbf_0.8m")
    g.add_argument("--epochs", type=int, default=16, help="teacher and students; lr x0.1 at 50%% and 75%%")
    g.add_argument("--warmup-epochs", type=float, default=1.0)
    g.add_argument("--batch", type=int, default=128)
    g.add_argument("--lr", type=float, default=0.1)
    g = p.add_argument_group("study")
    g.add_argument("--strategies", nargs="+", default=list(DEFAULT_STRATEGIES),
                   choices=[v for v in VARIANTS if v not in (REFERENCE, *CONTROLS, *PILOT_ONLY)],
                   help="route strategies under test (the primary family)")
    g.add_argument("--seeds", type=int, nargs="+", default=list(range(31)),
                   help="seed 0 is the pilot; counted seeds run in order while the time allows")
    g.add_argument("--pilot-seed", type=int, default=0)
    g.add_argument("--gate-gap", type=float, default=4.0, help="points: teacher − scratch needed (validation)")
    g.add_argument("--gate-mimic", type=float, default=0.5, help="points: mimic_final − scratch needed")
    g.add_argument("--ignore-gate", action="store_true", help="run the counted seeds even if the gate fails")
    g.add_argument("--workers", type=int, default=8, help="student processes at once")
    g.add_argument("--budget-s", type=float, default=300.0, help="students step: no new seed once it cannot fit")
    g.add_argument("--plan-budget-s", type=float, default=510.0, help="the whole run's budget the plan is made for")
    g.add_argument("--job-limit-s", type=float, default=240.0, help="one student run's limit")
    g.add_argument("--measure", action="store_true", help="plan: also measure what this CPU can tell")
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
    if args.step in TOOLS:  # before a run, on a CPU: nothing here is counted
        TOOLS[args.step](args, layout)
        return 0
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
            write_json(layout.work / f"provenance_{name}.json",
                       recorder.finish(step=name, finished=True, **source_identity()))
        print(f"gpu_rco_study {name}: {time.time() - start:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
