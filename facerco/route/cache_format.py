"""The anchor-feature cache on disk: its layout, its manifest and the checks every opening runs.

A cache holds every anchor's embedding of every training image, unflipped and flipped. Layout of a cache directory::

    manifest.json                 format, dataset fingerprint, input, shard size, per anchor: dim, point sha256, shards
    <anchor>/shard_00000.npy      float16 array (rows, 2, D): [:, 0] the image, [:, 1] its horizontal flip

Rows are L2-normalized in float32 before the cast to float16 (manifest ``"rows": "l2-normalized"``): every loss
that reads the cache normalizes the teacher embedding first (mimicking, ``s·cos`` KD logits, ensembles), so only
the direction matters, and a raw embedding of a large teacher can exceed float16's range (65,504) and become
``inf``. Caches written before this (no ``rows`` field) hold raw rows; resuming one keeps writing raw rows, so an
anchor never mixes the two.

Shards are written whole to a temporary file and renamed (atomic), and the manifest is rewritten after each
shard, so a killed job resumes at the first missing shard. Every shard's sha256 is in the manifest and checked
when the cache is opened.

What a cache is valid for is recorded (manifest version 2; :mod:`facerco.route.cache_fingerprint` says what) and
checked when it is resumed or read. Version 1 caches (labels only) are refused: what they were built from cannot
be verified.

The cache is split by job: this module (format), :mod:`~facerco.route.cache_fingerprint` (what it was built from),
:mod:`~facerco.route.cache_writer` (``build_cache``, also used by ``facerco cache --views``),
:mod:`~facerco.route.cache_reader` (``AnchorCache``) and :mod:`~facerco.route.cache_anchors` (which route points,
at which input size).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["CACHE_FORMAT", "CACHE_VERSION", "FLIP_CONVENTION", "ROWS_NORMALIZED", "new_manifest",
           "check_manifest_header", "rebuild_hint", "short"]

CACHE_FORMAT = "facerco-anchor-cache"
CACHE_VERSION = 2
FLIP_CONVENTION = "horizontal: torch.flip(x, dims=[-1]) of the normalized (N, C, H, W) network input"
ROWS_NORMALIZED = "l2-normalized"


def new_manifest(fingerprint: dict[str, Any], shard_size: int, meta: dict[str, Any]) -> dict[str, Any]:
    """The manifest of an empty cache built from ``fingerprint`` (:func:`~facerco.route.cache_fingerprint.
    dataset_fingerprint`), with free-form provenance ``meta``."""
    return {"format": CACHE_FORMAT, "version": CACHE_VERSION, "dtype": "float16", "rows": ROWS_NORMALIZED,
            "layout": "(rows, 2 [plain, flip], D)", "flip": FLIP_CONVENTION, "shard_size": int(shard_size),
            "dataset": fingerprint, "meta": meta, "anchors": {}}


def short(value: Any) -> str:
    """A value as error messages quote it: a sha256 cut to 12 characters, an (H, W) pair as ``HxW``."""
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12] + "…"
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return f"{value[0]}x{value[1]}"
    return str(value)


def rebuild_hint(manifest: Mapping[str, Any], root: Path) -> str:
    """The command that rebuilds a refused cache, from the provenance its manifest records."""
    meta = manifest.get("meta") or {}
    run, data = meta.get("teacher_run") or "RUN", meta.get("dataset") or "DATASET"
    return f"rebuild with `facerco cache {run} {data} --out NEW_DIR` (or delete {root} first)"


def check_manifest_header(manifest: Mapping[str, Any], path: Path) -> None:
    """Refuse foreign files, old (unverifiable) versions and another flip convention, with the fix."""
    if manifest.get("format") != CACHE_FORMAT:
        raise ValueError(f"{path}: not a facerco anchor cache (format {manifest.get('format')!r})")
    version = manifest.get("version")
    if version == 1:
        raise ValueError(f"{path}: anchor cache version 1 (written by an older facerco) records only the labels, so "
                         "its image bytes, input size, transform and teacher cannot be checked; "
                         + rebuild_hint(manifest, path.parent))
    if version != CACHE_VERSION:
        raise ValueError(f"{path}: cache version {version!r} is not supported (this facerco reads {CACHE_VERSION})")
    if manifest.get("flip") != FLIP_CONVENTION:
        raise ValueError(f"{path}: flipped rows follow {manifest.get('flip')!r}, this facerco flips by "
                         f"{FLIP_CONVENTION!r}; " + rebuild_hint(manifest, path.parent))
