"""Alignment: Umeyama vs an independent least-squares solve, warp vs insightface, landmarks land on the template."""

from __future__ import annotations

import importlib.util

import cv2
import numpy as np
import pytest

from facerco.prep.align import ARCFACE_TEMPLATE_112, arcface_template, estimate_transform, umeyama, warp_face


def _random_similarity(rng: np.random.Generator, scale=(0.5, 3.0), angle=30.0, shift=(50, 300)) -> np.ndarray:
    s = rng.uniform(*scale)
    a = np.deg2rad(rng.uniform(-angle, angle))
    rot = s * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return np.hstack([rot, rng.uniform(*shift, size=(2, 1))])


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:, :2].T + m[:, 2]


def _lstsq_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Independent solve: x' = a x - b y + tx, y' = b x + a y + ty as a linear least-squares problem."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst):
        rows += [[x, -y, 1, 0], [y, x, 0, 1]]
        rhs += [u, v]
    a, b, tx, ty = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)[0]
    return np.array([[a, -b, tx], [b, a, ty]])


def test_template_values_and_scaling():
    assert ARCFACE_TEMPLATE_112[0].tolist() == pytest.approx([38.2946, 51.6963])
    assert ARCFACE_TEMPLATE_112[4].tolist() == pytest.approx([70.7299, 92.2041])
    np.testing.assert_allclose(arcface_template(224), ARCFACE_TEMPLATE_112 * 2, rtol=1e-6)
    with pytest.raises(ValueError, match="multiple of 112"):
        arcface_template(128)


def test_umeyama_recovers_exact_similarity():
    rng = np.random.default_rng(0)
    for _ in range(20):
        m = _random_similarity(rng)
        src = rng.uniform(0, 200, size=(5, 2))
        np.testing.assert_allclose(umeyama(src, _apply(m, src)), m, atol=1e-9)


def test_umeyama_matches_independent_least_squares_on_noisy_points():
    rng = np.random.default_rng(1)
    for _ in range(20):
        src = rng.uniform(0, 200, size=(5, 2))
        dst = _apply(_random_similarity(rng), src) + rng.normal(0, 3, size=(5, 2))
        np.testing.assert_allclose(umeyama(src, dst), _lstsq_similarity(src, dst), atol=1e-8)


def test_umeyama_rejects_bad_input():
    with pytest.raises(ValueError, match="identical"):
        umeyama(np.ones((5, 2)), np.zeros((5, 2)))
    with pytest.raises(ValueError, match="five finite"):
        estimate_transform(np.full((5, 2), np.nan))


def _textured(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    small = rng.integers(0, 256, size=(h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


@pytest.mark.skipif(importlib.util.find_spec("insightface") is None, reason="insightface not installed")
@pytest.mark.parametrize("size", [112, 224])
def test_warp_matches_insightface_norm_crop(size):
    from insightface.utils.face_align import norm_crop

    rng = np.random.default_rng(size)
    worst = 0
    for i in range(10):
        img = _textured(rng, 300, 400) if i % 2 else rng.integers(0, 256, size=(300, 400, 3), dtype=np.uint8)
        lmk = (
            _apply(_random_similarity(rng, scale=(1.0, 2.5), shift=(60, 150)), ARCFACE_TEMPLATE_112)
            + rng.normal(0, 2, size=(5, 2))
        ).astype(np.float32)
        ours = warp_face(img, lmk, size)
        ref = norm_crop(img, lmk, image_size=size)
        assert ours.shape == ref.shape == (size, size, 3)
        worst = max(worst, int(np.abs(ours.astype(int) - ref.astype(int)).max()))
    assert worst <= 1  # in practice 0: the same float32 matrix, the same cv2 sampling


_COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255]])


def _blob_image(lmk: np.ndarray, radius: float, h: int = 600, w: int = 600) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    for (x, y), colour in zip(lmk, _COLOURS):
        centre = (int(round(x * 16)), int(round(y * 16)))
        cv2.circle(img, centre, int(radius * 16), colour.tolist(), -1, cv2.LINE_AA, shift=4)
    return img


def _blob_centres(img: np.ndarray) -> np.ndarray:
    f = img.astype(np.float64)
    out = []
    for colour in _COLOURS:
        on, off = colour > 0, colour == 0
        weight = f[..., on].min(-1) - f[..., off].max(-1, initial=0)
        weight = np.clip(weight, 0, None)
        ys, xs = np.mgrid[: img.shape[0], : img.shape[1]]
        out.append([(weight * xs).sum() / weight.sum(), (weight * ys).sum() / weight.sum()])
    return np.array(out)


def test_ground_truth_landmarks_land_on_template_within_one_pixel():
    """Marks drawn at the landmarks of a randomly placed, rotated and scaled face end up on the template."""
    rng = np.random.default_rng(7)
    worst = 0.0
    for _ in range(8):
        m = _random_similarity(rng, scale=(1.5, 3.0), shift=(100, 200))
        lmk = _apply(m, ARCFACE_TEMPLATE_112)
        crop = warp_face(_blob_image(lmk, radius=3.0 * np.hypot(*m[:, 0])), lmk, 112)
        err = float(np.abs(_blob_centres(crop) - ARCFACE_TEMPLATE_112).max())
        assert np.isfinite(err)
        worst = max(worst, err)
    assert worst < 1.0
