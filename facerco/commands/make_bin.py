"""`facerco make-bin PAIRS_TXT IMAGE_ROOT OUT.bin`: an insightface verification .bin from an LFW-style pairs file."""

from __future__ import annotations

import argparse

from facerco.commands._common import add_debug_arg

__all__ = ["register"]


def _make_bin(args: argparse.Namespace) -> int:
    from facerco.data.bins import make_bin

    n = make_bin(
        args.pairs_txt,
        args.image_root,
        args.out,
        size=args.size,
        quality=args.quality,
        ext=args.ext,
        progress=not args.no_progress,
    )
    print(f"wrote {args.out}: {n} pairs, {2 * n} images")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "make-bin",
        help="build a verification .bin (lfw.bin style) from pairs.txt and an image folder",
        description="Images are stored as they are (align them first with `facerco align`); --size resizes and "
        "re-encodes them as JPEG (quality 95). Pairs keep the file order, which defines the 10 folds.",
    )
    parser.add_argument("pairs_txt", help="LFW View 2 style pairs file")
    parser.add_argument("image_root", help="folder holding <name>/<name>_NNNN.<ext>")
    parser.add_argument("out", help="output .bin")
    parser.add_argument("--size", type=int, default=None, help="resize images to SIZE x SIZE (default: keep bytes)")
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality with --size (default 95)")
    parser.add_argument("--ext", default="jpg", help="image extension in IMAGE_ROOT (default jpg)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_debug_arg(parser)
    parser.set_defaults(func=_make_bin)
