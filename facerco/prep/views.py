"""Teacher views: the crop each published teacher was trained on, made from a photo and its five ArcFace points.

A student and its teacher must see the same face, each in its own framing: insightface models expect the ArcFace
112x112 template (FORMATS.md section 3); dlib's ResNet expects dlib's 150x150 "face chip" (its 5-point mean face
with 25 % padding, made by ``dlib.get_face_chip``). Both are similarity warps of the photo, so one set of five points
gives both crops, and a geometric jitter applied to the points moves both crops together.

dlib's chip is defined by dlib's own 5-point landmarks (outer/inner eye corners and the nose bottom), which
``facerco align`` does not keep: it records the five ArcFace points. ``DLIB_PARTS_112`` holds where dlib's five
points fall, on average, in the ArcFace 112 frame (299 LFW faces, HOG + the 5-point predictor, each face mapped by the
similarity of its own five ArcFace points; per-point spread 0.8-1.7 px). :func:`dlib_shape` maps them back into the
photo through the inverse of that similarity and hands them to dlib, so the chip is cut by dlib itself
(``get_face_chip``; integer part coordinates, as dlib's own predictor gives).

Views from an aligned crop (a ``.rec`` or an aligned folder without the source photos): the crop's own five points
are the template scaled to its size, so the same functions apply; the teacher then sees only what the crop holds
(black outside it). Cache manifests record which source a view came from (``"photo"`` or ``"crop"``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from facerco.prep.align import arcface_template, estimate_transform, warp_face

__all__ = [
    "DLIB_PARTS_112",
    "TeacherView",
    "VIEWS",
    "get_view",
    "dlib_shape",
    "crop_landmarks",
    "jitter_landmarks",
]

# dlib's five landmarks (image-right eye outer, inner; image-left eye outer, inner; nose bottom) in the ArcFace 112
# frame, averaged over 299 LFW deep-funneled faces (see the module docstring).
DLIB_PARTS_112 = np.array(
    [[79.949, 52.829], [66.410, 53.217], [31.789, 53.147], [45.423, 53.359], [56.105, 79.374]], dtype=np.float64
)
DLIB_CHIP_SIZE = 150
DLIB_PADDING = 0.25


def _to_photo(points_112: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Template-frame points (112 px) -> photo coordinates, through the inverse of the face's alignment."""
    m = np.vstack([estimate_transform(np.asarray(landmarks, np.float64).reshape(5, 2), 112), [0.0, 0.0, 1.0]])
    inv = np.linalg.inv(m)[:2]
    return points_112 @ inv[:, :2].T + inv[:, 2]


def dlib_shape(landmarks: np.ndarray):
    """A ``dlib.full_object_detection`` of dlib's five points for the face whose ArcFace points are ``landmarks``."""
    import dlib

    parts = np.rint(_to_photo(DLIB_PARTS_112, landmarks)).astype(np.int64)
    x0, y0 = parts.min(0)
    x1, y1 = parts.max(0)
    rect = dlib.rectangle(int(x0), int(y0), int(x1), int(y1))
    return dlib.full_object_detection(rect, [dlib.point(int(x), int(y)) for x, y in parts])


def _arcface_crop(image: np.ndarray, landmarks: np.ndarray, size: int) -> np.ndarray:
    return warp_face(image, landmarks, size)


def _dlib_chip(image: np.ndarray, landmarks: np.ndarray, size: int) -> np.ndarray:
    import dlib

    return dlib.get_face_chip(np.ascontiguousarray(image, dtype=np.uint8), dlib_shape(landmarks), size, DLIB_PADDING)


@dataclass(frozen=True)
class TeacherView:
    """How a teacher's input crop is made: ``crop(image_rgb_uint8, arcface_landmarks) -> (size, size, 3) uint8``."""

    name: str
    size: int
    make: Callable[[np.ndarray, np.ndarray, int], np.ndarray]
    description: str

    def crop(self, image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        return self.make(image, np.asarray(landmarks, np.float32).reshape(5, 2), self.size)

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "size": self.size, "description": self.description}


VIEWS: dict[str, TeacherView] = {
    "arcface112": TeacherView("arcface112", 112, _arcface_crop,
                              "ArcFace 112x112 five-point template (insightface models)"),
    "dlib150": TeacherView("dlib150", DLIB_CHIP_SIZE, _dlib_chip,
                           "dlib face chip 150x150, padding 0.25, cut by dlib.get_face_chip"),
}


def get_view(name: str) -> TeacherView:
    if name not in VIEWS:
        raise ValueError(f"unknown teacher view {name!r}; known: {', '.join(VIEWS)}")
    return VIEWS[name]


def crop_landmarks(size: int) -> np.ndarray:
    """The five ArcFace points of an aligned ``size`` x ``size`` crop (the template, scaled when not a multiple
    of 112: every facerco crop is the 112 template resized)."""
    if size % 112 == 0:
        return arcface_template(size).astype(np.float32)
    return (arcface_template(112) * (size / 112.0)).astype(np.float32)


def jitter_landmarks(landmarks: np.ndarray, rng: np.random.Generator, max_rotate_deg: float = 8.0,
                     max_scale: float = 0.08, max_shift: float = 0.05) -> np.ndarray:
    """Move the five points by one random similarity, drawn in the template frame so its size is relative to the
    face: rotation in ±``max_rotate_deg``, scale in 1 ± ``max_scale``, shift in ± ``max_shift`` of the crop side.
    Every crop made from the moved points (the student's and the teacher's) moves the same way."""
    angle = np.deg2rad(rng.uniform(-max_rotate_deg, max_rotate_deg))
    scale = 1.0 + rng.uniform(-max_scale, max_scale)
    shift = rng.uniform(-max_shift, max_shift, size=2) * 112.0
    tmpl = arcface_template(112).astype(np.float64)
    centre = tmpl.mean(0)
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = (tmpl - centre) @ rot.T + centre + shift  # where the template points go, in the template frame
    return _to_photo(moved, landmarks).astype(np.float32)
