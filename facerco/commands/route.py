"""`facerco route ACTION RUN`: inspect a teacher route.

Actions are small ``_add_<action>(sub)`` functions listed in ``ACTIONS``; ``show`` prints the route table and
writes a PNG of the validation metrics along it; ``import`` makes a published model a one-point route. (``plan``,
from the distillation area, is added the same way.)
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


def _import(args: argparse.Namespace) -> int:
    from facerco.route.io import format_route_table, load_route
    from facerco.route.published import import_teacher

    path = import_teacher(args.model, args.out, kind=args.kind, arch=args.arch or None, input_size=args.input_size,
                          channel_order=args.channel_order, mean=args.mean, std=args.std)
    route = load_route(path)
    teacher = route.info["teacher"]
    print(format_route_table(route))
    print(f"imported {teacher['kind']} teacher ({route.info['arch']}, {teacher['embedding_size']}-d, view "
          f"{teacher['view']['name']}, input {teacher['input']}) -> {path}")
    return 0


def _add_import(sub: argparse._SubParsersAction) -> None:
    from facerco.route.teacher_kinds import KINDS

    p = sub.add_parser(
        "import", help="make a published model a one-point route (facerco, insightface .pth, ONNX, dlib)",
        description="Write RUN/route.json with one final point holding MODEL, so `facerco cache`, `distill`, "
                    "`compare` and `route plan` use it as a teacher (distill.strategy=final). MODEL is a file, or "
                    "'dlib' for dlib's ResNet from face_recognition_models. Nothing is downloaded.")
    p.add_argument("model", help="model file (.safetensors, .pth/.pt, .onnx, dlib .dat) or 'dlib'")
    p.add_argument("-o", "--out", required=True, help="run directory to create")
    p.add_argument("--kind", choices=KINDS, default="auto", help="teacher kind (default: from the file name)")
    p.add_argument("--arch", default="", help="architecture of an insightface .pth (r50, r100, mbf, ...)")
    p.add_argument("--input-size", dest="input_size", type=int, default=None,
                   help="ONNX: input side when the graph does not fix it")
    p.add_argument("--channel-order", dest="channel_order", choices=["rgb", "bgr"], default=None,
                   help="ONNX: channel order the model expects (default rgb, as insightface feeds)")
    p.add_argument("--mean", type=float, default=None, help="ONNX: input mean (default from the graph)")
    p.add_argument("--std", type=float, default=None, help="ONNX: input std (default from the graph)")
    add_debug_arg(p)
    p.set_defaults(func=_import)


ACTIONS: list[Callable[[argparse._SubParsersAction], None]] = [_add_show, _add_import, register_route_plan]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("route", help="inspect a teacher route (checkpoints along training)")
    sub = parser.add_subparsers(dest="route_command", metavar="ACTION", required=True)
    for add in ACTIONS:
        add(sub)
