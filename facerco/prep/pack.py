"""Pack an aligned folder (one sub-folder per identity) into an insightface RecordIO dataset.

Output: ``train.rec``, ``train.idx``, ``property`` (``num_classes,H,W``) and ``pack.json`` (the manifest: source,
identity names in label order, counts). Classes are the sorted sub-folder names and images are sorted within each
class, so packing the same folder twice gives identical files. A JPEG already at the target size is copied byte for
byte (after a decode check); anything else is decoded, resized and encoded from the BGR array at JPEG quality 95, as
insightface tools do. Files are written under temporary names and renamed only when everything succeeded.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from facerco.data.datasets import list_identity_folder
from facerco.data.recordio import InsightfaceWriter
from facerco.data.transforms import resize_square
from facerco.utils.io import write_json

__all__ = ["PackResult", "pack_folder", "prepare_image", "OUTPUT_FILES"]

OUTPUT_FILES = ("train.rec", "train.idx", "property")
MANIFEST = "pack.json"


@dataclass
class PackResult:
    """What a pack wrote."""

    out_dir: str
    num_images: int
    num_identities: int
    copied: int
    reencoded: int
    image_size: tuple[int, int]


def _is_jpeg(data: bytes) -> bool:
    return data[:3] == b"\xff\xd8\xff"


def prepare_image(path: Path, size: int, quality: int = 95) -> tuple[bytes, bool, tuple[int, int]]:
    """The bytes to store for one image: (data, copied_as_is, (height, width)).

    Args:
        path: image file.
        size: target side; 0 keeps every image at its own size (JPEGs are then always copied).
        quality: JPEG quality when re-encoding.
    """
    data = path.read_bytes()
    img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR) if data else None
    if img is None:
        raise ValueError(f"{path}: not a decodable image ({len(data)} bytes)")
    h, w = img.shape[:2]
    if _is_jpeg(data) and (size == 0 or (h, w) == (size, size)):
        return data, True, (h, w)
    if size:
        img = resize_square(img, size)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])  # img is BGR, as in insightface
    if not ok:  # pragma: no cover
        raise ValueError(f"{path}: JPEG encoding failed")
    return buf.tobytes(), False, img.shape[:2]


def _temp_name(out: Path, name: str) -> Path:
    return out / f".{name}.{os.getpid()}.tmp"


def pack_folder(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    size: int = 112,
    quality: int = 95,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> PackResult:
    """Pack ``src`` into ``out`` (see module docstring).

    Args:
        src: aligned folder, one sub-folder per identity.
        out: output dataset folder (created).
        size: image side stored in the records; 0 keeps original sizes.
        quality: JPEG quality when an image must be re-encoded.
        workers: decode/encode threads (default: CPU count, at most 8).
        overwrite: replace an existing dataset in ``out``.
        progress: show a progress bar.

    Raises:
        FileExistsError: ``out`` already holds a dataset and ``overwrite`` is False.
        ValueError: an unreadable image (the message names it) or no identities.
    """
    src_dir, out_dir = Path(src), Path(out)
    if size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    classes, paths, labels = list_identity_folder(src_dir)
    existing = [name for name in (*OUTPUT_FILES, MANIFEST) if (out_dir / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{out_dir}: already holds {', '.join(existing)} (pass --overwrite to replace)")
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = {name: _temp_name(out_dir, name) for name in OUTPUT_FILES}
    copied = reencoded = 0
    shapes: set[tuple[int, int]] = set()
    try:
        with InsightfaceWriter(tmp["train.rec"], tmp["train.idx"], None, num_classes=len(classes)) as writer:
            for label, (data, was_copied, shape) in zip(labels, _prepared(paths, size, quality, workers, progress)):
                writer.add(data, int(label))
                shapes.add(shape)
                copied += was_copied
                reencoded += not was_copied
        image_size = (size, size) if size else max(shapes)
        tmp["property"].write_text(f"{len(classes)},{image_size[0]},{image_size[1]}\n", encoding="utf-8")
        for name in OUTPUT_FILES:
            os.replace(tmp[name], out_dir / name)
    finally:
        for path in tmp.values():
            if path.exists():
                path.unlink()
    result = PackResult(str(out_dir), len(paths), len(classes), copied, reencoded, tuple(image_size))
    manifest = {
        "format_version": 1,
        "source": str(src_dir.resolve()),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "size": size,
        "quality": quality,
        "mixed_sizes": sorted(shapes) if len(shapes) > 1 else [],
        **asdict(result),
        "identities": classes,
    }
    write_json(out_dir / MANIFEST, manifest)
    return result


def _prepared(
    paths: list[Path], size: int, quality: int, workers: int | None, progress: bool
) -> Iterator[tuple[bytes, bool, tuple[int, int]]]:
    """Prepared images in input order; decoding runs in threads (OpenCV releases the GIL)."""
    n = workers or min(8, os.cpu_count() or 1)
    bar = tqdm(total=len(paths), unit="img", desc="pack", disable=not progress)
    with ThreadPoolExecutor(max_workers=n) as pool:
        try:
            for chunk_start in range(0, len(paths), 256):  # bounded look-ahead keeps memory flat on huge folders
                chunk = paths[chunk_start : chunk_start + 256]
                for item in pool.map(prepare_image, chunk, [size] * len(chunk), [quality] * len(chunk)):
                    bar.update(1)
                    yield item
        finally:
            bar.close()
