"""Benchmark: exact MegaFace-scale identification vs the bare matrix product of the same shapes.

Default shapes are MegaFace Challenge 1: 3,530 probes of 80 identities × 1,000,000 distractors × 512-d. The
distractors are generated once into a float32 (or float16) ``.npy`` written chunk by chunk (never held in memory) and
memory-mapped by the evaluator. Printed: total evaluation time, the bare chunked product time (same memmap, same
chunk size, results discarded), their ratio (goal ≤ 1.3), and peak resident memory (goal ≤ distractor array + 1 GB;
the memmap's pages count as resident once read).

    python benchmarks/identification.py                       # full size (2 GB file under /tmp)
    python benchmarks/identification.py --distractors 100000  # smaller
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _provenance import add_provenance_args, benchmark_recorder  # noqa: E402


def _vm(key: str) -> float:
    """A /proc/self/status memory field in MiB (VmHWM = peak resident, VmRSS = now)."""
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def make_distractors(path: Path, n: int, dim: int, dtype: str, seed: int, chunk: int = 65536) -> None:
    """Unit-norm Gaussian rows written with plain file writes (page cache, not this process's memory)."""
    if path.is_file():
        arr = np.load(path, mmap_mode="r")
        if arr.shape == (n, dim) and arr.dtype == np.dtype(dtype):
            return
    rng = np.random.default_rng(seed)
    tmp = path.with_suffix(".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, {"descr": np.dtype(dtype).str, "fortran_order": False,
                                                      "shape": (n, dim)})
        for s in range(0, n, chunk):
            x = rng.standard_normal((min(chunk, n - s), dim), dtype=np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            handle.write(x.astype(dtype).tobytes())
    os.replace(tmp, path)


def make_probes(n: int, ids: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` probes over ``ids`` identities (unequal counts); genuine cosine near the top distractor scores."""
    rng = np.random.default_rng(seed + 1)
    labels = np.sort(rng.integers(0, ids, n))
    centers = rng.standard_normal((ids, dim))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    x = centers[labels] + 1.7 * rng.standard_normal((n, dim)) / np.sqrt(dim)  # genuine cosine ~0.26
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), labels


def bare_product(probes: np.ndarray, dist: np.ndarray, chunk: int) -> float:
    """Seconds for P @ D.T over the memmap in chunks (torch, float32), results discarded."""
    import torch

    p = torch.from_numpy(probes)
    t0 = time.perf_counter()
    for s in range(0, len(dist), chunk):
        d = torch.from_numpy(np.array(dist[s : s + chunk], dtype=np.float32))  # a copy, as the evaluator reads
        _ = p @ d.T
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--distractors", type=int, default=1_000_000)
    ap.add_argument("--probes", type=int, default=3530)
    ap.add_argument("--identities", type=int, default=80)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    ap.add_argument("--backend", nargs="+", default=["torch"], choices=["torch", "faiss"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--chunk-size", type=int, default=16384)
    ap.add_argument("--data", default="/tmp/facerco_bench", help="folder for the generated distractor .npy")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench_out/identification.json")
    add_provenance_args(ap)
    args = ap.parse_args(argv)
    recorder = benchmark_recorder(__file__, argv, args)

    import torch

    torch.set_num_threads(args.threads)
    try:
        import faiss

        faiss.omp_set_num_threads(args.threads)
    except ImportError:
        pass
    from facerco.eval.identification import evaluate_identification

    path = Path(args.data) / f"distractors_{args.distractors}x{args.dim}_{args.dtype}_s{args.seed}.npy"
    t0 = time.perf_counter()
    make_distractors(path, args.distractors, args.dim, args.dtype, args.seed)
    gen_s = time.perf_counter() - t0
    dist = np.load(path, mmap_mode="r")
    probes, labels = make_probes(args.probes, args.identities, args.dim, args.seed)
    array_mib = dist.nbytes / 2**20
    base_mib = _vm("VmRSS")

    # the machine is shared: time the bare product before and after the runs and compare with their mean
    bare_before = bare_product(probes, dist, args.chunk_size)
    rows = []
    for backend in args.backend:
        t0 = time.perf_counter()
        res = evaluate_identification(probes, labels, dist, backend=backend, device="cpu",
                                      chunk_size=args.chunk_size, progress=False)
        total = time.perf_counter() - t0
        big = res["sizes"][-1]
        rows.append({"backend": backend, "total_s": total, "refine_rounds": res["refine_rounds"],
                     "topk": res["topk"], "rank1": big["rank1"], "tar_at_far": big["tar_at_far"],
                     "timings": res["timings"]})
    bare_after = bare_product(probes, dist, args.chunk_size)
    bare = (bare_before + bare_after) / 2
    for r in rows:
        r["ratio"] = r["total_s"] / bare
    peak = _vm("VmHWM")
    print(f"identification benchmark: {args.probes} probes ({args.identities} ids) x {args.distractors:,} x "
          f"{args.dim} {args.dtype}, {args.threads} threads, chunk {args.chunk_size} (data generated in {gen_s:.1f} s)")
    print(f"bare chunked product: {bare_before:.2f} s before the runs, {bare_after:.2f} s after (mean {bare:.2f})")
    print(f"{'backend':<8} {'total s':>9} {'bare mm s':>10} {'ratio':>6} {'goal':>5} {'rank-1 %':>9} "
          f"{'TAR@1e-6 %':>11} {'refine':>6}")
    for r in rows:
        print(f"{r['backend']:<8} {r['total_s']:9.2f} {bare:10.2f} {r['ratio']:6.2f} {'<=1.3':>5} "
              f"{100 * r['rank1']:9.2f} {100 * r['tar_at_far'].get('1e-06', float('nan')):11.2f} "
              f"{r['refine_rounds']:6d}")
    for r in rows:
        print(f"{r['backend']:<8} breakdown: " + ", ".join(f"{k} {v:.2f}" for k, v in r["timings"].items()))
    extra = peak - array_mib
    print(f"peak RSS {peak:.0f} MiB = distractor array {array_mib:.0f} MiB + {extra:.0f} MiB "
          f"(goal: + <= 1024 MiB; process before the run {base_mib:.0f} MiB)")
    out = {"args": vars(args), "bare_product_s": bare, "bare_before_s": bare_before, "bare_after_s": bare_after,
           "runs": rows, "peak_rss_mib": peak,
           "distractor_array_mib": array_mib, "peak_minus_array_mib": extra, "python": sys.version.split()[0],
           "torch": torch.__version__, "machine": platform.machine(), "cpus": os.cpu_count(),
           "provenance": recorder.finish()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
