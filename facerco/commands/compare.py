"""`facerco compare CONFIG... [--variants ...] [--seeds ...]`: baselines and RCO variants in one table.

With one CONFIG the built-in variants are derived from it (scratch, mimic_final, mimic_best, rco_eeis_one,
rco_eeis_multi, rco_gss); with several, each file is one variant. See :mod:`facerco.distill.compare`.
"""

from __future__ import annotations

import argparse

from facerco.commands._common import add_debug_arg


def _compare(args: argparse.Namespace) -> int:
    from facerco.distill.compare import DEFAULT_VARIANTS, builtin_variants, file_variants, format_table, run_compare

    configs = [c for c in args.configs if "=" not in c]
    overrides = [c for c in args.configs if "=" in c] + list(args.set)
    if not configs:
        raise ValueError("compare: give at least one student config")
    if len(configs) == 1:
        names = [n.strip() for n in args.variants.split(",") if n.strip()] if args.variants else list(DEFAULT_VARIANTS)
        variants = builtin_variants(configs[0], overrides, names)
    else:
        if args.variants:
            raise ValueError("compare: --variants applies to a single base config, not to several files")
        variants = file_variants(configs, overrides)
    table = run_compare(variants, args.seeds, args.out, metric=args.metric, train=not args.report_only)
    print(format_table(table), end="")
    print(f"written: {args.out}/compare.md and {args.out}/compare.json")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from facerco.distill.compare import DEFAULT_VARIANTS, VARIANTS

    parser = subparsers.add_parser(
        "compare", help="train baselines and RCO variants under one budget and print a table",
        description="One base student config: the built-in variants (default " + ", ".join(DEFAULT_VARIANTS)
                    + ") are derived "
                    "from it. Several configs: one variant each. Same student, data and budget; mean ± std over "
                    "--seeds. Finished runs under --out are reused, so an interrupted comparison resumes.")
    parser.add_argument("configs", nargs="+", help="student config(s), optionally followed by dotted overrides")
    parser.add_argument("--variants", default="", help="comma-separated built-in variants: " + ", ".join(VARIANTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="train.seed values (default: 0)")
    parser.add_argument("--out", default="runs/compare", help="output folder (runs, compare.md, compare.json)")
    parser.add_argument("--metric", default="", help="primary val metric (default: the first '*acc' one)")
    parser.add_argument("--set", nargs="*", default=[], help="extra dotted overrides applied to every variant")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: tabulate the runs already finished under --out")
    add_debug_arg(parser)
    parser.set_defaults(func=_compare)
