"""Align a stream of encoded images (TSV rows, RecordIO records) without holding the stream in memory.

Producers yield :class:`StreamItem` (output key, encoded bytes or base64 text, optional hint rectangle); workers
decode, detect, warp and write ``DST/<key>``; rows go to the same ``align_report.csv`` format as ``facerco align``.
Items are handed to the workers in bounded batches, so memory stays flat whatever the stream's length. A key already
in the report or already on disk is skipped; producers should check :func:`finished_keys` themselves to avoid even
reading those items' payloads.
"""

from __future__ import annotations

import base64
import binascii
import csv
import multiprocessing as mp
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np

from facerco.prep.align import (
    REPORT_NAME,
    _open_report,
    align_image,
    decode_to_rgb,
    read_report,
    write_bytes_public,
    write_image,
)
from facerco.prep.detectors import Detector, DetectorSpec

__all__ = ["StreamItem", "align_stream", "finished_keys", "hint_to_box", "select_rows"]


@dataclass(frozen=True)
class StreamItem:
    """One image of a stream.

    Attributes:
        key: output path relative to the destination, e.g. ``m.0abc/3-FaceId-0.jpg``.
        data: the encoded image (JPEG/PNG bytes), or its base64 text when ``b64``.
        hint: optional ``(left, top, width, height)`` face rectangle, in pixels or as fractions of the image.
        b64: ``data`` is base64 text.
        source_key: the name the detector looks the image up by (landmarks files), when it differs from ``key``
            (e.g. after relabelling by a clean list).
    """

    key: str
    data: bytes
    hint: tuple[float, float, float, float] | None = None
    b64: bool = False
    source_key: str | None = None


def hint_to_box(hint: tuple[float, float, float, float] | None, shape: tuple[int, ...]) -> np.ndarray | None:
    """``(left, top, width, height)`` -> xyxy pixels; fractions when all values are <= 1. Returns None when the
    rectangle is degenerate or lies mostly outside the image (then it cannot refer to this image)."""
    if hint is None:
        return None
    h, w = shape[:2]
    left, top, width, height = (float(v) for v in hint)
    if max(abs(left), abs(top), abs(width), abs(height)) <= 1.0:
        left, width, top, height = left * w, width * w, top * h, height * h
    if width <= 1 or height <= 1:
        return None
    box = np.array([left, top, left + width, top + height])
    inside_w = min(box[2], w) - max(box[0], 0)
    inside_h = min(box[3], h) - max(box[1], 0)
    if inside_w <= 0 or inside_h <= 0 or inside_w * inside_h < 0.5 * width * height:
        return None
    return box


def finished_keys(dst: str | os.PathLike[str]) -> set[str]:
    """Keys already reported in ``dst/align_report.csv``."""
    return set(read_report(Path(dst) / REPORT_NAME))


@dataclass(frozen=True)
class _Job:
    dst: str
    spec: DetectorSpec | None
    size: int
    policy: str
    quality: int


_WORKER: dict[str, object] = {}


def _init(job: _Job) -> None:
    cv2.setNumThreads(1)
    _WORKER["job"] = job
    _WORKER["detector"] = job.spec.build() if job.spec is not None else None


def _decode(item: StreamItem) -> bytes:
    if not item.b64:
        return item.data
    try:
        return base64.b64decode(item.data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"bad base64 image data ({exc})") from exc


def _work(item: StreamItem) -> list[str]:
    job: _Job = _WORKER["job"]  # type: ignore[assignment]
    detector: Detector | None = _WORKER["detector"]  # type: ignore[assignment]
    try:
        raw = _decode(item)
        arr = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED) if raw else None
        if arr is None:
            raise ValueError("not a decodable image")
        image = decode_to_rgb(arr, item.key)
    except ValueError as exc:
        return [item.key, "0", "", f"unreadable: {exc}", "", ""]
    try:
        if detector is None:  # extract only: keep the stored bytes
            write_bytes_public(Path(job.dst) / item.key, raw)
            return [item.key, "", "", "", item.key, ""]
        res = align_image(
            image,
            detector,
            key=item.source_key or item.key,
            hint=hint_to_box(item.hint, image.shape),
            size=job.size,
            policy=job.policy,
        )
        path = Path(item.key)
        names = (
            [item.key]
            if job.policy != "all"
            else [path.with_name(f"{path.stem}_{k}{path.suffix}").as_posix() for k in range(len(res.crops))]
        )
        for name, crop in zip(names, res.crops):
            write_image(Path(job.dst) / name, crop, job.quality)
    except (ValueError, RuntimeError, OSError, cv2.error) as exc:
        return [item.key, "0", "", f"error: {type(exc).__name__}: {exc}".replace("\n", " "), "", ""]
    score = "" if res.chosen_score is None else f"{res.chosen_score:.4f}"
    lmk = " ".join(f"{v:.2f}" for v in res.faces[0].landmarks.reshape(-1)) if res.faces else ""
    return [item.key, str(res.faces_found), score, res.failure_reason, ";".join(names if res.crops else []), lmk]


def _batches(items: Iterable[StreamItem], size: int) -> Iterator[list[StreamItem]]:
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch


def align_stream(
    items: Iterable[StreamItem],
    dst: str | os.PathLike[str],
    spec: DetectorSpec | None,
    *,
    size: int = 112,
    policy: str = "largest",
    quality: int = 95,
    workers: int = 1,
    batch: int = 256,
    progress: bool = True,
    total: int | None = None,
) -> dict[str, int]:
    """Align (or, with ``spec=None``, only extract) every item into ``dst``; see the module docstring.

    Returns:
        Counts of this run: ``seen``, ``skipped``, ``aligned``, ``failed``.
    """
    from tqdm import tqdm

    out = Path(dst)
    out.mkdir(parents=True, exist_ok=True)
    report = out / REPORT_NAME
    done = finished_keys(out)
    job = _Job(str(out), spec, size, policy, quality)
    counts = {"seen": 0, "skipped": 0, "aligned": 0, "failed": 0}
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    pool = ctx.Pool(workers, initializer=_init, initargs=(job,)) if workers > 1 else None
    if pool is None:
        _init(job)
    bar = tqdm(total=total, desc="align", unit="img", disable=not progress)
    try:
        with _open_report(report) as handle:
            writer = csv.writer(handle)
            for chunk in _batches(items, batch):
                counts["seen"] += len(chunk)
                todo = [it for it in chunk if it.key not in done and not (out / it.key).is_file()]
                counts["skipped"] += len(chunk) - len(todo)
                rows = pool.map(_work, todo, chunksize=8) if pool is not None else [_work(it) for it in todo]
                writer.writerows(rows)
                handle.flush()
                for row in rows:
                    counts["aligned" if row[4] else "failed"] += 1
                    done.add(row[0])
                bar.update(len(chunk))
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()
    return counts


_Row = TypeVar("_Row")


def select_rows(rows: Iterable[tuple[str, _Row]], keep: Any = None, skip: set[str] | None = None,
                limit: int | None = None) -> Iterator[tuple[str, _Row, bool]]:
    """``(key, row, finished)`` for the rows a clean list keeps (relabelled), at most ``limit`` of them.

    Shared by every streamed source (TSV, RecordIO) so the clean list, the resume set and the limit mean the same
    thing everywhere; ``finished`` marks keys already in ``skip`` (reported, not re-aligned).
    """
    taken = 0
    for key, row in rows:
        if keep is not None:
            if not keep.contains(key):
                continue
            key = keep.relabel(key)
        if limit is not None and taken >= limit:
            return
        taken += 1
        yield key, row, skip is not None and key in skip
