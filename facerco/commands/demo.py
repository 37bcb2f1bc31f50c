"""`facerco demo`: the whole RCO chain on generated faces, on a CPU, in minutes."""

from __future__ import annotations

import argparse

from facerco.commands._common import add_debug_arg


def _demo(args: argparse.Namespace) -> int:
    from facerco.demo import run_demo

    run_demo(args.out, quick=args.quick, seed=args.seed, threads=args.threads)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the whole chain on generated faces (align, pack, teacher+route, students, eval, ONNX)",
        description="Generated in-the-wild faces -> align -> pack -> teacher with route (its own validation "
        "identities) -> students (scratch, mimic-final on two seeds: the recommended student, and the route strategy "
        "phase) -> verification + 1:N identification of held-out identities -> fp32 + int8 ONNX export with model "
        "cards. The table marks differences within one seed's noise. "
        "A rerun resumes where the last one stopped. The same seed, machine, torch build and thread count print the "
        "same table; another CPU or thread count changes the numbers (the full demo's by up to ~1.5 points).",
    )
    parser.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke size for CI: about 1 minute on 2 idle CPU cores (52 s measured), several "
                        "minutes when the cores are shared")
    parser.add_argument("--seed", type=int, default=0, help="seed of data generation and training")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (default 0: the cores not busy when the demo starts, measured over "
                        "0.5 s; pin it to compare runs, since the thread count changes the numbers)")
    add_debug_arg(parser)
    parser.set_defaults(func=_demo)
