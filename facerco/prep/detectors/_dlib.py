"""dlib backend: HOG face detector + shape predictor, fully offline.

Model files are located on disk, never downloaded: an explicit path, ``$FACERCO_DLIB_MODELS``, the
``face_recognition_models`` package directory (found by ``importlib.util.find_spec``; importing that package fails
beside recent setuptools), then Debian's ``/usr/share/dlib`` (which ships only the 68-point model).

How the five ArcFace points are obtained (dlib's models do not give them directly):

* ``points="68"`` (iBUG 300-W indexing): eye centres = mean of the six contour points of each eye (36-41, 42-47),
  nose tip = point 30, mouth corners = points 48 and 54. This is the usual 68 -> 5 reduction.
* ``points="5"``: dlib's 5-point model gives, in order, the outer and inner corner of the image-right eye, the outer
  and inner corner of the image-left eye, and the bottom of the nose (iBUG point 33) -- no mouth. The eye centres
  are the corner midpoints; then a similarity is fitted from those three measured points (left eye, right eye, nose
  bottom) to their mean positions in the 112x112 ArcFace frame (``FIVE_POINT_CANONICAL``, calibrated with the
  68-point reduction above on LFW, see :func:`calibrate_five_point`), and all five template points are mapped back
  through its inverse. These are "equivalent" landmarks: aligning with them reproduces exactly that similarity, i.e.
  on average the alignment the 68-point reduction gives; the nose tip and mouth corners are estimates (nothing
  measures the mouth), and the eyes sit ~1.4 template px from the measured corner midpoints because the 68-point
  five-point fit leaves that residual on average. ``benchmarks/align.py`` measures the difference against ``"68"``.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np

from facerco.prep.detectors._base import Detector, Face

__all__ = ["DlibDetector", "find_dlib_model", "FIVE_POINT_CANONICAL", "landmarks_from_68", "calibrate_five_point"]

MODEL_FILES = {"5": "shape_predictor_5_face_landmarks.dat", "68": "shape_predictor_68_face_landmarks.dat"}

# Mean position, in the 112x112 ArcFace frame, of (left-eye corner midpoint, right-eye corner midpoint, nose bottom)
# of dlib's 5-point model, after aligning each face by its 68-point five ArcFace points. Calibrated by
# calibrate_five_point on 594 LFW deep-funneled faces (HOG, upsample 1); tests/test_prep_realdata.py re-checks it.
FIVE_POINT_CANONICAL = np.array([[38.47, 53.10], [73.26, 52.95], [56.16, 79.60]], dtype=np.float64)


def find_dlib_model(filename: str, path: str | os.PathLike[str] | None = None) -> Path:
    """Locate a dlib ``.dat`` model file; raise FileNotFoundError naming every place looked at."""
    if path is not None:
        p = Path(path)
        if p.is_file():
            return p
        raise FileNotFoundError(f"{p}: dlib model file not found")
    places: list[Path] = []
    env = os.environ.get("FACERCO_DLIB_MODELS")
    if env:
        places.append(Path(env))
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is not None and spec.submodule_search_locations:
        places.extend(Path(loc) / "models" for loc in spec.submodule_search_locations)
    places.append(Path("/usr/share/dlib"))
    for place in places:
        candidate = place / filename
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"dlib model {filename} not found in {', '.join(map(str, places))}; install the 'align' extra "
        "(pip install face_recognition_models==0.3.0), set FACERCO_DLIB_MODELS, or pass the file path"
    )


def landmarks_from_68(pts: np.ndarray) -> np.ndarray:
    """Reduce iBUG 68 points ``(68, 2)`` to the five ArcFace points ``(5, 2)``."""
    pts = np.asarray(pts, dtype=np.float64)
    return np.stack([pts[36:42].mean(0), pts[42:48].mean(0), pts[30], pts[48], pts[54]]).astype(np.float32)


def _measured_from_5(pts: np.ndarray) -> np.ndarray:
    """dlib 5-point output ``(5, 2)`` -> (image-left eye centre, image-right eye centre, nose bottom) ``(3, 2)``."""
    pts = np.asarray(pts, dtype=np.float64)
    return np.stack([(pts[2] + pts[3]) / 2.0, (pts[0] + pts[1]) / 2.0, pts[4]])


def landmarks_from_5(pts: np.ndarray) -> np.ndarray:
    """Estimate the five ArcFace points from dlib's 5-point output (see the module docstring)."""
    from facerco.prep.align import arcface_template, umeyama

    measured = _measured_from_5(pts)
    m = umeyama(measured, FIVE_POINT_CANONICAL)  # image -> template frame
    full = np.vstack([m, [0.0, 0.0, 1.0]])
    inv = np.linalg.inv(full)[:2]
    tmpl = arcface_template(112).astype(np.float64)
    return (tmpl @ inv[:, :2].T + inv[:, 2]).astype(np.float32)


