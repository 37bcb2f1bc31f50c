"""Anchor-feature cache: every anchor's embedding of every training image, unflipped and flipped.

Layout of a cache directory::

    manifest.json                 format, dataset fingerprint, input, shard size, per anchor: dim, point sha256, shards
    <anchor>/shard_00000.npy      float16 array (rows, 2, D): [:, 0] the image, [:, 1] its horizontal flip

Rows are L2-normalized in float32 before the cast to float16 (manifest ``"rows": "l2-normalized"``): every loss
that reads the cache normalizes the teacher embedding first (mimicking, ``s·cos`` KD logits, ensembles), so only
the direction matters, and a raw embedding of a large teacher can exceed float16's range (65,504) and become
``inf``. Caches written before this (no ``rows`` field) hold raw rows; resuming one keeps writing raw rows, so an
anchor never mixes the two.

Shards are written whole to a temporary file and renamed (atomic), and the manifest is rewritten after each
shard, so a killed job resumes at the first missing shard. Every shard's sha256 is in the manifest and checked
when the cache is opened. Reading is memory-mapped: the student loop fetches targets by dataset index and the
flip bit of the sample (the engine sampler's KeyedDataset keys ``[index, flip]``) instead of running the teacher.

What a cache is valid for is recorded (manifest version 2) and checked by :meth:`AnchorCache.check_dataset`:

- the dataset: number of items, the label vector, and the image bytes (``.rec``: record keys and offsets, the file
  size and a hash of sampled records' bytes; folders: every relative path and file size plus a hash of sampled
  files' bytes; other datasets: a hash of sampled item tensors);
- the network input: its size, the transform (family, normalization, whether it flips at random) and the flip
  convention of the ``[:, 1]`` rows;
- the teacher: each anchor's route-point sha256, compared with the route the student follows.

A mismatch raises ValueError naming the manifest and what changed. Version 1 caches (labels only) are refused:
what they were built from cannot be verified.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from facerco.utils.io import atomic_path, read_json, sha256_file, write_json

__all__ = [
    "CACHE_FORMAT",
    "CACHE_VERSION",
    "FLIP_CONVENTION",
    "dataset_fingerprint",
    "images_fingerprint",
    "transform_fingerprint",
    "build_cache",
    "teacher_input_size",
    "resolve_anchors",
    "route_anchors",
    "AnchorCache",
]

CACHE_FORMAT = "facerco-anchor-cache"
CACHE_VERSION = 2
FLIP_CONVENTION = "horizontal: torch.flip(x, dims=[-1]) of the normalized (N, C, H, W) network input"
SAMPLED_IMAGES = 64  # images whose bytes are hashed: re-aligned or re-encoded data changes nearly all of them
_SAFE = re.compile(r"^[A-Za-z0-9_.\-]+$")


# ---------------------------------------------------------------------------------------------------------------
# What a cache was built from
# ---------------------------------------------------------------------------------------------------------------


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

    The normalization is measured (pixel values 0 and 255 through :func:`facerco.data.transforms.normalize`), not
    copied from a docstring, so a change of convention between facerco versions shows. The transform itself is not
    called: a random-flip transform would consume a draw of the training RNG.
    """
    from facerco.data.transforms import EvalTransform, normalize

    if transform is None:
        return {"type": "none"}
    if not isinstance(transform, EvalTransform):
        return {"type": f"{type(transform).__module__}.{type(transform).__qualname__}"}
    levels = normalize(np.array([[[0, 0, 0], [255, 255, 255]]], dtype=np.uint8))
    return {"type": "facerco decode + resize_square + normalize",
            "normalize": [round(float(levels[0, 0, 0]), 6), round(float(levels[0, 0, 1]), 6)],
            "random_flip": bool(getattr(transform, "flip", False))}


def _input_size(dataset: Any) -> list[int]:
    """(H, W) the network receives: the facerco transform's size, else the first item's shape."""
    from facerco.data.transforms import EvalTransform

    transform = getattr(dataset, "transform", None)
    if isinstance(transform, EvalTransform):
        return [transform.size, transform.size]
    if len(dataset) == 0:
        return []
    return [int(s) for s in np.shape(dataset[0][0])[-2:]]


def dataset_fingerprint(dataset: Any) -> dict[str, Any]:
    """Everything a cache's rows depend on besides the teacher: items, labels, image bytes, input size, transform."""
    return {"num_items": int(len(dataset)), "labels_sha256": _labels_sha256(dataset),
            "images": images_fingerprint(dataset), "input_size": _input_size(dataset),
            "transform": transform_fingerprint(getattr(dataset, "transform", None))}


