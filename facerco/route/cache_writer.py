"""Writing an anchor cache (:mod:`facerco.route.cache_format`): :func:`build_cache` embeds a dataset with each
anchor's model; :class:`CacheWriter` is the one shard and manifest writer under it and under ``facerco cache
--views`` (:mod:`facerco.route.views_cache`), whose rows come from the teacher's own view of each photo instead.

A writer opened on an existing cache resumes it only when the dataset fingerprint and shard size match; an anchor
resumes only from the same checkpoint (sha256). Each shard is one atomic ``.npy``; the manifest is rewritten after
each, so a killed job resumes at the first missing shard.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from facerco.route.cache_fingerprint import dataset_fingerprint, fingerprint_differences
from facerco.route.cache_format import ROWS_NORMALIZED, check_manifest_header, new_manifest, short
from facerco.utils.io import atomic_path, read_json, sha256_file, write_json

__all__ = ["RowSource", "CacheWriter", "build_cache"]

# rows start:end of the dataset, in order, as batches of (plain, flipped) embeddings, each (B, D) float
RowSource = Callable[[int, int], Iterable[tuple[np.ndarray, np.ndarray]]]


_SAFE = re.compile(r"^[A-Za-z0-9_.\-]+$")


def _anchor_dir(name: str) -> str:
    if not _SAFE.match(name) or name in (".", ".."):
        raise ValueError(f"anchor name {name!r} is not usable as a folder name")
    return name


def _open_existing(manifest_path: Path, fingerprint: dict[str, Any], shard_size: int) -> dict[str, Any]:
    """The manifest of a cache being resumed, refused when it was built from anything else."""
    manifest = read_json(manifest_path)
    check_manifest_header(manifest, manifest_path)
    changes = fingerprint_differences(manifest["dataset"], fingerprint)
    if changes:
        raise ValueError(f"{manifest_path}: built for another dataset or input: {'; '.join(changes)}; "
                         "use a new cache directory")
    if int(manifest["shard_size"]) != shard_size:
        raise ValueError(f"{manifest_path}: shard_size {manifest['shard_size']} differs from {shard_size}")
    return manifest


class CacheWriter:
    """One cache directory being written: its manifest (new, or resumed after a check) and the shard layout.

    Args:
        out: cache directory (created).
        dataset: the items the rows are of, in order (fingerprinted; a random flip in its transform is refused,
            since the cache stores both views itself).
        shard_size: rows per shard file.
        meta: free-form provenance stored in a new manifest.
    """

    def __init__(self, out: Path, dataset: Dataset, shard_size: int, meta: dict[str, Any]) -> None:
        if shard_size <= 0:
            raise ValueError(f"shard_size must be > 0, got {shard_size}")
        out.mkdir(parents=True, exist_ok=True)
        self.out, self.shard_size = out, shard_size
        self.manifest_path = out / "manifest.json"
        fingerprint = dataset_fingerprint(dataset)
        if fingerprint["transform"].get("random_flip"):
            raise ValueError(f"{self.manifest_path}: the dataset's transform flips at random; the cache needs a "
                             "fixed transform (EvalTransform) because it stores both views itself")
        if self.manifest_path.exists():
            self.manifest = _open_existing(self.manifest_path, fingerprint, shard_size)
        else:
            self.manifest = new_manifest(fingerprint, shard_size, meta)
        self.n = fingerprint["num_items"]
        self.num_shards = (self.n + shard_size - 1) // shard_size

    @property
    def normalized_rows(self) -> bool:
        """Whether rows are stored L2-normalized (False only when resuming a cache written before that)."""
        return self.manifest.get("rows") == ROWS_NORMALIZED

    def _bounds(self, k: int) -> tuple[int, int]:
        return k * self.shard_size, min(self.n, (k + 1) * self.shard_size)

    def write_anchor(self, name: str, point_sha: str, open_rows: Callable[[], RowSource], progress: bool = True,
                     desc: str | None = None) -> None:
        """Write the anchor's missing shards; ``open_rows`` (which may load a model) runs only when one is missing.
        The manifest is rewritten after each shard."""
        from tqdm import tqdm

        entry = self.manifest["anchors"].get(name)
        if entry is not None and entry.get("point_sha256") != point_sha:
            raise ValueError(f"{self.manifest_path}: anchor {name}: route sha256 differs (cache "
                             f"{short(entry.get('point_sha256'))}, route {short(point_sha)}): it was cached from "
                             "another checkpoint; use a new cache directory")
        shards = {s["index"]: s for s in (entry or {}).get("shards", [])}
        todo = [k for k in range(self.num_shards)
                if k not in shards or not (self.out / shards[k]["file"]).is_file()]
        if entry is not None and not todo:
            return
        rows = open_rows()
        (self.out / _anchor_dir(name)).mkdir(exist_ok=True)
        bar = tqdm(total=sum(end - start for start, end in map(self._bounds, todo)), desc=desc or f"cache {name}",
                   unit="img", disable=not progress)
        for k in todo:
            start, end = self._bounds(k)
            rel = f"{name}/shard_{k:05d}.npy"
            dim = _write_shard(self.out / rel, rows(start, end), end - start, bar, f"cache {name}: shard {k}")
            shards[k] = {"index": k, "file": rel, "start": start, "end": end, "sha256": sha256_file(self.out / rel)}
            self.manifest["anchors"][name] = {"embedding_size": dim or (entry or {}).get("embedding_size", 0),
                                              "point_sha256": point_sha,
                                              "shards": [shards[i] for i in sorted(shards)],
                                              "complete": len(shards) == self.num_shards}
            write_json(self.manifest_path, self.manifest)
        bar.close()


def _write_shard(path: Path, batches: Iterable[tuple[np.ndarray, np.ndarray]], count: int, bar: Any,
                 what: str) -> int:
    """``count`` rows (plain and flipped) into one fp16 ``(count, 2, D)`` .npy, atomically; returns D."""
    dim = 0
    with atomic_path(path) as tmp:
        arr = None
        row = 0
        for plain, flip in batches:
            if arr is None:
                dim = plain.shape[1]
                arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(count, 2, dim))
            arr[row:row + len(plain), 0] = plain
            arr[row:row + len(plain), 1] = flip
            row += len(plain)
            bar.update(len(plain))
        if arr is None or row != count:
            raise RuntimeError(f"{what} got {row} rows, expected {count}")
        arr.flush()
        del arr
    return dim


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


def _model_rows(model: nn.Module, dataset: Dataset, batch_size: int, num_workers: int, device: torch.device,
                normalize: bool) -> RowSource:
    """A model's rows of ``dataset``: batches of ``batch_size`` items embedded plain and flipped."""

    def rows(start: int, end: int) -> Iterable[tuple[np.ndarray, np.ndarray]]:
        subset = torch.utils.data.Subset(dataset, range(start, end))
        for batch in DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=num_workers):
            yield _embed(model, batch[0], device, normalize)

    return rows


