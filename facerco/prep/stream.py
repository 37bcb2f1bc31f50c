"""Align a stream of encoded images (TSV rows, RecordIO records) without holding the stream in memory.

Producers yield :class:`StreamItem` (output key, encoded bytes or base64 text, optional hint rectangle); workers
decode, detect, warp and write ``DST/<key>``; rows go to the same ``align_report.csv`` format as ``facerco align``.
Items are handed to the workers in bounded batches, so memory stays flat whatever the stream's length. A key already
in the report or already on disk is skipped; producers should check :func:`finished_keys` themselves to avoid even
reading those items' payloads.

Damaged rows do not end a run: a producer yields a :class:`BadRow` for a row it cannot read (wrong column count,
bad face rectangle, unreadable record), and an item whose payload is not base64 or not an image becomes one in the
worker. Each is listed once in ``DST/bad_rows.csv`` (``file, line, key, reason``; a resumed run that meets it
again counts it as skipped) and counted as ``bad``; with ``strict`` the first one is an error naming file and line.
"""

from __future__ import annotations

import base64
import binascii
import csv
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain, islice
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np

from facerco.prep.align import (
    REPORT_NAME,
    _open_report,
    _raise_start_error,
    _start_detector,
    align_image,
    decode_to_rgb,
    read_report,
    write_bytes_public,
    write_image,
)
from facerco.prep.detectors import Detector, DetectorSpec
from facerco.utils.workers import process_context

__all__ = [
    "BAD_ROWS_NAME",
    "BadRow",
    "BadRowError",
    "StreamItem",
    "align_stream",
    "bad_rows_summary",
    "finished_keys",
    "hint_to_box",
    "read_bad_rows",
    "select_rows",
]

