"""Face verification: the exact 10-fold protocol of the insightface ``.bin`` sets and LFW ``pairs.txt``.

Protocol (FORMATS.md §2): embeddings are flip-fused and L2-normalized; distance = squared L2 (0..4); thresholds
0, 0.01, …, 3.99; pairs are split into ``nfolds`` consecutive folds in file order (no shuffling; the first
``n % nfolds`` folds get one extra pair, as scikit-learn's KFold); for each fold the threshold with the best accuracy
on the other folds (first one on ties) scores the held-out fold; a pair is predicted "same" when ``dist < threshold``.
Reported: accuracy mean ± std (population std over folds), the per-fold and mean best thresholds, XNorm, TAR at FAR
(exact: τ = (m+1)-th smallest impostor distance, m = floor(FAR·#impostors), TAR = #{genuine dist < τ}/#genuine)
and the ROC over the threshold grid.

The numeric part is numpy only; ``verify_bin``/``verify_pairs`` import the extractor lazily and are what the
training engine calls for periodic validation (decoded ``.bin`` images are cached between calls).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from facerco.eval.checks import NormStats, check_rows
from facerco.eval.identification import far_count

__all__ = ["THRESHOLDS", "kfold_splits", "evaluate_verification", "tar_at_far", "verify_bin", "verify_pairs"]

THRESHOLDS = np.arange(0, 4, 0.01)


def kfold_splits(n: int, nfolds: int) -> list[np.ndarray]:
    """Consecutive folds over ``range(n)``; the first ``n % nfolds`` folds are one longer."""
    if not 2 <= nfolds <= n:
        raise ValueError(f"nfolds must be in 2..{n} (the number of pairs), got {nfolds}")
    sizes = np.full(nfolds, n // nfolds)
    sizes[: n % nfolds] += 1
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    return [np.arange(bounds[i], bounds[i + 1]) for i in range(nfolds)]


def _accuracies(dist: np.ndarray, same: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    pred = dist[None, :] < thresholds[:, None]
    return (pred == same[None, :]).mean(axis=1)


def tar_at_far(genuine_dist: np.ndarray, impostor_dist: np.ndarray, fars: Sequence[float]) -> dict[str, dict]:
    """Exact TAR at each FAR from distances (smaller = more similar); keys are ``f"{far:g}"``."""
    imp = np.sort(np.asarray(impostor_dist, np.float64))
    out = {}
    for far in fars:
        m = far_count(far, len(imp))
        tau = imp[m] if m < len(imp) else np.inf
        out[f"{far:g}"] = {"tar": float(np.mean(genuine_dist < tau)) if len(genuine_dist) else float("nan"),
                           "threshold": float(tau), "allowed_impostors": int(m)}
    return out


def evaluate_verification(
    emb1: np.ndarray,
    emb2: np.ndarray,
    issame: np.ndarray,
    nfolds: int = 10,
    norms: np.ndarray | None = None,
    fars: Sequence[float] = (1e-3, 1e-4),
    thresholds: np.ndarray = THRESHOLDS,
) -> dict[str, Any]:
    """Score pairs ``(emb1[i], emb2[i])`` with labels ``issame[i]``.

    Args:
        emb1, emb2: (P, D) embeddings, L2-normalized here in float64 (a no-op for extractor output); a non-finite or
            zero row is a ValueError naming it.
        issame: (P,) bool.
        nfolds: folds of the protocol (10).
        norms: raw embedding norms for XNorm (any shape), optional.
        fars: FAR targets for TAR@FAR.
        thresholds: the distance grid (default 0:0.01:4).

    Returns:
        dict with ``accuracy`` (mean), ``accuracy_std``, ``fold_accuracies``, ``best_thresholds`` (per fold),
        ``best_threshold`` (mean), ``tar_at_far``, ``xnorm``, ``roc`` (fpr, tpr, threshold lists), ``num_pairs``,
        ``features`` (norms of the given rows: rows, min_norm, max_norm, renormalized_rows).
    """
    e1 = np.array(emb1, np.float64)  # a copy: normalized in place below
    e2 = np.array(emb2, np.float64)
    same = np.asarray(issame, bool)
    if e1.shape != e2.shape or e1.ndim != 2 or same.shape != (len(e1),):
        raise ValueError(f"expected emb1, emb2 of one (P, D) shape and issame (P,), got {e1.shape}, {e2.shape}, "
                         f"{same.shape}")
    stats = NormStats()
    for name, e in (("emb1", e1), ("emb2", e2)):
        lengths = check_rows(e, name)
        stats.update(lengths)
        e /= lengths[:, None]
    dist = ((e1 - e2) ** 2).sum(axis=1)
    folds = kfold_splits(len(dist), nfolds)
    fold_acc, best = [], []
    for test in folds:
        train = np.setdiff1d(np.arange(len(dist)), test, assume_unique=True)
        idx = int(np.argmax(_accuracies(dist[train], same[train], thresholds)))
        best.append(float(thresholds[idx]))
        fold_acc.append(float(np.mean((dist[test] < thresholds[idx]) == same[test])))
    pred = dist[None, :] < thresholds[:, None]
    pos, neg = max(int(same.sum()), 1), max(int((~same).sum()), 1)
    tpr = (pred & same[None, :]).sum(axis=1) / pos
    fpr = (pred & ~same[None, :]).sum(axis=1) / neg
    return {
        "num_pairs": int(len(dist)),
        "num_genuine": int(same.sum()),
        "accuracy": float(np.mean(fold_acc)),
        "accuracy_std": float(np.std(fold_acc)),
        "fold_accuracies": fold_acc,
        "best_thresholds": best,
        "best_threshold": float(np.mean(best)),
        "tar_at_far": tar_at_far(dist[same], dist[~same], fars),
        "xnorm": float(np.nanmean(norms)) if norms is not None and np.size(norms) else float("nan"),
        "roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "threshold": thresholds.tolist()},
        "features": stats.as_dict(),
    }


# ---------------------------------------------------------------------------------------------------------------
# Model-level helpers (used by `facerco eval verify` and the training engine)
# ---------------------------------------------------------------------------------------------------------------

_CACHE: OrderedDict[tuple, tuple[np.ndarray, np.ndarray | None]] = OrderedDict()
_CACHE_BYTES = 2 << 30


def _decode_all(items: Sequence[Any], size: tuple[int, int], where: str) -> np.ndarray:
    """Decode (bytes or paths) and resize to ``size``: (N, H, W, 3) uint8."""
    import cv2

    from facerco.data.transforms import decode_image

    h, w = size
    arr = np.empty((len(items), h, w, 3), np.uint8)
    for i, item in enumerate(items):
        try:
            img = decode_image(Path(item).read_bytes() if isinstance(item, str | Path) else item)
        except (ValueError, OSError) as exc:
            raise ValueError(f"{where}: image {i} ({item if isinstance(item, str | Path) else 'bytes'}): {exc}"
                             ) from None
        if img.shape[:2] != (h, w):
            shrink = img.shape[0] > h or img.shape[1] > w
            img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        arr[i] = img
    return arr


def _cached(key: tuple, build: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """Decoded images (and labels) kept between calls (LRU, bounded): periodic validation decodes each set once."""
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    _CACHE[key] = build()
    while sum(v[0].nbytes for v in _CACHE.values()) > _CACHE_BYTES and len(_CACHE) > 1:
        _CACHE.popitem(last=False)
    return _CACHE[key]


def _embed_array(model: Any, embedder: Any, arr: np.ndarray, names: list[str], batch_size: int, device: str,
                 progress: bool) -> Any:
    import torch

    from facerco.eval.features import extract_embeddings

    mean, std = embedder.mean, embedder.std

    class _Arr(torch.utils.data.Dataset):
        paths = names

        def __len__(self) -> int:
            return len(arr)

        def __getitem__(self, i: int):  # noqa: ANN204
            return torch.from_numpy(arr[i]).permute(2, 0, 1).float().sub_(mean).div_(std), -1

    source_model = model if isinstance(model, torch.nn.Module) else embedder
    return extract_embeddings(source_model, _Arr(), batch_size=batch_size, device=device, progress=progress)


def verify_bin(model: Any, bin_path: str | os.PathLike[str], batch_size: int = 256, device: str = "auto",
               nfolds: int = 10, fars: Sequence[float] = (1e-3, 1e-4), progress: bool = False) -> dict[str, Any]:
    """Verification accuracy of ``model`` (nn.Module, checkpoint or ONNX path) on an insightface ``.bin``."""
    from facerco.data.bins import read_bin
    from facerco.eval.features import load_embedder

    path = Path(bin_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: verification .bin not found")
    embedder = load_embedder(model, device)
    size = tuple(embedder.input_size)

    def build() -> tuple[np.ndarray, np.ndarray]:
        images, same = read_bin(path)
        return _decode_all(images, size, str(path)), np.asarray(same, bool)  # type: ignore[arg-type]

    arr, issame = _cached(("bin", str(path.resolve()), path.stat().st_mtime, size), build)
    if len(arr) != 2 * len(issame):
        raise ValueError(f"{path}: {len(arr)} images for {len(issame)} pairs (expected twice as many)")
    names = [f"{path.name}#{i}" for i in range(len(arr))]
    emb = _embed_array(model, embedder, arr, names, batch_size, device, progress)
    out = evaluate_verification(emb.emb[0::2], emb.emb[1::2], issame, nfolds, emb.norms, fars)
    out["name"] = path.stem
    return out


def verify_pairs(model: Any, pairs_txt: str | os.PathLike[str], root: str | os.PathLike[str], batch_size: int = 256,
                 device: str = "auto", nfolds: int = 10, fars: Sequence[float] = (1e-3, 1e-4), ext: str = "jpg",
                 progress: bool = False, num_workers: int = 0) -> dict[str, Any]:
    """Verification on an LFW-style ``pairs.txt`` over image files under ``root`` (each image embedded once).

    ``num_workers`` is accepted for call compatibility; images are decoded once and cached between calls.
    """
    from facerco.data.pairs import read_lfw_pairs
    from facerco.eval.features import load_embedder

    del num_workers
    pairs = read_lfw_pairs(pairs_txt, root, ext=ext)
    uniq = sorted({str(p) for a, b, _ in pairs for p in (a, b)})
    where = {p: i for i, p in enumerate(uniq)}
    embedder = load_embedder(model, device)
    size = tuple(embedder.input_size)
    stamp = Path(pairs_txt).stat().st_mtime
    arr, _ = _cached(("pairs", str(Path(pairs_txt).resolve()), str(Path(root).resolve()), stamp, size),
                     lambda: (_decode_all(uniq, size, str(pairs_txt)), None))  # type: ignore[arg-type]
    emb = _embed_array(model, embedder, arr, uniq, batch_size, device, progress)
    i1 = np.array([where[str(a)] for a, _, _ in pairs])
    i2 = np.array([where[str(b)] for _, b, _ in pairs])
    issame = np.array([s for _, _, s in pairs], bool)
    norms = np.concatenate([emb.norms[i1], emb.norms[i2]])
    out = evaluate_verification(emb.emb[i1], emb.emb[i2], issame, nfolds, norms, fars)
    out["name"] = Path(pairs_txt).stem
    return out
