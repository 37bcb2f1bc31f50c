"""2 gloo ranks, Partial-FC shards: a run stopped mid-epoch and resumed equals the uninterrupted 2-rank run."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from facerco.config import config_from_dict
from facerco.route.io import load_route
from facerco.train.checkpoint import load_resume


def _faces(root: Path) -> None:
    rng = np.random.default_rng(2)
    for i in range(6):
        base = rng.integers(0, 256, size=(16, 16, 3))
        (root / f"id{i}").mkdir(parents=True)
        for k in range(4):
            img = np.clip(base + rng.normal(0, 20, size=base.shape), 0, 255).astype(np.uint8)
            cv2.imwrite(str(root / f"id{i}" / f"{k}.png"), img)


def _cfg(tmp: str, out: str, max_steps: int = 0):
    return config_from_dict({
        "data": {"format": "folder", "train": f"{tmp}/faces", "image_size": 16, "num_workers": 0},
        "model": {"name": "iresnet_tiny", "embedding_size": 16, "dropout": 0.1},
        "loss": {"name": "arcface", "s": 16.0, "sample_rate": 0.5},
        "optim": {"lr": 0.05},
        "train": {"output": f"{tmp}/{out}", "epochs": 3, "batch_size": 2, "tensorboard": False, "progress": False,
                  "log_every": 1, "checkpoint_every_steps": 0, "max_steps": max_steps},
        "route": {"every_epochs": 1.0},
    })


def _worker(rank: int, port: int, tmp: str, out: str, max_steps: int) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2", "RANK": str(rank),
                       "LOCAL_RANK": str(rank)})
    torch.set_num_threads(1)
    from facerco.train.teacher import train_teacher

    train_teacher(_cfg(tmp, out, max_steps))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.distributed
def test_two_rank_teacher_resume_restores_every_shard(tmp_path):
    import torch.multiprocessing as mp

    _faces(tmp_path / "faces")
    tmp = str(tmp_path)
    mp.spawn(_worker, args=(_port(), tmp, "ref", 0), nprocs=2, join=True)
    mp.spawn(_worker, args=(_port(), tmp, "cut", 4), nprocs=2, join=True)  # stops mid-epoch 1 (6 steps/epoch)
    assert load_resume(tmp_path / "cut" / "last.pt")["step"] == 4
    mp.spawn(_worker, args=(_port(), tmp, "cut", 0), nprocs=2, join=True)

    a, b = load_resume(tmp_path / "ref" / "last.pt"), load_resume(tmp_path / "cut" / "last.pt")
    assert a["step"] == b["step"] == 18 and len(a["shards"]) == 2
    for name in a["task"]:
        assert torch.equal(a["task"][name], b["task"][name]), name
    for r in range(2):  # each rank's classifier rows, sampling counter and momentum buffers
        for name, t in a["shards"][r]["task_local"].items():
            assert torch.equal(t, b["shards"][r]["task_local"][name]), (r, name)
        for idx, st in a["shards"][r]["optim_local"].items():
            assert torch.equal(st["momentum_buffer"], b["shards"][r]["optim_local"][idx]["momentum_buffer"])
    assert [p.sha256 for p in load_route(tmp_path / "ref").points] == [
        p.sha256 for p in load_route(tmp_path / "cut").points]
    final = load_route(tmp_path / "ref").load_point("final")
    assert tuple(final.classifier.shape) == (6, 16)  # both shards gathered
