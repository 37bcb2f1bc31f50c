"""Landmarks-file backend: five points read from a CSV or JSON file instead of detected.

For datasets that ship landmarks and for generated faces (``facerco.data.synthetic`` writes
``<out>/landmarks.csv``). Keys are image paths relative to the dataset root, with ``/`` separators.

CSV: header ``path,x1,y1,x2,y2,x3,y3,x4,y4,x5,y5`` (ArcFace order), optional ``score`` column; several rows with
the same path mean several faces. JSON: ``{"<path>": [[x, y] * 5]}`` or ``{"<path>": [[[x, y] * 5], ...]}`` for
several faces, or a list of ``{"path": ..., "landmarks": [[x, y] * 5]}``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from facerco.prep.detectors._base import Detector, Face

__all__ = ["LandmarksFileDetector", "read_landmarks_file"]

_COLS = [f"{a}{i}" for i in range(1, 6) for a in ("x", "y")]


def _norm_key(key: str) -> str:
    key = key.replace("\\", "/")
    while key.startswith("./"):
        key = key[2:]
    return key


def _read_csv(path: Path) -> dict[str, list[tuple[np.ndarray, float]]]:
    out: dict[str, list[tuple[np.ndarray, float]]] = {}
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in ["path", *_COLS] if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: landmarks CSV lacks column(s) {', '.join(missing)}")
        for line_no, row in enumerate(reader, start=2):
            try:
                pts = np.array([float(row[c]) for c in _COLS], dtype=np.float32).reshape(5, 2)
                score = float(row["score"]) if row.get("score") not in (None, "") else 1.0
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{path}: line {line_no}: bad landmark value ({exc})") from exc
            out.setdefault(_norm_key(row["path"]), []).append((pts, score))
    return out


def _as_faces(path: Path, key: str, value) -> list[tuple[np.ndarray, float]]:
    arr = np.asarray(value, dtype=np.float32)
    if arr.shape == (5, 2):
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1:] != (5, 2):
        raise ValueError(f"{path}: entry {key!r} must be 5 [x, y] points (or a list of such), got shape {arr.shape}")
    return [(a, 1.0) for a in arr]


def _read_json(path: Path) -> dict[str, list[tuple[np.ndarray, float]]]:
    data = json.loads(path.read_text(encoding="utf-8"))
    out: dict[str, list[tuple[np.ndarray, float]]] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out[_norm_key(key)] = _as_faces(path, key, value)
    elif isinstance(data, list):
        for i, item in enumerate(data):
            if not isinstance(item, dict) or "path" not in item or "landmarks" not in item:
                raise ValueError(f"{path}: item {i} needs 'path' and 'landmarks'")
            out.setdefault(_norm_key(item["path"]), []).extend(_as_faces(path, item["path"], item["landmarks"]))
    else:
        raise ValueError(f"{path}: expected a JSON object or list")
    return out


def read_landmarks_file(path: str | Path) -> dict[str, list[tuple[np.ndarray, float]]]:
    """Read a landmarks CSV/JSON into ``{relative path: [(landmarks (5, 2), score), ...]}``."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: landmarks file not found")
    return _read_json(p) if p.suffix.lower() == ".json" else _read_csv(p)


class LandmarksFileDetector(Detector):
    """Serves landmarks from a file; the face box is the landmarks' bounding box grown to a face-sized square."""

    name = "landmarks"

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self._table = read_landmarks_file(self.path)

    def __len__(self) -> int:
        return len(self._table)

    def detect(self, image: np.ndarray, *, key: str | None = None, hint: np.ndarray | None = None) -> list[Face]:
        if key is None:
            raise ValueError("the landmarks backend needs the image key (its path relative to the dataset root)")
        faces = []
        for pts, score in self._table.get(_norm_key(key), []):
            lo, hi = pts.min(0), pts.max(0)
            c, half = (lo + hi) / 2.0, max(float((hi - lo).max()), 1.0)
            faces.append(Face(box=(c[0] - half, c[1] - half, c[0] + half, c[1] + half), landmarks=pts, score=score))
        return faces
