"""Benchmark: exact MegaFace-scale identification vs the bare matrix product of the same shapes.

Default shapes are MegaFace Challenge 1: 3,530 probes of 80 identities × 1,000,000 distractors × 512-d. The
distractors are generated once into a float32 (or float16) ``.npy`` written chunk by chunk (never held in memory) and
memory-mapped by the evaluator. Printed, all in one run on one machine:

* the bare chunked float32 product (same memmap, same chunk size, results discarded), timed before and after the
  runs (the machine may be shared), and the bare int8 product of the same matrices (onnxruntime ``MatMulInteger``
  on codes quantized beforehand: the ceiling of the int8 screen on this CPU);
* per backend (``torch``, ``faiss``, ``int8``): the library call ``evaluate_identification`` in this process, and
  with ``--command`` the user's command ``facerco eval megaface --probes P.npy --distractors D.npy`` as a fresh
  process (start-up, reading the files and writing the report included) with its own peak RSS;
* ratios to the bare float32 product (issue 20's goal for the command: <= 0.5), and whether every backend's
  results (rank-1, CMC, TAR@FAR, ROC, per size) are identical;
* the CPU's integer dot-product flags (the int8 screen needs AVX512-VNNI / AVX-VNNI / AMX-INT8 to be fast; without
  them onnxruntime's u8s8 kernel is not much faster than float32).

    python benchmarks/identification.py                                   # full size, library rows, torch
    python benchmarks/identification.py --backend torch int8 --command --out benchmarks/results/identification.json
    python benchmarks/identification.py --distractors 100000              # smaller
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _provenance import add_provenance_args, benchmark_recorder, cpu_info  # noqa: E402


def _vm(key: str, pid: int | str = "self") -> float:
    """A /proc/<pid>/status memory field in MiB (VmHWM = peak resident, VmRSS = now); 0 for a process that ended."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return 0.0
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


def bare_int8_product(probes: np.ndarray, dist: np.ndarray, chunk: int) -> float:
    """Seconds for the int8 screen's product alone (onnxruntime MatMulInteger plus float scaling), codes prepared
    beforehand: what the screen could reach on this CPU if quantizing and merging cost nothing."""
    from facerco.eval._screen import Int8Product, quantize_rows

    product = Int8Product(probes)
    codes = [quantize_rows(np.array(dist[s : s + chunk], dtype=np.float32)) for s in range(0, len(dist), chunk)]
    t0 = time.perf_counter()
    for c in codes:
        _ = product.scores(c)
    return time.perf_counter() - t0


def _sizes_in(report: object) -> list[object]:
    """Every ``sizes`` list in a report (the per-size results), wherever the report nests them."""
    if isinstance(report, dict):
        found = [report["sizes"]] if isinstance(report.get("sizes"), list) else []
        return found + [x for k, v in report.items() if k != "sizes" for x in _sizes_in(v)]
    if isinstance(report, list):
        return [x for v in report for x in _sizes_in(v)]
    return []


def run_command(backend: str, probes_npy: Path, dist_npy: Path, out: Path, chunk: int) -> dict[str, object]:
    """``facerco eval megaface`` as a user runs it, in a fresh process: wall seconds, peak RSS, its per-size results."""
    import shutil
    import subprocess

    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "facerco.cli", "eval", "megaface", "--probes", str(probes_npy), "--distractors",
           str(dist_npy), "--backend", backend, "--chunk-size", str(chunk), "--out", str(out)]
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True)
        peak = 0.0
        while proc.poll() is None:  # the child's own high-water mark: wait4's ru_maxrss starts from this
            peak = max(peak, _vm("VmHWM", proc.pid))  # process's peak (exec keeps it), so it would report ours
            time.sleep(0.1)
        wall = time.perf_counter() - t0
        err.seek(0)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {err.read()[-2000:]}")
    report = json.loads((out / "report.json").read_text())
    return {"backend": backend, "command": " ".join(cmd), "wall_s": wall, "peak_rss_mib": peak,
            "peak_rss_source": "child's /proc VmHWM, polled every 0.1 s", "sizes": _sizes_in(report)}


