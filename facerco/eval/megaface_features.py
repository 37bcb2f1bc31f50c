"""Probe and distractor features for ``facerco eval megaface``: read, extracted or cached, then checked.

A role (``probes`` or ``distractors``) comes from one of three places:

- a ``.npy`` written by ``export embeddings`` (distractors memory-mapped);
- a MegaFace devkit feature folder (``<image>_<algo>.bin``); probe labels then come from the FaceScrub layout
  ``<identity>/<image>`` (:func:`identity_labels`);
- images (a folder, or for distractors a list file) embedded with a model, through the
  :class:`~facerco.eval.feature_cache.FeatureCache` so that a rerun with the same model file and source files reuses
  them (:func:`cached_embeddings`).

Every role is then checked (:func:`facerco.eval.checks.check_features`): a NaN/Inf or zero row fails naming the file
and the row. Status lines (cache reuse, recomputation and why, rows renormalized) are printed, as
:mod:`facerco.eval.ijb_features` does for IJB.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facerco.eval import features as _features
from facerco.eval.checks import NormStats, check_features
from facerco.eval.feature_cache import FeatureCache, files_key
from facerco.eval.lists import KeyIndex, read_image_list

__all__ = ["IMAGE_EXT", "FeatureOptions", "image_files", "identity_labels", "devkit_embeddings", "cached_embeddings",
           "load_role", "role_features", "subset_lists", "noise_mask"]

IMAGE_EXT = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".pgm", ".ppm"})


@dataclass(frozen=True)
class FeatureOptions:
    """How roles are read and extracted (the ``eval megaface`` options that are not the sources themselves).

    Attributes:
        out: the report folder; devkit distractors are gathered into ``out/features/devkit_distractors.npy``.
        algo: devkit feature suffix (``<image>_<algo>.bin``).
        distractor_root: folder that relative entries of a distractor image list refer to (default: the list's).
        arch: architecture of an insightface ``.pth`` state_dict, for :func:`facerco.eval.features.load_embedder`.
        batch_size, device, num_workers: extraction settings.
    """

    out: Path
    algo: str = "facerco"
    distractor_root: str | None = None
    arch: str | None = None
    batch_size: int = 256
    device: str = "auto"
    num_workers: int = 2


def image_files(src: Path, root: str | None) -> list[str]:
    """Distractor images: every image under a folder, or a list file whose relative entries resolve against
    ``root`` (default: the list's folder)."""
    if src.is_file():
        base = Path(root) if root else src.parent
        return [str(p if p.is_absolute() else base / p) for p in map(Path, read_image_list(src))]
    return sorted(str(p) for p in src.rglob("*") if p.suffix.lower() in IMAGE_EXT)


def identity_labels(keys: Sequence[str]) -> np.ndarray:
    """FaceScrub layout ``<identity>/<image>``: label i is the rank of the key's folder among the sorted folders.

    Returns:
        int64 array (N,), labels 0..K-1 in the sorted order of the K identity folders.
    """
    names = sorted({Path(k).parent.as_posix() for k in keys})
    ids = {n: i for i, n in enumerate(names)}
    return np.array([ids[Path(k).parent.as_posix()] for k in keys], np.int64)


def devkit_embeddings(path: Path, role: str, opts: FeatureOptions) -> tuple[_features.Embeddings, list[str]]:
    """A devkit feature folder as embeddings (probes labelled by folder, distractors -1) and each row's file."""
    out = opts.out / "features" / "devkit_distractors.npy" if role == "distractors" else None
    feats, keys = _features.read_devkit_tree(path, opts.algo, progress=True, out=out)
    labels = identity_labels(keys) if role == "probes" else np.full(len(keys), -1, np.int64)
    emb = _features.Embeddings(feats, np.full(len(keys), np.nan, np.float32), labels, keys)
    return emb, [_features.devkit_name(k, opts.algo) for k in keys]


def cached_embeddings(path: Path, role: str, model: str, opts: FeatureOptions,
                      cache: FeatureCache) -> _features.Embeddings:
    """Features extracted with ``model``, or the cached ones when the model file and the source files are the
    same as when they were computed (facerco.eval.feature_cache); says which, and why it recomputes."""
    source: Path | list[str] = path if role == "probes" else image_files(path, opts.distractor_root)
    files = _features.source_files(source) + ([path] if role == "distractors" and path.is_file() else [])
    sources = files_key(files, str(path))
    reason = cache.stale(role, sources)
    if reason is None:
        print(f"using cached {role} features {cache.npy(role)} (same model sha256, {len(files)} source files "
              "unchanged)")
        return _features.load_embeddings(cache.npy(role), mmap=role == "distractors")
    print(f"{role}: computing features (no cache yet)" if reason == "no cached features"
          else f"{role}: {reason}: features recomputed")
    cache.forget(role)
    embedder = _features.load_embedder(model, opts.device, opts.arch)
    emb = _features.extract_embeddings(embedder, source, batch_size=opts.batch_size, device=opts.device,
                                       num_workers=opts.num_workers)
    _features.save_embeddings(emb, cache.npy(role))
    cache.record(role, sources)
    return _features.load_embeddings(cache.npy(role), mmap=role == "distractors")


def load_role(src: str, role: str, model: str | None, opts: FeatureOptions,
              cache: FeatureCache | None) -> tuple[_features.Embeddings, str, list[str]]:
    """Features of a role with the name and per-row keys that a bad row's error gives (the file; for devkit
    folders, each row's file).

    Raises:
        FileNotFoundError: ``src`` does not exist.
        ValueError: ``src`` is neither a ``.npy`` nor a folder and no model was given to embed it.
    """
    path = Path(src)
    if path.suffix == ".npy":
        emb = _features.load_embeddings(path, mmap=role == "distractors")
        return emb, str(path), emb.paths
    if not path.exists():
        raise FileNotFoundError(f"{path}: {role} not found")
    if model is None:
        if not path.is_dir():
            raise ValueError(f"{path}: {role} must be a .npy, a devkit feature folder (with --algo) or images with "
                             f"--model")
        emb, keys = devkit_embeddings(path, role, opts)
        return emb, str(path), keys
    if cache is None:
        raise ValueError(f"{path}: extracting {role} with a model needs a feature cache")
    emb = cached_embeddings(path, role, model, opts, cache)
    return emb, str(cache.npy(role)), emb.paths


def role_features(src: str, role: str, model: str | None, opts: FeatureOptions,
                  cache: FeatureCache | None) -> tuple[_features.Embeddings, NormStats]:
    """Loaded features and their norm statistics; a non-finite or zero row fails naming the file and the row."""
    emb, where, keys = load_role(src, role, model, opts, cache)
    stats = check_features(emb.emb, where, keys)
    if stats.renormalized_rows:
        print(f"{role}: {stats.renormalized_rows} of {stats.rows} rows are not unit length (norms "
              f"{stats.min_norm:.4g} to {stats.max_norm:.4g}): L2-normalized by the evaluator")
    return emb, stats


def subset_lists(specs: Sequence[str], keys: list[str]) -> dict[int, np.ndarray] | None:
    """Explicit distractor subsets from ``SIZE=FILE`` specs: row indices of each listed file (None: no specs).

    Raises:
        ValueError: a spec is not ``SIZE=FILE``, or a file does not list exactly SIZE distinct distractors.
    """
    if not specs:
        return None
    index = KeyIndex(keys)
    out = {}
    for spec in specs:
        size, sep, file = spec.partition("=")
        if not sep or not size.isdigit():
            raise ValueError(f"--subset-list expects SIZE=FILE, got {spec!r}")
        ids = index.indices(read_image_list(file), file)
        if len(ids) != int(size):
            raise ValueError(f"{file}: lists {len(ids)} distinct distractors, not {size}")
        out[int(size)] = ids
    return out


def noise_mask(file: str | os.PathLike[str] | None, keys: list[str], role: str) -> np.ndarray | None:
    """Boolean mask (N,) of the rows a noise list names (None without a list); says how many matched."""
    if not file:
        return None
    mask, missing = KeyIndex(keys).mask(read_image_list(file), file)
    print(f"{role} noise list {file}: {int(mask.sum())} matched, {len(missing)} not among the {role}")
    return mask
