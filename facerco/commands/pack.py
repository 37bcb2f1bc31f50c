"""`facerco pack ALIGNED_DIR OUT_DIR`: aligned identity folder -> insightface train.rec/train.idx/property."""

from __future__ import annotations

import argparse

from facerco.commands._common import add_debug_arg

__all__ = ["register"]


def _pack(args: argparse.Namespace) -> int:
    from facerco.prep.pack import pack_folder

    try:
        result = pack_folder(
            args.aligned_dir,
            args.out_dir,
            size=args.size,
            quality=args.quality,
            workers=args.workers,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    except FileExistsError as exc:  # the CLI reports ValueErrors as one-line errors
        raise ValueError(str(exc)) from exc
    print(
        f"packed {result.num_images} images of {result.num_identities} identities into {result.out_dir} "
        f"({result.copied} copied as-is, {result.reencoded} re-encoded; {result.image_size[0]}x{result.image_size[1]})"
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "pack",
        help="pack an aligned folder (one sub-folder per identity) into train.rec/train.idx/property",
        description="Classes are the sorted sub-folder names, images sorted within each. JPEGs already at --size are "
        "copied byte for byte; other images are resized and encoded as JPEG (BGR, quality 95). Atomic: files are "
        "written under temporary names and renamed at the end. Also writes pack.json (identity names, counts).",
    )
    parser.add_argument("aligned_dir", help="input folder: <identity>/<image>")
    parser.add_argument("out_dir", help="output dataset folder")
    parser.add_argument("--size", type=int, default=112, help="stored image side (default 112; 0 keeps sizes)")
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality when re-encoding (default 95)")
    parser.add_argument("--workers", type=int, default=None, help="decode threads (default: CPU count, max 8)")
    parser.add_argument("--overwrite", action="store_true", help="replace a dataset already in OUT_DIR")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_debug_arg(parser)
    parser.set_defaults(func=_pack)
