"""Landmarks-file backend: five points read from a CSV or JSON file instead of detected.

For datasets that ship landmarks and for generated faces (``facerco.data.synthetic`` writes
``<out>/landmarks.csv``). Keys are image paths relative to the dataset root, with ``/`` separators.

Formats (several rows/entries for one path mean several faces):

* CSV with header ``path,x1,y1,x2,y2,x3,y3,x4,y4,x5,y5`` (ArcFace order) and an optional ``score`` column;
* any other CSV with exactly 11 columns: image name then 10 coordinates, by position (VGGFace2's
  ``loose_landmark_*.csv``: ``NAME_ID,P1X,P1Y,...,P5Y``);
* whitespace-separated ``.txt``: ``<file> x1 y1 ... x5 y5`` per line, after an optional count line and an optional
  header line (CelebA's ``list_landmarks_celeba.txt`` / ``list_landmarks_align_celeba.txt``);
* JSON: ``{"<path>": [[x, y] * 5]}``, ``{"<path>": [[[x, y] * 5], ...]}`` or ``[{"path": ..., "landmarks": ...}]``.

Keys are matched exactly, else without the file extension (VGGFace2 names have none). ArcFace order puts the
image-left eye and mouth corner first; a file that lists the subject's left side first (mirrored order) is recognised
by the face's orientation -- eye-to-eye vector crossed with eyes-to-mouth vector is negative -- and its left/right
pairs are swapped.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from facerco.prep.detectors._base import Detector, Face

__all__ = ["LandmarksFileDetector", "read_landmarks_file", "canonical_order"]

_COLS = [f"{a}{i}" for i in range(1, 6) for a in ("x", "y")]


def _norm_key(key: str) -> str:
    key = key.replace("\\", "/")
    while key.startswith("./"):
        key = key[2:]
    return key


def canonical_order(pts: np.ndarray) -> np.ndarray:
    """Swap left/right pairs when the five points are in mirrored order (see the module docstring)."""
    pts = np.asarray(pts, dtype=np.float32)
    eyes = pts[1] - pts[0]
    down = (pts[3] + pts[4]) / 2.0 - (pts[0] + pts[1]) / 2.0
    if eyes[0] * down[1] - eyes[1] * down[0] < 0:
        return pts[[1, 0, 2, 4, 3]]
    return pts


def _rows(path: Path, rows, line0: int) -> dict[str, list[tuple[np.ndarray, float]]]:
    """(name, 10 coordinate strings) rows -> table."""
    out: dict[str, list[tuple[np.ndarray, float]]] = {}
    for line_no, (name, values) in enumerate(rows, start=line0):
        try:
            pts = np.array([float(v) for v in values], dtype=np.float32).reshape(5, 2)
        except ValueError as exc:
            raise ValueError(f"{path}: line {line_no}: bad landmark value ({exc})") from exc
        out.setdefault(_norm_key(name), []).append((canonical_order(pts), 1.0))
    return out


def _read_txt(path: Path) -> dict[str, list[tuple[np.ndarray, float]]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    start = 0
    if lines and lines[0].strip().isdigit():
        start = 1
    if len(lines) > start and len(lines[start].split()) == 10:  # CelebA header: 10 column names, no file column
        start += 1
    rows = []
    for line_no, line in enumerate(lines[start:], start=start + 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 11:
            raise ValueError(f"{path}: line {line_no}: expected '<file> x1 y1 ... x5 y5' (11 fields), got {len(parts)}")
        rows.append((parts[0], parts[1:]))
    return _rows(path, rows, start + 1)


def _strip_ext(key: str) -> str:
    head, _, tail = key.rpartition("/")
    stem = tail.rsplit(".", 1)[0] if "." in tail else tail
    return f"{head}/{stem}" if head else stem


def _read_csv(path: Path) -> dict[str, list[tuple[np.ndarray, float]]]:
    out: dict[str, list[tuple[np.ndarray, float]]] = {}
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        fields = reader.fieldnames or []
        missing = [c for c in ["path", *_COLS] if c not in fields]
        if missing and len(fields) == 11:  # positional layout (VGGFace2)
            return _rows(path, ((row[fields[0]], [row[f] for f in fields[1:]]) for row in reader), 2)
        if missing:
            raise ValueError(f"{path}: landmarks CSV lacks column(s) {', '.join(missing)}")
        for line_no, row in enumerate(reader, start=2):
            try:
                pts = np.array([float(row[c]) for c in _COLS], dtype=np.float32).reshape(5, 2)
                score = float(row["score"]) if row.get("score") not in (None, "") else 1.0
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{path}: line {line_no}: bad landmark value ({exc})") from exc
            out.setdefault(_norm_key(row["path"]), []).append((canonical_order(pts), score))
    return out


def _as_faces(path: Path, key: str, value) -> list[tuple[np.ndarray, float]]:
    arr = np.asarray(value, dtype=np.float32)
    if arr.shape == (5, 2):
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1:] != (5, 2):
        raise ValueError(f"{path}: entry {key!r} must be 5 [x, y] points (or a list of such), got shape {arr.shape}")
    return [(canonical_order(a), 1.0) for a in arr]


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
    suffix = p.suffix.lower()
    if suffix == ".json":
        return _read_json(p)
    return _read_txt(p) if suffix == ".txt" else _read_csv(p)


class LandmarksFileDetector(Detector):
    """Serves landmarks from a file; the face box is the landmarks' bounding box grown to a face-sized square."""

    name = "landmarks"

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self._table = read_landmarks_file(self.path)
        self._by_stem: dict[str, list[tuple[np.ndarray, float]]] = {}
        for key, faces in self._table.items():
            self._by_stem.setdefault(_strip_ext(key), []).extend(faces)

    def __len__(self) -> int:
        return len(self._table)

    def detect(self, image: np.ndarray, *, key: str | None = None, hint: np.ndarray | None = None) -> list[Face]:
        if key is None:
            raise ValueError("the landmarks backend needs the image key (its path relative to the dataset root)")
        faces = []
        key = _norm_key(key)
        entries = self._table.get(key)
        if entries is None:
            entries = self._by_stem.get(_strip_ext(key), [])
        for pts, score in entries:
            lo, hi = pts.min(0), pts.max(0)
            c, half = (lo + hi) / 2.0, max(float((hi - lo).max()), 1.0)
            faces.append(Face(box=(c[0] - half, c[1] - half, c[0] + half, c[1] + half), landmarks=pts, score=score))
        return faces
