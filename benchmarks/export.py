"""Inference throughput of deployable backbones: torch eager, torch.compile (CPU) and onnxruntime fp32/fp16/int8.

Usage:
    python benchmarks/export.py                       # mbf_0.8m and mbf, batch 1 and 64, 1 thread
    python benchmarks/export.py --archs mbf --threads 2 --out bench_out/export_t2.json
    # issue 20: the PReLU student against its ReLU variant (model overrides after a colon)
    python benchmarks/export.py --archs mbf_0.8m mbf_0.8m:activation=relu --backends onnxruntime onnxruntime_int8
    # int8 (issue 12): speed and size of fp32 / fp16 / int8 / dynamic-int8 files, op-time profile, and a trained
    # student's held-out verification accuracy for each precision
    python benchmarks/export.py --backends onnxruntime onnxruntime_fp16 onnxruntime_int8 onnxruntime_dynamic \
        --profile --student STUDENT.safetensors --calibrate ALIGNED_TRAIN_DIR \
        --eval-pairs pairs_heldout.txt --eval-root EVAL_DIR --out benchmarks/results/export_int8.json

Weights are random (speed does not depend on their values); each backend sees the same normalised input. The
ONNX files come from :func:`facerco.export.onnx.export_onnx` and :func:`facerco.export.quantize.quantize_int8`
(int8: calibrated on generated images here, since only speed is measured), so the benchmark measures what
``facerco export onnx`` ships. ``onnxruntime_dynamic`` is onnxruntime's ``quantize_dynamic`` (int8 weights,
activations quantized at run time), measured to decide whether the CLI should offer it. Timing: warm-up calls
first (torch.compile compiles there, timed separately), then ``--rounds`` interleaved rounds in which each backend
runs repeated calls for ``--min-time / rounds`` seconds; images/s = batch * calls / elapsed, best round reported
(the machine may be shared), median kept in the JSON. Images per CPU-second of this process are reported beside
it: with one thread on a busy shared machine they approximate what an idle one would show.

``--student`` exports a trained checkpoint as fp32, fp16 and int8 through :func:`facerco.export.deploy.export_model`
(the CLI's code path, cards included) and records file size, parity and verification accuracy of each file on
``--eval-pairs``/``--eval-root`` (or ``--eval-bin``) next to the PyTorch model's, plus its own fp32/int8 speed.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _provenance import add_provenance_args, benchmark_recorder, cpu_info  # noqa: E402

BACKENDS = ("torch_eager", "torch_compile", "onnxruntime")
ONNX_FILES = {"onnxruntime": "fp32", "onnxruntime_fp16": "fp16", "onnxruntime_int8": "int8",
              "onnxruntime_dynamic": "dynamic"}
ALL_BACKENDS = ("torch_eager", "torch_compile", *ONNX_FILES)


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


def _with_bn_statistics(model: torch.nn.Module, size: tuple[int, int]) -> torch.nn.Module:
    """Random weights but BatchNorm statistics from real forward passes, so int8 ranges are not degenerate."""
    torch.manual_seed(0)
    model.train()
    with torch.no_grad():
        for seed in range(2):
            model(torch.from_numpy(normalize_batch(generated_images(16, size, seed=seed))))
    return model.eval()


def _onnx_files(model: torch.nn.Module, backends: list[str], workdir: Path, arch: str) -> dict[str, Path]:
    """One file per ONNX backend: fp32 (also the source of the others), fp16, static int8, dynamic int8."""
    from facerco.export.quantize import CalibrationSet, quantize_int8

    size = tuple(model.meta.input_size)
    arch = arch.replace(":", "_").replace("=", "-").replace(",", "_")  # a file stem from an arch spec
    files = {"fp32": workdir / f"{arch}.onnx"}
    export_onnx(model, files["fp32"])
    wanted = {ONNX_FILES[b] for b in backends if b in ONNX_FILES}
    if "fp16" in wanted:
        files["fp16"] = workdir / f"{arch}_fp16.onnx"
        export_onnx(model, files["fp16"], fp16=True)
    if "int8" in wanted:
        images = generated_images(64, size, seed=11)
        calib = CalibrationSet(images, "generated", [str(i) for i in range(64)], 64, 0)
        files["int8"] = workdir / f"{arch}_int8.onnx"
        quantize_int8(files["fp32"], files["int8"], calib)
    if "dynamic" in wanted:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        files["dynamic"] = workdir / f"{arch}_dynamic.onnx"
        quantize_dynamic(str(files["fp32"]), str(files["dynamic"]), weight_type=QuantType.QInt8)
    return files


def _runners(model: torch.nn.Module, files: dict[str, Path], threads: int, backends: list[str]
             ) -> dict[str, Callable[[np.ndarray], Any]]:
    runners: dict[str, Callable[[np.ndarray], Any]] = {}
    if "torch_eager" in backends:
        def eager(x: np.ndarray) -> Any:
            with torch.inference_mode():
                return model(torch.from_numpy(x))

        runners["torch_eager"] = eager
    if "torch_compile" in backends:
        compiled = torch.compile(model)

        def comp(x: np.ndarray) -> Any:
            with torch.inference_mode():
                return compiled(torch.from_numpy(x))

        runners["torch_compile"] = comp
    for backend in backends:
        if backend in ONNX_FILES:
            session = ort_session(files[ONNX_FILES[backend]], threads=threads)
            runners[backend] = lambda x, session=session: session.run(None, {"data": x})[0]
    return runners


def op_profile(path: Path, x: np.ndarray, threads: int, runs: int = 3) -> dict[str, float]:
    """Share of onnxruntime kernel time per operator type (after its graph optimisations), from its profiler."""
    import json

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.enable_profiling = True
    options.profile_file_prefix = str(path.with_suffix(""))
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    for _ in range(runs):
        session.run(None, {"data": x})
    trace = Path(session.end_profiling())
    totals: dict[str, float] = {}
    for event in json.loads(trace.read_text()):
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            op = event["args"]["op_name"]
            totals[op] = totals.get(op, 0.0) + float(event["dur"])
    trace.unlink()
    grand = sum(totals.values()) or 1.0
    return {op: t / grand for op, t in sorted(totals.items(), key=lambda kv: -kv[1])}


def _time_cell(runners: dict[str, Callable[[np.ndarray], Any]], x: np.ndarray, batch: int, min_time: float,
               rounds: int) -> dict[str, dict[str, Any]]:
    """Warm-up, then interleaved rounds of every backend on one input; best and median rates per backend."""
    warmup = {}
    for backend, run in runners.items():
        start = time.perf_counter()
        run(x)  # warm-up (torch.compile compiles this shape here)
        warmup[backend] = time.perf_counter() - start
        run(x)
    # Backends take turns, round after round, so a load spike from other processes hits all of them; the best
    # round is reported (like timeit's min), the median beside it.
    speeds: dict[str, list[float]] = {b: [] for b in runners}
    cpu_speeds: dict[str, list[float]] = {b: [] for b in runners}
    for _ in range(rounds):
        for backend, run in runners.items():
            img_s, img_cpu_s = _throughput(lambda run=run: run(x), batch, min_time / rounds, min_calls=2)
            speeds[backend].append(img_s)
            cpu_speeds[backend].append(img_cpu_s)
    return {b: {"images_per_s": max(speeds[b]), "median_images_per_s": float(np.median(speeds[b])),
                "rounds": speeds[b], "images_per_cpu_s": max(cpu_speeds[b]), "ms_per_batch": batch * 1000.0 /
                max(speeds[b]), "warmup_s": warmup[b]} for b in runners}


def _arch_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``mbf_0.8m:activation=relu,embedding_size=128`` -> (name, overrides); values are int/float when they parse."""
    name, _, rest = spec.partition(":")
    overrides: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        for cast in (int, float):
            try:
                overrides[key] = cast(value)
                break
            except ValueError:
                continue
        else:
            overrides[key] = value
    return name, overrides


