"""An existing insightface RecordIO dataset -> re-aligned identity folder (-> new RecordIO), optional clean list.

Usage:
    python data_prep/rec_realign.py REC_DIR OUT_DIR [--clean-list LIST] [--detector dlib] [--upsample 1]
        [--workers N] [--no-hint] [--limit N] [--pack DATASET_DIR]

    REC_DIR   folder with train.rec/train.idx/property (e.g. faces_emore).
    OUT_DIR   <class>/<key:09d>.jpg crops + align_report.csv + realign_report.json (resumable).
    --no-hint do not hint the detector with the face box of an ArcFace-aligned crop (see facerco.prep.realign).
    --pack    pack OUT_DIR into DATASET_DIR afterwards.

Example:
    python data_prep/rec_realign.py data/faces_emore data/emore_realigned --upsample 2 --workers 16 \
        --pack data/emore_realigned_rec
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from facerco.commands.align import add_detector_args, spec_from_args
from facerco.prep.pack import pack_folder
from facerco.prep.realign import realign_rec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rec_dir")
    parser.add_argument("out_dir")
    parser.add_argument("--clean-list")
    parser.add_argument("--no-hint", action="store_true")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--pack", metavar="DATASET_DIR")
    add_detector_args(parser)
    args = parser.parse_args(argv)
    summary = realign_rec(
        args.rec_dir,
        args.out_dir,
        spec_from_args(args),
        clean_list=args.clean_list,
        size=args.size,
        workers=args.workers,
        use_hint=not args.no_hint,
        limit=args.limit,
    )
    print(json.dumps(summary, indent=2))
    if args.pack:
        result = pack_folder(args.out_dir, args.pack, size=args.size)
        print(f"pack: {result.num_images} images, {result.num_identities} identities -> {result.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