def calibrate_five_point(pairs: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Mean template-frame position of the 5-point model's three measured points.

    Args:
        pairs: ``(pts5 (5, 2), pts68 (68, 2))`` for the same faces.

    Returns:
        ``(3, 2)`` array to use as ``FIVE_POINT_CANONICAL``.
    """
    from facerco.prep.align import arcface_template, umeyama

    tmpl = arcface_template(112).astype(np.float64)
    acc = []
    for pts5, pts68 in pairs:
        m = umeyama(landmarks_from_68(pts68), tmpl)
        acc.append(_measured_from_5(pts5) @ m[:, :2].T + m[:, 2])
    if not acc:
        raise ValueError("calibrate_five_point needs at least one face")
    return np.mean(acc, axis=0)


class DlibDetector(Detector):
    """HOG detector (``upsample`` pyramid doublings for small faces) + a shape predictor.

    Args:
        upsample: how many times dlib upsamples the image before detecting (1 finds faces down to ~40 px).
        points: ``"5"`` or ``"68"`` -- which shape predictor gives the landmarks (see module docstring).
        predictor_path: explicit ``.dat`` file; otherwise located with :func:`find_dlib_model`.
        threshold: dlib's ``adjust_threshold``; raise it for fewer false positives.
        use_hint: when nothing is detected and a hint box is given, run the shape predictor inside the hint.
        max_side: images larger than this (pixels, longest side) are shrunk for the HOG pass only -- an upsampled
            multi-megapixel photo would take seconds and gigabytes; landmarks are still fitted at full resolution.
            0 disables.
    """

    name = "dlib"

    def __init__(
        self,
        upsample: int = 1,
        points: str = "5",
        predictor_path: str | None = None,
        threshold: float = 0.0,
        use_hint: bool = True,
        max_side: int = 1024,
    ) -> None:
        points = str(points)
        if points not in MODEL_FILES:
            raise ValueError(f"dlib points must be '5' or '68', got {points!r}")
        if upsample < 0:
            raise ValueError(f"dlib upsample must be >= 0, got {upsample}")
        try:
            import dlib
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise RuntimeError("the dlib detector needs dlib: pip install 'facerco[align]' (dlib-bin)") from exc
        self._dlib = dlib
        self.upsample = int(upsample)
        self.points = points
        self.threshold = float(threshold)
        self.use_hint = use_hint
        self.max_side = int(max_side)
        self.predictor_path = find_dlib_model(MODEL_FILES[points], predictor_path)
        self._hog = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(str(self.predictor_path))

    def _landmarks(self, image: np.ndarray, rect) -> np.ndarray:
        shape = self._predictor(image, rect)
        pts = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)
        return landmarks_from_68(pts) if self.points == "68" else landmarks_from_5(pts)

    def detect_boxes(self, image: np.ndarray) -> tuple[list, list[float]]:
        """HOG only: dlib rectangles (in ``image`` pixels) and scores."""
        h, w = image.shape[:2]
        scale = 1.0
        if self.max_side and max(h, w) > self.max_side:
            import cv2

            scale = self.max_side / max(h, w)
            image = cv2.resize(
                image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA
            )
        rects, scores, _ = self._hog.run(np.ascontiguousarray(image), self.upsample, self.threshold)
        if scale != 1.0:
            rects = [
                self._dlib.rectangle(*(int(round(v / scale)) for v in (r.left(), r.top(), r.right(), r.bottom())))
                for r in rects
            ]
        return list(rects), [float(s) for s in scores]

    def detect(self, image: np.ndarray, *, key: str | None = None, hint: np.ndarray | None = None) -> list[Face]:
        image = np.ascontiguousarray(image)
        rects, scores = self.detect_boxes(image)
        faces = [
            Face(
                box=(r.left(), r.top(), r.right() + 1, r.bottom() + 1),
                landmarks=self._landmarks(image, r),
                score=s,
            )
            for r, s in zip(rects, scores)
        ]
        if not faces and hint is not None and self.use_hint:
            x1, y1, x2, y2 = (int(round(v)) for v in hint)
            rect = self._dlib.rectangle(x1, y1, x2 - 1, y2 - 1)
            faces = [Face(box=hint, landmarks=self._landmarks(image, rect), score=0.0, extra={"from_hint": True})]
        return sorted(faces, key=lambda f: f.score, reverse=True)
