"""Device half of the GPU check: 1:N identification on the device, and ONNX export with parity on the device.

1. Identification: MegaFace-shaped generated features (``--probes`` probes of ``--identities`` ids x
   ``--distractors`` x 512-d, built by ``benchmarks/identification.py``'s generators) scored by
   :func:`facerco.eval.identification.evaluate_identification` on ``--device`` with the torch backend and, when
   faiss-gpu is importable, the faiss backend; total time next to the bare chunked product on the same device.
   The two backends must agree exactly (rank-1 and TAR@FAR are exact by construction).
2. ONNX: :func:`facerco.export.onnx.export_onnx` of ``--export-model`` (random weights, BatchNorm statistics set from
   the check images so embeddings are O(1) and image-dependent; fp32 and fp16 files), then
   onnxruntime with ``CUDAExecutionProvider`` when onnxruntime-gpu provides it (otherwise the CPU provider, and the
   JSON says so) against PyTorch on the device: minimum cosine, max |diff|, batch-64 latency of both.

Prints a table and writes JSON (``--out``). On a CPU machine it runs as a dry run at small sizes.

    python benchmarks/gpu_eval_export.py --device cuda --out $OUT/gpu_eval_export.json
    python benchmarks/gpu_eval_export.py --device cpu --distractors 20000 --probes 300     # dry run
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _provenance import add_provenance_args, benchmark_recorder  # noqa: E402


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def bare_product_s(probes: np.ndarray, dist: np.ndarray, chunk: int, device: str) -> float:
    """Seconds for the chunked ``P @ D^T`` on ``device`` (host chunks copied over, as the evaluator does)."""
    p = torch.from_numpy(probes).to(device)
    _sync(device)
    t0 = time.perf_counter()
    for s in range(0, len(dist), chunk):
        d = torch.from_numpy(np.array(dist[s: s + chunk], dtype=np.float32)).to(device)
        _ = p @ d.T
    _sync(device)
    return time.perf_counter() - t0


def identification(args: argparse.Namespace, device: str) -> dict[str, Any]:
    from identification import make_distractors, make_probes

    from facerco.eval._search import available_backends
    from facerco.eval.identification import evaluate_identification

    path = Path(args.data) / f"distractors_{args.distractors}x{args.dim}_float32_s0.npy"
    make_distractors(path, args.distractors, args.dim, "float32", 0)
    dist = np.load(path, mmap_mode="r")
    probes, labels = make_probes(args.probes, args.identities, args.dim, 0)
    backends = ["torch"] + (["faiss"] if "faiss" in available_backends() else [])
    rows = []
    bare = bare_product_s(probes, dist, args.chunk_size, device)
    for backend in backends:
        t0 = time.perf_counter()
        try:
            res = evaluate_identification(probes, labels, dist, backend=backend, device=device,
                                          chunk_size=args.chunk_size, progress=False)
        except (RuntimeError, ValueError) as exc:  # e.g. faiss without GPU support on a CUDA device
            rows.append({"backend": backend, "error": str(exc)})
            continue
        total = time.perf_counter() - t0
        big = res["sizes"][-1]
        rows.append({"backend": res["backend"], "device": res["device"], "total_s": total,
                     "ratio_to_bare": total / bare, "rank1": big["rank1"], "tar_at_far": big["tar_at_far"],
                     "refine_rounds": res["refine_rounds"]})
    ok = [r for r in rows if "rank1" in r]
    agree = all(r["rank1"] == ok[0]["rank1"] and r["tar_at_far"] == ok[0]["tar_at_far"] for r in ok)
    return {"probes": args.probes, "identities": args.identities, "distractors": args.distractors, "dim": args.dim,
            "bare_product_s": bare, "rows": rows, "backends_agree": agree}


def _latency_ms(fn: Callable[[], Any], device: str, repeats: int) -> float:
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return 1000.0 * float(np.median(times))


def onnx_parity(args: argparse.Namespace, device: str) -> dict[str, Any]:
    import onnxruntime as ort
    from distill_throughput import calibrate_bn

    from facerco.export.onnx import INPUT_NAME, export_onnx, generated_images, normalize_batch
    from facerco.models import create_model

    torch.manual_seed(0)
    model = create_model(args.export_model)
    x = normalize_batch(generated_images(64, tuple(model.meta.input_size)))
    model = calibrate_bn(model, torch.from_numpy(x))
    cuda = device.startswith("cuda")
    want = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
    providers = [p for p in want if p in ort.get_available_providers()]
    rows = []
    with tempfile.TemporaryDirectory(prefix="facerco_gpu_onnx_") as tmp:
        for fp16 in (False, True):
            path = Path(tmp) / f"{args.export_model}{'_fp16' if fp16 else ''}.onnx"
            t0 = time.perf_counter()
            export_onnx(model, path, fp16=fp16)
            export_s = time.perf_counter() - t0
            session = ort.InferenceSession(str(path), providers=providers)
            net = model.to(device)
            xt = torch.from_numpy(x).to(device)
            with torch.inference_mode():
                ref = net(xt).float().cpu().numpy().astype(np.float64)
            got = session.run(None, {INPUT_NAME: x})[0].astype(np.float64)
            cos = (ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1) + 1e-12)

            def run_torch(net: torch.nn.Module = net, xt: torch.Tensor = xt) -> Any:
                with torch.inference_mode():
                    return net(xt)

            rows.append({"fp16": fp16, "export_s": export_s, "provider": session.get_providers()[0],
                         "min_cosine": float(cos.min()), "max_abs_diff": float(np.abs(ref - got).max()),
                         "torch_ms_b64": _latency_ms(run_torch, device, args.repeats),
                         "onnxruntime_ms_b64": _latency_ms(lambda s=session: s.run(None, {INPUT_NAME: x}), "cpu",
                                                           args.repeats)})
            model = model.cpu()
    return {"model": args.export_model, "available_providers": ort.get_available_providers(), "rows": rows}


def format_table(result: dict[str, Any]) -> str:
    ident, onnx = result["identification"], result["onnx"]
    lines = [f"device {result['device']} ({result['device_name']})",
             f"identification: {ident['probes']} probes x {ident['distractors']:,} x {ident['dim']}; bare product "
             f"{ident['bare_product_s']:.2f} s; backends agree: {ident['backends_agree']}"]
    for r in ident["rows"]:
        if "error" in r:
            lines.append(f"  {r['backend']:<6} error: {r['error']}")
        else:
            lines.append(f"  {r['backend']:<6} {r['total_s']:8.2f} s  ratio {r['ratio_to_bare']:.2f}  rank-1 "
                         f"{100 * r['rank1']:.2f} %")
    lines.append(f"onnx parity ({onnx['model']}):")
    for r in onnx["rows"]:
        lines.append(f"  {'fp16' if r['fp16'] else 'fp32'} {r['provider']:<22} min cos {r['min_cosine']:.6f}  max "
                     f"|diff| {r['max_abs_diff']:.2e}  torch {r['torch_ms_b64']:.1f} ms  ort "
                     f"{r['onnxruntime_ms_b64']:.1f} ms (batch 64)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    from facerco.utils.device import resolve_device
    from facerco.utils.io import write_json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--distractors", type=int, default=1_000_000)
    parser.add_argument("--probes", type=int, default=3530)
    parser.add_argument("--identities", type=int, default=80)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--chunk-size", type=int, default=65536)
    parser.add_argument("--data", default="/tmp/facerco_bench", help="folder for the generated distractor .npy")
    parser.add_argument("--export-model", default="mbf_0.8m")
    parser.add_argument("--repeats", type=int, default=10, help="timed batch-64 calls per backend (median)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["identification", "onnx"])
    parser.add_argument("--out", default="bench_out/gpu_eval_export.json")
    add_provenance_args(parser)
    args = parser.parse_args(argv)
    recorder = benchmark_recorder(__file__, argv, args)
    device = str(resolve_device(args.device))
    result: dict[str, Any] = {
        "benchmark": "gpu_eval_export", "device": device,
        "device_name": torch.cuda.get_device_name(device) if device.startswith("cuda") else platform.machine(),
        "torch": torch.__version__, "platform": platform.platform(),
        "identification": {"probes": 0, "distractors": 0, "dim": 0, "bare_product_s": 0.0, "rows": [],
                           "backends_agree": True, "skipped": True},
        "onnx": {"model": args.export_model, "rows": [], "skipped": True},
    }
    if "identification" not in args.skip:
        result["identification"] = identification(args, device)
    if "onnx" not in args.skip:
        result["onnx"] = onnx_parity(args, device)
    print(format_table(result))
    write_json(args.out, {**result, "provenance": recorder.finish()})
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
