"""The detector interface every backend implements, plus the helpers that choose among detected faces.

All images are RGB ``uint8`` arrays of shape ``(H, W, 3)``; boxes are ``(x1, y1, x2, y2)`` in pixels; landmarks
are ``(5, 2)`` float32 ``(x, y)`` in ArcFace order: left eye, right eye, nose tip, left mouth corner, right mouth
corner, where "left" means the left side of the image (the subject's right eye).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Face", "Detector", "box_iou", "select_faces", "SELECT_POLICIES"]

SELECT_POLICIES = ("largest", "central", "all")


@dataclass
class Face:
    """One detected face: box ``(4,)`` xyxy, landmarks ``(5, 2)`` in ArcFace order, detector score."""

    box: np.ndarray
    landmarks: np.ndarray
    score: float = 1.0
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.box = np.asarray(self.box, dtype=np.float32).reshape(4)
        self.landmarks = np.asarray(self.landmarks, dtype=np.float32).reshape(5, 2)
        self.score = float(self.score)

    @property
    def area(self) -> float:
        return float(max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1]))


class Detector(abc.ABC):
    """Finds faces and their five landmarks in one image.

    ``key`` is the image's path relative to the dataset root (needed by file-based landmark backends);
    ``hint`` is an optional xyxy box known to contain the face (e.g. MS-Celeb's face rectangle), which a backend
    may use when it finds nothing on its own.
    """

    name: str = "base"

    @abc.abstractmethod
    def detect(self, image: np.ndarray, *, key: str | None = None, hint: np.ndarray | None = None) -> list[Face]:
        """Return every face found, best first."""


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two xyxy boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def select_faces(
    faces: list[Face], image_shape: tuple[int, ...], policy: str = "largest", hint: np.ndarray | None = None
) -> list[Face]:
    """Pick the face(s) to keep.

    ``largest``: biggest box (ties broken by score); ``central``: box centre nearest the image centre, weighted
    toward big boxes so a tiny face in the middle does not beat the subject; ``all``: every face, largest first.
    With a ``hint`` box, the face overlapping it most wins whatever the policy (unless ``all``).
    """
    if policy not in SELECT_POLICIES:
        raise ValueError(f"unknown face selection policy {policy!r}; choose one of {', '.join(SELECT_POLICIES)}")
    if not faces:
        return []
    by_size = sorted(faces, key=lambda f: (f.area, f.score), reverse=True)
    if policy == "all":
        return by_size
    if hint is not None:
        best = max(faces, key=lambda f: box_iou(f.box, hint))
        if box_iou(best.box, hint) > 0:
            return [best]
    if policy == "largest":
        return by_size[:1]
    h, w = image_shape[:2]
    centre = np.array([w / 2.0, h / 2.0])
    diag = float(np.hypot(w, h))

    def cost(face: Face) -> float:
        c = np.array([(face.box[0] + face.box[2]) / 2.0, (face.box[1] + face.box[3]) / 2.0])
        size = np.sqrt(face.area) / diag
        return float(np.linalg.norm(c - centre) / diag - 0.5 * size)

    return [min(faces, key=cost)]
