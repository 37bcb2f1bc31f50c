"""A student mimics its teacher on a flat folder of images without identities (data.format=images)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from test_distill_support import IMAGE, base_cfg, student_cfg, train_teacher, write_faces

from facerco.cli import main
from facerco.config import dump_config
from facerco.data.datasets import UNLABELED, open_dataset


def write_flat(root, count: int = 24, seed: int = 1):
    """``count`` noisy colour patterns directly in ``root`` (no identity sub-folders)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    for k in range(count):
        proto = rng.integers(0, 256, size=(8, 8, 3)).astype(np.float32)
        img = cv2.resize(proto, (IMAGE, IMAGE), interpolation=cv2.INTER_LINEAR)
        cv2.imwrite(str(root / f"img_{k:04d}.png"), np.clip(img + rng.normal(0, 25, img.shape), 0, 255).astype(
            np.uint8))
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def route(tmp_path_factory):
    root = tmp_path_factory.mktemp("unlabeled")
    run = train_teacher(write_faces(root / "faces"), root / "teacher")
    return root, write_flat(root / "flat"), run


def _student_yaml(flat, run, out, path, **distill):
    cfg = student_cfg(flat, run, out, **{"strategy": "final", "arcface_weight": 0.0, **distill})
    cfg.data.format = "images"
    cfg.train.epochs = 1.0
    path.write_text(dump_config(cfg))
    return path


def test_flat_folder_opens_unlabeled_only_when_asked(tmp_path, route):
    _, flat, _ = route
    ds = open_dataset(flat, "images")
    assert len(ds) == 24 and ds.num_classes == 0 and ds.classes is None and not ds.labeled
    assert (ds.labels == UNLABELED).all() and ds.labels.dtype == np.int64
    assert [p.name for p in ds.paths][:2] == ["img_0000.png", "img_0001.png"]  # notes.txt skipped
    image, label = ds[3]
    assert image.shape == (3, 112, 112) and label == -1  # the default EvalTransform
    with pytest.raises(ValueError, match=r"no identity sub-folders .* open it as unlabeled with format 'images'"):
        open_dataset(flat, "auto")  # never guessed: auto stays the identity reader, which says what to do
    faces = write_faces(tmp_path / "faces", identities=2, per_id=2)
    with pytest.raises(ValueError, match=r"sub-folder 'id_00' holds images; format 'images' reads a flat folder"):
        open_dataset(faces, "images")


def test_student_mimics_on_a_flat_folder_through_cache_and_distill(route, tmp_path, capsys):
    root, flat, run = route
    cache = tmp_path / "cache"
    assert main(["cache", str(run), str(flat), "--format", "images", "--out", str(cache), "--anchors", "final",
                 "--workers", "0", "--no-progress", "--device", "cpu"]) == 0
    cfg_path = _student_yaml(flat, run, tmp_path / "student", tmp_path / "student.yaml")
    assert main(["distill", str(cfg_path), f"distill.cache={cache}", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "distill: 1 torch thread(s) (train.threads pins it)" in out and "student:" in out
    run_dir = tmp_path / "student"
    assert (run_dir / "student.safetensors").is_file()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["step"] == 3 and summary["torch_threads"]["threads"] == 1  # 24 images / batch 8, one epoch
    assert "mimic" in summary["last_parts"] and "arcface" not in summary["last_parts"]
    state = torch.load(run_dir / "last.pt", weights_only=True)
    assert state["task"] and not [k for k in state["task"] if k.startswith("head.")]  # no classifier built
    records = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]
    assert records[0]["torch_threads"] == 1 and all("torch_threads" not in r for r in records[1:])


def test_labelled_losses_and_the_teacher_refuse_a_flat_folder(route, tmp_path, capsys):
    root, flat, run = route
    cfg_path = _student_yaml(flat, run, tmp_path / "student", tmp_path / "student.yaml", arcface_weight=1.0)
    capsys.readouterr()
    assert main(["distill", str(cfg_path), "--threads", "1"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (f"facerco distill: error: {flat}: unlabeled folder (no identity sub-folders); "
                   "distill.arcface_weight=1 and distill.kd_weight=0 need identities: set distill.arcface_weight=0 "
                   "and distill.kd_weight=0 to only mimic the teacher, or give one sub-folder per identity "
                   "(data.format=folder)")
    assert main(["distill", str(cfg_path), "distill.arcface_weight=0", "distill.kd_weight=0.5"]) == 1
    assert "distill.kd_weight=0.5 need identities" in capsys.readouterr().err
    assert not (tmp_path / "student" / "student.safetensors").exists()
    from facerco.train.teacher import train_teacher as run_teacher

    teacher = base_cfg(flat, tmp_path / "teacher", kind="teacher", train={"threads": 1})
    teacher.data.format = "images"
    with pytest.raises(ValueError, match=rf"^{flat}: unlabeled folder \(no identity sub-folders\); the teacher job "):
        run_teacher(teacher)
    assert not (tmp_path / "teacher" / "config.yaml").exists()  # refused before the run folder is written
