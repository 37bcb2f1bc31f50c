"""`facerco distill CONFIG [overrides]` (alias `facerco train student`): train an RCO student from a teacher route.

Thin CLI over :func:`facerco.distill.job.run_distill`; heavy imports happen inside the handler. `facerco train
student` is registered by facerco/commands/train.py through :func:`add_distill_args`, so both spellings parse the same
arguments and call the same handler.
"""

from __future__ import annotations

import argparse
import typing

from facerco.commands._common import add_config_args, add_threads_arg, job_overrides
from facerco.config import StrategyName

__all__ = ["DISTILL_DESCRIPTION", "add_distill_args", "register", "register_route_plan"]

DISTILL_DESCRIPTION = (
    "Train a student that follows anchors chosen from a teacher's route (distill section of the config: strategy "
    "final (the default and recommendation) or eeis/gss/phase/..., each with its knobs in its own section such as "
    "distill.gss; one- or multi-stage schedule, mimic/KD/hint weights, optional anchor-feature cache). Validates "
    "on data.val_bins / data.val_pairs as the teacher job does. Resumes from last.pt in "
    "train.output under the same config (a changed config is refused). `facerco distill` and `facerco train "
    "student` are the same command."
)


def _distill(args: argparse.Namespace) -> int:
    """`facerco distill` and `facerco train student`: the student job with the config's validator."""
    from facerco.distill.builders import load_student_config
    from facerco.distill.job import run_distill

    cfg = load_student_config(args.config, job_overrides(args))
    result = run_distill(cfg)
    if result.student_path is None:  # another rank than 0 under torchrun: rank 0 wrote and reports the student
        return 0
    val = "  ".join(f"{k} {v:.4f}" for k, v in result.val.items())
    print(f"student: {result.student_path}  steps {result.step}  {result.seconds:.1f}s  {val}".rstrip())
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("distill", help="train a student by RCO from a teacher route "
                                   "(also `facerco train student`)", description=DISTILL_DESCRIPTION)
    add_distill_args(parser)


def add_distill_args(parser: argparse.ArgumentParser) -> None:
    """The arguments and handler of the student job, for `facerco distill` and its alias `facerco train student`."""
    add_config_args(parser)
    add_threads_arg(parser)
    parser.set_defaults(func=_distill)


# ---------------------------------------------------------------------------------------------------------------------
# `facerco route plan RUN`: registered by facerco/commands/route.py through register_route_plan()
# ---------------------------------------------------------------------------------------------------------------------


def _plan_overrides(args: argparse.Namespace) -> list[str]:
    out = [f"distill.teacher_run={args.run}"]
    if args.strategy:
        out.append(f"distill.strategy={args.strategy}")
    for flag, key in (("num_anchors", "eeis.num_anchors"), ("every", "eeis.every"), ("delta", "gss.delta"),
                      ("delta_mode", "gss.delta_mode"), ("probe_images", "gss.probe_images"), ("seed", "gss.seed"),
                      ("divergence", "gss.divergence"), ("schedule", "schedule"), ("final_share", "final_share")):
        value = getattr(args, flag, None)
        if value is not None:
            out.append(f"distill.{key}={value}")
    if args.anchors:
        names = ", ".join(n.strip() for n in args.anchors.split(",") if n.strip())
        out.append(f"distill.manual.anchors=[{names}]")
    return out


def _route_plan(args: argparse.Namespace) -> int:
    from pathlib import Path

    from facerco.distill.planning import prepare_plan, route_plan_config, write_plan
    from facerco.distill.strategies import needs_probe
    from facerco.route.anchors import format_plan
    from facerco.route.io import load_route
    from facerco.route.plan import format_stages
    from facerco.train.job import build_train_dataset

    route = load_route(Path(args.run))
    cfg = route_plan_config(args.run, args.config, [*args.overrides, *_plan_overrides(args)], args.dataset)
    dataset = build_train_dataset(cfg)
    # without a student config the GSS walk starts at the first route point (no student to measure)
    spe, anchor_plan, stage_plan = prepare_plan(cfg, route, dataset, student_start=bool(args.config))
    if not args.config and needs_probe(cfg.distill):
        print("note: no --config, so GSS starts from the first route point; `facerco distill` starts from the "
              "initialised student of its config")
    print(format_plan(anchor_plan))
    print(format_stages(stage_plan, spe))
    if args.json:
        write_plan(Path(args.json), anchor_plan, stage_plan)
    return 0


def register_route_plan(route_subparsers: argparse._SubParsersAction) -> None:
    """Add the ``plan`` action to ``facerco route`` (called by facerco/commands/route.py)."""
    from facerco.commands._common import add_debug_arg

    p = route_subparsers.add_parser(
        "plan", help="print the anchors (and GSS divergences) and stages a student would use",
        description="Choose anchors from the route of RUN exactly as `facerco distill` will (same function, same "
                    "seed), print them with the divergences that decided them and the stage plan.")
    p.add_argument("run", help="teacher run directory (holds route.json)")
    p.add_argument("--config", default="", help="student config (its distill section, data and budget)")
    p.add_argument("overrides", nargs="*", help="dotted overrides for the config")
    p.add_argument("--strategy", choices=typing.get_args(StrategyName), default=None,
                   help="distill.strategy (a name of the strategy registry; default: the config's)")
    p.add_argument("--num-anchors", dest="num_anchors", type=int, default=None, help="EEIS: n evenly spaced")
    p.add_argument("--every", type=int, default=None, help="EEIS: every k-th route point")
    p.add_argument("--anchors", default="", help="manual / ensemble: comma-separated route point names")
    p.add_argument("--delta", type=float, default=None, help="GSS threshold")
    p.add_argument("--delta-mode", dest="delta_mode", choices=["absolute", "relative"], default=None)
    p.add_argument("--divergence", choices=["auto", "kl", "l2", "cosine", "relational"], default=None)
    p.add_argument("--probe-images", dest="probe_images", type=int, default=None)
    p.add_argument("--seed", type=int, default=None, help="GSS probe-set seed")
    p.add_argument("--schedule", choices=["one_stage", "multi_stage"], default=None)
    p.add_argument("--final-share", dest="final_share", type=float, default=None)
    p.add_argument("--dataset", default="", help="training set for the GSS probe (default: the config's)")
    p.add_argument("--json", default="", help="also write the plan as JSON here")
    add_debug_arg(p)
    p.set_defaults(func=_route_plan)
