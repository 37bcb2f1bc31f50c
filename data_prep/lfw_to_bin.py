"""LFW folder + pairs.txt -> aligned 112x112 crops -> lfw.bin (readable by `facerco eval verify`).

Usage:
    python data_prep/lfw_to_bin.py LFW_ROOT OUT_DIR [--pairs PAIRS_TXT] [--detector dlib] [--upsample 1]
        [--workers N] [--folds K] [--per-set N] [--size 112] [--debug]

    LFW_ROOT  folder with <name>/<name>_NNNN.jpg (e.g. lfw-deepfunneled or the original lfw); pairs.txt is taken
              from LFW_ROOT/pairs.txt unless --pairs is given (View 2: 10 folds x 600 pairs).
    OUT_DIR   receives aligned/ (mirrored crops + align_report.csv), lfw.bin and lfw_bin_report.json.

Example (the full 6,000 pairs; resumable):
    python data_prep/lfw_to_bin.py ../shared/data/lfw_deepfunneled data/lfw --workers 2
    facerco eval verify MODEL data/lfw/lfw.bin
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from facerco.cli import run_guarded
from facerco.commands._common import add_debug_arg
from facerco.commands.align import add_detector_args, spec_from_args
from facerco.prep.lfw import build_lfw_bin


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run_guarded("lfw_to_bin", lambda: _run(args), args.debug)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("lfw_root")
    parser.add_argument("out_dir")
    parser.add_argument("--pairs", help="pairs file (default LFW_ROOT/pairs.txt)")
    parser.add_argument("--folds", type=int, help="only the first K folds (quick checks)")
    parser.add_argument("--per-set", type=int, help="only the first N matched + N mismatched pairs of each fold")
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    add_detector_args(parser)
    add_debug_arg(parser)
    return parser


def _run(args: argparse.Namespace) -> int:
    pairs = args.pairs or str(Path(args.lfw_root) / "pairs.txt")
    summary = build_lfw_bin(
        args.lfw_root,
        pairs,
        args.out_dir,
        spec_from_args(args),
        size=args.size,
        workers=args.workers,
        folds=args.folds,
        per_set=args.per_set,
    )
    shown = {k: (len(v) if k == "fallback" else v) for k, v in summary.items()}
    print(json.dumps(shown, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
