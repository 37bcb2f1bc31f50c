"""The one job setup (facerco.train.job) of teacher and student: `facerco train student` is `facerco distill`, a
changed config is refused on resume by both jobs, config.yaml is written once, and older run folders still resume."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from test_distill_support import base_cfg, student_cfg, train_teacher, write_faces

from facerco.cli import main
from facerco.config import Config, dump_config

OLD_CONFIGS = Path(__file__).resolve().parent / "data" / "pre_job_setup"
COMMANDS = {"teacher": ["train", "teacher"], "distill": ["distill"], "train student": ["train", "student"]}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    root = tmp_path_factory.mktemp("job_setup")
    faces = write_faces(root / "faces")
    return faces, train_teacher(faces, root / "teacher")


def _val_bin(faces: Path, path: Path) -> Path:
    """An insightface .bin of 6 matched and 6 mismatched pairs over write_faces' images (the validator's input)."""
    from facerco.data.bins import write_bin

    images, issame = [], []
    for i in range(6):
        a, b = faces / f"id_{i:02d}", faces / f"id_{(i + 1) % 6:02d}"
        for first, second, same in ((a / "0000.png", a / "0001.png", True), (a / "0002.png", b / "0003.png", False)):
            images += [first.read_bytes(), second.read_bytes()]
            issame.append(same)
    write_bin(path, images, issame)
    return path


def _config_file(cfg: Config, path: Path) -> Path:
    path.write_text(dump_config(cfg), encoding="utf-8")
    return path


def _job_cfg(job: str, faces: Path, teacher: Path, out: Path) -> Config:
    if job == "teacher":
        cfg = base_cfg(faces, out)
        cfg.kind = "teacher"
    else:
        cfg = student_cfg(faces, teacher, out, strategy="eeis", eeis={"num_anchors": 2}, schedule="multi_stage",
                          final_share=0.5)
    cfg.train.epochs = 1.0  # 6 steps
    return cfg


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _deterministic_view(run: Path) -> dict:
    """What two runs of one config must share: the file list, config.yaml, plan.json and the weights byte for byte,
    summary.json and log.jsonl less their clock readings."""
    clock = ("seconds", "time", "elapsed", "per_s", "eta", "written")
    records = [{k: v for k, v in r.items() if not any(c in k for c in clock)} for r in _log(run)]
    summary = {k: v for k, v in json.loads((run / "summary.json").read_text()).items() if k != "seconds"}
    return {"files": sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()),
            "sha256": {name: _sha256(run / name) for name in ("config.yaml", "plan.json", "student.safetensors")},
            "summary": summary, "log": records}


def test_train_student_and_distill_write_identical_run_folders(teacher, tmp_path):
    """One command under two names: same parsing (validator included), same files (clock readings aside)."""
    faces, route_run = teacher
    out = tmp_path / "run"
    cfg = _job_cfg("distill", faces, route_run, out)
    cfg.train.epochs, cfg.train.val_every_epochs = 2.0, 1.0
    cfg.data.val_bins = [str(_val_bin(faces, tmp_path / "pairs.bin"))]
    config = _config_file(cfg, tmp_path / "student.yaml")
    views = {}
    for name in ("distill", "train student"):
        assert main([*COMMANDS[name], str(config), "optim.lr=0.02", "--threads", "1"]) == 0
        views[name] = _deterministic_view(out.rename(tmp_path / name.replace(" ", "_")))
    assert views["distill"] == views["train student"]
    assert "pairs/accuracy" in views["distill"]["summary"]["val"]  # both built the config's validator
    assert "lr: 0.02" in (tmp_path / "distill" / "config.yaml").read_text()  # both read the overrides


@pytest.mark.parametrize("job", list(COMMANDS))
def test_a_changed_config_is_refused_on_resume_naming_the_file(teacher, tmp_path, capsys, job):
    faces, route_run = teacher
    out = tmp_path / "run"
    config = _config_file(_job_cfg(job, faces, route_run, out), tmp_path / "job.yaml")
    command = [*COMMANDS[job], str(config)]
    assert main([*command, "train.max_steps=2", "--threads", "1"]) == 0
    saved = (out / "config.yaml").read_bytes()
    capsys.readouterr()
    assert main([*command, "optim.lr=0.01", "--threads", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert f"{out / 'config.yaml'}: cannot resume" in err[0] and "optim.lr: 0.05 -> 0.01" in err[0]
    assert (out / "config.yaml").read_bytes() == saved  # the refused start left the record alone
    # keys a resume may change (max_steps, threads) resume; config.yaml stays as the first start wrote it
    assert main([*command, "train.max_steps=4", "--threads", "2"]) == 0
    assert (out / "config.yaml").read_bytes() == saved
    assert [r["step"] for r in _log(out) if r["event"] == "resume"] == [2]
    assert max(r["step"] for r in _log(out) if r["event"] == "train") == 4


def _old_config(job: str, faces: Path, teacher: Path, out: Path) -> str:
    """The fixture config.yaml of the code before the shared job setup, its comments dropped, paths filled in."""
    text = (OLD_CONFIGS / f"{'teacher' if job == 'teacher' else 'student'}_config.yaml").read_text(encoding="utf-8")
    text = "".join(line for line in text.splitlines(keepends=True) if not line.startswith("#"))
    return text.replace("@FACES@", str(faces)).replace("@TEACHER@", str(teacher)).replace("@OUT@", str(out))


@pytest.mark.parametrize("job", ["teacher", "distill"])
def test_a_run_folder_written_before_the_job_setup_resumes(teacher, tmp_path, job):
    """A folder stopped at step 5 whose config.yaml has the old layout (flat distill keys, the student's rewritten
    at every start) resumes under the user's unchanged config file to the end, and config.yaml is kept as it was."""
    faces, route_run = teacher
    out = tmp_path / "run"
    user = tmp_path / "job.yaml"
    user.write_text(_old_config(job, faces, route_run, out), encoding="utf-8")
    command = [*COMMANDS[job], str(user)]
    assert main([*command, "train.max_steps=5", "--threads", "1"]) == 0
    old = _old_config(job, faces, route_run, out).replace("max_steps: 0", "max_steps: 5")
    (out / "config.yaml").write_text(old, encoding="utf-8")
    assert main([*command, "--threads", "1"]) == 0
    assert (out / "config.yaml").read_text(encoding="utf-8") == old
    log = _log(out)
    assert [r["step"] for r in log if r["event"] == "resume"] == [5]
    assert max(r["step"] for r in log if r["event"] == "train") == 24  # 4 epochs x 6 steps


