"""`facerco train student` and `facerco distill` run the same job (the old facerco.train.student/compare re-export
shims are gone: they made train <-> distill a package cycle)."""

from __future__ import annotations

import importlib


def test_cli_and_engine_entry_points_reach_the_new_job():
    """`facerco train student` names the job by string; it must load the same function as `facerco distill`."""
    from facerco.commands.train import JOBS
    from facerco.distill.job import run_distill

    module, func = JOBS["student"][0].split(":")
    assert getattr(importlib.import_module(module), func) is run_distill