def bench_arch(arch: str, batch_sizes: list[int], threads: int, min_time: float, rounds: int,
               workdir: Path, backends: list[str] | None = None, model: torch.nn.Module | None = None,
               profile: bool = False) -> list[dict[str, Any]]:
    backends = list(backends or BACKENDS)
    model = model if model is not None else _with_bn_statistics(create_model(*_arch_spec(arch)[:1],
                                                                             **_arch_spec(arch)[1]), (112, 112))
    files = _onnx_files(model, backends, workdir, arch)
    runners = _runners(model, files, threads, backends)
    rows = []
    for batch in batch_sizes:
        x = normalize_batch(generated_images(batch, tuple(model.meta.input_size)))
        for backend, cell in _time_cell(runners, x, batch, min_time, rounds).items():
            row = {"arch": arch, "batch": batch, "backend": backend, "threads": threads, **cell}
            if backend in ONNX_FILES:
                row["file_bytes"] = files[ONNX_FILES[backend]].stat().st_size
                if profile and batch == max(batch_sizes):
                    row["op_time_share"] = op_profile(files[ONNX_FILES[backend]], x, threads)
            rows.append(row)
            print(f"  {arch:<10} batch {batch:>3}  {backend:<20} best {cell['images_per_s']:9.1f} img/s  "
                  f"median {cell['median_images_per_s']:9.1f}  per CPU-second {cell['images_per_cpu_s']:9.1f}",
                  flush=True)
    return rows