def _short(value: Any) -> str:
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12] + "…"
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return f"{value[0]}x{value[1]}"
    return str(value)


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


def _differences(cached: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
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
                out.append(f"{_IMAGE_FIELDS[sub]} differs (cache {_short(a.get(sub))}, dataset {_short(b.get(sub))})")
        elif key == "images":
            kinds = [x.get("kind") if isinstance(x, dict) else x for x in (a, b)]
            out.append(f"image source differs (cache {kinds[0]}, dataset {kinds[1]})")
        elif isinstance(a, dict) and isinstance(b, dict):
            subs = [f"{k} (cache {_short(a.get(k))}, dataset {_short(b.get(k))})" for k in sorted(set(a) | set(b))
                    if a.get(k) != b.get(k)]
            out.append(f"{_DATASET_FIELDS.get(key, key)} differs: {', '.join(subs)}")
        else:
            out.append(f"{_DATASET_FIELDS.get(key, key)} differs (cache {_short(a)}, dataset {_short(b)})")
    return out


def _rebuild_hint(manifest: Mapping[str, Any], root: Path) -> str:
    meta = manifest.get("meta") or {}
    run, data = meta.get("teacher_run") or "RUN", meta.get("dataset") or "DATASET"
    return f"rebuild with `facerco cache {run} {data} --out NEW_DIR` (or delete {root} first)"


def _point_shas(route: Any) -> dict[str, str]:
    """name -> sha256 of a :class:`facerco.route.io.Route` or of a plain mapping."""
    if isinstance(route, Mapping):
        return {str(k): str(v) for k, v in route.items()}
    return {p.name: p.sha256 for p in route.points}


def _check_manifest_header(manifest: Mapping[str, Any], path: Path) -> None:
    """Refuse foreign files, old (unverifiable) versions and another flip convention, with the fix."""
    if manifest.get("format") != CACHE_FORMAT:
        raise ValueError(f"{path}: not a facerco anchor cache (format {manifest.get('format')!r})")
    version = manifest.get("version")
    if version == 1:
        raise ValueError(f"{path}: anchor cache version 1 (written by an older facerco) records only the labels, so "
                         "its image bytes, input size, transform and teacher cannot be checked; "
                         + _rebuild_hint(manifest, path.parent))
    if version != CACHE_VERSION:
        raise ValueError(f"{path}: cache version {version!r} is not supported (this facerco reads {CACHE_VERSION})")
    if manifest.get("flip") != FLIP_CONVENTION:
        raise ValueError(f"{path}: flipped rows follow {manifest.get('flip')!r}, this facerco flips by "
                         f"{FLIP_CONVENTION!r}; " + _rebuild_hint(manifest, path.parent))


# ---------------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------------


def _anchor_dir(name: str) -> str:
    if not _SAFE.match(name) or name in (".", ".."):
        raise ValueError(f"anchor name {name!r} is not usable as a folder name")
    return name


ROWS_NORMALIZED = "l2-normalized"


def _new_manifest(fingerprint: dict[str, Any], shard_size: int, meta: dict[str, Any]) -> dict[str, Any]:
    return {"format": CACHE_FORMAT, "version": CACHE_VERSION, "dtype": "float16", "rows": ROWS_NORMALIZED,
            "layout": "(rows, 2 [plain, flip], D)", "flip": FLIP_CONVENTION, "shard_size": int(shard_size),
            "dataset": fingerprint, "meta": meta, "anchors": {}}


def _open_existing(manifest_path: Path, fingerprint: dict[str, Any], shard_size: int) -> dict[str, Any]:
    """The manifest of a cache being resumed, refused when it was built from anything else."""
    manifest = read_json(manifest_path)
    _check_manifest_header(manifest, manifest_path)
    changes = _differences(manifest["dataset"], fingerprint)
    if changes:
        raise ValueError(f"{manifest_path}: built for another dataset or input: {'; '.join(changes)}; "
                         "use a new cache directory")
    if int(manifest["shard_size"]) != shard_size:
        raise ValueError(f"{manifest_path}: shard_size {manifest['shard_size']} differs from {shard_size}")
    return manifest


def _embed(model: nn.Module, images: torch.Tensor, device: torch.device,
           normalize: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The rows of one batch: the extractor's embeddings of the images and of their flips (FLIP_CONVENTION),
    L2-normalized in float32 unless the cache being resumed holds raw rows."""
    from facerco.eval.features import embed_batch

    x = images.to(device)
    rows = [embed_batch(model, x, device).float(), embed_batch(model, x, device, flip=True).float()]
    if normalize:
        rows = [torch.nn.functional.normalize(r, dim=1) for r in rows]
    return rows[0].cpu().numpy(), rows[1].cpu().numpy()


def build_cache(out_dir: str | Path, anchors: dict[str, tuple[Callable[[], nn.Module], str]], dataset: Dataset,
                shard_size: int = 65536, batch_size: int = 256, device: str | torch.device = "cpu",
                num_workers: int = 0, meta: dict[str, Any] | None = None, progress: bool = True) -> Path:
    """Write (or finish) the cache for ``anchors`` over ``dataset``.

    Args:
        out_dir: cache directory (created).
        anchors: name -> (loader returning the anchor's backbone, the route point's sha256). Loaders run only when
            the anchor still has missing shards.
        dataset: items ``(image_tensor_CHW, label, ...)`` with an eval transform (no random flip), fixed order.
        shard_size: rows per shard file.
        batch_size, device, num_workers: extraction settings.
        meta: free-form provenance stored in the manifest (``teacher_run``: the run directory, used to re-check the
            anchors' sha256 when a student gives no route; ``dataset``: its path, quoted in rebuild hints).
        progress: show a tqdm bar.

    Returns:
        the manifest path.
    """
    if shard_size <= 0:
        raise ValueError(f"shard_size must be > 0, got {shard_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    writer = _CacheWriter(out, dataset, shard_size, meta or {})
    for name, (load, point_sha) in anchors.items():
        writer.write_anchor(name, load, point_sha, batch_size, num_workers, torch.device(device), progress)
    return writer.manifest_path


class _CacheWriter:
    """One cache directory being written: its manifest (new, or resumed after a check) and the shard layout."""

    def __init__(self, out: Path, dataset: Dataset, shard_size: int, meta: dict[str, Any]) -> None:
        self.out, self.dataset, self.shard_size = out, dataset, shard_size
        self.manifest_path = out / "manifest.json"
        fingerprint = dataset_fingerprint(dataset)
        if fingerprint["transform"].get("random_flip"):
            raise ValueError(f"{self.manifest_path}: the dataset's transform flips at random; the cache needs a "
                             "fixed transform (EvalTransform) because it stores both views itself")
        if self.manifest_path.exists():
            self.manifest = _open_existing(self.manifest_path, fingerprint, shard_size)
        else:
            self.manifest = _new_manifest(fingerprint, shard_size, meta)
        self.n = fingerprint["num_items"]
        self.num_shards = (self.n + shard_size - 1) // shard_size

    def write_anchor(self, name: str, load: Callable[[], nn.Module], point_sha: str, batch_size: int,
                     num_workers: int, device: torch.device, progress: bool) -> None:
        """Embed the anchor's missing shards (none: its model is never loaded); the manifest after each shard."""
        from tqdm import tqdm

        entry = self.manifest["anchors"].get(name)
        if entry is not None and entry.get("point_sha256") != point_sha:
            raise ValueError(f"{self.manifest_path}: anchor {name}: route sha256 differs (cache "
                             f"{_short(entry.get('point_sha256'))}, route {_short(point_sha)}): it was cached from "
                             "another checkpoint; use a new cache directory")
        shards = {s["index"]: s for s in (entry or {}).get("shards", [])}
        todo = [k for k in range(self.num_shards)
                if k not in shards or not (self.out / shards[k]["file"]).is_file()]
        if entry is not None and not todo:
            return
        model = load().to(device).eval()
        folder = self.out / _anchor_dir(name)
        folder.mkdir(exist_ok=True)
        bar = tqdm(total=len(todo) * self.shard_size, desc=f"cache {name}", unit="img", disable=not progress)
        for k in todo:
            start, end = k * self.shard_size, min(self.n, (k + 1) * self.shard_size)
            rel = f"{folder.name}/shard_{k:05d}.npy"
            dim = _write_shard(self.out / rel, model, self.dataset, start, end, batch_size, num_workers, device, bar,
                               name, k, self.manifest.get("rows") == ROWS_NORMALIZED)
            shards[k] = {"index": k, "file": rel, "start": start, "end": end, "sha256": sha256_file(self.out / rel)}
            self.manifest["anchors"][name] = {"embedding_size": dim or (entry or {}).get("embedding_size", 0),
                                              "point_sha256": point_sha,
                                              "shards": [shards[i] for i in sorted(shards)],
                                              "complete": len(shards) == self.num_shards}
            write_json(self.manifest_path, self.manifest)
        bar.close()


def _write_shard(path: Path, model: nn.Module, dataset: Dataset, start: int, end: int, batch_size: int,
                 num_workers: int, device: torch.device, bar: Any, name: str, k: int, normalize: bool = True) -> int:
    """Embed rows ``start:end`` (plain and flipped) into one fp16 .npy, atomically; returns the embedding size."""
    subset = torch.utils.data.Subset(dataset, range(start, end))
    loader = DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    dim = 0
    with atomic_path(path) as tmp:
        arr = None
        row = 0
        for batch in loader:
            plain, flip = _embed(model, batch[0], device, normalize)
            if arr is None:
                dim = plain.shape[1]
                arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(end - start, 2, dim))
            arr[row:row + len(plain), 0] = plain
            arr[row:row + len(plain), 1] = flip
            row += len(plain)
            bar.update(len(plain))
        if arr is None or row != end - start:
            raise RuntimeError(f"cache {name}: shard {k} got {row} rows, expected {end - start}")
        arr.flush()
        del arr
    return dim


# ---------------------------------------------------------------------------------------------------------------
# Which anchors, at which input size (what `facerco cache RUN DATASET` embeds)
# ---------------------------------------------------------------------------------------------------------------


def teacher_input_size(route: Any) -> int:
    """Input side of the route's final point, from its checkpoint metadata (112 when it records none, and for an
    imported ONNX or dlib teacher, which cuts its own view from the student's crop)."""
    from facerco.models.checkpoint import read_checkpoint_metadata
    from facerco.route.anchors import route_points

    final = route_points(route)[-1].name
    if route.path(final).suffix.lower() != ".safetensors":  # an imported ONNX/dlib teacher cuts its own view
        return 112
    return int(read_checkpoint_metadata(route.path(final)).get("input_size", [112])[0])


def resolve_anchors(route: Any, names: Sequence[str] | None = None) -> list[str]:
    """Route point names to cache: ``names`` (``final`` is the final point), or every point when None.

    Raises ValueError naming the run and its points when a name is not a point of the route.
    """
    from facerco.route.anchors import route_points

    points = route_points(route)
    if names is None:
        chosen = [p.name for p in points]
    else:
        chosen = [points[-1].name if n == "final" else n for n in names]
    known = [p.name for p in route.points]
    unknown = [n for n in chosen if n not in known]
    if unknown:
        raise ValueError(f"{route.run_dir}: no route points {unknown}; points: {', '.join(known)}")
    return chosen


def route_anchors(route: Any, names: Sequence[str] | None,
                  device: str | torch.device = "cpu") -> dict[str, tuple[Callable[[], nn.Module], str]]:
    """:func:`build_cache`'s ``anchors`` for route points (see :func:`resolve_anchors`; None: every point): a
    loader (sha256 verified) and the recorded sha256 of each."""
    chosen = resolve_anchors(route, names)

    def loader(name: str) -> Callable[[], nn.Module]:
        return lambda: route.load_point(name, verify=True, device=str(device)).model

    return {n: (loader(n), route.point(n).sha256) for n in chosen}


# ---------------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------------


class AnchorCache:
    """Read-only, memory-mapped view of a cache directory; shard checksums are verified on first use.

    Opening refuses version 1 caches and another flip convention; :meth:`check_dataset` refuses a cache built from
    other images, labels, input size, transform or teacher.
    """

    def __init__(self, path: str | Path, verify: bool = True) -> None:
        self.root = Path(path)
        self.manifest_path = self.root / "manifest.json"
        self.manifest = read_json(self.manifest_path)
        _check_manifest_header(self.manifest, self.manifest_path)
        self.shard_size = int(self.manifest["shard_size"])
        self.verify = verify
        self._arrays: dict[str, list[np.ndarray]] = {}

    @property
    def anchors(self) -> list[str]:
        return list(self.manifest["anchors"])

    def check_dataset(self, dataset: Any, route: Any = None, anchors: Sequence[str] | None = None) -> None:
        """Raise ValueError unless ``dataset`` and the teacher are the ones the cache was built from.

        Args:
            dataset: the training set as the student reads it (same items, labels, image bytes, input size and
                transform family; a random flip in its transform is refused).
            route: the teacher route the student follows (:class:`facerco.route.io.Route` or name -> sha256).
                None: the route of the teacher run recorded in the manifest, when it is on this machine (a warning
                says so when it is not).
            anchors: the anchors to check against ``route`` (each must be cached and in the route); None: every
                cached anchor that the route has.
        """
        changes = _differences(self.manifest["dataset"], dataset_fingerprint(dataset))
        if changes:
            raise ValueError(f"{self.manifest_path}: the cache does not match the training data: "
                             f"{'; '.join(changes)}: {_rebuild_hint(self.manifest, self.root)}")
        if route is None:
            route = self._recorded_route()
        if route is not None:
            self.check_route(route, anchors)

    def check_route(self, route: Any, anchors: Sequence[str] | None = None) -> None:
        """Raise ValueError when a cached anchor's checkpoint is not the route's point of that name."""
        points = _point_shas(route)
        where = getattr(route, "run_dir", "the route")
        for name in self.anchors if anchors is None else list(anchors):
            entry = self.manifest["anchors"].get(name)
            if entry is None:
                raise ValueError(f"{self.manifest_path}: anchor {name!r} is not cached; cached: {self.anchors}")
            if name not in points:
                if anchors is None:
                    continue
                raise ValueError(f"{self.manifest_path}: anchor {name}: not a point of {where}")
            if entry.get("point_sha256") != points[name]:
                raise ValueError(f"{self.manifest_path}: anchor {name}: route sha256 differs (cache "
                                 f"{_short(entry.get('point_sha256'))}, route {_short(points[name])}): the teacher "
                                 f"at {where} was retrained or re-recorded; {_rebuild_hint(self.manifest, self.root)}")

    def _recorded_route(self) -> Any:
        """The route of the manifest's teacher run, or None (with a warning when recorded but not found here)."""
        from facerco.route.io import load_route

        run = (self.manifest.get("meta") or {}).get("teacher_run")
        if not run:
            return None
        if not (Path(run) / "route.json").is_file():
            warnings.warn(f"{self.manifest_path}: anchors' route sha256 not checked: the teacher run {run} recorded "
                          "in the manifest has no route.json here; pass the route to check_dataset", stacklevel=3)
            return None
        return load_route(run)

    def _open(self, anchor: str) -> list[np.ndarray]:
        if anchor in self._arrays:
            return self._arrays[anchor]
        entry = self.manifest["anchors"].get(anchor)
        if entry is None:
            raise ValueError(f"{self.manifest_path}: anchor {anchor!r} is not cached; cached: {self.anchors}")
        if not entry.get("complete"):
            raise ValueError(f"{self.manifest_path}: anchor {anchor!r} is incomplete; rerun `facerco cache`")
        arrays = []
        for shard in entry["shards"]:
            file = self.root / shard["file"]
            if not file.is_file():
                raise FileNotFoundError(f"{file}: cache shard missing")
            if self.verify and sha256_file(file) != shard["sha256"]:
                raise ValueError(f"{file}: sha256 mismatch with {self.manifest_path} (corrupted cache shard)")
            arrays.append(np.load(file, mmap_mode="r"))
        self._arrays[anchor] = arrays
        return arrays

    def mean(self, anchor: str) -> np.ndarray:
        """float32 (D,) mean of every cached row of ``anchor`` (plain and flipped), accumulated in float64."""
        arrays = self._open(anchor)
        total = np.zeros(arrays[0].shape[2], np.float64)
        count = 0
        for arr in arrays:
            for start in range(0, len(arr), 65536):
                block = np.asarray(arr[start:start + 65536], np.float64)
                total += block.sum(axis=(0, 1))
                count += block.shape[0] * block.shape[1]
        return (total / max(count, 1)).astype(np.float32)

    def embedding_size(self, anchor: str) -> int:
        return int(self._open(anchor)[0].shape[2])

    def targets(self, anchor: str, indices: Sequence[int] | torch.Tensor,
                flips: Sequence[bool] | torch.Tensor) -> torch.Tensor:
        """float32 (N, D) cached embeddings of ``anchor`` for dataset ``indices``, flipped where ``flips``."""
        arrays = self._open(anchor)
        idx = np.asarray(torch.as_tensor(indices).cpu(), dtype=np.int64)
        flp = np.asarray(torch.as_tensor(flips).cpu(), dtype=np.int64)
        out = np.empty((len(idx), arrays[0].shape[2]), dtype=np.float32)
        shard_of = idx // self.shard_size
        for k in np.unique(shard_of):
            sel = np.nonzero(shard_of == k)[0]
            if k >= len(arrays):
                raise IndexError(f"{self.manifest_path}: index {int(idx[sel[0]])} beyond the cached dataset")
            out[sel] = arrays[k][idx[sel] - k * self.shard_size, flp[sel]]
        return torch.from_numpy(out)
