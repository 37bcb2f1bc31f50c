"""Cluttered "in the wild" scenes holding one or several synthetic faces with their boxes and landmarks."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from facerco.data.synthetic_identity import TEMPLATE_112, Identity
from facerco.data.synthetic_render import ImageParams, draw_face, finish_pixels

__all__ = ["WildFace", "clutter_background", "place_faces", "compose_scene"]


@dataclass(frozen=True)
class WildFace:
    """Where one face goes in a scene: template-frame -> scene similarity and its image nuisances."""

    identity: Identity
    params: ImageParams
    place: np.ndarray  # 3x3


def clutter_background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Gradient plus random rectangles, ellipses, lines, polygons and noise textures (RGB uint8, HxWx3)."""
    corners = rng.integers(0, 256, (2, 2, 3)).astype(np.uint8)
    img = cv2.resize(corners, (width, height), interpolation=cv2.INTER_LINEAR)
    diag = math.hypot(width, height)
    for _ in range(int(rng.integers(8, 24))):
        kind = int(rng.integers(0, 5))
        col = tuple(int(c) for c in rng.integers(0, 256, 3))
        cx, cy = float(rng.uniform(0, width)), float(rng.uniform(0, height))
        size = float(rng.uniform(0.03, 0.25)) * diag
        if kind == 0:
            x0, y0 = int(cx - size / 2), int(cy - size / 3)
            cv2.rectangle(img, (x0, y0), (int(x0 + size), int(y0 + size * rng.uniform(0.3, 1.2))), col, -1)
        elif kind == 1:
            axes = (max(1, int(size / 2)), max(1, int(size * rng.uniform(0.2, 0.6))))
            cv2.ellipse(img, (int(cx), int(cy)), axes, float(rng.uniform(0, 180)), 0, 360, col, -1, cv2.LINE_AA)
        elif kind == 2:
            end = (int(cx + rng.normal(0, size)), int(cy + rng.normal(0, size)))
            cv2.line(img, (int(cx), int(cy)), end, col, int(rng.integers(1, 6)), cv2.LINE_AA)
        elif kind == 3:
            pts = np.stack([cx + rng.normal(0, size / 2, 5), cy + rng.normal(0, size / 2, 5)], 1)
            cv2.fillPoly(img, [np.rint(pts).astype(np.int32)], col, cv2.LINE_AA)
        else:  # a textured patch: blurred noise tinted with the colour
            w, h = max(2, int(size)), max(2, int(size * rng.uniform(0.4, 1.0)))
            x0, y0 = int(np.clip(cx, 0, width - 2)), int(np.clip(cy, 0, height - 2))
            w, h = min(w, width - x0), min(h, height - y0)
            tex = cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), float(rng.uniform(0.5, 3)))
            tex = (tex - tex.min()) / max(1e-6, float(tex.max() - tex.min()))
            patch = tex[..., None] * np.array(col, dtype=np.float32)[None, None]
            img[y0:y0 + h, x0:x0 + w] = np.clip(patch, 0, 255).astype(np.uint8)
    return img


def place_faces(rng: np.random.Generator, width: int, height: int, count: int, min_eye: float, max_eye: float,
                max_roll_deg: float) -> list[np.ndarray]:
    """Up to ``count`` non-overlapping placements (3x3 template->scene similarities), scale from eye distance."""
    eye_dist = float(np.linalg.norm(TEMPLATE_112[1] - TEMPLATE_112[0]))
    placed: list[tuple[float, float, float]] = []
    out: list[np.ndarray] = []
    for _ in range(count * 30):
        if len(out) == count:
            break
        s = float(rng.uniform(min_eye, max_eye)) / eye_dist
        radius = 64.0 * s  # the head with hair fits within ~64 template pixels of the crop centre
        if 2 * radius >= min(width, height):
            s = 0.95 * min(width, height) / 128.0
            radius = 64.0 * s
        cx = float(rng.uniform(radius, width - radius))
        cy = float(rng.uniform(radius, height - radius))
        if any(math.hypot(cx - x, cy - y) < radius + r for x, y, r in placed):
            continue
        ang = math.radians(float(rng.uniform(-max_roll_deg, max_roll_deg)))
        c, si = math.cos(ang) * s, math.sin(ang) * s
        m = np.array([[c, -si, cx - c * 56.0 + si * 56.0], [si, c, cy - si * 56.0 - c * 56.0], [0.0, 0.0, 1.0]])
        placed.append((cx, cy, radius))
        out.append(m)
    return out


def compose_scene(background: np.ndarray, faces: list[WildFace],
                  scene_params: ImageParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw the faces into the scene; returns (image, boxes (F,4) x0,y0,x1,y1, landmarks (F,5,2))."""
    img = background.copy()
    boxes = np.zeros((len(faces), 4), dtype=np.float64)
    lms = np.zeros((len(faces), 5, 2), dtype=np.float64)
    h, w = img.shape[:2]
    for k, face in enumerate(faces):
        scale = math.hypot(face.place[0, 0], face.place[1, 0])
        lm, outline = draw_face(img, face.identity, face.params, face.place, scale)
        pts = np.vstack([outline, lm])
        x0, y0 = pts.min(axis=0) - 1.0
        x1, y1 = pts.max(axis=0) + 1.0
        boxes[k] = [max(0.0, x0), max(0.0, y0), min(float(w), x1), min(float(h), y1)]
        lms[k] = lm
    return finish_pixels(img, scene_params), boxes, lms
