"""`facerco train JOB CONFIG [overrides]`: run a training job through the shared engine.

Jobs are looked up in ``JOBS`` (name -> "module:function" taking a Config); ``student`` is the student job
(:func:`facerco.distill.job.run_distill`, the same as `facerco distill`). Launch with
``torchrun --nproc_per_node N -m facerco train teacher CONFIG`` for DDP.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util

from facerco.commands._common import add_config_args, add_threads_arg, job_overrides
from facerco.config import load_config

__all__ = ["JOBS", "register"]

JOBS: dict[str, tuple[str, str]] = {
    "teacher": ("facerco.train.teacher:train_teacher", "train a margin-softmax teacher and record its route"),
    "student": ("facerco.distill.job:run_distill", "distill a student along a teacher route (RCO)"),
}


def _available(target: str) -> bool:
    module = target.split(":", 1)[0]
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def _run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, job_overrides(args))
    module_name, func_name = JOBS[args.job][0].split(":", 1)
    func = getattr(importlib.import_module(module_name), func_name)
    result = func(cfg)
    step = getattr(result, "step", None)
    if step is not None:
        plan = getattr(result, "stage_plan", None)
        total = getattr(result, "total_steps", None) or getattr(plan, "total_steps", step)
        print(f"done: step {step}/{total} in {result.seconds:.1f} s; run dir {cfg.train.output}")
        for key, value in sorted(getattr(result, "val", {}).items()):
            print(f"  {key}: {value:.4f}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="train a teacher (or student) from a YAML config")
    sub = parser.add_subparsers(dest="job", metavar="JOB", required=True)
    for name, (target, help_text) in JOBS.items():
        if not _available(target):
            continue
        job = sub.add_parser(name, help=help_text, description=f"{help_text}. Resumes from <train.output>/last.pt.")
        add_config_args(job)
        add_threads_arg(job)
        job.set_defaults(func=_run)