def _table(rows: list[dict[str, Any]]) -> str:
    keys = sorted({(r["arch"], r["batch"]) for r in rows}, key=lambda k: (k[0], k[1]))
    backends = [b for b in ALL_BACKENDS if any(r["backend"] == b for r in rows)]
    lookup = {(r["arch"], r["batch"], r["backend"]): r for r in rows}
    lines = ["| model | batch | " + " | ".join(f"{b} img/s" for b in backends) + " |",
             "|---|---:|" + "---:|" * len(backends)]
    for arch, batch in keys:
        cells = []
        for b in backends:
            r = lookup.get((arch, batch, b))
            cells.append("–" if r is None else f"{r['images_per_s']:.1f} ({r['images_per_cpu_s']:.1f})")
        lines.append(f"| {arch} | {batch} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """int8 (and dynamic, fp16) against fp32 onnxruntime: speed per CPU-second and file size."""
    lookup = {(r["arch"], r["batch"], r["backend"]): r for r in rows}
    out = []
    for (arch, batch, backend), r in sorted(lookup.items()):
        ref = lookup.get((arch, batch, "onnxruntime"))
        if backend in ONNX_FILES and backend != "onnxruntime" and ref is not None:
            out.append({"arch": arch, "batch": batch, "backend": backend,
                        "speed_per_cpu_s_vs_fp32": r["images_per_cpu_s"] / ref["images_per_cpu_s"],
                        "speed_vs_fp32": r["images_per_s"] / ref["images_per_s"],
                        "size_vs_fp32": r["file_bytes"] / ref["file_bytes"]})
    return out


def bench_student(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """A trained student as fp32 / fp16 / int8 files: size, parity, verification (the export's own card numbers)."""
    from facerco.export.deploy import ExportPlan, export_model
    from facerco.models.checkpoint import load_model
    from facerco.utils.io import sha256_file

    model = load_model(args.student).model
    source = {"checkpoint": Path(args.student).name, "sha256": sha256_file(args.student)}
    common = {"check": args.check, "check_limit": 64, "repeats": 3, "eval_pairs": args.eval_pairs,
              "eval_root": args.eval_root, "eval_bin": args.eval_bin}
    variants = [("fp32", {}), ("fp16", {})]
    for method in args.calib_methods:
        variants.append((f"int8_{method}", {"calibration_method": method}))
    if args.compare_preprocess:
        variants.append((f"int8_{args.calib_methods[0]}_no_preprocess",
                         {"calibration_method": args.calib_methods[0], "preprocess": False}))
    rows, files = [], {}
    for name, extra in variants:
        precision = name.split("_")[0]
        plan = ExportPlan(precision=precision, calibrate=args.calibrate if precision == "int8" else None,
                          calibration_count=args.calib_count, min_cosine=0.0, min_mean_cosine=0.0,
                          min_speedup=0.0 if precision == "int8" else None, **common, **extra)
        start = time.perf_counter()
        result = export_model(model, workdir / f"student_{name}.onnx", plan, source=source)
        card = result.card
        files[name] = result.path
        ver = card["verification"] or {}
        rows.append({"variant": name, "file_bytes": card["model"]["file_bytes"],
                     "min_cosine": card["parity"]["min_cosine"], "mean_cosine": card["parity"]["mean_cosine"],
                     "accuracy": ver.get("exported", {}).get("accuracy"),
                     "accuracy_std": ver.get("exported", {}).get("accuracy_std"),
                     "tar_at_far_1e-3": ver.get("exported", {}).get("tar_at_far", {}).get("0.001"),
                     "pytorch_accuracy": ver.get("pytorch", {}).get("accuracy"),
                     "drop_points": ver.get("drop_points"), "seconds": time.perf_counter() - start,
                     "quantization": card["quantization"]})
        print(f"  student {name:<28} {rows[-1]['file_bytes'] / 1e6:7.3f} MB  mean cos {rows[-1]['mean_cosine']:.5f}"
              f"  acc {100 * (rows[-1]['accuracy'] or float('nan')):.2f}  drop {rows[-1]['drop_points']}", flush=True)
    fp32 = rows[0]["file_bytes"]
    for row in rows:
        row["size_vs_fp32"] = row["file_bytes"] / fp32
    int8_name = f"int8_{args.calib_methods[0]}"
    speed_runners = {"onnxruntime": ort_session(files["fp32"], threads=args.threads),
                     "onnxruntime_int8": ort_session(files[int8_name], threads=args.threads)}
    runners = {b: (lambda x, s=s: s.run(None, {"data": x})[0]) for b, s in speed_runners.items()}
    speed = []
    for batch in args.batch_sizes:
        x = normalize_batch(generated_images(batch, tuple(model.meta.input_size)))
        for backend, cell in _time_cell(runners, x, batch, args.min_time, args.rounds).items():
            speed.append({"batch": batch, "backend": backend, "threads": args.threads, **cell})
    return {"checkpoint": source, "arch": model.meta.name, "input_size": list(model.meta.input_size),
            "eval": args.eval_pairs or args.eval_bin, "calibrate": args.calibrate, "calib_count": args.calib_count,
            "rows": rows, "speed": speed}


def _student_table(student: dict[str, Any]) -> str:
    lines = ["| file | size MB | x fp32 size | mean cosine | min cosine | held-out acc % | drop (points) | "
             "TAR@FAR=1e-3 % |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in student["rows"]:
        acc = "–" if r["accuracy"] is None else f"{100 * r['accuracy']:.2f} ± {100 * r['accuracy_std']:.2f}"
        drop = "–" if r["drop_points"] is None else f"{r['drop_points']:+.2f}"
        tar = "–" if r["tar_at_far_1e-3"] is None else f"{100 * r['tar_at_far_1e-3']:.2f}"
        lines.append(f"| {r['variant']} | {r['file_bytes'] / 1e6:.3f} | {r['size_vs_fp32']:.3f} | "
                     f"{r['mean_cosine']:.5f} | {r['min_cosine']:.5f} | {acc} | {drop} | {tar} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["mbf_0.8m", "mbf"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 64])
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for torch and onnxruntime")
    parser.add_argument("--min-time", type=float, default=6.0, help="seconds of timed calls per cell, all rounds")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per cell (best one reported)")
    parser.add_argument("--backends", nargs="+", choices=ALL_BACKENDS, default=list(BACKENDS))
    parser.add_argument("--profile", action="store_true", help="onnxruntime op-time shares at the largest batch")
    parser.add_argument("--student", default=None, help="trained checkpoint: fp32/fp16/int8 accuracy and size")
    parser.add_argument("--calibrate", default=None, help="int8 calibration images for --student")
    parser.add_argument("--calib-count", type=int, default=300)
    parser.add_argument("--calib-methods", nargs="+", default=["minmax"], choices=("minmax", "entropy", "percentile"))
    parser.add_argument("--compare-preprocess", action="store_true", help="also an int8 file without quant_pre_process")
    parser.add_argument("--check", default="generated", help="parity images for --student")
    parser.add_argument("--eval-pairs", default=None)
    parser.add_argument("--eval-root", default=None)
    parser.add_argument("--eval-bin", default=None)
    parser.add_argument("--out", default="bench_out/export.json")
    add_provenance_args(parser)
    args = parser.parse_args(argv)
    recorder = benchmark_recorder(__file__, argv, args)
    torch.set_num_threads(args.threads)
    rows: list[dict[str, Any]] = []
    student = None
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs:
            rows += bench_arch(arch, args.batch_sizes, args.threads, args.min_time, args.rounds, Path(tmp),
                               backends=args.backends, profile=args.profile)
        if args.student:
            student = bench_student(args, Path(tmp))
    table = _table(rows)
    print(f"\nthreads={args.threads}, {platform.processor() or platform.machine()}, torch {torch.__version__}\n")
    print(table)
    print("\ncells: images per wall-clock second, best round (images per CPU-second of this process: the speed an "
          "idle machine would show when the cores are shared)")
    ratios = _ratios(rows)
    print(f"CPU integer/bf16 flags: {', '.join(_cpu_flags()) or 'none'} (goal, issue 20: int8 >= 1.5x fp32)")
    for r in ratios:
        print(f"  {r['arch']:<28} batch {r['batch']:>3} {r['backend']:<20} speed x{r['speed_vs_fp32']:.2f} of fp32 "
              f"(per CPU-s x{r['speed_per_cpu_s_vs_fp32']:.2f}), size x{r['size_vs_fp32']:.3f}")
    if student is not None:
        print("\n" + _student_table(student))
    import onnxruntime

    write_json(args.out, {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "threads": args.threads, "min_time_s": args.min_time, "rounds": args.rounds, "machine": platform.machine(),
        "cpu_flags": _cpu_flags(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
        "rows": rows, "ratios_vs_fp32": ratios, "table_markdown": table, "student": student,
        "student_table_markdown": None if student is None else _student_table(student),
        "provenance": recorder.finish(),
    })
    print(f"\nwrote {args.out}")
    return 0


def _cpu_flags() -> list[str]:
    """The integer/bf16 features onnxruntime's kernels use when present (the provenance block's CPU reading)."""
    return sorted(f for f, on in (cpu_info()["flags"] or {}).items() if on)


if __name__ == "__main__":
    sys.exit(main())
