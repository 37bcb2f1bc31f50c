"""Torch threads for a job (facerco.utils.threads): pinned, or the cores not busy; restored after a library call."""

from __future__ import annotations

import pytest
import torch

from facerco.utils import threads as thr
from facerco.utils.threads import choose_threads, job_threads


def test_choose_threads_pins_follows_busy_cores_and_never_drops_below_one(monkeypatch):
    assert choose_threads(3, cpus=2, busy=2.0, default=2) == 3  # requested > 0 pins it, whatever the load
    assert choose_threads(cpus=4, busy=0.0, default=4) == 4  # idle: every core
    assert choose_threads(cpus=4, busy=1.2, default=4) == 3  # busy cores reduce the count
    assert choose_threads(cpus=4, busy=2.6, default=4) == 1
    assert choose_threads(cpus=2, busy=7.0, default=2) == 1  # never below one
    assert choose_threads(cpus=16, busy=0.0, default=4) == 4  # never above torch's current count
    monkeypatch.setattr(thr, "busy_cores", lambda *a: pytest.fail("measured although one thread is the only answer"))
    assert choose_threads(cpus=8, default=1) == 1  # OMP_NUM_THREADS=1 / a caller's 1: nothing to measure
    monkeypatch.setattr(thr, "busy_cores", lambda *a: 3.0)
    assert choose_threads(cpus=4, default=4) == 1  # measured when not given
    with pytest.raises(ValueError, match="threads must be >= 0"):
        choose_threads(-1)


def test_job_threads_sets_prints_and_restores_the_callers_count(capsys):
    before = torch.get_num_threads()
    with job_threads(2, "distill") as choice:
        assert torch.get_num_threads() == 2 and choice.threads == 2
    assert torch.get_num_threads() == before
    assert capsys.readouterr().out == "distill: 2 torch thread(s) (train.threads pins it)\n"
    assert choice.to_dict() == {"threads": 2, "requested": 2, "reason": "train.threads pins it"}
    with pytest.raises(RuntimeError), job_threads(3, "teacher", announce=False):
        raise RuntimeError("job failed")
    assert torch.get_num_threads() == before and capsys.readouterr().out == ""  # restored on failure too


def test_threads_flag_maps_to_train_threads():
    from facerco.cli import build_parser
    from facerco.commands._common import job_overrides

    parser = build_parser()
    args = parser.parse_args(["distill", "s.yaml", "train.threads=4", "--threads", "2"])
    assert job_overrides(args) == ["train.threads=4", "train.threads=2"]  # the flag comes last: it wins
    args = parser.parse_args(["train", "teacher", "--threads", "1", "t.yaml", "train.epochs=1"])
    assert job_overrides(args) == ["train.epochs=1", "train.threads=1"]
    assert job_overrides(parser.parse_args(["train", "student", "s.yaml"])) == []
