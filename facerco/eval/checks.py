"""The one feature check of every evaluator entry point: finite rows, non-zero rows, L2 normalization on record.

Why: nothing downstream raises on a bad row. A NaN row changes rankings silently (every comparison with it is
False, and ``torch.topk`` orders NaN above +inf while faiss never keeps one, so the two search backends disagreed),
and a row that is not unit length turns cosine similarity into a scaled inner product (distractors scaled by 5 beat
every genuine pair). So ``eval verify``, ``eval megaface`` (``.npy`` and devkit trees), the export read-back and the
extractor's own output all run :func:`check_rows`, which names the source and the row (or image) of the first bad
row, and the evaluator normalizes rows through :func:`normalize_rows`, recording how far they were from unit length
(:class:`NormStats`).

Rows already unit length within ``UNIT_TOL`` are kept bit for bit (features from facerco's extractor, float16 copies
of them); the others are divided by their norm. The check uses a fast einsum; the rows that change and their new
values come from float64 sums by the fixed tree of :mod:`facerco.eval._exact`, so a row normalizes to the same
float32 values in whichever chunk it is read (the exact identification stage relies on that). numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from facerco.eval._exact import tree_dots

__all__ = ["UNIT_TOL", "NormStats", "row_norms", "exact_norms", "check_rows", "normalize_rows", "check_features",
           "checked"]

UNIT_TOL = 1e-3  # |norm - 1| up to this counts as unit length (float16-rounded unit rows stay well inside)


@dataclass
class NormStats:
    """Norms seen by a check: row count, smallest and largest norm, rows outside ``1 ± UNIT_TOL``."""

    rows: int = 0
    min_norm: float = math.inf
    max_norm: float = 0.0
    renormalized_rows: int = 0

    def update(self, norms: np.ndarray) -> None:
        if len(norms):
            self.rows += len(norms)
            self.min_norm = min(self.min_norm, float(norms.min()))
            self.max_norm = max(self.max_norm, float(norms.max()))
            self.renormalized_rows += int(np.count_nonzero(_off_unit(norms)))

    def as_dict(self) -> dict[str, float | int]:
        return {"rows": self.rows, "min_norm": self.min_norm if self.rows else float("nan"),
                "max_norm": self.max_norm if self.rows else float("nan"),
                "renormalized_rows": self.renormalized_rows}


def _off_unit(norms: np.ndarray) -> np.ndarray:
    return np.abs(norms - 1.0) > UNIT_TOL


def _sum_squares(rows: np.ndarray) -> np.ndarray:
    """Fast float64 squared norms (a float32 or float64 einsum); overflow/underflow is settled by the caller."""
    dt = np.float64 if rows.dtype == np.float64 else np.float32
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        return np.einsum("ij,ij->i", rows, rows, dtype=dt).astype(np.float64)


def exact_norms(rows: np.ndarray) -> np.ndarray:
    """(n,) float64 L2 norms by the fixed tree: bit-identical for a given row whatever the batch it sits in."""
    if len(rows) == 0:
        return np.zeros(0, np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        return np.sqrt(tree_dots(rows, None, rows, None))


def row_norms(rows: np.ndarray) -> np.ndarray:
    """(n,) float64 L2 norms of (n, D) rows: a fast einsum, with rows whose float32 sum overflowed or underflowed
    (non-finite or zero) recomputed exactly, so only truly non-finite or all-zero rows come out inf/NaN or 0."""
    if rows.ndim != 2:
        raise ValueError(f"features must be 2-D (N, D), got shape {rows.shape}")
    sq = _sum_squares(rows)
    suspect = ~np.isfinite(sq) | (sq == 0)
    if suspect.any():
        sub = np.asarray(rows[suspect])
        with np.errstate(over="ignore", invalid="ignore"):
            sq[suspect] = tree_dots(sub, None, sub, None)
    return np.sqrt(sq)


def _row_error(rows: np.ndarray, i: int, source: str, index: int | np.ndarray, keys: Sequence[str] | None,
               what: str) -> str:
    """One line naming the source, the row (global index and key) and what is wrong with it."""
    g = int(index[i]) if isinstance(index, np.ndarray) else index + i
    where = f"{source}: {what} {g}" + (f" ({keys[g]})" if keys is not None else "")
    values = np.asarray(rows[i], np.float64)
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        return (f"{where} is not finite ({len(bad)} of {len(values)} values; first {values[bad[0]]} at column "
                f"{bad[0]})")
    return f"{where} has norm 0 and cannot be L2-normalized"


def check_rows(rows: np.ndarray, source: str, index: int | np.ndarray = 0, keys: Sequence[str] | None = None,
               allow_zero: bool = False, what: str = "row") -> np.ndarray:
    """Norms of ``rows``; a ValueError naming ``source`` and the first non-finite (or zero-norm) row.

    Args:
        rows: (n, D) float array (a chunk of a larger array is fine).
        source: the file or role named in errors.
        index: global index of ``rows[0]`` (int), or of every row (int array), for the error.
        keys: image keys of the whole array, indexed by the global index (named in errors).
        allow_zero: accept rows of norm 0 (raw inner-product mode, nothing is normalized).
        what: the word for a row in errors (``row``, ``image``).
    """
    norms = row_norms(rows)
    ok = np.isfinite(norms) if allow_zero else np.isfinite(norms) & (norms > 0)
    if not ok.all():
        raise ValueError(_row_error(rows, int(np.argmin(ok)), source, index, keys, what))
    return norms


def normalize_rows(rows: np.ndarray, norms: np.ndarray) -> np.ndarray:
    """float32 rows L2-normalized; rows already unit within ``UNIT_TOL`` are kept as given (facerco's own features
    pass through unchanged). Returns ``rows`` itself when nothing changes.

    ``norms`` (fast, from :func:`check_rows`) only pick the candidates; which rows change and their new values
    come from :func:`exact_norms`, so a row normalizes to the same bits in every chunk it is read in.
    """
    margin = 4 * rows.shape[1] * 2.0**-24  # bound on |fast - exact| norm near 1 (float32 sum of D squares)
    near = np.flatnonzero(np.abs(norms - 1.0) > UNIT_TOL - margin)
    exact = exact_norms(np.asarray(rows[near])) if len(near) else np.zeros(0)
    off = np.abs(exact - 1.0) > UNIT_TOL
    if not off.any() and rows.dtype == np.float32:
        return rows
    out = np.array(rows, dtype=np.float32, order="C")
    idx = near[off]
    out[idx] = (np.asarray(rows[idx], np.float64) / exact[off, None]).astype(np.float32)
    return out


def check_features(feats: np.ndarray, source: str, keys: Sequence[str] | None = None, chunk: int = 16384
                   ) -> NormStats:
    """Check every row of an (N, D) array or memmap, chunk by chunk (a million rows never sit in memory twice).

    Raises ValueError on the first non-finite or zero-norm row, naming ``source``, the row and its key.
    """
    if feats.ndim != 2:
        raise ValueError(f"{source}: features must be 2-D (N, D), got shape {feats.shape}")
    stats = NormStats()
    for start in range(0, len(feats), chunk):
        stats.update(check_rows(np.asarray(feats[start : start + chunk]), source, start, keys))
    return stats


def checked(feats: np.ndarray, source: str, keys: Sequence[str] | None = None) -> tuple[np.ndarray, NormStats]:
    """In-memory features checked and L2-normalized (float32), with their norm statistics."""
    rows = np.asarray(feats)
    norms = check_rows(rows, source, 0, keys)
    stats = NormStats()
    stats.update(norms)
    return normalize_rows(rows, norms), stats
