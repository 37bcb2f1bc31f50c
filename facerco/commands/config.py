"""`facerco config show FILE [overrides]`: print the resolved config."""

from __future__ import annotations

import argparse

from facerco.commands._common import add_config_args
from facerco.config import dump_config, load_config


def _show(args: argparse.Namespace) -> int:
    print(dump_config(load_config(args.config, args.overrides)), end="")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("config", help="inspect configs")
    sub = parser.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    show = sub.add_parser("show", help="print the resolved config (defaults < file and its _base_ < overrides)")
    add_config_args(show)
    show.set_defaults(func=_show)
