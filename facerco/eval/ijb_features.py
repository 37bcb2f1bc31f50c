"""IJB face features: loose crops aligned by ``facerco align``'s 5-point warp, embedded by the one extractor, written
block by block into memory-mapped ``.npy`` files that a stopped run resumes.

The warp's target is :data:`IJB_TEMPLATE_112`: the ArcFace template as ``eval_ijbc.py`` builds it (the 96×112
points in float32, then 8 added to every x in float32), whose fifth x is 70.729904 where
:data:`facerco.prep.align.ARCFACE_TEMPLATE_112` holds 70.7299 (one float32 step apart; crops differ by a few grey
levels at most). Every other facerco path keeps ``ARCFACE_TEMPLATE_112``.

Files in ``folder`` (``OUT/features/<model>/``): ``<t>.npy`` (N, D) float32 unit flip-fused features in face-list
order, ``<t>.norms.npy`` (N, 2) float64 (mean norm of the two views, as XNorm; norm of the fused feature, for
``--norm-score``), and the ``manifest.json`` of :mod:`facerco.eval.feature_cache` (model sha256 + the landmark file
and every image's path, size and mtime). While a run is under way ``<t>.progress.json`` records how many faces are
done and under which key; a rerun with the same key continues from there, anything else starts over and says why.
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facerco.eval.checks import check_features
from facerco.eval.feature_cache import FeatureCache, files_key
from facerco.eval.features import Embedder, extract_embeddings
from facerco.eval.ijb import IJBMeta
from facerco.prep.align import read_image, warp_face
from facerco.utils.io import read_json, write_json

__all__ = ["IJB_TEMPLATE_112", "AlignedFaces", "ijb_features", "resource_usage"]

_ALIGN_SIZE = 112  # the ArcFace template; the extractor's transform resizes to the model's input


def _eval_ijbc_template() -> np.ndarray:
    """The five points of ``eval_ijbc.py``'s ``Embedding.src``, with its float32 arithmetic."""
    src = np.array([[30.2946, 51.6963], [65.5318, 51.5014], [48.0252, 71.7366], [33.5493, 92.3655],
                    [62.7299, 92.2041]], np.float32)
    src[:, 0] += np.float32(8.0)
    src.flags.writeable = False
    return src


IJB_TEMPLATE_112 = _eval_ijbc_template()
ALIGN_KEY = "112 px, eval_ijbc.py float32 template"  # in the cache key: features cut otherwise are recomputed


class AlignedFaces(torch.utils.data.Dataset):
    """Faces ``start..stop`` of an IJB face list: decode, warp to the ArcFace template, normalize for the model.

    Errors name the landmark file and line of the face (an unreadable image, landmarks that cannot be warped).
    """

    def __init__(self, meta: IJBMeta, embedder: Embedder, start: int = 0, stop: int | None = None) -> None:
        self.meta, self.start = meta, start
        self.stop = len(meta.faces.names) if stop is None else stop
        self.prepare = embedder.preprocessor()
        self.paths = [str(p) for p in meta.image_paths()[start : self.stop]]

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        face = self.start + i
        try:
            img = warp_face(read_image(self.paths[i]), self.meta.faces.landmarks[face], _ALIGN_SIZE, IJB_TEMPLATE_112)
        except (ValueError, OSError) as exc:
            raise ValueError(f"{self.meta.files.landmarks}: line {self.meta.faces.lines[face]}: {exc}") from None
        return self.prepare(img), -1


def _paths(folder: Path, role: str) -> tuple[Path, Path, Path]:
    return folder / f"{role}.npy", folder / f"{role}.norms.npy", folder / f"{role}.progress.json"


def _resume_point(progress: Path, key: dict[str, Any], npy: Path, total: int) -> tuple[int, str]:
    """Faces already done by a stopped run with the same key (0 when none), and what to say about it."""
    if not progress.is_file() or not npy.is_file():
        return 0, "computing features (no cache yet)"
    state = read_json(progress)
    if not isinstance(state, dict) or state.get("key") != key:
        return 0, f"{progress.name} is from another model or other images: features recomputed"
    done = int(state.get("done", 0))
    if not 0 < done <= total:
        return 0, "computing features"
    return done, f"resuming feature extraction at face {done:,} of {total:,}"


def _open(npy: Path, norms: Path, shape: tuple[int, int], fresh: bool) -> tuple[np.memmap, np.memmap]:
    mode = "w+" if fresh else "r+"
    feats = np.lib.format.open_memmap(npy, mode=mode, dtype=np.float32, shape=shape if fresh else None)
    nrm = np.lib.format.open_memmap(norms, mode=mode, dtype=np.float64, shape=(shape[0], 2) if fresh else None)
    if feats.shape != shape or nrm.shape != (shape[0], 2):
        raise ValueError(f"{npy}: shape {feats.shape} does not match {shape}; delete {npy.parent} and rerun")
    return feats, nrm


