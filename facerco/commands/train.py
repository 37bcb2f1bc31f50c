"""`facerco train JOB CONFIG [overrides]`: run a training job through the shared job setup and engine.

``teacher`` trains a margin-softmax teacher and records its route (:func:`facerco.train.teacher.train_teacher`);
``student`` is an alias of `facerco distill`: the parser and the handler are those of :mod:`facerco.commands.distill`,
so the two spellings parse the same arguments (the validator included) and write the same run folder. Launch with
``torchrun --nproc_per_node N -m facerco train teacher CONFIG`` for DDP.
"""

from __future__ import annotations

import argparse

from facerco.commands._common import add_config_args, add_threads_arg, job_overrides
from facerco.commands.distill import DISTILL_DESCRIPTION, add_distill_args

__all__ = ["register"]

TEACHER_HELP = "train a margin-softmax teacher and record its route"


def _teacher(args: argparse.Namespace) -> int:
    """`facerco train teacher`: the teacher job, then its final step and validation metrics."""
    from facerco.config import load_config
    from facerco.train.teacher import train_teacher

    cfg = load_config(args.config, job_overrides(args))
    result = train_teacher(cfg)
    print(f"done: step {result.step}/{result.total_steps} in {result.seconds:.1f} s; run dir {cfg.train.output}")
    for key, value in sorted(result.val.items()):
        print(f"  {key}: {value:.4f}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="train a teacher, or a student (= `facerco distill`), from a YAML "
                                                 "config")
    sub = parser.add_subparsers(dest="job", metavar="JOB", required=True)
    teacher = sub.add_parser("teacher", help=TEACHER_HELP,
                             description=f"{TEACHER_HELP}. Resumes from <train.output>/last.pt under the same config "
                                         "(a changed config is refused).")
    add_config_args(teacher)
    add_threads_arg(teacher)
    teacher.set_defaults(func=_teacher)
    student = sub.add_parser("student", help="alias of `facerco distill`: distill a student along a teacher route",
                             description=DISTILL_DESCRIPTION)
    add_distill_args(student)
