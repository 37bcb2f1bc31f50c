"""Reading an anchor cache (:mod:`facerco.route.cache_format`): :class:`AnchorCache`, memory-mapped.

The student loop fetches targets by dataset index and the flip bit of the sample (the engine sampler's KeyedDataset
keys ``[index, flip]``) instead of running the teacher. Shard checksums are verified on first use, and
:meth:`AnchorCache.check_dataset` refuses a cache built from other images, labels, input size, transform or teacher
(each anchor's route-point sha256, compared with the route the student follows).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facerco.route.cache_fingerprint import dataset_fingerprint, fingerprint_differences
from facerco.route.cache_format import check_manifest_header, rebuild_hint, short
from facerco.utils.io import read_json, sha256_file

__all__ = ["AnchorCache"]


def _point_shas(route: Any) -> dict[str, str]:
    """name -> sha256 of a :class:`facerco.route.io.Route` or of a plain mapping."""
    if isinstance(route, Mapping):
        return {str(k): str(v) for k, v in route.items()}
    return {p.name: p.sha256 for p in route.points}


class AnchorCache:
    """Read-only, memory-mapped view of a cache directory; shard checksums are verified on first use.

    Opening refuses version 1 caches and another flip convention; :meth:`check_dataset` refuses a cache built from
    other images, labels, input size, transform or teacher.
    """

    def __init__(self, path: str | Path, verify: bool = True) -> None:
        self.root = Path(path)
        self.manifest_path = self.root / "manifest.json"
        self.manifest = read_json(self.manifest_path)
        check_manifest_header(self.manifest, self.manifest_path)
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
        changes = fingerprint_differences(self.manifest["dataset"], dataset_fingerprint(dataset))
        if changes:
            raise ValueError(f"{self.manifest_path}: the cache does not match the training data: "
                             f"{'; '.join(changes)}: {rebuild_hint(self.manifest, self.root)}")
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
                                 f"{short(entry.get('point_sha256'))}, route {short(points[name])}): the teacher "
                                 f"at {where} was retrained or re-recorded; {rebuild_hint(self.manifest, self.root)}")

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
