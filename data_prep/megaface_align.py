"""FaceScrub probes + MegaFace distractors (raw photos) -> the aligned test-pack layout of eval/megaface/.

Usage:
    python data_prep/megaface_align.py OUT_DIR [--facescrub DIR] [--facescrub-list FILE] [--megaface DIR]
        [--detector dlib] [--upsample 1] [--workers N] [--strict] [--debug]

    --facescrub       <Identity>/<image> raw FaceScrub photos -> OUT_DIR/facescrub_images/<Identity>/<image>.png
    --facescrub-list  facescrub_actors.txt / facescrub_actresses.txt (tab-separated, bbox column) for box hints
    --megaface        raw distractor tree (with MegaFace's <image>.json sidecars; their bounding_box is a hint)
                      -> OUT_DIR/megaface_images/<same path>.jpg and OUT_DIR/megaface_lst

A photo or sidecar that cannot be read is skipped and listed in <tree>/bad_rows.csv (--strict: stop there instead;
--debug: show the traceback of an error).

Then: eval/megaface/run.sh MODEL OUT_DIR eval_out/megaface   (the noise lists come with the MegaFace devkit).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from facerco.cli import run_guarded
from facerco.commands._common import add_debug_arg
from facerco.commands.align import add_detector_args, spec_from_args
from facerco.prep.megaface import build_megaface_pack


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.facescrub and not args.megaface:
        parser.error("give --facescrub and/or --megaface")
    return run_guarded("megaface_align", lambda: _run(args), args.debug)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--facescrub")
    parser.add_argument("--facescrub-list")
    parser.add_argument("--megaface")
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--strict", action="store_true", help="stop at the first unreadable photo or sidecar")
    add_detector_args(parser)
    add_debug_arg(parser)
    return parser


def _run(args: argparse.Namespace) -> int:
    summary = build_megaface_pack(
        args.facescrub,
        args.megaface,
        args.out_dir,
        spec_from_args(args),
        facescrub_list=args.facescrub_list,
        size=args.size,
        workers=args.workers,
        strict=args.strict,
    )
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
