"""Augmented views for function matching: student crops and the teacher's rows, each cut from the source photo.

`facerco cache RUN ALIGNED --photos SRC --views K --out OUT` writes::

    OUT/images/<identity>/<stem>_v<k>.jpg   K student crops (112x112, ArcFace template) per aligned image
    OUT/views.json                          per crop: the source photo, its jittered five points, colour gains, seed
    OUT/cache/                              an anchor cache (facerco.route.cache_format) over OUT/images

View 0 is the photo as aligned; views 1..K-1 move the five points by a seeded random similarity
(:func:`facerco.prep.views.jitter_landmarks`) and scale brightness, contrast and saturation. The teacher's crop is
cut from the same photo, with the same moved points, in the teacher's own view (dlib's 150 chip, the ArcFace 112
template ...), and gets the same colour change, so both networks see the same face (Beyer et al., CVPR 2022,
"function matching": several augmented views per image instead of one fixed target). Each cache row holds the
teacher's embedding of the view and of its horizontal flip, so the student's random flip keeps working.

The student then trains on ``OUT/images`` (identity folder, or flat when the aligned folder was flat) with
``distill.cache: OUT/cache``; the cache checks it like any other. Everything is seeded by ``(seed, item, view)``,
so a rerun makes the same crops; the job resumes at the first missing crop and the first missing cache shard.
When the source photos are not there (a ``.rec``, crops only), ``--photos`` may name the aligned folder itself: the
crops' own five points are the template, and the manifest records ``"view_source": "crop"``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from facerco.prep.align import list_images, read_image, read_report, warp_face, write_image
from facerco.prep.views import crop_landmarks, jitter_landmarks
from facerco.utils.io import read_json, write_json

__all__ = ["ViewSpec", "VIEWS_FORMAT", "plan_views", "write_student_views", "build_views_cache", "colour_jitter"]

VIEWS_FORMAT = "facerco-views"
STUDENT_SIZE = 112


@dataclass(frozen=True)
class ViewSpec:
    """One view: the student crop ``file`` (relative to ``OUT/images``), its photo, five points and colour gains."""

    file: str
    photo: str
    landmarks: tuple[float, ...]
    colour: tuple[float, float, float]  # brightness, contrast, saturation gains (1 = unchanged)
    item: int
    view: int

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "photo": self.photo, "landmarks": list(self.landmarks),
                "colour": list(self.colour), "item": self.item, "view": self.view}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ViewSpec:
        return cls(d["file"], d["photo"], tuple(d["landmarks"]), tuple(d["colour"]), int(d["item"]), int(d["view"]))


def colour_jitter(rgb: np.ndarray, gains: Sequence[float]) -> np.ndarray:
    """Brightness, contrast (about the mean grey) and saturation (about each pixel's grey) gains on uint8 RGB."""
    if tuple(gains) == (1.0, 1.0, 1.0):
        return rgb
    b, c, s = (float(g) for g in gains)
    x = rgb.astype(np.float32) * b
    grey = x @ np.array([0.299, 0.587, 0.114], np.float32)
    x = (x - grey.mean()) * c + grey.mean()
    grey = x @ np.array([0.299, 0.587, 0.114], np.float32)
    x = (x - grey[..., None]) * s + grey[..., None]
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _sources(aligned: Path, photos: Path, files: Sequence[str] | None) -> tuple[list[tuple[str, str, np.ndarray]], str]:
    """(crop rel path, photo rel path, five points) per aligned image (only ``files`` when given, paths relative to
    ``aligned``), and the view source (photo or crop)."""
    crops = list_images(aligned)
    if files is not None:
        wanted = set(files)
        unknown = sorted(wanted - set(crops))
        if unknown:
            raise ValueError(f"{aligned}: {len(unknown)} requested crops are not there (e.g. {unknown[0]})")
        crops = [c for c in crops if c in wanted]
    if photos.resolve() == aligned.resolve():  # the crops' own points: the template at their side (one side for all)
        points = crop_landmarks(read_image(aligned / crops[0]).shape[0] if crops else STUDENT_SIZE)
        return [(c, c, points) for c in crops], "crop"
    report = read_report(aligned / "align_report.csv")
    if not report:
        raise FileNotFoundError(f"{aligned / 'align_report.csv'}: no align report, so the source photo and five points "
                                "of each crop are unknown; align with `facerco align` or pass --photos ALIGNED")
    by_crop = {}
    for photo, row in report.items():
        if row.get("outputs") and row.get("landmarks"):
            points = np.array(row["landmarks"].split(), np.float32).reshape(5, 2)
            by_crop[row["outputs"].split(";")[0]] = (photo, points)
    missing = [c for c in crops if c not in by_crop]
    if missing:
        raise ValueError(f"{aligned / 'align_report.csv'}: {len(missing)} crops have no row with landmarks "
                         f"(e.g. {missing[0]}); re-run `facerco align` or remove them")
    return [(c, *by_crop[c]) for c in crops], "photo"


def plan_views(aligned: str | os.PathLike[str], photos: str | os.PathLike[str], views: int,
               seed: int = 0, files: Sequence[str] | None = None) -> tuple[list[ViewSpec], str]:
    """Every view of every aligned image (or of ``files``), seeded by ``(seed, item, view)``; and the view source.
    Points and gains are rounded as ``views.json`` stores them, so crops remade from the file are identical."""
    if views < 1:
        raise ValueError(f"views must be >= 1, got {views}")
    sources, kind = _sources(Path(aligned), Path(photos), files)
    specs = []
    for item, (crop, photo, points) in enumerate(sources):
        stem = Path(crop).with_suffix("")
        for k in range(views):
            rng = np.random.default_rng([seed, item, k])
            moved = points if k == 0 else jitter_landmarks(points, rng)
            gains = (1.0, 1.0, 1.0) if k == 0 else tuple(float(g) for g in rng.uniform(0.8, 1.2, size=3))
            specs.append(ViewSpec(f"{stem.as_posix()}_v{k}.jpg", photo,
                                  tuple(round(float(v), 3) for v in moved.reshape(-1)),
                                  tuple(round(g, 4) for g in gains), item, k))  # type: ignore[arg-type]
    return specs, kind


def write_student_views(out: Path, photos: Path, specs: Sequence[ViewSpec], quality: int = 95,
                        progress: bool = True) -> int:
    """Write the missing student crops (atomic each); returns how many were written."""
    from tqdm import tqdm

    written = 0
    for spec in tqdm(specs, desc="views (student crops)", unit="img", disable=not progress):
        path = out / "images" / spec.file
        if path.is_file():
            continue
        image = read_image(photos / spec.photo)
        crop = warp_face(image, np.asarray(spec.landmarks, np.float32).reshape(5, 2), STUDENT_SIZE)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_image(path, colour_jitter(crop, spec.colour), quality)
        written += 1
    return written


# ---- teacher rows, in worker processes ------------------------------------------------------------------------
_WORKER: dict[str, Any] = {}


def _init_worker(run: str, photos: str) -> None:
    import torch

    from facerco.route.io import load_route
    from facerco.route.published import load_published, view_teacher

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    route = load_route(run)
    path = route.path("final")
    if path.suffix.lower() in (".onnx", ".dat"):  # one onnxruntime thread per worker: no oversubscription
        _WORKER["teacher"] = load_published(path, route.info.get("teacher") or {}, threads=1)
    else:
        _WORKER["teacher"] = view_teacher(route.load_point("final", verify=False).model)
    _WORKER["photos"] = Path(photos)


def _teacher_rows(specs: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalized float32 rows of the teacher's view of each spec and of its horizontal flip."""
    teacher, photos = _WORKER["teacher"], _WORKER["photos"]
    crops = []
    for d in specs:
        spec = ViewSpec.from_dict(d)
        image = read_image(photos / spec.photo)
        crop = teacher.view.crop(image, np.asarray(spec.landmarks, np.float32).reshape(5, 2))
        crops.append(colour_jitter(crop, spec.colour))
    batch = np.stack(crops)
    both = teacher.embed_crops(np.concatenate([batch, batch[:, :, ::-1]]))
    both = both / np.maximum(np.linalg.norm(both, axis=1, keepdims=True), 1e-12)
    return both[: len(specs)], both[len(specs):]


def _rows_in_order(specs: list[ViewSpec], run: str, photos: Path, workers: int, chunk: int) -> Iterator[tuple]:
    chunks = [[s.to_dict() for s in specs[i:i + chunk]] for i in range(0, len(specs), chunk)]
    if workers <= 1:
        _init_worker(run, str(photos))
        yield from map(_teacher_rows, chunks)
        return
    from facerco.utils.workers import process_context

    with process_context().Pool(workers, initializer=_init_worker, initargs=(run, str(photos))) as pool:
        yield from pool.imap(_teacher_rows, chunks)


def build_views_cache(run: str | os.PathLike[str], aligned: str | os.PathLike[str], photos: str | os.PathLike[str],
                      out: str | os.PathLike[str], views: int = 4, seed: int = 0, image_size: int = STUDENT_SIZE,
                      shard_size: int = 4096, workers: int = 1, chunk: int = 16, files: Sequence[str] | None = None,
                      progress: bool = True) -> Path:
    """Student crops + the final teacher's rows for ``views`` views of every aligned image (``files``: only these
    crops, relative to ``aligned``); returns the cache manifest path. Resumable: done crops and complete shards
    are kept."""
    from facerco.data.datasets import open_dataset
    from facerco.data.transforms import EvalTransform
    from facerco.route.cache_writer import CacheWriter
    from facerco.route.io import load_route

    out, photos = Path(out), Path(photos)
    route = load_route(run)
    point = route.point("final")
    route.verify("final")
    specs, source = plan_views(aligned, photos, views, seed, files)
    plan = {"format": VIEWS_FORMAT, "version": 1, "aligned": str(Path(aligned).resolve()),
            "photos": str(photos.resolve()), "view_source": source, "views": views, "seed": seed,
            "teacher_run": str(Path(run).resolve()), "teacher": route.info.get("teacher"),
            "specs": [s.to_dict() for s in specs]}
    plan_path = out / "views.json"
    if plan_path.is_file() and read_json(plan_path)["specs"] != plan["specs"]:
        raise ValueError(f"{plan_path}: written with other settings or another aligned folder; use a new --out")
    out.mkdir(parents=True, exist_ok=True)
    write_json(plan_path, plan)
    write_student_views(out, photos, specs, progress=progress)
    flat = not any("/" in s.file for s in specs)  # a flat aligned folder gives flat views (no identities)
    dataset = open_dataset(str(out / "images"), "images" if flat else "folder", EvalTransform(image_size))
    order = {s.file: s for s in specs}
    rel = [Path(p).relative_to(out / "images").as_posix() for p in dataset.paths]
    ordered = [order[r] for r in rel]
    meta = {"teacher_run": str(Path(run).resolve()), "dataset": str((out / "images").resolve()),
            "image_size": image_size, "views": {k: plan[k] for k in ("views", "seed", "view_source", "photos")},
            "teacher_view": (route.info.get("teacher") or {}).get("view")}
    writer = CacheWriter(out / "cache", dataset, shard_size, meta)

    def teacher_rows(start: int, end: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return _rows_in_order(ordered[start:end], str(run), photos, workers, chunk)

    writer.write_anchor(point.name, point.sha256, lambda: teacher_rows, progress, desc="views (teacher)")
    return writer.manifest_path
