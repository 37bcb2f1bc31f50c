"""The `facerco` command line: parses arguments and dispatches to the library.

Each command lives in its own module under ``facerco.commands`` and exposes
``register(subparsers) -> None``; the parser it adds sets ``func`` to a handler ``(args) -> int``.
Modules are discovered, so adding a command never edits this file.

Errors: a command that fails prints one line, ``facerco CMD: error: <what is wrong>``, and exits 1; ``--debug``
(before or after the command name) shows the traceback instead. The ``data_prep/`` scripts use the same
:func:`run_guarded`.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Callable, Iterator

from facerco import __version__

__all__ = ["build_parser", "error_line", "main", "run_guarded"]

# Errors whose message is written for the user (it names the file and what is wrong); others get their type name.
_USER_ERRORS = (OSError, ValueError, RuntimeError)
_DEBUG_HELP = "show full tracebacks instead of one-line errors"


def error_line(exc: BaseException) -> str:
    """``exc`` as one line: multi-line messages (YAML parsers, subprocesses) are joined, OS errors name the path."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}"
    else:
        text = " ".join(str(exc).split())
    if isinstance(exc, _USER_ERRORS) and text:
        return text
    return f"{type(exc).__name__}: {text} (rerun with --debug for the traceback)" if text else type(exc).__name__


def run_guarded(prog: str, fn: Callable[[], int | None], debug: bool = False) -> int:
    """Run ``fn``; an exception becomes one line on stderr and exit status 1 (with ``debug`` it propagates)."""
    try:
        return int(fn() or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            raise
        print(f"{prog}: error: {error_line(exc)}", file=sys.stderr)
        return 1


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """``parser`` and every sub-command parser below it."""
    yield parser
    for action in parser._actions:  # argparse has no public walk over sub-parsers
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                yield from _parsers(sub)


def _ensure_debug(parser: argparse.ArgumentParser) -> None:
    """Give every leaf command a ``--debug`` flag, so it is accepted wherever a user types it."""
    for p in _parsers(parser):
        has_sub = any(isinstance(a, argparse._SubParsersAction) for a in p._actions)
        if p is parser or has_sub or "--debug" in p._option_string_actions:
            continue
        p.add_argument("--debug", action="store_true", help=_DEBUG_HELP)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="facerco",
        description="Small, accurate face-recognition models by Route Constrained Optimization.",
    )
    parser.add_argument("--version", action="version", version=f"facerco {__version__}")
    parser.add_argument("--debug", dest="debug_all", action="store_true", help=_DEBUG_HELP)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    import facerco.commands as commands_pkg

    for info in sorted(pkgutil.iter_modules(commands_pkg.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"facerco.commands.{info.name}")
        module.register(subparsers)
    _ensure_debug(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    debug = bool(getattr(args, "debug", False) or args.debug_all)
    return run_guarded(f"facerco {args.command}", lambda: args.func(args), debug)


if __name__ == "__main__":
    sys.exit(main())
