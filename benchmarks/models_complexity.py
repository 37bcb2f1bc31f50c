"""Backbone table: parameters, MACs at 112x112 (vs FORMATS.md §4) and measured forward latency.

Usage:
    python benchmarks/models_complexity.py [--models mbf_0.8m iresnet50 ...] [--batch 1] [--repeat 5]
        [--device auto] [--out bench_out/models_complexity.json]

Latency is the median of ``--repeat`` timed eval-mode forwards after one warm-up, on the given device; on a shared
CPU it is indicative only. Models too big for the time budget can be left out with --models.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from facerco.models import create_model, list_models
from facerco.models.complexity import measure_complexity
from facerco.utils.device import resolve_device
from facerco.utils.io import write_json

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _provenance import add_provenance_args, benchmark_recorder  # noqa: E402

PUBLISHED = {  # FORMATS.md §4: params (M), MACs (G) at 112x112
    "iresnet18": (24.0, 2.61), "iresnet34": (34.1, 4.46), "iresnet50": (43.6, 6.31), "iresnet100": (65.2, 12.09),
    "mbf": (2.06, 0.44), "mobilefacenet": (1.0, 0.221),
}


def _latency_ms(model: torch.nn.Module, batch: int, repeat: int, device: torch.device) -> float:
    x = torch.randn(batch, 3, *model.meta.input_size, device=device)
    model.eval().to(device)
    times = []
    with torch.inference_mode():
        model(x)
        for _ in range(repeat):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            model(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=None, help="default: every registered model but r200/large")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-latency", action="store_true", help="only count params and MACs")
    parser.add_argument("--out", default="bench_out/models_complexity.json")
    add_provenance_args(parser)
    args = parser.parse_args(argv)
    recorder = benchmark_recorder(__file__, argv, args)
    device = resolve_device(args.device)
    names = args.models or [n for n in list_models() if n not in ("iresnet200", "mbf_large")]
    rows = []
    print(f"{'model':<15} {'params':>9} {'MACs':>8} {'published':>15} {'emb':>5} {'ms/batch':>9}")
    for name in names:
        model = create_model(name)
        cx = measure_complexity(model)
        ms = None if args.no_latency else _latency_ms(model, args.batch, args.repeat, device)
        pub = PUBLISHED.get(name)
        rows.append({"model": name, "params": cx.params, "macs": cx.macs, "embedding_size": model.meta.embedding_size,
                     "published_params_m": pub[0] if pub else None, "published_macs_g": pub[1] if pub else None,
                     "latency_ms": ms, "batch": args.batch, "device": str(device)})
        pub_text = f"{pub[0]}M/{pub[1]}G" if pub else "-"
        ms_text = "-" if ms is None else f"{ms:.1f}"
        print(f"{name:<15} {cx.params / 1e6:>8.2f}M {cx.macs / 1e9:>7.3f}G {pub_text:>15} "
              f"{model.meta.embedding_size:>5} {ms_text:>9}")
        del model
    write_json(args.out, {"threads": torch.get_num_threads(), "rows": rows, "provenance": recorder.finish()})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
