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
from facerco.prep.stream import StreamItem, align_stream, finished_keys, select_rows
from facerco.utils.io import write_json

__all__ = ["TsvRow", "iter_tsv", "decode_rectangle", "tsv_items", "convert_tsv"]


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
    """FaceRectangle column -> (left, top, width, height)."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"{where}: FaceRectangle is not base64 ({exc})") from exc
    if len(raw) != 16:
        raise ValueError(f"{where}: FaceRectangle decodes to {len(raw)} bytes, expected 16 (4 float32)")
    return struct.unpack("<4f", raw)


def _safe(text: bytes, what: str, where: str) -> str:
    value = text.decode("utf-8", errors="strict").strip()
    if not value or "/" in value or value in (".", "..") or "\\" in value:
        raise ValueError(f"{where}: {what} {value!r} cannot be used as a file name")
    return value


def iter_tsv(path: str | os.PathLike[str]) -> Iterator[TsvRow]:
    """Stream the rows of an MS-Celeb TSV (``.tsv`` or ``.tsv.gz``); errors name the file and line."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: TSV file not found")
    opener = gzip.open if p.suffix == ".gz" else open
    with opener(p, "rb") as handle:
        for line_no, line in enumerate(handle, start=1):
            line = line.rstrip(b"\r\n")
            if not line:
                continue
            parts = line.split(b"\t")
            where = f"{p}: line {line_no}"
            if len(parts) == 7:
                mid, rank, _, _, face_id, rect, data = parts
                yield TsvRow(
                    _safe(mid, "MID", where),
                    _safe(rank, "rank", where),
                    _safe(face_id, "FaceID", where),
                    rect,
                    data,
                    line_no,
                )
            elif len(parts) == 6:
                mid, _, rank, _, _, data = parts
                yield TsvRow(_safe(mid, "MID", where), _safe(rank, "rank", where), None, None, data, line_no)
            else:
                raise ValueError(f"{where}: {len(parts)} tab-separated columns; expected 7 (faces) or 6 (thumbnails)")


def tsv_items(
    path: str | os.PathLike[str],
    keep: CleanList | None = None,
    skip: set[str] | None = None,
    use_hint: bool = True,
    limit: int | None = None,
) -> Iterator[StreamItem]:
    """TSV rows as :class:`StreamItem`, filtered by a clean list and by already finished keys."""
    for key, row, finished in select_rows(((r.key, r) for r in iter_tsv(path)), keep, skip, limit):
        if finished:
            yield StreamItem(key, b"")  # reported already; align_stream counts and skips it
            continue
        hint = decode_rectangle(row.rect_b64, f"{path}: line {row.line}") if use_hint and row.rect_b64 else None
        yield StreamItem(key, row.data, hint, b64=True, source_key=row.key)


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
) -> dict:
    """Decode (``spec=None``) or align the images of an MS-Celeb TSV into ``out_dir/<MID>/<rank>-<FaceID>.jpg``.

    Resumable; writes ``align_report.csv`` and ``msceleb_report.json`` in ``out_dir``. Pack the result with
    ``facerco pack out_dir DATASET``.
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
    )
    summary = {
        "tsv": str(tsv),
        "clean_list": str(clean_list) if clean_list else None,
        **counts,
        "detector": spec.name if spec else None,
        "detector_options": spec.options if spec else None,
    }
    write_json(Path(out_dir) / "msceleb_report.json", summary)
    return summary
