"""Inference throughput of deployable backbones: torch eager, torch.compile (CPU) and onnxruntime.

Usage:
    python benchmarks/export.py                       # mbf_0.8m and mbf, batch 1 and 64, 1 thread
    python benchmarks/export.py --archs mbf --threads 2 --out bench_out/export_t2.json

Weights are random (speed does not depend on their values); each backend sees the same normalised input. The
ONNX file comes from :func:`facerco.export.onnx.export_onnx`, so the benchmark measures what ``facerco export
onnx`` ships. Timing: warm-up calls first (torch.compile compiles there, timed separately), then ``--rounds``
interleaved rounds in which each backend runs repeated calls for ``--min-time / rounds`` seconds; images/s =
batch * calls / elapsed, best round reported (the machine may be shared), median kept in the JSON. Images per
CPU-second of this process are reported beside it: with one thread on a busy shared machine they approximate
what an idle one would show.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facerco.export.onnx import export_onnx, generated_images, normalize_batch, ort_session
from facerco.models import create_model
from facerco.utils.io import write_json

BACKENDS = ("torch_eager", "torch_compile", "onnxruntime")


def _throughput(fn: Callable[[], Any], batch: int, min_time: float, min_calls: int) -> tuple[float, float]:
    """(images per wall second, images per CPU second of this process)."""
    calls, start, cpu_start = 0, time.perf_counter(), time.process_time()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time and calls >= min_calls:
            cpu = max(time.process_time() - cpu_start, 1e-9)
            return batch * calls / elapsed, batch * calls / cpu


def _runners(model: torch.nn.Module, onnx_path: Path, threads: int) -> dict[str, Callable[[np.ndarray], Any]]:
    compiled = torch.compile(model)
    session = ort_session(onnx_path, threads=threads)

    def eager(x: np.ndarray) -> Any:
        with torch.inference_mode():
            return model(torch.from_numpy(x))

    def comp(x: np.ndarray) -> Any:
        with torch.inference_mode():
            return compiled(torch.from_numpy(x))

    def ort(x: np.ndarray) -> Any:
        return session.run(None, {"data": x})[0]

    return {"torch_eager": eager, "torch_compile": comp, "onnxruntime": ort}


def bench_arch(arch: str, batch_sizes: list[int], threads: int, min_time: float, rounds: int,
               workdir: Path) -> list[dict[str, Any]]:
    model = create_model(arch).eval()
    onnx_path = workdir / f"{arch}.onnx"
    export_onnx(model, onnx_path)
    runners = _runners(model, onnx_path, threads)
    rows = []
    for batch in batch_sizes:
        x = normalize_batch(generated_images(batch, tuple(model.meta.input_size)))
        warmup = {}
        for backend in BACKENDS:
            start = time.perf_counter()
            runners[backend](x)  # warm-up (torch.compile compiles this shape here)
            warmup[backend] = time.perf_counter() - start
            runners[backend](x)
        # Backends take turns, round after round, so a load spike from other processes hits all of them; the best
        # round is reported (like timeit's min), the median beside it.
        speeds: dict[str, list[float]] = {b: [] for b in BACKENDS}
        cpu_speeds: dict[str, list[float]] = {b: [] for b in BACKENDS}
        for _ in range(rounds):
            for backend in BACKENDS:
                run = runners[backend]
                img_s, img_cpu_s = _throughput(lambda run=run, x=x: run(x), batch, min_time / rounds, min_calls=2)
                speeds[backend].append(img_s)
                cpu_speeds[backend].append(img_cpu_s)
        for backend in BACKENDS:
            best, cpu_best = max(speeds[backend]), max(cpu_speeds[backend])
            rows.append({"arch": arch, "batch": batch, "backend": backend, "images_per_s": best,
                         "median_images_per_s": float(np.median(speeds[backend])), "rounds": speeds[backend],
                         "images_per_cpu_s": cpu_best, "ms_per_batch": batch * 1000.0 / best,
                         "warmup_s": warmup[backend]})
            print(f"  {arch:<10} batch {batch:>3}  {backend:<14} best {best:9.1f} img/s  "
                  f"median {np.median(speeds[backend]):9.1f}  per CPU-second {cpu_best:9.1f}", flush=True)
    return rows


def _table(rows: list[dict[str, Any]]) -> str:
    keys = sorted({(r["arch"], r["batch"]) for r in rows}, key=lambda k: (k[0], k[1]))
    lookup = {(r["arch"], r["batch"], r["backend"]): r for r in rows}
    lines = ["| model | batch | torch eager img/s | torch.compile img/s | onnxruntime img/s |",
             "|---|---:|---:|---:|---:|"]
    for arch, batch in keys:
        cells = [f"{lookup[(arch, batch, b)]['images_per_s']:.1f} ({lookup[(arch, batch, b)]['images_per_cpu_s']:.1f})"
                 for b in BACKENDS]
        lines.append(f"| {arch} | {batch} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["mbf_0.8m", "mbf"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 64])
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for torch and onnxruntime")
    parser.add_argument("--min-time", type=float, default=6.0, help="seconds of timed calls per cell, all rounds")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per cell (best one reported)")
    parser.add_argument("--out", default="bench_out/export.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs:
            rows += bench_arch(arch, args.batch_sizes, args.threads, args.min_time, args.rounds, Path(tmp))
    table = _table(rows)
    print(f"\nthreads={args.threads}, {platform.processor() or platform.machine()}, torch {torch.__version__}\n")
    print(table)
    print("\ncells: images per wall-clock second, best round (images per CPU-second of this process: the speed an "
          "idle machine would show when the cores are shared)")
    import onnxruntime

    write_json(args.out, {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "threads": args.threads, "min_time_s": args.min_time, "rounds": args.rounds, "machine": platform.machine(),
        "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "rows": rows, "table_markdown": table,
    })
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
