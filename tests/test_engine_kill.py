"""A teacher run killed with SIGKILL mid-epoch and rerun ends bitwise identical to an uninterrupted run (CPU)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from facerco.config import load_config
from facerco.route.io import load_route
from facerco.train.checkpoint import load_resume
from facerco.train.teacher import train_teacher

STEPS_PER_EPOCH = 6
EPOCHS = 8


def _faces(root: Path) -> Path:
    rng = np.random.default_rng(1)
    for i in range(6):
        base = rng.integers(0, 256, size=(16, 16, 3))
        (root / f"id{i}").mkdir(parents=True)
        for k in range(4):
            img = np.clip(base + rng.normal(0, 20, size=base.shape), 0, 255).astype(np.uint8)
            cv2.imwrite(str(root / f"id{i}" / f"{k}.png"), img)
    return root


def _config(tmp: Path, out: str) -> Path:
    cfg = {
        "data": {"format": "folder", "train": str(tmp / "faces"), "image_size": 16, "num_workers": 0, "flip": True},
        "model": {"name": "iresnet_tiny", "embedding_size": 16, "dropout": 0.1},
        "loss": {"name": "arcface", "s": 16.0, "sample_rate": 0.5},  # sampling + dropout: RNG must be restored
        "optim": {"lr": 0.05},
        "schedule": {"warmup_epochs": 1.0, "decay": "cosine"},
        "train": {"output": str(tmp / out), "epochs": EPOCHS, "batch_size": 4, "tensorboard": False,
                  "progress": False, "log_every": 1, "checkpoint_every_steps": 2},
        "route": {"every_epochs": 1.0},
    }
    path = tmp / f"{out}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _logged_step(log: Path) -> int:
    if not log.is_file():
        return 0
    steps = [0]
    for line in log.read_text().splitlines():
        with contextlib.suppress(ValueError, KeyError):
            steps.append(int(json.loads(line)["step"]))
    return max(steps)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_rerun_is_bitwise_identical(tmp_path):
    _faces(tmp_path / "faces")
    ref_cfg, cut_cfg = _config(tmp_path, "ref"), _config(tmp_path, "cut")
    total = STEPS_PER_EPOCH * EPOCHS

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "facerco", "train", "teacher", str(cut_cfg)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = tmp_path / "cut" / "log.jsonl"
    deadline = time.time() + 120
    while _logged_step(log) < STEPS_PER_EPOCH + 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, f"run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = load_resume(tmp_path / "cut" / "last.pt")["step"]
    assert 0 < killed_at < total

    rerun = train_teacher(load_config(cut_cfg))  # same command again, here in-process
    assert rerun.resumed_from == killed_at and rerun.step == total
    train_teacher(load_config(ref_cfg))

    ref, cut = load_route(tmp_path / "ref"), load_route(tmp_path / "cut")
    assert ref.names() == cut.names() and len(ref.points) == EPOCHS
    # every route file is byte-identical: weights, classifier and metadata (lr, train loss) of the same steps
    assert [p.sha256 for p in ref.points] == [p.sha256 for p in cut.points]
    a = load_resume(tmp_path / "ref" / "last.pt")
    b = load_resume(tmp_path / "cut" / "last.pt")
    for name, tensor in a["task"].items():
        assert torch.equal(tensor, b["task"][name]), name
    for name, tensor in a["shards"][0]["task_local"].items():
        assert torch.equal(tensor, b["shards"][0]["task_local"][name]), name
    ref_loss = [json.loads(x)["loss"] for x in (tmp_path / "ref" / "log.jsonl").read_text().splitlines()
                if '"train"' in x]
    cut_loss = [json.loads(x)["loss"] for x in (tmp_path / "cut" / "log.jsonl").read_text().splitlines()
                if '"train"' in x]
    assert ref_loss == cut_loss and len(ref_loss) == total
