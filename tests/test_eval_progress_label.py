"""The extraction progress bar names the model it embeds (issue 15 §6): role, architecture and path tail."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from facerco.eval.features import extract_embeddings
from facerco.models import create_model
from facerco.models.checkpoint import save_model_checkpoint


def _faces(root: Path) -> Path:
    rng = np.random.default_rng(0)
    (root / "a").mkdir(parents=True)
    for i in range(2):
        cv2.imwrite(str(root / "a" / f"{i}.png"), rng.integers(0, 255, (48, 48, 3), np.uint8))
    return root


def test_bar_tells_a_teacher_route_point_from_a_student(tmp_path, capsys):
    faces = _faces(tmp_path / "faces")
    teacher = tmp_path / "teacher_run" / "route" / "epoch_006.safetensors"
    student = tmp_path / "mimic_final" / "seed0" / "student.safetensors"
    save_model_checkpoint(teacher, create_model("iresnet_tiny", input_size=48), metadata={"job": "teacher"})
    save_model_checkpoint(student, create_model("mbf_0.8m", input_size=48), metadata={"kind": "student"})
    for ckpt in (teacher, student):
        extract_embeddings(ckpt, faces, batch_size=2, device="cpu", progress=True)
    err = capsys.readouterr().err
    assert "embed teacher iresnet_tiny (teacher_run/route/epoch_006)" in err
    assert "embed student mbf_0.8m (mimic_final/seed0/student)" in err
