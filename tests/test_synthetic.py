"""Generated faces: determinism, exact landmarks, roll consistency, wild boxes, identity separation, CSV format."""

from __future__ import annotations

import csv
import math
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from facerco.data.synthetic import (
    TEMPLATE_112,
    Nuisance,
    SyntheticFaces,
    identity_name,
    read_landmarks_csv,
    render_aligned,
    write_identity_folder,
)
from facerco.data.synthetic_render import fit_similarity


def _calm(gen: SyntheticFaces, identity: int, image: int):
    """The drawn params with photometric effects removed, so geometry can be compared pixel-wise."""
    ip = gen.image_params(identity, image)
    return replace(ip, light_dx=0.0, light_dy=0.0, gain=(1.0, 1.0, 1.0), noise=0.0, blur=0.0, occluder=(),
                   background=(90, 120, 150) * 4)


def test_same_seed_same_bytes_in_any_order():
    a = SyntheticFaces(seed=7)
    b = SyntheticFaces(seed=7)
    forward = [a.render(i, k).image for i in range(3) for k in range(3)]
    backward = {(i, k): b.render(i, k).image for i in reversed(range(3)) for k in reversed(range(3))}
    for n, img in enumerate(forward):
        assert np.array_equal(img, backward[(n // 3, n % 3)])
    assert not np.array_equal(SyntheticFaces(seed=8).render(0, 0).image, forward[0])
    assert np.array_equal(render_aligned(7, 2, 1).image, backward[(2, 1)])


def test_distractors_are_a_separate_stream():
    gen = SyntheticFaces(seed=0)
    assert not np.array_equal(gen.render(0, 0).image, gen.render(0, 0, distractor=True).image)
    assert identity_name(3) == "00003" and identity_name(3, True) == "d00003"


@pytest.mark.parametrize("identity", range(6))
def test_zero_nuisance_puts_landmarks_on_template(identity):
    gen = SyntheticFaces(seed=1, nuisance=Nuisance.none())
    sample = gen.render(identity, 0)
    assert np.abs(sample.landmarks - TEMPLATE_112).max() < 0.5
    # Independent pixel check: the pupil drawn at each eye landmark is darker than the eye white beside it
    # (glasses off: sunglasses would hide the eyes).
    sample = gen.render(identity, 0, params=replace(sample.params, glasses=False))
    img = sample.image.astype(np.float64).mean(axis=2)
    w = gen.identity(identity).params["eye_w"]
    for x, y in sample.landmarks[:2]:
        centre = img[int(round(y)), int(round(x))]
        box = img[int(y) - 2:int(y) + 4, int(x - 0.5 * w):int(x + 0.5 * w) + 1]
        assert box.max() > centre + 60


def test_zero_nuisance_scales_with_size():
    sample = SyntheticFaces(seed=1, nuisance=Nuisance.none(), size=224).render(0, 0)
    assert sample.image.shape == (224, 224, 3)
    assert np.abs(sample.landmarks - 2 * TEMPLATE_112).max() < 0.5


def test_roll_rotates_landmarks_and_pixels_together():
    gen = SyntheticFaces(seed=3)
    base = replace(_calm(gen, 4, 2), roll=0.0, scale=1.0, shift_x=0.0, shift_y=0.0)
    theta = math.radians(12.0)
    rolled = gen.render(4, 2, params=replace(base, roll=theta))
    flat = gen.render(4, 2, params=base)
    rot = cv2.getRotationMatrix2D((56.0, 56.0), -12.0, 1.0)  # OpenCV: positive angle is counter-clockwise
    expected = flat.landmarks @ rot[:, :2].T + rot[:, 2]
    assert np.abs(rolled.landmarks - expected).max() < 1e-3
    warped = cv2.warpAffine(flat.image, rot, (112, 112), flags=cv2.INTER_LINEAR)
    core = (slice(30, 100), slice(30, 82))
    diff_rot = np.abs(warped[core].astype(int) - rolled.image[core].astype(int)).mean()
    diff_flat = np.abs(flat.image[core].astype(int) - rolled.image[core].astype(int)).mean()
    assert diff_rot < 6.0 and diff_rot < 0.4 * diff_flat


def test_default_nuisances_keep_landmarks_visible_and_near_template():
    gen = SyntheticFaces(seed=5)
    lms = np.stack([gen.render(i, k).landmarks for i in range(20) for k in range(10)])
    assert lms.min() > 2 and lms.max() < 110
    err = np.linalg.norm(lms - TEMPLATE_112, axis=2)
    assert 0.5 < err.mean() < 8.0  # residual misalignment exists but stays modest
    # The eyes' similarity to the template is close to identity, as after a real alignment.
    fit = fit_similarity(lms[0], TEMPLATE_112)
    assert abs(math.hypot(fit[0, 0], fit[1, 0]) - 1.0) < 0.2


def test_wild_scene_boxes_contain_landmarks():
    gen = SyntheticFaces(seed=2)
    found = 0
    for k in range(6):
        scene = gen.render_wild(k, 0, extra_faces=2, size=(320, 240))
        h, w = scene.image.shape[:2]
        assert (h, w) == (240, 320)
        assert len(scene.boxes) == len(scene.landmarks) == len(scene.identities) >= 1
        assert scene.identities[0] == k
        found += len(scene.boxes)
        for box, lm in zip(scene.boxes, scene.landmarks):
            x0, y0, x1, y1 = box
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
            assert (lm[:, 0] >= x0).all() and (lm[:, 0] <= x1).all()
            assert (lm[:, 1] >= y0).all() and (lm[:, 1] <= y1).all()
            eye = np.linalg.norm(lm[1] - lm[0])
            assert 0.25 * (x1 - x0) < eye < x1 - x0  # the box is a face box, not the whole scene
    assert found > 6  # several scenes hold more than one face


def test_wild_landmarks_align_onto_template():
    """Warping a wild face with its landmarks' similarity lands the landmarks on the template (prep's job)."""
    scene = SyntheticFaces(seed=4, nuisance=Nuisance.none()).render_wild(1, 0, size=(256, 256))
    m = fit_similarity(scene.landmarks[0].astype(np.float64), TEMPLATE_112)
    mapped = scene.landmarks[0] @ m[:, :2].T + m[:, 2]
    assert np.abs(mapped - TEMPLATE_112).max() < 0.5
    crop = cv2.warpAffine(scene.image, m, (112, 112))
    ref = SyntheticFaces(seed=4, nuisance=Nuisance.none()).render(1, 0).image
    inner = (slice(40, 100), slice(30, 82))
    assert np.abs(crop[inner].astype(int) - ref[inner].astype(int)).mean() < 25


def test_identities_differ_more_than_images_of_one_identity():
    gen = SyntheticFaces(seed=9)

    def feat(i: int, k: int) -> np.ndarray:
        face = gen.render(i, k).image[28:104, 24:88]  # the face, not the random background
        img = cv2.resize(face, (16, 19), interpolation=cv2.INTER_AREA).astype(np.float32)
        return (img - img.mean()) / (img.std() + 1e-6)

    feats = np.stack([[feat(i, k) for k in range(4)] for i in range(10)])  # (ids, imgs, 28, 28, 3)
    flat = feats.reshape(10, 4, -1)
    same, diff = [], []
    for i in range(10):
        for j in range(10):
            for a in range(4):
                for b in range(4):
                    if (i, a) < (j, b):
                        d = float(np.linalg.norm(flat[i, a] - flat[j, b]))
                        (same if i == j else diff).append(d)
    assert np.mean(same) < 0.95 * np.mean(diff)


def test_identity_folder_csv_matches_renders(tmp_path: Path):
    csv_path = write_identity_folder(tmp_path / "out", 3, 2, seed=11)
    assert csv_path == tmp_path / "out" / "landmarks.csv"
    with open(csv_path, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["path", "x1", "y1", "x2", "y2", "x3", "y3", "x4", "y4", "x5", "y5"]
    assert [r[0] for r in rows[1:]] == [f"{i:05d}/{k:04d}.jpg" for i in range(3) for k in range(2)]
    lms = read_landmarks_csv(csv_path)
    gen = SyntheticFaces(seed=11)
    for rel, lm in lms.items():
        ident, img = int(rel[:5]), int(rel[6:10])
        assert np.abs(lm - gen.render(ident, img).landmarks).max() < 2e-3
        decoded = cv2.imread(str(tmp_path / "out" / rel))
        assert decoded.shape == (112, 112, 3)
        rgb = cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB).astype(int)
        assert np.abs(rgb - gen.render(ident, img).image.astype(int)).mean() < 12  # same picture, JPEG loss only


def test_identity_folder_is_identical_across_processes_and_marks_distractors(tmp_path: Path):
    one = write_identity_folder(tmp_path / "a", 2, 2, seed=3, distractors=True, first_identity=5)
    two = write_identity_folder(tmp_path / "b", 2, 2, seed=3, distractors=True, first_identity=5, workers=2)
    assert one.read_text() == two.read_text()
    for rel in read_landmarks_csv(one):
        assert rel.startswith(("d00005/", "d00006/"))
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()


def test_wild_folder_adds_boxes(tmp_path: Path):
    csv_path = write_identity_folder(tmp_path, 1, 2, seed=0, wild=True, wild_size=(160, 128))
    with open(csv_path, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0][-4:] == ["box_x0", "box_y0", "box_x1", "box_y1"] and len(rows) == 3
    assert cv2.imread(str(tmp_path / rows[1][0])).shape == (128, 160, 3)
    assert set(read_landmarks_csv(csv_path)) == {"00000/0000.jpg", "00000/0001.jpg"}


def test_bad_inputs_raise_clear_errors(tmp_path: Path):
    bad = tmp_path / "landmarks.csv"
    bad.write_text("path,x1,y1,x2,y2,x3,y3,x4,y4,x5,y5\na.jpg,1,2,3\n")
    with pytest.raises(ValueError, match=r"landmarks\.csv: line 2"):
        read_landmarks_csv(bad)
    bad.write_text("file,x\n")
    with pytest.raises(ValueError, match="line 1"):
        read_landmarks_csv(bad)
    with pytest.raises(ValueError, match="identity"):
        write_identity_folder(tmp_path / "x", 0, 1)
    with pytest.raises(ValueError, match=">= 0"):
        SyntheticFaces(seed=0).render(-1, 0)


def test_synth_command_writes_folder(tmp_path: Path):
    from facerco.cli import main

    assert main(["synth", str(tmp_path / "s"), "--identities", "2", "--images", "1", "--seed", "4"]) == 0
    assert set(read_landmarks_csv(tmp_path / "s" / "landmarks.csv")) == {"00000/0000.jpg", "00001/0000.jpg"}
    argv = ["synth", str(tmp_path / "w"), "--identities", "1", "--images", "1", "--wild", "--wild-size", "160x128",
            "--distractors"]
    assert main(argv) == 0
    assert cv2.imread(str(tmp_path / "w" / "d00000" / "0000.jpg")).shape == (128, 160, 3)
