"""A folder of identities (raw photos) -> aligned 112x112 crops -> insightface RecordIO (train.rec/idx/property).

Usage:
    python data_prep/folder_to_rec.py SRC ALIGNED_DIR DATASET_DIR [--detector dlib] [--upsample 1] [--workers N]
        [--select largest|central] [--size 112] [--debug]

    SRC          <identity>/<image> photos (any depth below the identity folder).
    ALIGNED_DIR  mirrored aligned tree + align_report.csv (resumable; failures are listed there and skipped).
    DATASET_DIR  train.rec, train.idx, property, pack.json (via facerco.prep.pack, the same as `facerco pack`).

Example:
    python data_prep/folder_to_rec.py ~/photos/celebs data/celebs_aligned data/celebs_rec --workers 8
"""

from __future__ import annotations

import argparse
import os
import sys

from facerco.cli import run_guarded
from facerco.commands._common import add_debug_arg
from facerco.commands.align import add_detector_args, spec_from_args
from facerco.prep.align import align_tree
from facerco.prep.pack import pack_folder


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run_guarded("folder_to_rec", lambda: _run(args), args.debug)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src")
    parser.add_argument("aligned_dir")
    parser.add_argument("dataset_dir")
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--select", choices=["largest", "central"], default="largest")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset in DATASET_DIR")
    add_detector_args(parser)
    add_debug_arg(parser)
    return parser


def _run(args: argparse.Namespace) -> int:
    counts = align_tree(
        args.src,
        args.aligned_dir,
        spec_from_args(args),
        size=args.size,
        policy=args.select,
        fmt="jpg",
        workers=args.workers,
    )
    print(f"align: {counts}")
    result = pack_folder(args.aligned_dir, args.dataset_dir, size=args.size, overwrite=args.overwrite)
    print(f"pack: {result.num_images} images, {result.num_identities} identities -> {result.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
