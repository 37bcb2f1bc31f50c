"""`facerco train student` and `facerco distill` are one command (the old facerco.train.student/compare re-export
shims are gone: they made train <-> distill a package cycle)."""

from __future__ import annotations

import argparse


def _parse(argv: list[str]) -> argparse.Namespace:
    from facerco.cli import build_parser

    return build_parser().parse_args(argv)


def test_train_student_is_an_alias_of_distill():
    """Same handler, same parsed arguments (config, overrides, threads), same description in the help."""
    from facerco.commands.distill import DISTILL_DESCRIPTION

    student = _parse(["train", "student", "s.yaml", "train.epochs=1", "--threads", "2"])
    distill = _parse(["distill", "s.yaml", "train.epochs=1", "--threads", "2"])
    assert student.func is distill.func
    assert {k: v for k, v in vars(student).items() if k not in ("command", "job")} == \
        {k: v for k, v in vars(distill).items() if k not in ("command", "job")}
    assert "facerco train student" in DISTILL_DESCRIPTION
