"""`facerco model-info NAME` / `facerco model-info --list`: parameters, MACs and embedding size of backbones.

NAME may be an alias (insightface's ``r100`` for ``iresnet100``); the listing shows each model's aliases.

Thin CLI over :func:`facerco.models.info.model_info` (models built on PyTorch's meta device, so even iresnet200 is
counted without allocating its weights); the library is imported inside the handler so ``facerco --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json

from facerco.commands._common import add_debug_arg

__all__ = ["register"]


def _row(info: dict[str, object]) -> str:
    macs = int(info["macs"])  # type: ignore[arg-type]
    mac_text = f"{macs / 1e9:.2f}G" if macs >= 1e9 else f"{macs / 1e6:.0f}M"
    aliases = ", ".join(info["aliases"]) or "-"  # type: ignore[arg-type]
    return (f"{info['name']:<15} {info['family']:<14} {int(info['params']) / 1e6:>8.2f}M "  # type: ignore[arg-type]
            f"{mac_text:>8} {info['embedding_size']:>6}   {aliases}")


def _run(args: argparse.Namespace) -> int:
    from facerco.models import list_models
    from facerco.models.info import model_info

    if args.list:
        names = list_models()
    elif args.name:
        names = [args.name]
    else:
        raise ValueError("give a model NAME or --list")
    infos = [model_info(n, args.embedding_size, args.width_mult, args.input_size) for n in names]
    if args.json:
        print(json.dumps(infos if args.list else infos[0], indent=2))
        return 0
    side = args.input_size
    print(f"{'model':<15} {'family':<14} {'params':>9} {'MACs':>8} {'emb':>6}   aliases   "
          f"(MACs: conv+linear at {side}x{side})")
    for info in infos:
        print(_row(info))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("model-info", help="parameters, MACs and embedding size of a backbone")
    parser.add_argument("name", nargs="?", help="registered model name or alias, e.g. iresnet100 or r100 (see --list)")
    parser.add_argument("--list", action="store_true", help="every registered model, with its aliases")
    parser.add_argument("--embedding-size", type=int, default=None, help="override the embedding size")
    parser.add_argument("--width-mult", type=float, default=None, help="override the width multiplier")
    parser.add_argument("--input-size", type=int, default=112, help="square input side for MACs (default 112)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_debug_arg(parser)
    parser.set_defaults(func=_run)