def build_cache(out_dir: str | Path, anchors: dict[str, tuple[Callable[[], nn.Module], str]], dataset: Dataset,
                shard_size: int = 65536, batch_size: int = 256, device: str | torch.device = "cpu",
                num_workers: int = 0, meta: dict[str, Any] | None = None, progress: bool = True) -> Path:
    """Write (or finish) the cache for ``anchors`` over ``dataset``.

    Args:
        out_dir: cache directory (created).
        anchors: name -> (loader returning the anchor's backbone, the route point's sha256). Loaders run only when
            the anchor still has missing shards (:func:`facerco.route.cache_anchors.route_anchors` builds these).
        dataset: items ``(image_tensor_CHW, label, ...)`` with an eval transform (no random flip), fixed order.
        shard_size: rows per shard file.
        batch_size, device, num_workers: extraction settings.
        meta: free-form provenance stored in the manifest (``teacher_run``: the run directory, used to re-check the
            anchors' sha256 when a student gives no route; ``dataset``: its path, quoted in rebuild hints).
        progress: show a tqdm bar.

    Returns:
        the manifest path.
    """
    writer = CacheWriter(Path(out_dir), dataset, shard_size, meta or {})
    dev = torch.device(device)

    def opener(load: Callable[[], nn.Module]) -> Callable[[], RowSource]:
        return lambda: _model_rows(load().to(dev).eval(), dataset, batch_size, num_workers, dev,
                                   writer.normalized_rows)

    for name, (load, point_sha) in anchors.items():
        writer.write_anchor(name, point_sha, opener(load), progress)
    return writer.manifest_path
