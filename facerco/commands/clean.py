"""`facerco clean SRC OUT`: apply a clean/noise list and/or drop near-duplicates within each identity."""

from __future__ import annotations

import argparse
import json

from facerco.commands._common import add_debug_arg

__all__ = ["register"]


def _embeddings(args: argparse.Namespace):
    from facerco.prep.clean import load_embeddings

    if args.embeddings:
        return load_embeddings(args.embeddings, args.paths)
    if args.model:
        from facerco.eval.features import extract_embeddings

        result = extract_embeddings(args.model, args.src, batch_size=args.batch_size, device=args.device)
        return result.emb, [str(p) for p in result.paths]
    return None


def _clean(args: argparse.Namespace) -> int:
    from facerco.prep.clean import clean_folder

    if not args.list and args.dedup is None:
        raise ValueError("nothing to do: give --list FILE and/or --dedup THRESHOLD")
    embeddings = None
    if args.dedup is not None:
        embeddings = _embeddings(args)
        if embeddings is None:
            raise ValueError("--dedup needs --embeddings FILE (.npz, or .npy with --paths) or --model CHECKPOINT")
    report = clean_folder(
        args.src,
        args.out,
        list_path=args.list,
        mode=args.mode,
        embeddings=embeddings,
        dedup_threshold=args.dedup if args.dedup is not None else 0.95,
        link=args.link,
    )
    print(json.dumps(report, indent=2))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "clean",
        help="apply a clean/noise list and/or remove near-duplicates (writes a new folder + clean_report.json)",
        description="List lines: '<identity>/<image> [label]'. keep: only listed images stay (a label moves the "
        "image to that identity); drop: listed images go. The source is never changed.",
    )
    parser.add_argument("src", help="identity folder (<identity>/<image>)")
    parser.add_argument("out", help="new, cleaned folder")
    parser.add_argument("--list", help="clean list (keep mode) or noise list (drop mode)")
    parser.add_argument("--mode", choices=["keep", "drop"], default="keep", help="how to read --list (default keep)")
    parser.add_argument(
        "--dedup",
        type=float,
        metavar="COS",
        help="drop images with cosine similarity >= COS to an earlier image of the same identity",
    )
    parser.add_argument("--embeddings", help=".npz (emb, paths) or .npy (with --paths) from facerco export/eval")
    parser.add_argument("--paths", help="text file, one image path per line, rows of the .npy")
    parser.add_argument("--model", help="checkpoint/.onnx to compute embeddings with (instead of --embeddings)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--link",
        choices=["hardlink", "copy", "symlink"],
        default="hardlink",
        help="how files reach the new folder (default hardlink, copy across file systems)",
    )
    add_debug_arg(parser)
    parser.set_defaults(func=_clean)
