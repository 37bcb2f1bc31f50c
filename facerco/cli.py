"""The `facerco` command line: parses arguments and dispatches to the library.

Each command lives in its own module under ``facerco.commands`` and exposes
``register(subparsers) -> None``; the parser it adds sets ``func`` to a handler ``(args) -> int``.
Modules are discovered, so adding a command never edits this file.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from facerco import __version__

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="facerco",
        description="Small, accurate face-recognition models by Route Constrained Optimization.",
    )
    parser.add_argument("--version", action="version", version=f"facerco {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    import facerco.commands as commands_pkg

    for info in sorted(pkgutil.iter_modules(commands_pkg.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"facerco.commands.{info.name}")
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        if getattr(args, "debug", False):
            raise
        print(f"facerco {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
