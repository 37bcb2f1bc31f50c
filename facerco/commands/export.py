"""`facerco export onnx|embeddings`: deployment artefacts from a trained backbone.

Thin CLI over :mod:`facerco.export.onnx` and :mod:`facerco.export.embeddings`; heavy imports happen inside the
handlers so ``facerco --help`` stays fast.
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


def _export_onnx(args: argparse.Namespace) -> int:
    from facerco.export.onnx import (
        check_parity,
        export_onnx,
        load_check_images,
        parity_report_path,
    )
    from facerco.utils.io import sha256_file, write_json

    model, ckpt_meta = _load_backbone(args.checkpoint, args.arch)
    info = export_onnx(
        model, args.output, opset=args.opset, fp16=args.fp16, simplify=args.simplify, exporter=args.exporter,
        metadata={"source_checkpoint": Path(args.checkpoint).name, "source_sha256": sha256_file(args.checkpoint)},
    )
    print(f"wrote {info.path} ({info.file_bytes / 1e6:.2f} MB, {info.num_nodes} nodes, opset {info.opset}, "
          f"{info.exporter} exporter{', fp16' if info.fp16 else ''}{', simplified' if info.simplified else ''}); "
          f"input data: (batch, 3, {info.input_size[0]}, {info.input_size[1]}) RGB (x-127.5)/127.5; "
          f"output embedding: (batch, {info.embedding_size})")
    if args.no_check:
        return 0
    images, names = load_check_images(args.check, info.input_size, limit=args.check_limit)
    report = check_parity(model, info.path, images, names, batch_sizes=(1, 64), repeats=args.repeats)
    min_cosine = args.min_cosine
    report.update({"export": info.to_dict(), "check_source": str(args.check), "goal_min_cosine": min_cosine,
                   "checkpoint_metadata": ckpt_meta})
    report["passed"] = report["summary"]["min_cosine"] >= min_cosine
    _print_parity(report, min_cosine)
    out = parity_report_path(info.path)
    write_json(out, report)
    print(f"parity report: {out}")
    if not report["passed"]:
        print(f"parity below goal: min cosine {report['summary']['min_cosine']:.7f} < {min_cosine}")
        return 1
    return 0


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
    p = sub.add_parser("onnx", help="backbone checkpoint -> one self-contained ONNX file (+ parity report)")
    p.add_argument("checkpoint", help="facerco .safetensors checkpoint (or insightface .pth with --arch)")
    p.add_argument("-o", "--output", required=True, help="destination .onnx file")
    p.add_argument("--arch", default=None, help="architecture (e.g. iresnet100 or r100) of an insightface .pth")
    p.add_argument("--fp16", action="store_true", help="fp16 weights and compute, float32 input/output")
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
    p.add_argument("--min-cosine", type=float, default=0.9999,
                   help="exit 1 when any image's cosine is below this (default 0.9999, fp16 included)")
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
