"""`facerco align SRC DST --detector ...`: detect, choose and warp faces to the ArcFace template."""

from __future__ import annotations

import argparse
import os

from facerco.commands._common import add_debug_arg

__all__ = ["register", "add_detector_args", "spec_from_args"]


def add_detector_args(parser: argparse.ArgumentParser, default: str = "dlib") -> None:
    """Detector choice and its options; shared with the data_prep recipes."""
    parser.add_argument(
        "--detector",
        default=default,
        choices=["dlib", "insightface", "landmarks"],
        help=f"face detector backend (default {default})",
    )
    parser.add_argument("--model", help="insightface: the SCRFD/RetinaFace .onnx file; dlib: a shape predictor .dat")
    parser.add_argument("--landmarks", help="landmarks backend: CSV (path,x1,y1,...,x5,y5) or JSON file")
    parser.add_argument("--upsample", type=int, default=1, help="dlib: HOG upsampling steps (default 1)")
    parser.add_argument("--points", choices=["5", "68"], default="5", help="dlib: shape predictor (default 5)")
    parser.add_argument(
        "--det-opt", action="append", metavar="KEY=VALUE", help="extra backend option, e.g. threshold=0.6 (repeatable)"
    )


def spec_from_args(args: argparse.Namespace):
    """Build a DetectorSpec from :func:`add_detector_args` options."""
    from facerco.prep.detectors import DetectorSpec, parse_detector_options

    options = {}
    if args.detector == "dlib":
        options = {"upsample": args.upsample, "points": args.points}
        if args.model:
            options["predictor_path"] = args.model
    elif args.detector == "insightface":
        if not args.model:
            raise ValueError("--detector insightface needs --model PATH.onnx (nothing is downloaded)")
        options = {"model_path": args.model}
        if getattr(args, "workers", 1) > 1:
            options["threads"] = 1  # one onnxruntime thread per worker process, no oversubscription
    else:
        if not args.landmarks:
            raise ValueError("--detector landmarks needs --landmarks FILE")
        options = {"path": args.landmarks}
    options.update(parse_detector_options(args.det_opt))
    return DetectorSpec(args.detector, options)


def _align(args: argparse.Namespace) -> int:
    from facerco.prep.align import REPORT_NAME, align_tree

    counts = align_tree(
        args.src,
        args.dst,
        spec_from_args(args),
        size=args.size,
        policy=args.select,
        fmt=args.format,
        quality=args.quality,
        workers=args.workers,
        progress=not args.no_progress,
    )
    print(
        f"{counts['total']} images: {counts['aligned']} aligned, {counts['failed']} failed, "
        f"{counts['skipped']} already done; report: {os.path.join(args.dst, REPORT_NAME)}"
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "align",
        help="detect and align faces to the ArcFace 112x112 template (folder tree in, mirrored tree out)",
        description="Detect faces, warp the chosen one(s) to the ArcFace template, mirror SRC into DST. "
        "Resumable: files already in DST/align_report.csv or already written are skipped. SRC is never written.",
    )
    parser.add_argument("src", help="input folder (searched recursively for images)")
    parser.add_argument("dst", help="output folder (must be outside SRC)")
    add_detector_args(parser)
    parser.add_argument("--size", type=int, default=112, help="output side, a multiple of 112 (default 112)")
    parser.add_argument(
        "--select",
        choices=["largest", "central", "all"],
        default="largest",
        help="which face(s) to keep per image (default largest)",
    )
    parser.add_argument("--format", choices=["same", "jpg", "png"], default="same", help="output image format")
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality (default 95)")
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="worker processes (default: all cores)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_debug_arg(parser)
    parser.set_defaults(func=_align)
