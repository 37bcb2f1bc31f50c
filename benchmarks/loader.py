"""Data-loading throughput: which JPEG decoder, and how close the .rec -> tensor loader gets to decoding alone.

Builds a RecordIO dataset of 112x112 JPEGs (quality 95, from LFW when ../shared/data is present, else generated
gradients), then measures in images/s on one core:
  1. candidate decoders on in-memory bytes (cv2 straight to RGB, cv2 BGR + cvtColor, PIL, imageio);
  2. ``decode_image`` alone (the reference for the goal), and decode + flip + normalize in-process;
  3. RecordDataset + TrainTransform through a DataLoader (batch 128) with 0, 1 and 2 persistent workers, one epoch
     after a warm-up epoch (worker start-up excluded); "float" = the contract (normalized float per
     image), "uint8" = workers ship uint8 HWC batches and normalize_batch runs on the device after .to(device)
     (its CPU cost is shown on its own row);
  4. the engine's own input pipeline (``facerco.train.feed.build_loader``: the keyed batch sampler with seeded flips,
     each batch decoded + flipped into one uint8 tensor in the workers) with 1 and 2 workers, built anew every epoch
     as the engine does, so its worker start-up is included; its CPU time is this process plus the exited workers
     (``getrusage`` of self and children). normalize_batch is the device's part (row above).
Goal: the 1-worker loader >= 0.9x decode alone (the engine rows per CPU-second). Wall-clock rates depend on what
else runs on the machine; the images per CPU-second (this process + its DataLoader workers) show the cost of the
work itself. Prints a table and writes JSON (--out).

    python benchmarks/loader.py --images 2000 --out bench_out/loader.json
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader

from facerco.data.datasets import RecordDataset
from facerco.data.recordio import InsightfaceWriter
from facerco.data.transforms import TrainTransform, decode_image, normalize_batch
from facerco.train.feed import build_loader
from facerco.train.sampler import GlobalBatchSampler
from facerco.utils.io import write_json

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _provenance import add_provenance_args, benchmark_recorder  # noqa: E402

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lfw_deepfunneled"


def _source_images(n: int, seed: int) -> tuple[list[bytes], str]:
    """n JPEGs at 112x112 quality 95 (BGR-encoded, as insightface packs them)."""
    params = [cv2.IMWRITE_JPEG_QUALITY, 95]
    root = Path(os.environ.get("FACERCO_REAL_DATA", REAL.parent)) / "lfw_deepfunneled"
    if root.is_dir():
        files = sorted(root.glob("*/*.jpg"))
        pick = np.random.default_rng(seed).choice(len(files), size=min(n, len(files)), replace=False)
        out = []
        for i in sorted(pick):
            img = cv2.imread(str(files[i]), cv2.IMREAD_COLOR)
            img = cv2.resize(img[69:181, 69:181] if img.shape[:2] == (250, 250) else img, (112, 112))
            out.append(cv2.imencode(".jpg", img, params)[1].tobytes())
        return out, f"LFW deep-funneled, central 112x112 crop ({len(out)} images)"
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:112, 0:112].astype(np.float32) / 112
    out = []
    for _ in range(n):
        a = rng.uniform(30, 220, 3)
        img = np.stack([a[0] + 60 * xx, a[1] + 60 * yy, a[2] - 60 * xx * yy], -1) + rng.normal(0, 8, (112, 112, 3))
        out.append(cv2.imencode(".jpg", img.clip(0, 255).astype(np.uint8), params)[1].tobytes())
    return out, f"generated gradients with noise ({n} images)"


def _decoders() -> dict[str, Callable[[bytes], np.ndarray]]:
    from PIL import Image

    out: dict[str, Callable[[bytes], np.ndarray]] = {}
    if hasattr(cv2, "IMREAD_COLOR_RGB"):
        out["cv2.imdecode(IMREAD_COLOR_RGB)"] = lambda b: cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR_RGB)
    out["cv2.imdecode(BGR)+cvtColor"] = lambda b: cv2.cvtColor(
        cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB
    )
    out["PIL.Image.open().convert(RGB)"] = lambda b: np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))
    try:
        import imageio.v3 as iio

        out["imageio.v3.imread"] = lambda b: iio.imread(b, extension=".jpg")
    except ImportError:  # pragma: no cover
        pass
    for name in ("simplejpeg", "turbojpeg"):
        try:
            __import__(name)
            print(f"note: {name} is installed but not benchmarked here", file=sys.stderr)
        except ImportError:
            pass
    return out


Measure = Callable[[], tuple[int, float, float]]  # one run -> (images, wall seconds, CPU seconds incl. workers)


def _cpu_seconds(pids: list[int] = ()) -> float:  # noqa: B006 - read-only default
    """CPU time of this process plus the given (live) worker processes, from /proc."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    total = me.ru_utime + me.ru_stime
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    return total


