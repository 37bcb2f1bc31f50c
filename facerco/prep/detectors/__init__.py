"""Face detectors behind one interface: ``create_detector(name, **options).detect(rgb) -> list[Face]``.

Backends (imported lazily, so a missing optional dependency only matters when that backend is used):

* ``insightface`` -- SCRFD/RetinaFace ONNX by path (``model_path=``);
* ``dlib`` -- HOG + shape predictor (``upsample=``, ``points="5"|"68"``, ``predictor_path=``);
* ``landmarks`` -- five points from a CSV/JSON file (``path=``).

A :class:`DetectorSpec` (name + options) is what crosses process boundaries: each worker builds its own detector.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from facerco.prep.detectors._base import SELECT_POLICIES, Detector, Face, box_iou, select_faces

__all__ = [
    "Face",
    "Detector",
    "DetectorSpec",
    "create_detector",
    "list_detectors",
    "parse_detector_options",
    "box_iou",
    "select_faces",
    "SELECT_POLICIES",
]

_BACKENDS = {
    "insightface": ("facerco.prep.detectors._insightface", "InsightFaceDetector"),
    "dlib": ("facerco.prep.detectors._dlib", "DlibDetector"),
    "landmarks": ("facerco.prep.detectors._landmarks", "LandmarksFileDetector"),
}


def list_detectors() -> list[str]:
    return sorted(_BACKENDS)


def create_detector(name: str, **options: Any) -> Detector:
    """Build a detector backend by name; unknown names and options raise with the valid choices."""
    if name not in _BACKENDS:
        raise ValueError(f"unknown detector {name!r}; choose one of {', '.join(list_detectors())}")
    import importlib

    module_name, cls_name = _BACKENDS[name]
    cls = getattr(importlib.import_module(module_name), cls_name)
    try:
        return cls(**options)
    except TypeError as exc:
        raise ValueError(f"detector {name!r}: bad options {sorted(options)} ({exc})") from exc


@dataclass(frozen=True)
class DetectorSpec:
    """Picklable recipe for a detector, so worker processes can each build one."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def build(self) -> Detector:
        return create_detector(self.name, **self.options)


def _parse_value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


def parse_detector_options(items: list[str] | None) -> dict[str, Any]:
    """``["upsample=1", "points=68"]`` -> ``{"upsample": 1, "points": 68}`` (numbers and booleans are typed)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"detector option {item!r} must look like key=value")
        out[key.strip()] = _parse_value(value.strip())
    return out
