"""The original MS-Celeb-1M TSV release (FORMATS.md section 1b), streamed line by line.

Layouts: the faces files (``MsCelebV1-Faces-Aligned*.tsv`` and the cropped variant) have 7 columns -- Freebase MID,
ImageSearchRank, ImageURL, PageURL, FaceID, FaceRectangle (base64 of 4 little-endian float32: left, top, width,
height), FaceData (base64 JPEG); the thumbnails file has 6 -- MID, query name, rank, ImageURL, PageURL, base64 image.
Images are named ``<MID>/<ImageSearchRank>-<FaceID>.jpg`` (``<MID>/<rank>.jpg`` for thumbnails), the usual naming
of decoded MS-Celeb folders, which clean lists refer to.

The file is read one line at a time (a line holds one image, tens of kB) and the base64 payload is decoded in the
worker that aligns it, so memory does not grow with the file (~250 GB for the full release). The face rectangle is
passed to the detector as a hint: it picks among several detected faces, and the dlib backend runs its landmark
model inside it when the HOG detector finds nothing. A rectangle that does not fit the decoded image (some releases
give it in the original photo's coordinates) is ignored. With a clean list, lines whose image is not listed are
skipped before their payload is touched, and listed images are renamed to the list's label when it has one.

A damaged line (wrong column count, a MID/rank/FaceID unusable as a file name, a FaceRectangle that is not base64
or not 16 bytes, an image that is not base64 or not decodable) does not end a conversion: :func:`scan_tsv` yields
it as a :class:`~facerco.prep.stream.BadRow`, and :func:`convert_tsv` lists it in ``OUT/bad_rows.csv`` with file,
line and reason (or, with ``strict``, stops there). :func:`iter_tsv` is the strict reader for library use.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from facerco.prep.clean import CleanList, read_clean_list
from facerco.prep.detectors import DetectorSpec
from facerco.prep.stream import BadRow, StreamItem, align_stream, bad_rows_summary, finished_keys, select_rows
from facerco.utils.io import write_json

__all__ = ["TsvRow", "iter_tsv", "scan_tsv", "decode_rectangle", "tsv_items", "convert_tsv"]


@dataclass(frozen=True)
class TsvRow:
    """One TSV line; ``data`` stays base64 text until a worker decodes it."""

    mid: str
    rank: str
    face_id: str | None
    rect_b64: bytes | None
    data: bytes
    line: int

    @property
    def key(self) -> str:
        name = f"{self.rank}-{self.face_id}" if self.face_id is not None else self.rank
        return f"{self.mid}/{name}.jpg"


def decode_rectangle(text: bytes, where: str = "") -> tuple[float, float, float, float]:
    """FaceRectangle column -> (left, top, width, height); ``where`` (file and line) prefixes the error."""
    prefix = f"{where}: " if where else ""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"{prefix}FaceRectangle is not base64 ({exc})") from exc
    if len(raw) != 16:
        raise ValueError(f"{prefix}FaceRectangle decodes to {len(raw)} bytes, expected 16 (4 float32)")
    return struct.unpack("<4f", raw)


def _safe(text: bytes, what: str) -> str:
    value = text.decode("utf-8", errors="strict").strip()
    if not value or "/" in value or value in (".", "..") or "\\" in value:
        raise ValueError(f"{what} {value!r} cannot be used as a file name")
    return value


def _parse(parts: list[bytes], line_no: int) -> TsvRow:
    """One line's columns -> a row; ValueError (without the location) when the line is damaged."""
    if len(parts) == 7:
        mid, rank, _, _, face_id, rect, data = parts
        return TsvRow(_safe(mid, "MID"), _safe(rank, "rank"), _safe(face_id, "FaceID"), rect, data, line_no)
    if len(parts) == 6:
        mid, _, rank, _, _, data = parts
        return TsvRow(_safe(mid, "MID"), _safe(rank, "rank"), None, None, data, line_no)
    raise ValueError(f"{len(parts)} tab-separated columns; expected 7 (faces) or 6 (thumbnails)")


def scan_tsv(path: str | os.PathLike[str]) -> Iterator[TsvRow | BadRow]:
    """Stream the rows of an MS-Celeb TSV (``.tsv`` or ``.tsv.gz``); a damaged line comes as a :class:`BadRow`."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: TSV file not found")
    opener = gzip.open if p.suffix == ".gz" else open
    with opener(p, "rb") as handle:
        for line_no, line in enumerate(handle, start=1):
            line = line.rstrip(b"\r\n")
            if not line:
                continue
            try:
                yield _parse(line.split(b"\t"), line_no)
            except ValueError as exc:  # UnicodeDecodeError included
                yield BadRow(str(p), line_no, str(exc))


def iter_tsv(path: str | os.PathLike[str]) -> Iterator[TsvRow]:
    """Stream the rows of an MS-Celeb TSV; the first damaged line is a ValueError naming the file and line."""
    for row in scan_tsv(path):
        if isinstance(row, BadRow):
            raise ValueError(row.describe())
        yield row


def tsv_items(
    path: str | os.PathLike[str],
    keep: CleanList | None = None,
    skip: set[str] | None = None,
    use_hint: bool = True,
    limit: int | None = None,
) -> Iterator[StreamItem]:
    """TSV rows as :class:`StreamItem`, filtered by a clean list and by already finished keys; damaged rows as
    :class:`BadRow` (the face rectangle is checked only when it is used, i.e. with ``use_hint``)."""
    rows = ((None if isinstance(r, BadRow) else r.key, r) for r in scan_tsv(path))
    for key, row, finished in select_rows(rows, keep, skip, limit):
        if isinstance(row, BadRow):
            yield row
        elif finished:
            yield StreamItem(key, b"")  # reported already; align_stream counts and skips it
        else:
            yield _item(str(path), key, row, use_hint)


def _item(path: str, key: str, row: TsvRow, use_hint: bool) -> StreamItem | BadRow:
    hint = None
    if use_hint and row.rect_b64:
        try:
            hint = decode_rectangle(row.rect_b64)
        except ValueError as exc:
            return BadRow(path, row.line, str(exc), key)
    return StreamItem(key, row.data, hint, b64=True, source_key=row.key, origin=(path, row.line))


def convert_tsv(
    tsv: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    spec: DetectorSpec | None,
    *,
    clean_list: str | os.PathLike[str] | None = None,
    size: int = 112,
    workers: int = 1,
    use_hint: bool = True,
    limit: int | None = None,
    progress: bool = True,
    strict: bool = False,
) -> dict:
    """Decode (``spec=None``) or align the images of an MS-Celeb TSV into ``out_dir/<MID>/<rank>-<FaceID>.jpg``.

    Resumable; writes ``align_report.csv``, ``bad_rows.csv`` (damaged lines, skipped) and ``msceleb_report.json``
    in ``out_dir``. With ``strict`` the first damaged line raises :class:`~facerco.prep.stream.BadRowError`. Pack
    the result with ``facerco pack out_dir DATASET``.
    """
    keep = read_clean_list(clean_list) if clean_list is not None else None
    counts = align_stream(
        tsv_items(tsv, keep, finished_keys(out_dir), use_hint, limit),
        out_dir,
        spec,
        size=size,
        policy="largest",
        workers=workers,
        progress=progress,
        strict=strict,
    )
    summary = {
        "tsv": str(tsv),
        "clean_list": str(clean_list) if clean_list else None,
        **counts,
        **bad_rows_summary(out_dir),
        "detector": spec.name if spec else None,
        "detector_options": spec.options if spec else None,
    }
    write_json(Path(out_dir) / "msceleb_report.json", summary)
    return summary
