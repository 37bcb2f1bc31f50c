"""An existing insightface RecordIO dataset -> re-aligned identity folder (-> new RecordIO), optional clean list.

Usage:
    python data_prep/rec_realign.py REC_DIR OUT_DIR [--clean-list LIST] [--detector dlib] [--upsample 1]
        [--workers N] [--no-hint] [--limit N] [--pack DATASET_DIR] [--strict] [--debug]

    REC_DIR   folder with train.rec/train.idx/property (e.g. faces_emore).
    OUT_DIR   <class>/<key:09d>.jpg crops + align_report.csv + realign_report.json (resumable), and bad_rows.csv:
              records that cannot be read or decoded, skipped and listed (file, key, reason).
    --no-hint do not hint the detector with the face box of an ArcFace-aligned crop (see facerco.prep.realign).
    --pack    pack OUT_DIR into DATASET_DIR afterwards.
    --strict  stop at the first damaged record (a one-line error) instead of skipping it.
    --debug   show the traceback of an error (default: one line).

Example:
    python data_prep/rec_realign.py data/faces_emore data/emore_realigned --upsample 2 --workers 16 \
        --pack data/emore_realigned_rec
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from facerco.cli import run_guarded
from facerco.commands._common import add_debug_arg
from facerco.commands.align import add_detector_args, spec_from_args
from facerco.prep.pack import pack_folder
from facerco.prep.realign import realign_rec


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run_guarded("rec_realign", lambda: _run(args), args.debug)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rec_dir")
    parser.add_argument("out_dir")
    parser.add_argument("--clean-list")
    parser.add_argument("--no-hint", action="store_true")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--pack", metavar="DATASET_DIR")
    parser.add_argument("--strict", action="store_true", help="stop at the first damaged record")
    add_detector_args(parser)
    add_debug_arg(parser)
    return parser


def _run(args: argparse.Namespace) -> int:
    summary = realign_rec(
        args.rec_dir,
        args.out_dir,
        spec_from_args(args),
        clean_list=args.clean_list,
        size=args.size,
        workers=args.workers,
        use_hint=not args.no_hint,
        limit=args.limit,
        strict=args.strict,
    )
    print(json.dumps(summary, indent=2))
    if summary["bad_rows"]:
        print(f"{summary['bad_rows']} bad records skipped; file, key and reason in {summary['bad_rows_report']}")
    if args.pack:
        result = pack_folder(args.out_dir, args.pack, size=args.size)
        print(f"pack: {result.num_images} images, {result.num_identities} identities -> {result.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
