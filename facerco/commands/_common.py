"""Argument helpers shared by command modules."""

from __future__ import annotations

import argparse

__all__ = ["add_config_args", "add_debug_arg", "add_threads_arg", "job_overrides"]


def add_config_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """A config file plus dotted overrides, the form every training command takes."""
    parser.add_argument("config", nargs=None if required else "?", help="YAML config file")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=2 optim.lr=0.05")
    add_debug_arg(parser)


def add_debug_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show full tracebacks instead of one-line errors")


def add_threads_arg(parser: argparse.ArgumentParser) -> None:
    """``--threads N``: the job's torch CPU threads, the same as the override ``train.threads=N``."""
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="torch CPU threads (train.threads; default: the config's, 0 = the cores not busy at "
                        "start, measured over 0.5 s; N > 0 pins it)")


def job_overrides(args: argparse.Namespace) -> list[str]:
    """The dotted overrides with the job flags after them (a flag wins over an override of the same key)."""
    out = list(args.overrides)
    if getattr(args, "threads", None) is not None:
        out.append(f"train.threads={args.threads}")
    return out
