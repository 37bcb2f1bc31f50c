"""Teacher route: every point in route.json, sha256 checked on load, keep policy, `facerco route show`."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from facerco.cli import main as cli_main
from facerco.config import RouteConfig, config_from_dict
from facerco.route.io import ChecksumError, format_route_table, load_route
from facerco.route.record import planned_points, point_name
from facerco.train.teacher import train_teacher


def write_faces(root: Path, identities: int = 6, per_identity: int = 4, size: int = 16, seed: int = 0) -> Path:
    """A tiny identity folder: each identity is a colour pattern plus noise, as JPEG <id>/<id>_000k.jpg."""
    rng = np.random.default_rng(seed)
    for i in range(identities):
        name = f"id{i:02d}"
        base = rng.integers(0, 256, size=(size, size, 3))
        (root / name).mkdir(parents=True, exist_ok=True)
        for k in range(per_identity):
            img = np.clip(base + rng.normal(0, 20, size=base.shape), 0, 255).astype(np.uint8)
            cv2.imwrite(str(root / name / f"{name}_{k + 1:04d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    return root


def write_pairs(path: Path) -> Path:
    """LFW-format pairs over write_faces' images: 10 folds of 1 matched then 1 mismatched pair."""
    lines = ["10\t1"]
    for f in range(10):
        a, b = f"id{f % 6:02d}", f"id{(f + 1) % 6:02d}"
        lines += [f"{a}\t1\t2", f"{a}\t1\t{b}\t1"]
    path.write_text("\n".join(lines) + "\n")
    return path


def teacher_cfg(tmp: Path, **sections):
    data = write_faces(tmp / "faces") if not (tmp / "faces").exists() else tmp / "faces"
    base = {
        "data": {"format": "folder", "train": str(data), "image_size": 16, "num_workers": 0, "flip": True},
        "model": {"name": "iresnet_tiny", "embedding_size": 16},
        "loss": {"name": "arcface", "s": 16.0},
        "optim": {"lr": 0.05},
        "schedule": {"warmup_epochs": 0.5},
        "train": {"output": str(tmp / "run"), "epochs": 2, "batch_size": 4, "tensorboard": False, "progress": False,
                  "log_every": 1, "checkpoint_every_steps": 2},
        "route": {"every_epochs": 1.0},
    }
    for key, value in sections.items():
        base[key].update(value)
    return config_from_dict(base)


def test_point_plan_and_names():
    cfg = RouteConfig(every_epochs=1.0, keep="every_k", keep_every=2)
    assert planned_points(cfg, steps_per_epoch=6, total_steps=18) == [(6, False), (12, True), (18, True)]
    assert point_name(cfg, 12, 6) == "epoch_002"
    assert point_name(RouteConfig(every_steps=5), 15, 6) == "step_000015"
    assert planned_points(RouteConfig(every_steps=5), 6, 12) == [(5, True), (10, True), (12, True)]


def test_teacher_route_lists_every_checkpoint_and_detects_tampering(tmp_path, capsys):
    pairs = write_pairs(tmp_path / "pairs.txt")
    write_faces(tmp_path / "faces")
    cfg = teacher_cfg(tmp_path, data={"val_pairs": str(pairs), "val_root": str(tmp_path / "faces")},
                      train={"val_every_epochs": 1.0})
    result = train_teacher(cfg)
    run = tmp_path / "run"
    assert result.step == 12 and "estimated disk" in capsys.readouterr().out
    route = load_route(run)
    assert route.names() == ["epoch_001", "epoch_002"] and route.final == "epoch_002"
    on_disk = sorted(p.relative_to(run).as_posix() for p in (run / "route").glob("*.safetensors"))
    assert on_disk == sorted(p.file for p in route.points)
    assert all(p.val["pairs/accuracy"] >= 0.0 for p in route.points)
    assert [p.step for p in route.points] == [6, 12] and route.points[-1].final
    assert (run / "config.yaml").is_file() and (run / "last.pt").is_file()

    loaded = route.load_point("final")
    assert loaded.classifier is not None and tuple(loaded.classifier.shape) == (6, 16)
    assert loaded.metadata["step"] == 12 and loaded.metadata["route_point"] == "epoch_002"
    x = torch.zeros(1, 3, 16, 16)
    assert loaded.model(x).shape == (1, 16)

    # flip one byte in the middle of the first checkpoint: loading must fail and name the file
    path = run / route.points[0].file
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(ChecksumError, match="epoch_001.safetensors"):
        route.load_point("epoch_001")
    route.load_point("epoch_002")  # the other file still verifies

    table = format_route_table(route)
    assert "epoch_002 *" in table and "pairs/accuracy" in table
    assert cli_main(["route", "show", str(run), "--png", str(tmp_path / "r.png")]) == 0
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli_main(["route", "show", str(run), "--verify", "--no-plot"]) == 1  # tampered file reported


def write_val_bin(faces: Path, path: Path) -> Path:
    """An insightface .bin of 10 matched + 10 mismatched pairs over write_faces' images."""
    from facerco.data.bins import write_bin

    images, issame = [], []
    for f in range(10):
        a, b = f"id{f % 6:02d}", f"id{(f + 1) % 6:02d}"
        for (n1, k1), (n2, k2), same in (((a, 1), (a, 2), True), ((a, 1), (b, 1), False)):
            images += [(faces / n / f"{n}_{k:04d}.jpg").read_bytes() for n, k in ((n1, k1), (n2, k2))]
            issame.append(same)
    write_bin(path, images, issame)
    return path


def test_keep_every_k_writes_only_kept_points(tmp_path):
    val_bin = write_val_bin(write_faces(tmp_path / "faces"), tmp_path / "toy.bin")
    cfg = teacher_cfg(tmp_path, train={"epochs": 3, "checkpoint_every_steps": 0, "val_every_epochs": 2.0},
                      route={"keep": "every_k", "keep_every": 2, "save_classifier": False},
                      data={"val_bins": [str(val_bin)]})
    train_teacher(cfg)
    route = load_route(tmp_path / "run")
    assert route.names() == ["epoch_002", "epoch_003"] and route.final == "epoch_003"
    # .bin verification runs when due (every 2 epochs) and always at the last step
    assert set(route.points[0].val) >= {"toy/accuracy", "toy/tar@far=0.001"} and "toy/accuracy" in route.points[1].val
    assert sorted(p.name for p in (tmp_path / "run" / "route").iterdir()) == ["epoch_002.safetensors",
                                                                              "epoch_003.safetensors"]
    assert route.load_point("epoch_002").classifier is None
    data = json.loads((tmp_path / "run" / "route.json").read_text())
    assert data["num_classes"] == 6 and data["arch"] == "iresnet_tiny"


def test_load_route_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="route.json"):
        load_route(tmp_path)
    (tmp_path / "route.json").write_text(json.dumps({"format": "facerco-route", "version": 1, "points": [
        {"name": "a", "file": "route/a.safetensors", "epoch": 1, "step": 1, "lr": 0.1, "train_loss": 1.0,
         "bogus": 1}]}))
    with pytest.raises(ValueError, match="bogus"):
        load_route(tmp_path)
