"""Argument helpers shared by command modules."""

from __future__ import annotations

import argparse

__all__ = ["add_config_args", "add_debug_arg"]


def add_config_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """A config file plus dotted overrides, the form every training command takes."""
    parser.add_argument("config", nargs=None if required else "?", help="YAML config file")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=2 optim.lr=0.05")
    add_debug_arg(parser)


def add_debug_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show full tracebacks instead of one-line errors")
