"""A resumed run says so: "resuming from step N of M (last.pt written at <time>)", printed and in log.jsonl."""

from __future__ import annotations

import json
import time
from pathlib import Path

from test_distill_support import base_cfg, write_faces
from test_engine import _fit


def _written(run: Path) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime((run / "last.pt").stat().st_mtime))


def _resume_records(run: Path) -> list[dict]:
    lines = (run / "log.jsonl").read_text().splitlines()
    return [rec for rec in map(json.loads, lines) if rec["event"] == "resume"]


def test_engine_resume_is_printed_and_logged(tmp_path, capsys):
    run = tmp_path / "run"
    _fit(run, max_steps=7)
    assert "resuming" not in capsys.readouterr().out  # a fresh run says nothing of the kind
    written = _written(run)
    _fit(run)
    expected = f"resuming from step 7 of 18 (last.pt written at {written})"
    assert f"run: {expected}" in capsys.readouterr().out.splitlines()
    (record,) = _resume_records(run)
    assert record["step"] == 7 and record["total_steps"] == 18 and record["message"] == expected


def test_resumed_teacher_job_says_so(tmp_path, capsys):
    from facerco.train.teacher import train_teacher

    data = write_faces(tmp_path / "faces", identities=4, per_id=4)
    out = tmp_path / "teacher"
    train_teacher(base_cfg(data, out, train={"epochs": 2.0, "max_steps": 3}))
    written = _written(out)
    capsys.readouterr()
    train_teacher(base_cfg(data, out, train={"epochs": 2.0, "resume": True}))
    printed = capsys.readouterr().out
    assert f"teacher: resuming from step 3 of 4 (last.pt written at {written})" in printed
    assert _resume_records(out)[0]["step"] == 3
