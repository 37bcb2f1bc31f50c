"""`facerco synth OUT --identities N --images M [--wild] [--seed S] [--distractors]`: write generated faces."""

from __future__ import annotations

import argparse
from collections.abc import Iterable

from tqdm import tqdm

from facerco.commands._common import add_debug_arg
from facerco.data.synthetic import Nuisance, write_identity_folder


def _progress(it: Iterable, total: int) -> Iterable:
    return tqdm(it, total=total, unit="id", desc="synth", dynamic_ncols=True)


def _wild_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 320x240, got {text!r}") from None
    return w, h


def _run(args: argparse.Namespace) -> int:
    if args.difficulty < 0:
        raise ValueError(f"--difficulty must be >= 0, got {args.difficulty}")
    csv_path = write_identity_folder(
        args.out, args.identities, args.images, seed=args.seed, wild=args.wild, distractors=args.distractors,
        first_identity=args.first_identity, nuisance=Nuisance().scaled(args.difficulty), size=args.size,
        wild_size=args.wild_size, workers=args.workers, progress=_progress,
    )
    kind = "distractor identities" if args.distractors else "identities"
    print(f"wrote {args.identities} {kind} x {args.images} images to {args.out} (landmarks: {csv_path})")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synth", help="generate procedural faces with 5-point landmarks (demo and tests)",
        description="Write OUT/<identity>/<nnnn>.jpg and OUT/landmarks.csv (path,x1,y1,...,x5,y5). Aligned "
                    "112x112 crops by default; --wild writes cluttered scenes with one face and its box.",
    )
    parser.add_argument("out", help="output folder")
    parser.add_argument("--identities", type=int, required=True, help="number of identities")
    parser.add_argument("--images", type=int, required=True, help="images per identity")
    parser.add_argument("--seed", type=int, default=0, help="base seed (same seed, same bytes)")
    parser.add_argument("--wild", action="store_true", help="cluttered scenes instead of aligned crops")
    parser.add_argument("--wild-size", type=_wild_size, default=(320, 240), metavar="WxH",
                        help="scene size for --wild (default 320x240)")
    parser.add_argument("--distractors", action="store_true",
                        help="draw identities from the distractor stream (disjoint from regular identities)")
    parser.add_argument("--first-identity", type=int, default=0, help="index of the first identity written")
    parser.add_argument("--difficulty", type=float, default=1.0, help="scale of all nuisances (0 = none)")
    parser.add_argument("--size", type=int, default=112, help="side of aligned images in pixels")
    parser.add_argument("--workers", type=int, default=0, help="worker processes (0/1: this process)")
    add_debug_arg(parser)
    parser.set_defaults(func=_run)