def _interleaved(measures: dict[str, Measure], rounds: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """(images per wall second, images per CPU second) of every measure, run in turn each round, so that load from
    other jobs hits all of them alike; CPU seconds are what the work costs whatever else runs on the machine."""
    wall: dict[str, list[float]] = {name: [] for name in measures}
    cpu: dict[str, list[float]] = {name: [] for name in measures}
    for _ in range(rounds):
        for name, fn in measures.items():
            n, seconds, cpu_s = fn()
            wall[name].append(n / seconds)
            cpu[name].append(n / max(cpu_s, 1e-9))
    return wall, cpu


def _loader_run(ds: RecordDataset, workers: int, batch: int) -> Measure:
    """One epoch through a DataLoader with persistent workers, after a warm-up epoch: worker start-up (fork,
    copy-on-write faults) is paid once per training run, not per epoch, so it is left out of wall and CPU time."""
    loader = DataLoader(
        ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=False, persistent_workers=workers > 0
    )

    def epoch() -> int:
        n = 0
        for _, y in loader:
            n += len(y)
        return n

    epoch()  # warm-up: starts the workers

    def go() -> tuple[int, float, float]:
        pids = [w.pid for w in getattr(loader._iterator, "_workers", [])] if workers else []  # noqa: SLF001
        t0, c0 = time.perf_counter(), _cpu_seconds(pids)
        n = epoch()
        return n, time.perf_counter() - t0, _cpu_seconds(pids) - c0

    return go


def _cpu_with_children() -> float:
    """CPU seconds of this process plus its exited (waited-for) children: the engine's per-epoch workers."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        use = resource.getrusage(who)
        total += use.ru_utime + use.ru_stime
    return total


def _engine_run(root: Path, workers: int, batch: int, seed: int) -> Measure:
    """One epoch through the DataLoader the engine builds (a new one per epoch, workers started and joined inside
    the timing, as in ``Engine.fit``); each call is the next epoch of the same seeded order."""
    ds = RecordDataset(root, TrainTransform(flip=False, size=112))  # what the teacher/student jobs open
    sampler = GlobalBatchSampler(len(ds), batch, seed=seed, flip=True)
    epochs = iter(range(1 << 30))

    def go() -> tuple[int, float, float]:
        epoch = next(epochs)
        sampler.set_epoch(epoch)
        t0, c0 = time.perf_counter(), _cpu_with_children()
        n = 0
        for images, _, _ in build_loader(ds, sampler, workers=workers, seed=seed, epoch=epoch,
                                         device=torch.device("cpu")):
            n += len(images)
        return n, time.perf_counter() - t0, _cpu_with_children() - c0

    return go


def _normalize_batch_run(n: int, batch: int) -> Measure:
    """The device-side step of the uint8 path, timed on the CPU (on a GPU it is negligible)."""
    x = torch.randint(0, 256, (batch, 112, 112, 3), dtype=torch.uint8)

    def go() -> tuple[int, float, float]:
        t0, c0 = time.perf_counter(), _cpu_seconds()
        for _ in range(max(1, n // batch)):
            normalize_batch(x)
        return max(1, n // batch) * batch, time.perf_counter() - t0, _cpu_seconds() - c0

    return go


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--engine-workers", type=int, nargs="*", default=[1, 2],
                        help="worker counts of the engine's own input pipeline rows")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench_out/loader.json")
    add_provenance_args(parser)
    args = parser.parse_args(argv)
    recorder = benchmark_recorder(__file__, argv, args)
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    torch.manual_seed(args.seed)

    blobs, source = _source_images(args.images, args.seed)
    results: dict = {
        "source": source,
        "images": len(blobs),
        "mean_jpeg_bytes": float(np.mean([len(b) for b in blobs])),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared), python {platform.python_version()}",
        "versions": {"opencv": cv2.__version__, "torch": torch.__version__, "numpy": np.__version__},
        "rounds": args.repeats,
        "decoders": {},
        "pipeline": {},
    }

    def run_all(fn: Callable[[bytes], object]) -> Measure:
        def go() -> tuple[int, float, float]:
            t0, c0 = time.perf_counter(), _cpu_seconds()
            for b in blobs:
                fn(b)
            return len(blobs), time.perf_counter() - t0, _cpu_seconds() - c0

        return go

    reference = decode_image(blobs[0])
    decoders = _decoders()
    rates, _ = _interleaved({name: run_all(fn) for name, fn in decoders.items()}, args.repeats)
    for name, fn in decoders.items():
        same = bool(np.array_equal(np.asarray(fn(blobs[0])), reference))
        results["decoders"][name] = {"images_per_s": max(rates[name]), "identical_to_cv2": same}

    float_tf = TrainTransform(flip=True, size=112)
    uint8_tf = TrainTransform(flip=True, size=112, output="uint8")
    measures: dict[str, Measure] = {
        "decode_image alone": run_all(decode_image),
        "decode+flip+normalize, in process": run_all(lambda b: float_tf(decode_image(b))),
        "decode+flip -> uint8, in process": run_all(lambda b: uint8_tf(decode_image(b))),
        "normalize_batch on this CPU": _normalize_batch_run(len(blobs), args.batch),
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with InsightfaceWriter(root / "train.rec", root / "train.idx", root / "property") as w:
            for i, b in enumerate(blobs):
                w.add(b, i // 10)
        datasets = {
            out: RecordDataset(root, TrainTransform(flip=True, size=112, output=out)) for out in ("float", "uint8")
        }
        for out, ds in datasets.items():
            for workers in args.workers:
                measures[f".rec loader {out}, {workers} worker(s)"] = _loader_run(ds, workers, args.batch)
        for workers in args.engine_workers:
            measures[f"engine loader uint8, {workers} worker(s)"] = _engine_run(root, workers, args.batch, args.seed)
        rates, cpu_rates = _interleaved(measures, args.repeats)
    base, cpu_base = rates["decode_image alone"], cpu_rates["decode_image alone"]
    for name, values in rates.items():
        cpu_values = cpu_rates[name]
        results["pipeline"][name] = {
            "images_per_s_best": max(values),
            "images_per_s_median": float(np.median(values)),
            "ratio_to_decode_alone_median": float(np.median([v / d for v, d in zip(values, base)])),
            "images_per_cpu_s_median": float(np.median(cpu_values)),
            "cpu_ratio_to_decode_alone_median": float(np.median([v / d for v, d in zip(cpu_values, cpu_base)])),
        }

    _print_table(results)
    write_json(args.out, {**results, "provenance": recorder.finish()})
    print(f"\nwrote {args.out}")
    return 0


def _print_table(r: dict) -> None:
    print(f"source: {r['source']}, mean {r['mean_jpeg_bytes']:.0f} bytes/JPEG; {r['machine']}; {r['rounds']} rounds")
    print(f"\n{'decoder (1 thread, in memory)':<40} {'best img/s':>10}  same pixels as cv2 RGB")
    for name, row in sorted(r["decoders"].items(), key=lambda kv: -kv[1]["images_per_s"]):
        print(f"{name:<40} {row['images_per_s']:>10.0f}  {row['identical_to_cv2']}")
    print(
        f"\n{'pipeline':<36} {'best img/s':>10} {'median':>7} {'x decode':>8}   "
        f"{'img/CPU-s':>9} {'x decode':>8}  (medians over rounds)"
    )
    for name, row in r["pipeline"].items():
        print(
            f"{name:<36} {row['images_per_s_best']:>10.0f} {row['images_per_s_median']:>7.0f} "
            f"{row['ratio_to_decode_alone_median']:>8.2f}   {row['images_per_cpu_s_median']:>9.0f} "
            f"{row['cpu_ratio_to_decode_alone_median']:>8.2f}"
        )


if __name__ == "__main__":
    sys.exit(main())
