"""`facerco route ACTION RUN`: inspect a teacher route.

Actions are small ``_add_<action>(sub)`` functions listed in ``ACTIONS``; ``show`` prints the route table and
writes a PNG of the validation metrics along it. (``plan``, from the distillation area, is added the same way.)
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from facerco.commands._common import add_debug_arg
from facerco.commands.distill import register_route_plan

__all__ = ["ACTIONS", "register"]


def _show(args: argparse.Namespace) -> int:
    from facerco.route.io import format_route_table, load_route, plot_route

    route = load_route(args.run)
    if args.verify:
        route.verify()
    print(format_route_table(route))
    if args.verify:
        print(f"sha256 verified for {len(route.points)} file(s)")
    if not args.no_plot:
        png = Path(args.png) if args.png else route.run_dir / "route.png"
        plot_route(route, png)
        print(f"plot: {png}")
    return 0


def _add_show(sub: argparse._SubParsersAction) -> None:
    show = sub.add_parser("show", help="print the route as a table and plot val metrics along it")
    show.add_argument("run", help="teacher run directory (holding route.json)")
    show.add_argument("--png", default="", help="plot path (default RUN/route.png)")
    show.add_argument("--no-plot", action="store_true", help="print the table only")
    show.add_argument("--verify", action="store_true", help="check every checkpoint's sha256 first")
    add_debug_arg(show)
    show.set_defaults(func=_show)


ACTIONS: list[Callable[[argparse._SubParsersAction], None]] = [_add_show, register_route_plan]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("route", help="inspect a teacher route (checkpoints along training)")
    sub = parser.add_subparsers(dest="route_command", metavar="ACTION", required=True)
    for add in ACTIONS:
        add(sub)