def ijb_features(meta: IJBMeta, embedder: Embedder, folder: str | os.PathLike[str], model: dict[str, Any],
                 batch_size: int = 256, device: str = "auto", num_workers: int = 2, block: int = 8192,
                 progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Features of every face of ``meta``, from the cache, a resumed run, or a new one.

    Args:
        meta: the target's meta data (:func:`facerco.eval.ijb.load_meta`).
        embedder: the loaded model.
        folder: cache folder of this model.
        model: :func:`facerco.eval.feature_cache.model_key` of the model file.
        block: faces per resumable block (each block is written and recorded before the next starts).

    Returns:
        ``(features (N, D) float32 memmap, norms (N, 2) float64 memmap)``, checked (no NaN/Inf or zero row).

    A run that fails before writing anything removes the folders it created (no empty ``features/<model>/``).
    """
    folder = Path(folder)
    created = [d for d in (folder, *folder.parents) if not d.exists()]  # deepest first
    folder.mkdir(parents=True, exist_ok=True)
    try:
        return _features(meta, embedder, folder, model, batch_size, device, num_workers, block, progress)
    except BaseException:
        for d in created:
            try:
                d.rmdir()  # only an empty folder goes; a stopped run's blocks stay to be resumed
            except OSError:
                break
        raise


def _features(meta: IJBMeta, embedder: Embedder, folder: Path, model: dict[str, Any], batch_size: int, device: str,
              num_workers: int, block: int, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """:func:`ijb_features` in an existing ``folder``."""
    role = meta.files.target.lower()
    npy, norms_npy, progress_file = _paths(folder, role)
    cache = FeatureCache(folder, model)
    images = meta.image_paths()
    sources = {**files_key([meta.files.landmarks, *images], str(meta.files.landmarks)), "align": ALIGN_KEY}
    total = len(images)
    why = cache.stale(role, sources)
    if why is None and norms_npy.is_file():
        print(f"using cached {role} features {npy} (same model sha256, {total + 1:,} source files unchanged)")
        feats, nrm = np.load(npy, mmap_mode="r"), np.load(norms_npy, mmap_mode="r")
    else:
        key = {"model": model, "sources": sources}
        done, say = _resume_point(progress_file, key, npy, total)
        if done == 0 and npy.is_file() and not progress_file.is_file():
            say = f"cached features not reused ({why}): recomputed"
        print(f"{role}: {say}")
        if done == 0:
            cache.forget(role)
        feats, nrm = _extract(meta, embedder, (npy, norms_npy, progress_file), key, done,
                              dict(batch_size=batch_size, device=device, num_workers=num_workers), block, progress)
        cache.record(role, sources)
        progress_file.unlink(missing_ok=True)
    check_features(feats, str(npy), [str(p) for p in images])
    return feats, nrm


def _extract(meta: IJBMeta, embedder: Embedder, files: tuple[Path, Path, Path], key: dict[str, Any], done: int,
             kw: dict[str, Any], block: int, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """Embed faces ``done..N`` block by block into the memmaps, recording progress after each block."""
    npy, norms_npy, progress_file = files
    total = len(meta.faces.names)
    feats = nrm = None
    if done:
        feats, nrm = _open(npy, norms_npy, np.load(npy, mmap_mode="r").shape, fresh=False)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=done, unit="face", desc=f"embed {embedder.name} ({meta.files.target})")
    try:
        for start in range(done, total, block):
            stop = min(total, start + block)
            emb = extract_embeddings(embedder, AlignedFaces(meta, embedder, start, stop), progress=False, **kw)
            if feats is None:
                feats, nrm = _open(npy, norms_npy, (total, emb.emb.shape[1]), fresh=True)
            feats[start:stop] = emb.emb
            nrm[start:stop, 0] = emb.norms
            nrm[start:stop, 1] = emb.fused_norms
            feats.flush()
            nrm.flush()
            write_json(progress_file, {"key": key, "done": stop})
            if bar is not None:
                bar.update(stop - start)
    finally:
        if bar is not None:
            bar.close()  # ends the bar's line, so an error printed next starts on a line of its own
    assert feats is not None and nrm is not None
    return feats, nrm


def resource_usage(start: float) -> dict[str, float]:
    """Wall time since ``start``, this process's peak resident memory and, on CUDA, peak GPU memory (GiB)."""
    out = {"time_s": round(time.perf_counter() - start, 2),
           "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return out