def test_the_process_group_is_left_on_any_exit(teacher, tmp_path, monkeypatch):
    """start_job waits for the ranks and leaves on success, leaves at once on any error; both jobs go through it."""
    import torch

    from facerco.distill.job import run_distill
    from facerco.train import distributed as fdist
    from facerco.train.job import start_job

    faces, route_run = teacher
    calls: list[str] = []
    monkeypatch.setattr(fdist, "cleanup", lambda: calls.append("cleanup"))
    monkeypatch.setattr(fdist, "abort", lambda: calls.append("abort"))
    threads = torch.get_num_threads()
    cfg = _job_cfg("teacher", faces, route_run, tmp_path / "t")
    cfg.train.threads = threads + 1
    with start_job(cfg, "teacher") as job:
        assert job.dist.world_size == 1 and torch.get_num_threads() == threads + 1
    with pytest.raises(KeyboardInterrupt), start_job(cfg, "teacher"):
        raise KeyboardInterrupt
    assert calls == ["cleanup", "abort"] and torch.get_num_threads() == threads
    student = _job_cfg("distill", faces, route_run, tmp_path / "s")
    student.distill.gate = True  # no validation data: refused during the setup, inside the process group
    with pytest.raises(ValueError, match="gate"):
        run_distill(student)
    assert calls[-1] == "abort"
