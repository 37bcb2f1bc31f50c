"""MS-Celeb-1M original TSV release -> aligned 112x112 identity folder (-> RecordIO), streamed, resumable.

Usage:
    python data_prep/msceleb_tsv.py TSV OUT_DIR [--clean-list LIST] [--detector dlib] [--upsample 1]
        [--workers N] [--no-hint] [--extract-only] [--limit N] [--pack DATASET_DIR] [--strict] [--debug]

    TSV          MsCelebV1-Faces-Aligned*.tsv (7 columns) or the thumbnails TSV (6 columns); read line by line.
    OUT_DIR      <MID>/<ImageSearchRank>-<FaceID>.jpg crops, align_report.csv, msceleb_report.json, and
                 bad_rows.csv: damaged lines (column count, FaceRectangle, base64, image), skipped and listed with
                 file, line and reason; their count is in the summary. Rerunning resumes (bad lines listed once).
    --clean-list keep only the listed images ('<MID>/<rank>-<FaceID>.jpg [label]'; a label relabels).
    --no-hint    do not pass the TSV's FaceRectangle to the detector.
    --extract-only  write the stored JPEGs as they are (no detection), e.g. to inspect them first.
    --pack       pack OUT_DIR into DATASET_DIR afterwards (train.rec/idx/property).
    --strict     stop at the first damaged line (a one-line error naming file and line) instead of skipping it.
    --debug      show the traceback of an error (default: one line).

Example (several TSV parts can go into the same OUT_DIR one after another):
    python data_prep/msceleb_tsv.py MsCelebV1-Faces-Aligned.tsv data/ms1m --clean-list clean_list.txt \
        --workers 16 --pack data/ms1m_rec
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from facerco.cli import run_guarded
from facerco.commands._common import add_debug_arg
from facerco.commands.align import add_detector_args, spec_from_args
from facerco.prep.msceleb import convert_tsv
from facerco.prep.pack import pack_folder


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run_guarded("msceleb_tsv", lambda: _run(args), args.debug)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tsv")
    parser.add_argument("out_dir")
    parser.add_argument("--clean-list")
    parser.add_argument("--no-hint", action="store_true")
    parser.add_argument("--extract-only", action="store_true")
    parser.add_argument("--limit", type=int, help="only the first N (listed) images")
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--pack", metavar="DATASET_DIR")
    parser.add_argument("--strict", action="store_true", help="stop at the first damaged line")
    add_detector_args(parser)
    add_debug_arg(parser)
    return parser


def _run(args: argparse.Namespace) -> int:
    spec = None if args.extract_only else spec_from_args(args)
    summary = convert_tsv(
        args.tsv,
        args.out_dir,
        spec,
        clean_list=args.clean_list,
        size=args.size,
        workers=args.workers,
        use_hint=not args.no_hint,
        limit=args.limit,
        strict=args.strict,
    )
    print(json.dumps(summary, indent=2))
    if summary["bad_rows"]:
        print(f"{summary['bad_rows']} bad rows skipped; file, line and reason in {summary['bad_rows_report']}")
    if args.pack:
        result = pack_folder(args.out_dir, args.pack, size=0 if args.extract_only else args.size)
        print(f"pack: {result.num_images} images, {result.num_identities} identities -> {result.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
