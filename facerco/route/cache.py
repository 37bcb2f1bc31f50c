"""Anchor-feature cache: every anchor's embedding of every training image, unflipped and flipped.

Layout of a cache directory::

    manifest.json                 format, dataset fingerprint, shard size, per anchor: dim, point sha256, shards
    <anchor>/shard_00000.npy      float16 array (rows, 2, D): [:, 0] the image, [:, 1] its horizontal flip

Shards are written whole to a temporary file and renamed (atomic), and the manifest is rewritten after each
shard, so a killed job resumes at the first missing shard. Every shard's sha256 is in the manifest and checked
when the cache is opened. Reading is memory-mapped: the student loop fetches targets by dataset index and the
flip bit of the sample (the engine sampler's KeyedDataset keys ``[index, flip]``) instead of running the teacher.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from facerco.utils.io import atomic_path, read_json, sha256_file, write_json

__all__ = [
    "CACHE_FORMAT",
    "dataset_fingerprint",
    "build_cache",
    "AnchorCache",
]

CACHE_FORMAT = "facerco-anchor-cache"
CACHE_VERSION = 1
def dataset_fingerprint(dataset: Any) -> dict[str, Any]:
    """Length and a hash of the labels: enough to refuse a cache built for another dataset or order."""
    labels = getattr(dataset, "labels", None)
    if labels is None:
        labels = [int(dataset[i][1]) for i in range(len(dataset))]
    arr = np.ascontiguousarray(np.asarray(labels, dtype=np.int64))
    return {"num_items": int(len(dataset)), "labels_sha256": hashlib.sha256(arr.tobytes()).hexdigest()}


_SAFE = re.compile(r"^[A-Za-z0-9_.\-]+$")


def _anchor_dir(name: str) -> str:
    if not _SAFE.match(name) or name in (".", ".."):
        raise ValueError(f"anchor name {name!r} is not usable as a folder name")
    return name


def _new_manifest(fingerprint: dict[str, Any], shard_size: int, meta: dict[str, Any]) -> dict[str, Any]:
    return {"format": CACHE_FORMAT, "version": CACHE_VERSION, "dtype": "float16",
            "layout": "(rows, 2 [plain, flip], D)", "shard_size": int(shard_size),
            "dataset": fingerprint, "meta": meta, "anchors": {}}


@torch.no_grad()
def _embed(model: nn.Module, images: torch.Tensor, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    x = images.to(device)
    plain = model(x).float().cpu().numpy()
    flip = model(torch.flip(x, dims=[-1])).float().cpu().numpy()
    return plain, flip


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
        meta: free-form provenance stored in the manifest (teacher run, dataset root).
        progress: show a tqdm bar.

    Returns:
        the manifest path.
    """
    from tqdm import tqdm

    if shard_size <= 0:
        raise ValueError(f"shard_size must be > 0, got {shard_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "manifest.json"
    fingerprint = dataset_fingerprint(dataset)
    if manifest_path.exists():
        manifest = read_json(manifest_path)
        if manifest.get("format") != CACHE_FORMAT:
            raise ValueError(f"{manifest_path}: not a facerco anchor cache")
        if manifest["dataset"] != fingerprint:
            raise ValueError(f"{manifest_path}: built for another dataset ({manifest['dataset']} vs {fingerprint})")
        if int(manifest["shard_size"]) != shard_size:
            raise ValueError(f"{manifest_path}: shard_size {manifest['shard_size']} differs from {shard_size}")
    else:
        manifest = _new_manifest(fingerprint, shard_size, meta or {})
    n = fingerprint["num_items"]
    num_shards = (n + shard_size - 1) // shard_size
    dev = torch.device(device)
    for name, (load, point_sha) in anchors.items():
        entry = manifest["anchors"].get(name)
        if entry is not None and entry.get("point_sha256") != point_sha:
            raise ValueError(f"{manifest_path}: anchor {name!r} was cached from another checkpoint "
                             f"(sha256 {entry.get('point_sha256')} vs {point_sha}); use a new cache directory")
        shards = {s["index"]: s for s in (entry or {}).get("shards", [])}
        todo = [k for k in range(num_shards)
                if k not in shards or not (out / shards[k]["file"]).is_file()]
        if entry is not None and not todo:
            continue
        model = load().to(dev).eval()
        folder = out / _anchor_dir(name)
        folder.mkdir(exist_ok=True)
        bar = tqdm(total=len(todo) * shard_size, desc=f"cache {name}", unit="img", disable=not progress)
        for k in todo:
            start, end = k * shard_size, min(n, (k + 1) * shard_size)
            subset = torch.utils.data.Subset(dataset, range(start, end))
            loader = DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
            rel = f"{folder.name}/shard_{k:05d}.npy"
            dim = 0
            with atomic_path(out / rel) as tmp:
                arr = None
                row = 0
                for batch in loader:
                    plain, flip = _embed(model, batch[0], dev)
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
            shards[k] = {"index": k, "file": rel, "start": start, "end": end, "sha256": sha256_file(out / rel)}
            manifest["anchors"][name] = {"embedding_size": dim or (entry or {}).get("embedding_size", 0),
                                         "point_sha256": point_sha,
                                         "shards": [shards[i] for i in sorted(shards)],
                                         "complete": len(shards) == num_shards}
            write_json(manifest_path, manifest)
        bar.close()
    return manifest_path


class AnchorCache:
    """Read-only, memory-mapped view of a cache directory; shard checksums are verified on first use."""

    def __init__(self, path: str | Path, verify: bool = True) -> None:
        self.root = Path(path)
        self.manifest_path = self.root / "manifest.json"
        self.manifest = read_json(self.manifest_path)
        if self.manifest.get("format") != CACHE_FORMAT:
            raise ValueError(f"{self.manifest_path}: not a facerco anchor cache (format {self.manifest.get('format')})")
        if int(self.manifest.get("version", 0)) != CACHE_VERSION:
            raise ValueError(f"{self.manifest_path}: cache version {self.manifest.get('version')} is not supported")
        self.shard_size = int(self.manifest["shard_size"])
        self.verify = verify
        self._arrays: dict[str, list[np.ndarray]] = {}

    @property
    def anchors(self) -> list[str]:
        return list(self.manifest["anchors"])

    def check_dataset(self, dataset: Any) -> None:
        """Raise when ``dataset`` is not the one (same length, same label order) the cache was built from."""
        fp = dataset_fingerprint(dataset)
        if fp != self.manifest["dataset"]:
            raise ValueError(f"{self.manifest_path}: cache was built for dataset {self.manifest['dataset']}, "
                             f"the training dataset is {fp}")

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
