"""Helpers (no tests) for the distillation tests: a tiny image folder, configs and a tiny teacher route.

The teacher is trained for a few steps by the real engine with the route recorder, so the route files are the
ones `facerco train teacher` writes.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from facerco.config import Config, config_from_dict

IMAGE = 32


def write_faces(root: Path, identities: int = 6, per_id: int = 8, seed: int = 0) -> Path:
    """Identity = a fixed random colour pattern; images = that pattern plus noise (learnable in a few steps)."""
    rng = np.random.default_rng(seed)
    for i in range(identities):
        proto = rng.integers(0, 256, size=(8, 8, 3)).astype(np.float32)
        folder = root / f"id_{i:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(per_id):
            img = cv2.resize(proto, (IMAGE, IMAGE), interpolation=cv2.INTER_LINEAR)
            img = np.clip(img + rng.normal(0, 25, img.shape), 0, 255).astype(np.uint8)
            cv2.imwrite(str(folder / f"{j:04d}.png"), img)
    return root


def base_cfg(data: Path, out: Path, **sections) -> Config:
    raw = {
        "data": {"format": "folder", "train": str(data), "image_size": IMAGE, "num_workers": 0, "flip": True},
        "model": {"name": "iresnet_tiny"},
        "loss": {"name": "cosface", "s": 16.0, "m3": 0.2},
        "optim": {"lr": 0.05, "weight_decay": 0.0},
        "schedule": {"decay": "cosine"},
        "train": {"output": str(out), "epochs": 4.0, "batch_size": 8, "log_every": 2, "tensorboard": False,
                  "progress": False, "device": "cpu", "seed": 0, "val_every_epochs": 0.0},
        "route": {"every_epochs": 1.0},
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            raw.setdefault(key, {}).update(value)
        else:
            raw[key] = value
    return config_from_dict(raw)


def train_teacher(data: Path, out: Path) -> Path:
    """A 4-epoch iresnet_tiny teacher trained by the teacher job, a route point per epoch (classifier saved)."""
    from facerco.train.teacher import train_teacher as run

    cfg = base_cfg(data, out)
    cfg.kind = "teacher"
    run(cfg)
    return out


def student_cfg(data: Path, teacher: Path, out: Path, **distill) -> Config:
    return base_cfg(data, out, kind="student",
                    model={"name": "mobilefacenet", "width_mult": 0.25, "embedding_size": 32},
                    distill={"teacher_run": str(teacher), **distill})
