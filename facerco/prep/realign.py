"""Re-align an existing insightface RecordIO dataset (e.g. one aligned with another template or detector).

Every image record is decoded, detected and warped again into ``OUT/<class:07d>/<key:09d>.jpg`` (class names from the
dataset's manifest when it has one), resumable, ready for ``facerco pack``. Images of an aligned dataset are
112x112 crops in which dlib's HOG detector rarely fires without upsampling, so by default the detector gets the face
box HOG reports on ArcFace-aligned crops (``ALIGNED_FACE_BOX_112``, median over 146 aligned LFW faces) as a hint:
the dlib backend then runs its landmark model in that box when nothing is detected.

A record that cannot be read (broken part header) or whose payload is not an image is listed in
``OUT/bad_rows.csv`` and skipped (``strict``: an error), as for every stream (:mod:`facerco.prep.stream`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from facerco.data.recordio import RecordIOError
from facerco.prep.clean import CleanList, read_clean_list
from facerco.prep.detectors import DetectorSpec
from facerco.prep.stream import BadRow, StreamItem, align_stream, bad_rows_summary, finished_keys, select_rows
from facerco.utils.io import write_json

__all__ = ["ALIGNED_FACE_BOX_112", "rec_items", "realign_rec"]

# dlib HOG box (x1, y1, x2, y2) on an ArcFace-aligned 112x112 crop (median; upsample 1).
ALIGNED_FACE_BOX_112 = (21.0, 30.0, 97.0, 106.0)


def _hint_fraction() -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = ALIGNED_FACE_BOX_112
    return (x1 / 112, y1 / 112, (x2 - x1) / 112, (y2 - y1) / 112)


def rec_items(
    rec_dir: str | os.PathLike[str],
    keep: CleanList | None = None,
    skip: set[str] | None = None,
    use_hint: bool = True,
    limit: int | None = None,
) -> Iterator[StreamItem | BadRow]:
    """Image records of a dataset folder as stream items named ``<class>/<key:09d>.jpg`` (unreadable ones as
    :class:`BadRow`)."""
    from facerco.data.datasets import RecordDataset

    ds = RecordDataset(rec_dir)
    names = ds.classes if getattr(ds, "classes", None) else None
    hint = _hint_fraction() if use_hint else None
    def keyed() -> Iterator[tuple[str, int]]:
        for i in range(len(ds)):
            label = int(ds.labels[i])
            yield f"{names[label] if names else f'{label:07d}'}/{int(ds.keys[i]):09d}.jpg", i

    rec = str(ds.reader.path)
    for key, i, finished in select_rows(keyed(), keep, skip, limit):
        if finished:
            yield StreamItem(key, b"")
            continue
        try:
            data = ds.read_bytes(i)
        except RecordIOError as exc:
            yield BadRow(rec, None, str(exc).removeprefix(f"{rec}: "), key)
            continue
        yield StreamItem(key, data, hint, origin=(rec, None))


def realign_rec(
    rec_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    spec: DetectorSpec,
    *,
    clean_list: str | os.PathLike[str] | None = None,
    size: int = 112,
    workers: int = 1,
    use_hint: bool = True,
    limit: int | None = None,
    progress: bool = True,
    strict: bool = False,
) -> dict:
    """Re-align every image of ``rec_dir`` into the identity folder ``out_dir``; writes ``realign_report.json``
    and, for damaged records, ``bad_rows.csv`` (``strict``: the first one is an error instead)."""
    keep = read_clean_list(clean_list) if clean_list is not None else None
    items = rec_items(rec_dir, keep, finished_keys(out_dir), use_hint, limit)
    counts = align_stream(items, out_dir, spec, size=size, workers=workers, progress=progress, strict=strict)
    summary = {
        "source": str(rec_dir),
        "clean_list": str(clean_list) if clean_list else None,
        **counts,
        **bad_rows_summary(out_dir),
        "detector": spec.name,
        "detector_options": spec.options,
    }
    write_json(Path(out_dir) / "realign_report.json", summary)
    return summary
