"""`facerco inspect DATASET`: counts, images-per-identity histogram and a contact sheet of faces."""

from __future__ import annotations

import argparse

from facerco.commands._common import add_debug_arg

__all__ = ["register"]


def _inspect(args: argparse.Namespace) -> int:
    from facerco.data.inspect import format_report, inspect_dataset

    stats = inspect_dataset(
        args.dataset, args.out, fmt=args.format, identities=args.identities, per_identity=args.per_identity
    )
    print(format_report(stats))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="print dataset statistics and write a contact sheet and histogram PNG",
        description="DATASET is a RecordIO folder (train.rec, train.idx, property) or a folder with one sub-folder "
        "per identity. Writes OUT/inspect.json, OUT/histogram.png and OUT/contact_sheet.png.",
    )
    parser.add_argument("dataset", help="dataset folder (or a .rec file)")
    parser.add_argument(
        "--out", default="inspect_out", help="output folder for the PNGs and JSON (default inspect_out)"
    )
    parser.add_argument(
        "--format",
        choices=["auto", "rec", "folder", "images"],
        default="auto",
        help="reader; auto = rec when DATASET holds train.rec, else folder; images = a flat folder without "
        "identities (default auto)",
    )
    parser.add_argument("--identities", type=int, default=12, help="identities on the contact sheet (default 12)")
    parser.add_argument("--per-identity", type=int, default=8, help="images per identity on the sheet (default 8)")
    add_debug_arg(parser)
    parser.set_defaults(func=_inspect)