BAD_ROWS_NAME = "bad_rows.csv"
BAD_ROWS_COLUMNS = ["file", "line", "key", "reason"]


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
        origin: ``(file, line)`` the item was read from (line None when the file has no lines), for the bad-rows
            report when its payload turns out to be damaged.
    """

    key: str
    data: bytes
    hint: tuple[float, float, float, float] | None = None
    b64: bool = False
    source_key: str | None = None
    origin: tuple[str, int | None] | None = None


@dataclass(frozen=True)
class BadRow:
    """A damaged row of a stream: listed in ``DST/bad_rows.csv`` and skipped, or with ``strict`` an error.

    Attributes:
        file: the file it was read from (a TSV, a ``.rec``, a sidecar JSON).
        line: its 1-based line number in ``file``; None when the file has no lines.
        reason: what is wrong, without the location.
        key: the output key, when the row was readable far enough to name it.
    """

    file: str
    line: int | None
    reason: str
    key: str | None = None

    def describe(self) -> str:
        """``FILE: line N: reason`` (or ``FILE: KEY: reason``): the one-line error of a strict run."""
        where = f"line {self.line}" if self.line is not None else self.key
        return f"{self.file}: {where}: {self.reason}" if where else f"{self.file}: {self.reason}"

    def ident(self) -> tuple[str, str, str]:
        """``(file, line, key)`` as written to the report: a row met again by a resumed run is listed once."""
        return os.path.abspath(self.file), "" if self.line is None else str(self.line), self.key or ""


class BadRowError(ValueError):
    """A damaged row in a ``strict`` run; the message names the file and the line."""



def read_bad_rows(dst: str | os.PathLike[str]) -> list[dict[str, str]]:
    """Rows of ``dst/bad_rows.csv`` (none when absent); a torn last line (job killed mid-write) is ignored."""
    path = Path(dst) / BAD_ROWS_NAME
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames != BAD_ROWS_COLUMNS:
            raise ValueError(f"{path}: not a bad-rows report (header {reader.fieldnames}, expected {BAD_ROWS_COLUMNS})")
        return [row for row in reader if row.get("reason") is not None]


def bad_rows_summary(dst: str | os.PathLike[str]) -> dict[str, Any]:
    """``bad_rows`` (all listed so far, over every run into ``dst``) and ``bad_rows_report`` (its path, or None)."""
    count = len(read_bad_rows(dst))
    return {"bad_rows": count, "bad_rows_report": str(Path(dst) / BAD_ROWS_NAME) if count else None}


class _BadRowLog:
    """Appends damaged rows to ``DST/bad_rows.csv``, each once; in a strict run the first one raises instead."""

    def __init__(self, dst: Path, strict: bool) -> None:
        self.path = dst / BAD_ROWS_NAME
        self.strict = strict
        self.known = {(r["file"], r["line"], r["key"]) for r in read_bad_rows(dst)}
        self._handle: Any = None

    def add(self, bad: BadRow) -> str:
        """List ``bad``; returns its counter: ``bad`` (new) or ``skipped`` (listed by an earlier run)."""
        if self.strict:
            raise BadRowError(bad.describe())
        ident = bad.ident()
        if ident in self.known:
            return "skipped"
        if self._handle is None:
            self._handle = _open_report(self.path, BAD_ROWS_COLUMNS)
        csv.writer(self._handle).writerow([*ident, " ".join(bad.reason.split())])
        self._handle.flush()
        self.known.add(ident)
        return "bad"

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()


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
    _start_detector(_WORKER, job.spec)


def _decode(item: StreamItem) -> bytes:
    if not item.b64:
        return item.data
    try:
        return base64.b64decode(item.data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"bad base64 image data ({exc})") from exc


def _work(item: StreamItem) -> tuple[list[str], str | None]:
    """The report row of one item, and why its payload is damaged (None when it is an image)."""
    _raise_start_error(_WORKER)
    job: _Job = _WORKER["job"]  # type: ignore[assignment]
    detector: Detector | None = _WORKER["detector"]  # type: ignore[assignment]
    try:
        raw = _decode(item)
        arr = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED) if raw else None
        if arr is None:
            raise ValueError("not a decodable image")
        image = decode_to_rgb(arr, item.key)
    except ValueError as exc:
        return [item.key, "0", "", f"unreadable: {exc}", "", ""], str(exc)
    try:
        if detector is None:  # extract only: keep the stored bytes
            write_bytes_public(Path(job.dst) / item.key, raw)
            return [item.key, "", "", "", item.key, ""], None
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
        return [item.key, "0", "", f"error: {type(exc).__name__}: {exc}".replace("\n", " "), "", ""], None
    score = "" if res.chosen_score is None else f"{res.chosen_score:.4f}"
    lmk = " ".join(f"{v:.2f}" for v in res.faces[0].landmarks.reshape(-1)) if res.faces else ""
    names_out = ";".join(names if res.crops else [])
    return [item.key, str(res.faces_found), score, res.failure_reason, names_out, lmk], None


def _batches(items: Iterable[StreamItem | BadRow], size: int) -> Iterator[list[StreamItem | BadRow]]:
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch


def align_stream(
    items: Iterable[StreamItem | BadRow],
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
    strict: bool = False,
) -> dict[str, int]:
    """Align (or, with ``spec=None``, only extract) every item into ``dst``; see the module docstring.

    Args:
        strict: stop at the first damaged row (:class:`BadRowError` naming file and line) instead of listing it.

    Returns:
        Counts of this run: ``seen``, ``skipped`` (finished or listed by an earlier run), ``aligned``, ``failed``
        (no usable face) and ``bad`` (damaged rows newly listed in ``bad_rows.csv``).
    """
    from tqdm import tqdm

    out = Path(dst)
    it = iter(items)
    first = next(it, None)  # a producer that cannot start (file not found) fails before any worker or bar exists
    items = chain([first], it) if first is not None else ()
    out.mkdir(parents=True, exist_ok=True)
    done = finished_keys(out)
    job = _Job(str(out), spec, size, policy, quality)
    counts = {"seen": 0, "skipped": 0, "aligned": 0, "failed": 0, "bad": 0}
    ctx = process_context()
    pool = ctx.Pool(workers, initializer=_init, initargs=(job,)) if workers > 1 else None
    if pool is None:
        _init(job)
        _raise_start_error(_WORKER)
    bar = tqdm(total=total, desc="align", unit="img", disable=not progress)
    bad_log = _BadRowLog(out, strict)
    try:
        with _open_report(out / REPORT_NAME) as handle:
            writer = csv.writer(handle)
            for chunk in _batches(items, batch):
                fresh = [isinstance(it, StreamItem) and it.key not in done and not (out / it.key).is_file()
                         for it in chunk]
                todo = [it for it, f in zip(chunk, fresh) if f]
                results = pool.map(_work, todo, chunksize=8) if pool is not None else [_work(it) for it in todo]
                try:
                    _record(chunk, fresh, iter(results), writer, bad_log, done, counts)
                finally:
                    handle.flush()
                bar.update(len(chunk))
    finally:
        bar.close()
        bad_log.close()
        if pool is not None:
            pool.close()
            pool.join()
    return counts


def _record(
    chunk: list[StreamItem | BadRow],
    fresh: list[bool],
    results: Iterator[tuple[list[str], str | None]],
    writer: Any,
    bad_log: _BadRowLog,
    done: set[str],
    counts: dict[str, int],
) -> None:
    """Report one batch in stream order, so a strict run stops exactly at its first damaged row."""
    for item, is_fresh in zip(chunk, fresh):
        counts["seen"] += 1
        if isinstance(item, BadRow):
            counts[bad_log.add(item)] += 1
            continue
        if not is_fresh:
            counts["skipped"] += 1
            continue
        row, damage = next(results)
        if damage is not None:
            file, line = item.origin or (item.key, None)
            counts[bad_log.add(BadRow(file, line, damage, item.key))] += 1
        else:
            counts["aligned" if row[4] else "failed"] += 1
        writer.writerow(row)  # damaged payloads too: a resumed run does not decode them again
        done.add(row[0])


_Row = TypeVar("_Row")


def select_rows(rows: Iterable[tuple[str | None, _Row]], keep: Any = None, skip: set[str] | None = None,
                limit: int | None = None) -> Iterator[tuple[str | None, _Row, bool]]:
    """``(key, row, finished)`` for the rows a clean list keeps (relabelled), at most ``limit`` of them.

    Shared by every streamed source (TSV, RecordIO) so the clean list, the resume set and the limit mean the same
    thing everywhere; ``finished`` marks keys already in ``skip`` (reported, not re-aligned). A row without a key
    (damaged before its name could be read) passes through uncounted: it cannot be matched, but must be reported.
    """
    taken = 0
    for key, row in rows:
        if key is None:
            yield key, row, False
            continue
        if keep is not None:
            if not keep.contains(key):
                continue
            key = keep.relabel(key)
        if limit is not None and taken >= limit:
            return
        taken += 1
        yield key, row, skip is not None and key in skip