def write_probe_files(folder: Path, probes: np.ndarray, labels: np.ndarray) -> Path:
    """``probes.npy`` + ``probes.csv`` (path,label,norm), the layout ``facerco export embeddings`` writes."""
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "probes.npy", probes)
    rows = ["path,label,norm"] + [f"p{i:05d}.jpg,{int(lab)},1" for i, lab in enumerate(labels)]
    (folder / "probes.csv").write_text("\n".join(rows) + "\n")
    return folder / "probes.npy"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--distractors", type=int, default=1_000_000)
    ap.add_argument("--probes", type=int, default=3530)
    ap.add_argument("--identities", type=int, default=80)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    ap.add_argument("--backend", nargs="+", default=["torch"], choices=["torch", "faiss", "int8"])
    ap.add_argument("--command", action="store_true",
                    help="also time `facerco eval megaface` end to end in a fresh process per backend")
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
    bare_int8 = bare_int8_product(probes, dist, args.chunk_size)
    rows = [library_row(backend, probes, labels, dist, args.chunk_size) for backend in args.backend]
    commands = []
    if args.command:
        folder = Path(args.data) / f"probes_{args.probes}x{args.dim}_s{args.seed}"
        probes_npy = write_probe_files(folder, probes, labels)
        commands = [run_command(b, probes_npy, path, Path(args.data) / f"report_{b}", args.chunk_size)
                    for b in args.backend]
    bare_after = bare_product(probes, dist, args.chunk_size)
    bare = (bare_before + bare_after) / 2
    for r in rows:
        r["ratio"] = r["total_s"] / bare
    for c in commands:
        c["ratio"] = c["wall_s"] / bare
        c["peak_minus_array_mib"] = c["peak_rss_mib"] - array_mib
    identical = all(r["sizes"] == rows[0]["sizes"] for r in rows) and all(
        c["sizes"] == [rows[0]["sizes"]] for c in commands)
    peak = _vm("VmHWM")
    flags = cpu_info()["flags"] or {}
    out = {"args": vars(args), "bare_product_s": bare, "bare_before_s": bare_before, "bare_after_s": bare_after,
           "bare_int8_product_s": bare_int8, "runs": rows, "commands": commands, "results_identical": identical,
           "peak_rss_mib": peak, "distractor_array_mib": array_mib, "peak_minus_array_mib": peak - array_mib,
           "cpu_int8_flags": flags, "python": sys.version.split()[0], "torch": torch.__version__,
           "machine": platform.machine(), "cpus": os.cpu_count(), "data_generated_s": gen_s,
           "process_rss_before_mib": base_mib, "provenance": recorder.finish()}
    print(format_table(out))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


def library_row(backend: str, probes: np.ndarray, labels: np.ndarray, dist: np.ndarray, chunk: int
                ) -> dict[str, object]:
    """``evaluate_identification`` in this process: seconds, its summary and every per-size result."""
    from facerco.eval.identification import evaluate_identification

    t0 = time.perf_counter()
    res = evaluate_identification(probes, labels, dist, backend=backend, device="cpu", chunk_size=chunk,
                                  progress=False)
    total = time.perf_counter() - t0
    big = res["sizes"][-1]
    return {"backend": backend, "total_s": total, "refine_rounds": res["refine_rounds"], "topk": res["topk"],
            "rank1": big["rank1"], "tar_at_far": big["tar_at_far"], "timings": res["timings"], "sizes": res["sizes"]}


def format_table(out: dict) -> str:
    """The printed report: the machine, the bare products, one line per library run and per command."""
    a, bare = out["args"], out["bare_product_s"]
    flags = ", ".join(f for f, on in out["cpu_int8_flags"].items() if on) or "none"
    lines = [f"identification benchmark: {a['probes']} probes ({a['identities']} ids) x {a['distractors']:,} x "
             f"{a['dim']} {a['dtype']}, {a['threads']} threads, chunk {a['chunk_size']}; CPU flags: {flags}",
             f"bare chunked fp32 product: {out['bare_before_s']:.2f} s before the runs, {out['bare_after_s']:.2f} s "
             f"after (mean {bare:.2f}); bare int8 product (codes ready): {out['bare_int8_product_s']:.2f} s "
             f"({out['bare_int8_product_s'] / bare:.2f}x fp32)",
             f"{'run':<16} {'seconds':>8} {'/ fp32 mm':>9} {'rank-1 %':>9} {'TAR@1e-6 %':>11} {'refine':>6} "
             f"{'peak RSS - array':>16}"]
    for r in out["runs"]:
        lines.append(f"{'library ' + r['backend']:<16} {r['total_s']:8.2f} {r['ratio']:9.2f} {100 * r['rank1']:9.2f} "
                     f"{100 * r['tar_at_far'].get('1e-06', float('nan')):11.2f} {r['refine_rounds']:6d} {'':>16}")
    for c in out["commands"]:
        big = c["sizes"][0][-1]
        lines.append(f"{'command ' + c['backend']:<16} {c['wall_s']:8.2f} {c['ratio']:9.2f} "
                     f"{100 * big['rank1']:9.2f} {100 * big['tar_at_far'].get('1e-06', float('nan')):11.2f} "
                     f"{'':>6} {c['peak_minus_array_mib']:13.0f} MiB")
    for r in out["runs"]:
        lines.append(f"library {r['backend']} breakdown: " + ", ".join(f"{k} {v:.2f}" for k, v in r["timings"].items()))
    lines.append(f"results identical across backends and commands: {out['results_identical']}; goals (issue 20): "
                 "command <= 0.5x the bare fp32 product, peak RSS <= array + 1024 MiB")
    lines.append(f"this process: peak RSS {out['peak_rss_mib']:.0f} MiB = array {out['distractor_array_mib']:.0f} "
                 f"MiB + {out['peak_minus_array_mib']:.0f} MiB")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
