"""`facerco export onnx|embeddings`: deployment artefacts from a trained backbone.

Thin CLI over :mod:`facerco.export.deploy` (an fp32 / fp16 / int8 file with its parity report and model card) and
:mod:`facerco.export.embeddings`; heavy imports happen inside the handlers so ``facerco --help`` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from facerco.commands._common import add_debug_arg

_PRINT_ROWS = 64
# Mirrors of facerco.export.onnx constants (a test keeps them equal) so `facerco --help` need not import torch.
_EXPORTERS = ("dynamo", "legacy")
_DEFAULT_OPSET = 18
_GENERATED = "generated"
# Mirrors of facerco.export.quantize constants (same test).
_CALIB_METHODS = ("minmax", "entropy", "percentile")
_DEFAULT_CALIB_COUNT = 300
_DEFAULT_CALIB_BATCH = 16
_INT8_MIN_MEAN_COSINE = 0.98


def _load_backbone(path: str, arch: str | None) -> tuple[Any, dict[str, Any]]:
    from facerco.models.checkpoint import load_model

    loaded = load_model(path, device="cpu", arch=arch)
    return loaded.model, dict(loaded.metadata or {})


def _print_parity(report: dict[str, Any], min_cosine: float) -> None:
    rows = report["per_image"]
    print(f"parity on {report['num_images']} images (threads={report['threads']}): cosine and max |diff| per image")
    for row in rows[:_PRINT_ROWS]:
        flag = "" if row["cosine"] >= min_cosine else "  < goal"
        print(f"  {row['image']:<48} cos {row['cosine']:.7f}  max|diff| {row['max_abs_diff']:.3e}{flag}")
    if len(rows) > _PRINT_ROWS:
        print(f"  ... {len(rows) - _PRINT_ROWS} more in the JSON report")
    s = report["summary"]
    print(f"min cosine {s['min_cosine']:.7f}  mean {s['mean_cosine']:.7f}  max |diff| {s['max_abs_diff']:.3e} "
          f"(embedding max |value| {s['ref_max_abs']:.3f})")
    print(f"{'batch':>5}  {'torch ms':>9}  {'ort ms':>9}  {'torch img/s':>11}  {'ort img/s':>10}")
    for bs, t in report["latency"].items():
        print(f"{bs:>5}  {t['torch_ms']:9.2f}  {t['onnxruntime_ms']:9.2f}  {t['torch_img_s']:11.1f}  "
              f"{t['onnxruntime_img_s']:10.1f}")


def _plan(args: argparse.Namespace) -> Any:
    from facerco.export.deploy import ExportPlan

    precision = "int8" if args.int8 else "fp16" if args.fp16 else "fp32"
    return ExportPlan(
        precision=precision, opset=args.opset, exporter=args.exporter, simplify=args.simplify,
        calibrate=args.calibrate, calibration_count=args.calib_count, calibration_batch=args.calib_batch,
        calibration_method=args.calib_method, per_channel=not args.per_tensor, preprocess=not args.no_preprocess,
        check=None if args.no_check else args.check, check_limit=args.check_limit, repeats=args.repeats,
        eval_pairs=args.eval_pairs, eval_root=args.eval_root, eval_bin=args.eval_bin, min_cosine=args.min_cosine,
        min_mean_cosine=args.min_mean_cosine, max_drop=args.max_drop, min_speedup=args.min_speedup,
    )


def _print_result(result: Any) -> None:
    card = result.card
    m, e = card["model"], card["export"]
    h, w = card["architecture"]["input_size"]
    extra = f", {card['quantization']['size_vs_float32']:.2f}x the float32 file" if card["quantization"] else ""
    print(f"wrote {result.path} ({m['precision']}, {m['file_bytes'] / 1e6:.2f} MB{extra}, {m['num_nodes']} nodes, "
          f"opset {m['opset']}, {e['exporter']} exporter{', simplified' if e['simplified'] else ''}); input data: "
          f"(batch, 3, {h}, {w}) RGB (x-127.5)/127.5; output embedding: (batch, {card['output']['shape'][1]})")
    if result.parity is not None:
        _print_parity(result.parity, card["gates"]["min_cosine"] or 0.0)
    speed = (card["quantization"] or {}).get("speedup_vs_float32")
    if speed:
        rows = ", ".join(f"batch {bs} {r['speedup']:.2f}x" for bs, r in speed["batches"].items())
        print(f"int8 speed-up over the float32 file (onnxruntime, {speed['threads']} threads): {rows}")
    v = card["verification"]
    if v is not None:
        print(f"verification on {v['num_pairs']} pairs: PyTorch {100 * v['pytorch']['accuracy']:.2f} %, exported "
              f"{100 * v['exported']['accuracy']:.2f} % (drop {v['drop_points']:+.2f} points)")
    for path in result.files[1:]:
        print(f"wrote {path}")
    if not result.passed:
        print(f"export rejected ({'; '.join(result.failures)}): kept as {result.path}")


def _export_onnx(args: argparse.Namespace) -> int:
    from facerco.export.deploy import export_model
    from facerco.utils.io import sha256_file

    plan = _plan(args)
    plan.validate()
    model, ckpt_meta = _load_backbone(args.checkpoint, args.arch)
    source = {"checkpoint": Path(args.checkpoint).name, "sha256": sha256_file(args.checkpoint)}
    result = export_model(
        model, args.output, plan, source=source,
        metadata={"source_checkpoint": source["checkpoint"], "source_sha256": source["sha256"]},
        report_extra={"checkpoint_metadata": ckpt_meta},
    )
    _print_result(result)
    return 0 if result.passed else 1


def _export_embeddings(args: argparse.Namespace) -> int:
    from facerco.export.embeddings import export_embeddings

    summary = export_embeddings(
        args.model, args.source, args.output, fmt=args.format, dtype=args.dtype, algo=args.algo,
        batch_size=args.batch_size, device=args.device, flip=not args.no_flip, shard_size=args.shard_size,
        arch=args.arch, overwrite=args.overwrite,
    )
    print(f"wrote {summary['count']} embeddings (dim {summary['dim']}, {summary['format']}) to {args.output}"
          f" ({summary['shards_skipped']} of {summary['shards']} shards resumed)")
    return 0


def _add_onnx(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("onnx", help="checkpoint -> one self-contained ONNX file (fp32/fp16/int8), parity report, card")
    p.add_argument("checkpoint", help="facerco .safetensors checkpoint (or insightface .pth with --arch)")
    p.add_argument("-o", "--output", required=True, help="destination .onnx file")
    p.add_argument("--arch", default=None, help="architecture (e.g. iresnet100 or r100) of an insightface .pth")
    precision = p.add_mutually_exclusive_group()
    precision.add_argument("--fp16", action="store_true", help="fp16 weights and compute, float32 input/output")
    precision.add_argument("--int8", action="store_true",
                           help="int8 static quantization (QDQ, per-channel weights) calibrated on --calibrate")
    p.add_argument("--calibrate", default=None, metavar="ALIGNED_DIR|.rec|.bin",
                   help="calibration images for --int8: an aligned identity folder, a .rec dataset or a .bin")
    p.add_argument("--calib-count", type=int, default=_DEFAULT_CALIB_COUNT,
                   help=f"calibration images, evenly spaced over the source (default {_DEFAULT_CALIB_COUNT})")
    p.add_argument("--calib-batch", type=int, default=_DEFAULT_CALIB_BATCH,
                   help=f"calibration batch size (default {_DEFAULT_CALIB_BATCH})")
    p.add_argument("--calib-method", choices=_CALIB_METHODS, default="minmax",
                   help="activation range estimator (default minmax)")
    p.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor instead of per channel")
    p.add_argument("--no-preprocess", action="store_true",
                   help="skip onnxruntime's quant_pre_process (shape inference + optimisation) before quantizing")
    p.add_argument("--simplify", action="store_true", help="run onnxsim on the exported graph")
    p.add_argument("--opset", type=int, default=_DEFAULT_OPSET,
                   help=f"ONNX opset (default {_DEFAULT_OPSET}; below 17 use --exporter legacy)")
    p.add_argument("--exporter", choices=_EXPORTERS, default="dynamo",
                   help="torch.export-based (default) or legacy TorchScript exporter")
    p.add_argument("--check", default=_GENERATED, metavar="IMAGES_DIR|generated",
                   help="compare onnxruntime with PyTorch on a folder of images or generated ones (default)")
    p.add_argument("--no-check", action="store_true", help="skip the parity/latency check")
    p.add_argument("--check-limit", type=int, default=64, help="images used by the check (default 64)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per batch size (default 5)")
    p.add_argument("--min-cosine", type=float, default=None,
                   help="reject when any image's cosine is below this (default 0.9999 for fp32/fp16, off for int8)")
    p.add_argument("--min-mean-cosine", type=float, default=None,
                   help=f"reject when the mean cosine is below this (default {_INT8_MIN_MEAN_COSINE} for int8, off "
                        "otherwise)")
    p.add_argument("--eval-pairs", default=None, help="LFW-style pairs.txt: verification of PyTorch vs the file")
    p.add_argument("--eval-root", default=None, help="image folder the --eval-pairs paths are relative to")
    p.add_argument("--eval-bin", default=None, help="insightface verification .bin instead of --eval-pairs")
    p.add_argument("--max-drop", type=float, default=None,
                   help="reject when verification accuracy drops more than this many points (needs --eval-*)")
    p.add_argument("--min-speedup", type=float, default=None,
                   help="--int8: reject a file slower than this many times its float32 source in onnxruntime on "
                        "the check images (default 1.0; 0 keeps any)")
    add_debug_arg(p)
    p.set_defaults(func=_export_onnx)


def _add_embeddings(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("embeddings", help="embed a folder, list, .rec or .bin to .npy + index.csv or a MegaFace tree")
    p.add_argument("model", help="checkpoint (.safetensors / .pth with --arch) or .onnx file")
    p.add_argument("source", help="image folder, text file listing image paths, .rec directory or .bin file")
    p.add_argument("-o", "--output", required=True, help="output directory")
    p.add_argument("--format", choices=("npy", "megaface"), default="npy",
                   help="npy: embeddings.npy + index.csv; megaface: one devkit <image>_<algo>.bin per image")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                   help="npy element type (MegaFace files are always float32)")
    p.add_argument("--algo", default=None, help="algorithm name in MegaFace feature file names (required there)")
    p.add_argument("--arch", default=None, help="architecture (e.g. iresnet100 or r100) of an insightface .pth")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-flip", action="store_true", help="do not fuse the horizontally flipped image")
    p.add_argument("--shard-size", type=int, default=8192, help="images per resumable shard (default 8192)")
    p.add_argument("--overwrite", action="store_true", help="discard shards left by a different earlier run")
    add_debug_arg(p)
    p.set_defaults(func=_export_embeddings)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="ONNX for deployment, embeddings for evaluation tools")
    sub = parser.add_subparsers(dest="export_command", metavar="ACTION", required=True)
    _add_onnx(sub)
    _add_embeddings(sub)
