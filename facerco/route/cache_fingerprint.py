"""What an anchor cache was built from: the dataset fingerprint, and the differences a mismatch reports.

A cache's rows depend on the dataset and the network input as much as on the teacher, so the manifest records
(:func:`dataset_fingerprint`):

- the dataset: number of items, the label vector, and the image bytes (``.rec``: record keys and offsets, the file
  size and a hash of sampled records' bytes; folders: every relative path and file size plus a hash of sampled
  files' bytes; other datasets: a hash of sampled item tensors);
- the network input: its size and the transform (family, normalization, whether it flips at random).

The writer refuses to resume, and the reader to serve, a cache whose record differs from the dataset at hand;
:func:`fingerprint_differences` names what changed ('input size differs (cache 112x112, dataset 96x96)').
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from facerco.route.cache_format import short

__all__ = ["SAMPLED_IMAGES", "dataset_fingerprint", "images_fingerprint", "transform_fingerprint",
           "fingerprint_differences"]

SAMPLED_IMAGES = 64  # images whose bytes are hashed: re-aligned or re-encoded data changes nearly all of them


def _sha(parts: Iterable[bytes]) -> str:
    """sha256 over length-prefixed parts, so moving a boundary between parts changes the digest."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return digest.hexdigest()


def _sample_indices(n: int, count: int = SAMPLED_IMAGES) -> list[int]:
    """``count`` evenly spaced indices over ``range(n)``, first and last included (all of them when n <= count)."""
    if n <= 0:
        return []
    return sorted({int(round(x)) for x in np.linspace(0, n - 1, min(n, count))})


def _labels_sha256(dataset: Any) -> str:
    labels = getattr(dataset, "labels", None)
    if labels is None:
        labels = [int(dataset[i][1]) for i in range(len(dataset))]
    return hashlib.sha256(np.ascontiguousarray(np.asarray(labels, dtype=np.int64)).tobytes()).hexdigest()


def images_fingerprint(dataset: Any, samples: int = SAMPLED_IMAGES) -> dict[str, Any]:
    """What identifies the image bytes of ``dataset`` without reading all of them.

    ``.rec`` datasets: keys and offsets of the image records, the file size and a hash of ``samples`` records'
    bytes. Identity folders: every relative path with its size and a hash of ``samples`` files' bytes. Any other
    dataset: a hash of ``samples`` item tensors (float32), which also covers its transform.
    """
    from facerco.data.datasets import FolderDataset, RecordDataset

    picks = _sample_indices(len(dataset), samples)
    if isinstance(dataset, RecordDataset):
        reader = dataset.reader
        keys = np.ascontiguousarray(np.asarray(dataset.keys, dtype=np.int64))
        offsets = np.ascontiguousarray(reader.offsets[reader.positions(keys)].astype(np.int64))
        return {"kind": "rec", "file_bytes": int(reader.size),
                "records_sha256": _sha([keys.tobytes(), offsets.tobytes()]),
                "samples": len(picks), "sample_sha256": _sha(dataset.read_bytes(i) for i in picks)}
    if isinstance(dataset, FolderDataset):
        listing = "".join(f"{Path(p).relative_to(dataset.root).as_posix()}\t{Path(p).stat().st_size}\n"
                          for p in dataset.paths)
        return {"kind": "folder", "files_sha256": _sha([listing.encode()]), "samples": len(picks),
                "sample_sha256": _sha(dataset.read_bytes(i) for i in picks)}
    return {"kind": "items", "samples": len(picks),
            "sample_sha256": _sha(np.ascontiguousarray(np.asarray(dataset[i][0], dtype=np.float32)).tobytes()
                                  for i in picks)}


def transform_fingerprint(transform: Any) -> dict[str, Any]:
    """Family, normalization and random flip of a dataset transform; the input size is recorded separately.

    The normalization is measured (pixel values 0 and 255 through :func:`facerco.data.transforms.normalize` with the
    transform's mean and std), not copied from a docstring, so a change of convention between facerco versions
    shows. The transform itself is not called: a random-flip transform would consume a draw of the training RNG.
    """
    from facerco.data.transforms import EvalTransform, normalize

    if transform is None:
        return {"type": "none"}
    if not isinstance(transform, EvalTransform):
        return {"type": f"{type(transform).__module__}.{type(transform).__qualname__}"}
    levels = normalize(np.array([[[0, 0, 0], [255, 255, 255]]], dtype=np.uint8), transform.mean, transform.std)
    return {"type": "facerco decode + resize_square + normalize",
            "normalize": [round(float(levels[0, 0, 0]), 6), round(float(levels[0, 0, 1]), 6)],
            "random_flip": bool(getattr(transform, "flip", False))}


def _input_size(dataset: Any) -> list[int]:
    """(H, W) the network receives: the facerco transform's size, else the first item's shape."""
    from facerco.data.transforms import EvalTransform

    transform = getattr(dataset, "transform", None)
    if isinstance(transform, EvalTransform):
        return list(transform.input_size)
    if len(dataset) == 0:
        return []
    return [int(s) for s in np.shape(dataset[0][0])[-2:]]


def dataset_fingerprint(dataset: Any) -> dict[str, Any]:
    """Everything a cache's rows depend on besides the teacher: items, labels, image bytes, input size, transform."""
    return {"num_items": int(len(dataset)), "labels_sha256": _labels_sha256(dataset),
            "images": images_fingerprint(dataset), "input_size": _input_size(dataset),
            "transform": transform_fingerprint(getattr(dataset, "transform", None))}


_IMAGE_FIELDS = {
    "kind": "image source",
    "file_bytes": "record file size",
    "records_sha256": "record layout (keys/offsets: a re-packed or re-aligned .rec)",
    "files_sha256": "list of image files and sizes",
    "samples": "number of sampled images",
    "sample_sha256": "content of the sampled images (hash of their bytes)",
}
_DATASET_FIELDS = {
    "num_items": "number of images",
    "labels_sha256": "label vector (another dataset or order)",
    "images": "images",
    "input_size": "input size",
    "transform": "transform",
}


def fingerprint_differences(cached: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """One phrase per field that changed: 'input size differs (cache 112x112, dataset 96x96)'.

    Another number of images explains every other difference, so it is reported alone.
    """
    out = []
    keys = list(_DATASET_FIELDS) + sorted((set(cached) | set(current)) - set(_DATASET_FIELDS))
    if cached.get("num_items") != current.get("num_items"):
        keys = ["num_items"]
    for key in keys:
        a, b = cached.get(key), current.get(key)
        if a == b:
            continue
        if key == "images" and isinstance(a, dict) and isinstance(b, dict) and a.get("kind") == b.get("kind"):
            for sub in [k for k in _IMAGE_FIELDS if a.get(k) != b.get(k)]:
                out.append(f"{_IMAGE_FIELDS[sub]} differs (cache {short(a.get(sub))}, dataset {short(b.get(sub))})")
        elif key == "images":
            kinds = [x.get("kind") if isinstance(x, dict) else x for x in (a, b)]
            out.append(f"image source differs (cache {kinds[0]}, dataset {kinds[1]})")
        elif isinstance(a, dict) and isinstance(b, dict):
            subs = [f"{k} (cache {short(a.get(k))}, dataset {short(b.get(k))})" for k in sorted(set(a) | set(b))
                    if a.get(k) != b.get(k)]
            out.append(f"{_DATASET_FIELDS.get(key, key)} differs: {', '.join(subs)}")
        else:
            out.append(f"{_DATASET_FIELDS.get(key, key)} differs (cache {short(a)}, dataset {short(b)})")
    return out
