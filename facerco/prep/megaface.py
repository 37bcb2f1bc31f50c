"""Raw FaceScrub + MegaFace distractor photos -> the aligned "test pack" layout ``eval/megaface/`` reads.

Output (see eval/megaface/README.md): ``OUT/facescrub_images/<Identity>/<image>.png`` (lossless probes),
``OUT/megaface_images/<same relative path>.jpg`` and ``OUT/megaface_lst`` (one distractor per line, relative to
``megaface_images/``). Face boxes shipped with the data are used as detection hints: a sidecar ``<image>.json``
holding ``{"bounding_box": {"x", "y", "width", "height"}}`` (the MegaFace distractor metadata) and, for FaceScrub,
an optional actors/actresses list (tab-separated with a header: ``name``, ``image_id`` or ``face_id``, ``bbox`` as
``x1,y1,x2,y2``) whose images are named ``<name>_<face_id>.<ext>`` as the usual download scripts do.

A photo that cannot be read or decoded, or whose sidecar is damaged, is listed in ``<tree>/bad_rows.csv`` and
skipped (``strict``: an error), as for every stream (:mod:`facerco.prep.stream`).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from pathlib import Path

from facerco.prep.align import list_images
from facerco.prep.detectors import DetectorSpec
from facerco.prep.stream import BadRow, StreamItem, align_stream, bad_rows_summary, finished_keys
from facerco.utils.io import atomic_write_text, write_json

__all__ = ["read_sidecar_box", "read_facescrub_boxes", "tree_items", "build_megaface_pack"]


def read_sidecar_box(image: Path) -> tuple[float, float, float, float] | None:
    """``(left, top, width, height)`` from ``<image>.json`` (MegaFace metadata), or None."""
    side = image.with_name(image.name + ".json")
    if not side.is_file():
        return None
    try:
        box = json.loads(side.read_text(encoding="utf-8")).get("bounding_box")
        return (float(box["x"]), float(box["y"]), float(box["width"]), float(box["height"])) if box else None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{side}: unreadable bounding_box ({exc})") from exc


def read_facescrub_boxes(path: str | os.PathLike[str]) -> dict[str, tuple[float, float, float, float]]:
    """FaceScrub list -> ``{"<name>_<face_id>": (left, top, width, height)}`` (names with spaces as underscores)."""
    out = {}
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        id_col = "face_id" if "face_id" in (reader.fieldnames or []) else "image_id"
        for line_no, row in enumerate(reader, start=2):
            try:
                x1, y1, x2, y2 = (float(v) for v in row["bbox"].split(","))
                out[f"{row['name'].replace(' ', '_')}_{row[id_col]}"] = (x1, y1, x2 - x1, y2 - y1)
            except (KeyError, ValueError, AttributeError) as exc:
                raise ValueError(f"{path}: line {line_no}: needs name, {id_col} and bbox x1,y1,x2,y2 ({exc})") from exc
    return out


def tree_items(
    root: Path, suffix: str, skip: set[str], boxes: dict | None = None, prefix: str = ""
) -> Iterator[StreamItem | BadRow]:
    """Images under ``root`` as stream items keyed ``prefix + <relative path with suffix>``; an unreadable photo
    or sidecar as a :class:`BadRow`."""
    for rel in list_images(root):
        key = prefix + str(Path(rel).with_suffix(suffix).as_posix())
        if key in skip:
            yield StreamItem(key, b"")
            continue
        yield _tree_item(root / rel, rel, key, boxes)


def _tree_item(path: Path, rel: str, key: str, boxes: dict | None) -> StreamItem | BadRow:
    """One photo with its box hint; a damaged sidecar or an unreadable file is a bad row naming that file."""
    side = path.with_name(path.name + ".json")
    try:
        hint = read_sidecar_box(path)
    except ValueError as exc:
        return BadRow(str(side), None, str(exc).removeprefix(f"{side}: "), key)
    try:
        data = path.read_bytes()
    except OSError as exc:
        return BadRow(str(path), None, exc.strerror or str(exc), key)
    if hint is None and boxes:
        hint = boxes.get(Path(rel).stem)
    return StreamItem(key, data, hint, source_key=rel, origin=(str(path), None))


def build_megaface_pack(
    facescrub: str | os.PathLike[str] | None,
    megaface: str | os.PathLike[str] | None,
    out_dir: str | os.PathLike[str],
    spec: DetectorSpec,
    *,
    facescrub_list: str | os.PathLike[str] | None = None,
    size: int = 112,
    workers: int = 1,
    progress: bool = True,
    strict: bool = False,
) -> dict:
    """Align the probe and/or distractor trees into ``out_dir`` (resumable); writes ``megaface_lst`` and a report.

    Damaged photos or sidecars are listed in ``<tree>/bad_rows.csv`` and skipped; ``strict`` stops at the first.
    """
    out = Path(out_dir)
    summary: dict = {"detector": spec.name, "detector_options": spec.options}
    run = {"size": size, "workers": workers, "progress": progress, "strict": strict}
    if facescrub is not None:
        dst = out / "facescrub_images"
        boxes = read_facescrub_boxes(facescrub_list) if facescrub_list else None
        items = tree_items(Path(facescrub), ".png", finished_keys(dst), boxes)
        summary["facescrub"] = {**align_stream(items, dst, spec, **run), **bad_rows_summary(dst)}
    if megaface is not None:
        dst = out / "megaface_images"
        items = tree_items(Path(megaface), ".jpg", finished_keys(dst))
        summary["megaface"] = {**align_stream(items, dst, spec, **run), **bad_rows_summary(dst)}
        listed = sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*.jpg"))
        atomic_write_text(out / "megaface_lst", "".join(f"{p}\n" for p in listed))
        summary["megaface"]["listed"] = len(listed)
    write_json(out / "megaface_pack_report.json", summary)
    return summary
