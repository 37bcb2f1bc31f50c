"""Training throughput of backbones (teacher r100, students) under the shared engine, on generated faces.

Each ``--models`` entry trains with the teacher job's pieces (:class:`facerco.train.teacher.TeacherTask`, the
ArcFace Partial-FC head, SGD, gradient clipping) through :class:`facerco.train.engine.Engine`, with the precision
``--amp`` (``auto``: fp16 + GradScaler on CUDA, fp32 on CPU). Images are generated aligned faces
(:class:`facerco.data.synthetic.SyntheticFaces`) held in memory, so the number is the training step itself.
Samples/s = the engine's per-window rate, median over the windows after the first (warm-up, cuDNN autotuning);
peak GPU memory is reported on CUDA.

    python benchmarks/train_throughput.py                          # CPU: tiny sizes, about a minute
    python benchmarks/train_throughput.py --device cuda --models iresnet100 mbf_0.8m --out $OUT/train_tp.json
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _provenance import add_provenance_args, benchmark_recorder  # noqa: E402
from distill_throughput import FaceArray, make_config, timed_fit  # noqa: E402


def teacher_task_factory(num_classes: int) -> Any:
    def build(cfg: Any) -> Any:
        from facerco.losses.partial_fc import build_head
        from facerco.train.engine import seed_everything
        from facerco.train.job import build_backbone
        from facerco.train.teacher import TeacherTask

        seed_everything(0)
        backbone = build_backbone(cfg)
        return TeacherTask(backbone, build_head(cfg, int(backbone.meta.embedding_size), num_classes))

    return build


def run(args: argparse.Namespace) -> dict[str, Any]:
    from facerco.utils.device import resolve_device

    device = str(resolve_device(args.device))
    cuda = device.startswith("cuda")
    size = args.image_size or (112 if cuda else 64)
    batch = args.batch or (128 if cuda else 8)
    window = args.window or (10 if cuda else 2)
    total = window * args.windows
    dataset = FaceArray(batch * total, size)
    rows = []
    with tempfile.TemporaryDirectory(prefix="facerco_train_tp_") as tmp:
        for name in args.models:
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            cfg = make_config("teacher", name, Path(tmp) / name, size, batch, window, device, args.amp)
            res = timed_fit(teacher_task_factory(dataset.num_classes), dataset, cfg, total)
            if cuda:
                res["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            rows.append({"model": name, **res})
    return {"benchmark": "train_throughput", "device": device,
            "device_name": torch.cuda.get_device_name(device) if cuda else platform.processor() or platform.machine(),
            "image_size": size, "batch": batch, "amp": args.amp, "window_steps": window, "windows": args.windows,
            "threads": torch.get_num_threads(), "rows": rows, "platform": platform.platform(),
            "torch": torch.__version__}


def format_table(result: dict[str, Any]) -> str:
    lines = [f"train throughput: {result['image_size']}x{result['image_size']}, batch {result['batch']}, "
             f"{result['device']} ({result['device_name']}), amp {result['amp']}",
             f"{'model':<14} {'samples/s':>10} {'img/CPU-s':>10} {'peak GiB':>9}"]
    for r in result["rows"]:
        peak = f"{r['peak_memory_gib']:9.2f}" if "peak_memory_gib" in r else f"{'–':>9}"
        lines.append(f"{r['model']:<14} {r['samples_per_s']:10.1f} {r['images_per_cpu_s']:10.1f} {peak}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    from facerco.utils.io import write_json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--models", nargs="+", default=["iresnet100", "mbf_0.8m"])
    parser.add_argument("--image-size", type=int, default=0, help="0: 112 on CUDA, 64 on CPU")
    parser.add_argument("--batch", type=int, default=0, help="0: 128 on CUDA, 8 on CPU")
    parser.add_argument("--window", type=int, default=0, help="steps per timed window (0: 10 on CUDA, 2 on CPU)")
    parser.add_argument("--windows", type=int, default=3, help="windows per model; the first is warm-up")
    parser.add_argument("--amp", default="auto", choices=["auto", "off", "fp16", "bf16"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="bench_out/train_throughput.json")
    add_provenance_args(parser)
    args = parser.parse_args(argv)
    recorder = benchmark_recorder(__file__, argv, args)
    if args.windows < 2:
        parser.error("--windows must be >= 2 (the first window is warm-up)")
    torch.set_num_threads(args.threads)
    result = run(args)
    print(format_table(result))
    write_json(args.out, {**result, "provenance": recorder.finish()})
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
