"""MegaFace Challenge 1 style 1:N identification with up to millions of distractors, computed exactly.

Protocol (FORMATS.md §6). Probe features carry identity labels; for every ordered pair (p, g) of distinct images of
one identity, g is placed among the distractors and p is the query.

- Similarity: inner product of the given (L2-normalized) features, decided in float64 by :func:`exact_sims`; with
  ``normalize`` the rows are L2-normalized first (``eval megaface`` does). Non-finite rows are refused.
- Ties: a hit at rank k means ``sim(p, g) > v_k(p)`` where ``v_k(p)`` is the k-th largest similarity between p and
  the distractors of the subset (strict: a distractor tied with g ranks ahead of g). Rank-1 = hits / Σ n(n-1).
- TAR@FAR: genuine pairs = unordered same-identity probe pairs; impostor pairs = probes × distractors (N·s of them).
  With ``m = floor(FAR·N·s)`` the threshold τ is the (m+1)-th largest impostor score, the smallest threshold with at
  most m impostors strictly above it; TAR = #{genuine > τ} / #genuine.
- Distractor sizes: nested random subsets (one seeded permutation, subset s = its first s ids), or explicit lists.
- Noise lists: a noisy distractor keeps its slot (it counts in the subset size and in the impostor count) but scores
  -inf against every probe (the "extra dimension = 100" trick of the refined protocol, in similarity form); a noisy
  probe's feature is replaced by the L2-normalized mean of its identity's clean features.

Exactness without materialising probes × distractors: one streaming pass keeps each probe's top-k float32 scores
(:mod:`facerco.eval._search`, torch or faiss). Float32 and float64 scores differ by at most ``eps`` (a rigorous
rounding bound, any summation order), so every score that can decide a rank or a threshold lies within ``2·eps`` of
the float32 cut; probes whose kept list does not reach that far are rescanned with a larger k until it does
(refinement). The deciding scores are then recomputed in float64 from the same float32 features with a fixed
summation tree, so both backends and any machine give bit-identical results.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from facerco.eval._exact import tree_dots as _tree_dots
from facerco.eval._search import DistractorStore, TopK, resolve_backend, scan_error_bound, scan_topk
from facerco.eval.checks import check_rows, normalize_rows

__all__ = [
    "exact_sims",
    "far_count",
    "default_sizes",
    "nested_subsets",
    "probe_noise_replace",
    "evaluate_identification",
]



def exact_sims(a: np.ndarray, b: np.ndarray, chunk: int = 256) -> np.ndarray:
    """Row-wise float64 inner products ``a[i]·b[i]`` of float32 rows, summed by a fixed pairwise tree.

    Products of two float32 are exact in float64; the sum uses only element-wise IEEE additions in a fixed order, so
    the value for a given pair is bit-identical whatever the batch, backend or machine (and symmetric in a, b).

    Args:
        a, b: (n, D) arrays (float32 or float16).

    Returns:
        (n,) float64.
    """
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"exact_sims needs two (n, D) arrays of one shape, got {a.shape} and {b.shape}")
    return _tree_dots(a, None, b, None, chunk)


def far_count(far: float, num_impostors: int) -> int:
    """``m = floor(far · n)`` computed exactly from the decimal value of ``far`` (1e-6 · 3.53e9 is 3530, not 3529)."""
    if not 0 <= far <= 1:
        raise ValueError(f"FAR must be in [0, 1], got {far}")
    return math.floor(Fraction(repr(float(far))) * num_impostors)


def default_sizes(num_distractors: int) -> list[int]:
    """10, 100, … up to the number of distractors, plus that number itself when it is not a power of ten."""
    sizes = [10**e for e in range(1, 19) if 10**e <= num_distractors]
    if not sizes or sizes[-1] != num_distractors:
        sizes.append(num_distractors)
    return sizes


def nested_subsets(num_distractors: int, sizes: Sequence[int], seed: int = 0) -> dict[int, np.ndarray]:
    """Nested random subsets: one permutation from ``seed``; subset s = its first s ids (sorted)."""
    for s in sizes:
        if not 0 < s <= num_distractors:
            raise ValueError(f"distractor size {s} is outside 1..{num_distractors} (the number of distractors)")
    perm = np.random.default_rng(seed).permutation(num_distractors)
    return {int(s): np.sort(perm[:s]).astype(np.int64) for s in sorted(set(sizes))}


def probe_noise_replace(probes: np.ndarray, labels: np.ndarray, noisy: np.ndarray) -> np.ndarray:
    """Replace each noisy probe by the L2-normalized mean of its identity's clean probes (refined MegaFace).

    An identity whose images are all noisy keeps its features (nothing clean to average); the caller reports it.
    """
    out = np.array(probes, dtype=np.float32, copy=True)
    for lab in np.unique(labels[noisy]):
        members = labels == lab
        clean = members & ~noisy
        if not clean.any():
            continue
        mean = probes[clean].astype(np.float64).mean(axis=0)
        norm = np.linalg.norm(mean)
        out[members & noisy] = (mean / norm if norm > 0 else mean).astype(np.float32)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Helpers of the exact stage
# ---------------------------------------------------------------------------------------------------------------


def _chains(subsets: Mapping[int, np.ndarray]) -> list[list[int]]:
    """Group sizes into chains of nested subsets (scanned once each); non-nested sizes get their own chain."""
    sizes = sorted(subsets)
    chains: list[list[int]] = []
    for s in sizes:
        if chains:
            prev = subsets[chains[-1][-1]]
            if len(prev) <= len(subsets[s]) and np.isin(prev, subsets[s], assume_unique=True).all():
                chains[-1].append(s)
                continue
        chains.append([s])
    return chains


class _Lists:
    """Per-probe kept candidates for one subset: float32 values (desc) and ids, plus whether the list is complete."""

    def __init__(self, top: TopK, subset_count: int) -> None:
        n, k = top.values.shape
        self.values = [top.values[i] for i in range(n)]
        self.ids = [top.ids[i] for i in range(n)]
        self.k = np.full(n, k, np.int64)
        self.count = subset_count  # non-noisy distractors in the subset

    def complete(self) -> np.ndarray:
        return self.k >= self.count

    def kth(self) -> np.ndarray:
        return np.array([v[-1] for v in self.values], np.float64)

    def rank_value(self, r: int) -> np.ndarray:
        """The r-th largest kept float32 value per probe (-inf when fewer than r distractors exist)."""
        return np.array([v[r - 1] if len(v) >= r else -np.inf for v in self.values], np.float64)

    def set(self, i: int, values: np.ndarray, ids: np.ndarray, k: int) -> None:
        self.values[i], self.ids[i], self.k[i] = values, ids, k


def _kth_largest(values: np.ndarray, r: int) -> float:
    """The r-th largest of ``values`` (1-based); -inf when there are fewer than r."""
    if r > len(values):
        return -np.inf
    return float(np.partition(values, len(values) - r)[len(values) - r])


def _thresholds(lists: _Lists, eps: np.ndarray, eps_max: float, ranks: int, ms: Sequence[int]) -> tuple:
    """Float32 cuts below which no deciding score can hide: per-probe for CMC, global per FAR target."""
    theta_cmc = lists.rank_value(ranks) - 2 * eps
    finite = np.concatenate([v[np.isfinite(v)] for v in lists.values]).astype(np.float64)
    theta_far = [(_kth_largest(finite, m + 1) - 2 * eps_max) for m in ms]
    return theta_cmc, theta_far


def _pair_scores(
    probes: np.ndarray, store: DistractorStore, pi: np.ndarray, dj: np.ndarray, chunk: int = 65536
) -> np.ndarray:
    """float64 exact scores of (probe pi[t], distractor dj[t]) pairs, reading distractor rows in sorted order."""
    out = np.empty(len(pi), np.float64)
    order = np.argsort(dj, kind="stable")
    for s in range(0, len(order), chunk):
        sel = order[s : s + chunk]
        uniq, inv = np.unique(dj[sel], return_inverse=True)
        rows = store.read(uniq)
        out[sel] = _tree_dots(probes, pi[sel], rows, inv)
    return out


def _genuine(probes: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All unordered same-identity pairs (i < j) and their exact scores."""
    order = np.argsort(labels, kind="stable")
    lab_sorted = labels[order]
    bounds = np.flatnonzero(np.diff(lab_sorted)) + 1
    ii, jj = [], []
    for grp in np.split(order, bounds):
        if len(grp) < 2:
            continue
        a, b = np.triu_indices(len(grp), 1)
        ii.append(grp[a])
        jj.append(grp[b])
    if not ii:
        raise ValueError("no identity has two or more probe images: no genuine pairs to evaluate")
    i = np.concatenate(ii)
    j = np.concatenate(jj)
    return i, j, _tree_dots(probes, i, probes, j)


def _refine(
    lists: _Lists, probes: np.ndarray, store: DistractorStore, subset_ids: np.ndarray, eps: np.ndarray,
    eps_max: float, ranks: int, ms: Sequence[int], scan_kw: dict[str, Any],
) -> tuple[np.ndarray, list[float], int]:
    """Grow k for probes whose kept list may miss a deciding score, until every list reaches its cut."""
    rounds = 0
    while True:
        theta_cmc, theta_far = _thresholds(lists, eps, eps_max, ranks, ms)
        need = np.minimum(theta_cmc, min(theta_far) if theta_far else np.inf)
        failing = np.flatnonzero(~lists.complete() & (lists.kth() >= need))
        if len(failing) == 0:
            return theta_cmc, theta_far, rounds
        rounds += 1
        new_k = int(min(lists.count, max(4 * int(lists.k[failing].max()), 64)))
        (top,) = scan_topk(np.ascontiguousarray(probes[failing]), store, [subset_ids], new_k, **scan_kw)
        for row, i in enumerate(failing):
            lists.set(int(i), top.values[row], top.ids[row], new_k)


def _exact_size(
    lists: _Lists, probes: np.ndarray, store: DistractorStore, theta_cmc: np.ndarray, theta_far: list[float],
    ranks: int, ms: Sequence[int], num_imp: int, roc_points: int,
) -> tuple[np.ndarray, list[float], dict[str, list[float]]]:
    """float64 rank values v_1..v_ranks per probe, FAR thresholds, and an exact ROC tail, from certified lists."""
    n = len(lists.values)
    need = np.minimum(theta_cmc, min(theta_far) if theta_far else np.inf)
    pi_parts, dj_parts, v32_parts = [], [], []
    for i in range(n):
        v, ids = lists.values[i], lists.ids[i]
        sel = np.isfinite(v) & (v >= need[i])
        pi_parts.append(np.full(int(sel.sum()), i, np.int64))
        dj_parts.append(ids[sel])
        v32_parts.append(v[sel].astype(np.float64))
    pi = np.concatenate(pi_parts)
    dj = np.concatenate(dj_parts)
    v32 = np.concatenate(v32_parts)
    s64 = _pair_scores(probes, store, pi, dj) if len(pi) else np.zeros(0)

    ranked = np.full((n, ranks), -np.inf)
    cmc_sel = v32 >= theta_cmc[pi]
    order = np.lexsort((-s64[cmc_sel], pi[cmc_sel]))
    p_sorted, s_sorted = pi[cmc_sel][order], s64[cmc_sel][order]
    starts = np.searchsorted(p_sorted, np.arange(n))
    pos = np.arange(len(p_sorted)) - starts[p_sorted]
    keep = pos < ranks
    ranked[p_sorted[keep], pos[keep]] = s_sorted[keep]

    taus = [_kth_largest(s64[v32 >= th], m + 1) for th, m in zip(theta_far, ms)]
    roc: dict[str, list[float]] = {"far": [], "threshold": []}
    if ms:
        m_max = max(ms)
        pool = np.sort(s64[v32 >= theta_far[int(np.argmax(ms))]])[::-1]
        lo = max(1.0 / num_imp, 1e-9)
        hi = m_max / num_imp if m_max > 0 else lo
        for far in np.unique(np.geomspace(lo, max(hi, lo), roc_points)):
            m = min(int(math.floor(far * num_imp * (1 + 1e-12))), m_max)
            roc["far"].append(float(far))
            roc["threshold"].append(float(pool[m]) if m < len(pool) else -np.inf)
    return ranked, taus, roc


def evaluate_identification(
    probes: np.ndarray,
    labels: np.ndarray,
    distractors: np.ndarray,
    sizes: Sequence[int] | None = None,
    subsets: Mapping[int, np.ndarray] | None = None,
    seed: int = 0,
    ranks: int = 10,
    fars: Sequence[float] = (1e-6, 1e-5, 1e-4),
    probe_noise: np.ndarray | None = None,
    distractor_noise: np.ndarray | None = None,
    backend: str = "auto",
    device: str = "auto",
    chunk_size: int = 16384,
    topk: int | None = None,
    roc_points: int = 25,
    progress: bool = True,
    normalize: bool = False,
) -> dict[str, Any]:
    """MegaFace-style identification (rank-1, CMC) and verification (TAR@FAR), exact, streaming the distractors.

    Non-finite probe or distractor rows are refused (ValueError naming the row); similarity is the inner product of
    the features as given, or of L2-normalized rows with ``normalize`` (then zero rows are refused too).

    Args:
        probes: (N, D) float32 probe features, L2-normalized unless ``normalize`` (FaceScrub in MegaFace).
        labels: (N,) integer identity per probe.
        distractors: (M, D) float32/float16 array or memmap; read in chunks, never copied whole.
        sizes: distractor subset sizes; default 10, 100, … ≤ M plus M. Ignored when ``subsets`` is given.
        subsets: explicit {size: sorted distractor ids}; nested lists share one scan.
        seed: seed of the nested random subsets.
        ranks: CMC ranks 1..ranks.
        fars: FAR targets for TAR@FAR.
        probe_noise: (N,) bool, probes known to be mislabeled (replaced by their identity mean).
        distractor_noise: (M,) bool, distractors known to show a probe identity (never matched, still counted).
        backend: ``auto``, ``torch`` or ``faiss``; results are identical, only speed differs.
        device: ``auto``, ``cpu`` or ``cuda[:i]``.
        chunk_size: distractors per matmul (memory ≈ N · chunk_size · 4 bytes per buffer).
        topk: float32 candidates kept per probe in the first pass (default from ``ranks`` and the largest FAR).
        roc_points: points of the exact ROC tail per size.
        progress: show a tqdm bar.
        normalize: L2-normalize probe and distractor rows (rows already unit length are kept as given; distractors
            are normalized as they are read, nothing is copied).

    Returns:
        A JSON-serialisable dict: counts, backend, ``normalized``, and per size rank-1, CMC, TAR@FAR, thresholds and
        the ROC tail.
    """
    probes, labels, store, noise_p, noise_d = _checked_inputs(probes, labels, distractors, ranks, normalize,
                                                              probe_noise, distractor_noise)
    subsets = _resolved_subsets(subsets, sizes, len(store), seed)
    backend, device = resolve_backend(backend, device)
    fars = [float(f) for f in fars]
    k = _first_k(topk, ranks, fars, len(probes), max(len(ids) for ids in subsets.values()), backend)
    ctx = _context(probes, labels, store, noise_d, ranks, fars, roc_points,
                   {"backend": backend, "device": device, "chunk_size": chunk_size, "progress": None})
    bar = _progress_bar(subsets, noise_d, backend, device) if progress else None
    per_chain = [_evaluate_chain(ctx, chain, subsets, k, bar) for chain in _chains(subsets)]
    if bar is not None:
        bar.close()
    return {
        "protocol": "megaface-challenge1",
        "num_probes": len(probes),
        "num_identities": int(len(np.unique(labels))),
        "num_genuine_ordered": int(len(ctx.ord_p)),
        "num_genuine_pairs": int(len(ctx.gen)),
        "num_distractors": len(store),
        "num_probe_noise": int(noise_p.sum()),
        "num_distractor_noise": int(noise_d.sum()),
        "backend": backend,
        "device": device,
        "normalized": bool(normalize),
        "topk": k,
        "refine_rounds": sum(rounds for _, rounds in per_chain),
        "timings": {k: round(v, 3) for k, v in ctx.timings.items()},
        "ties": "hit at rank k iff sim(p,g) > k-th largest distractor sim (strict); TAR counts genuine > threshold",
        "sizes": sorted((r for results, _ in per_chain for r in results), key=lambda r: r["size"]),
    }


# ---------------------------------------------------------------------------------------------------------------
# Steps of evaluate_identification
# ---------------------------------------------------------------------------------------------------------------


def _checked_inputs(
    probes: np.ndarray, labels: np.ndarray, distractors: np.ndarray, ranks: int, normalize: bool,
    probe_noise: np.ndarray | None, distractor_noise: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, DistractorStore, np.ndarray, np.ndarray]:
    """Shapes and rows checked, probes normalized and noisy probes replaced: (probes, labels, store, noise masks)."""
    probes = np.ascontiguousarray(probes, dtype=np.float32)
    labels = np.asarray(labels)
    if probes.ndim != 2 or labels.shape != (len(probes),):
        raise ValueError(f"probes must be (N, D) with labels (N,), got {probes.shape} and {labels.shape}")
    if distractors.ndim != 2 or distractors.shape[1] != probes.shape[1]:
        raise ValueError(f"distractors must be (M, {probes.shape[1]}), got {distractors.shape}")
    if ranks < 1:
        raise ValueError(f"ranks must be >= 1, got {ranks}")
    p_norms = check_rows(probes, "probes", allow_zero=not normalize)
    if normalize:
        probes = normalize_rows(probes, p_norms)
    store = DistractorStore(distractors, normalize=normalize)
    num_d = len(store)
    noise_d = np.zeros(num_d, bool) if distractor_noise is None else np.asarray(distractor_noise, bool)
    if noise_d.shape != (num_d,):
        raise ValueError(f"distractor_noise must have shape ({num_d},), got {noise_d.shape}")
    noise_p = np.zeros(len(probes), bool) if probe_noise is None else np.asarray(probe_noise, bool)
    if noise_p.shape != (len(probes),):
        raise ValueError(f"probe_noise must have shape ({len(probes)},), got {noise_p.shape}")
    if noise_p.any():
        probes = probe_noise_replace(probes, labels, noise_p)
    return probes, labels, store, noise_p, noise_d


def _resolved_subsets(subsets: Mapping[int, np.ndarray] | None, sizes: Sequence[int] | None, num_d: int,
                      seed: int) -> dict[int, np.ndarray]:
    """Explicit subsets as sorted unique ids (checked against ``num_d``), else the nested random ones of ``sizes``."""
    if subsets is None:
        return nested_subsets(num_d, sizes or default_sizes(num_d), seed)
    out = {int(s): np.unique(np.asarray(ids, np.int64)) for s, ids in subsets.items()}
    for s, ids in out.items():
        if len(ids) and (ids[0] < 0 or ids[-1] >= num_d):
            raise ValueError(f"subset list for size {s} has ids outside 0..{num_d - 1}")
    return out


def _first_k(topk: int | None, ranks: int, fars: Sequence[float], n: int, s_max: int, backend: str = "torch") -> int:
    """Candidates kept per probe in the first pass: enough for the CMC ranks and the largest FAR's impostors.

    The int8 screen's error bound is ~1e-2 where float32's is ~1e-5, so its certified band below each cut holds
    more distractors; it starts with 4x the list (at least 64) instead of paying for refinement rescans.
    """
    m_top = max((far_count(f, n * s_max) for f in fars), default=0)
    k = topk or max(ranks + 6, math.ceil(1.5 * (m_top + 1) / n) + 8)
    if backend == "int8" and topk is None:
        k = max(64, 4 * k)
    return int(max(1, min(k, s_max)))


def _progress_bar(subsets: Mapping[int, np.ndarray], noise_d: np.ndarray, backend: str, device: str) -> Any:
    """A tqdm bar over the clean distractors that the chains' first passes read."""
    from tqdm import tqdm

    total = sum(int((~noise_d[subsets[c[-1]]]).sum()) for c in _chains(subsets))
    return tqdm(total=total, unit="distractor", desc=f"identification [{backend}/{device}]")


@dataclass
class _Context:
    """What every chain of one evaluation shares: inputs, options, genuine pairs and the running timings."""

    probes: np.ndarray
    store: DistractorStore
    noise_d: np.ndarray
    p_norm: np.ndarray
    ranks: int
    fars: list[float]
    roc_points: int
    scan_kw: dict[str, Any]
    ord_p: np.ndarray
    ord_s: np.ndarray
    gen: np.ndarray
    timings: dict[str, float]


def _context(probes: np.ndarray, labels: np.ndarray, store: DistractorStore, noise_d: np.ndarray, ranks: int,
             fars: list[float], roc_points: int, scan_kw: dict[str, Any]) -> _Context:
    """The shared state, with the genuine pairs scored once (timed)."""
    timings = {"genuine_s": 0.0, "scan_s": 0.0, "refine_s": 0.0, "exact_s": 0.0}
    t0 = time.perf_counter()
    gi, gj, gen = _genuine(probes, labels)
    timings["genuine_s"] = time.perf_counter() - t0
    # ordered pairs (p, g): the unordered scores serve both directions (exact_sims is symmetric)
    return _Context(probes, store, noise_d, np.linalg.norm(probes.astype(np.float64), axis=1), ranks, fars,
                    roc_points, scan_kw, np.concatenate([gi, gj]), np.concatenate([gen, gen]), gen, timings)


def _evaluate_chain(ctx: _Context, chain: list[int], subsets: Mapping[int, np.ndarray], k: int,
                    bar: Any) -> tuple[list[dict[str, Any]], int]:
    """One scan of a chain of nested subsets, then each size certified and scored exactly: (results, refine rounds)."""
    segs, prev = [], np.zeros(0, np.int64)
    for s in chain:
        seg = np.setdiff1d(subsets[s], prev, assume_unique=True)
        segs.append(seg[~ctx.noise_d[seg]])
        prev = subsets[s]
    chain_k = int(max(1, min(k, len(subsets[chain[-1]]))))
    ctx.store.reset_stats()
    t0 = time.perf_counter()
    tops = scan_topk(ctx.probes, ctx.store, segs, chain_k, **dict(ctx.scan_kw, progress=bar))
    ctx.timings["scan_s"] += time.perf_counter() - t0
    eps = scan_error_bound(ctx.scan_kw["backend"], ctx.probes, ctx.store)
    results, refine_rounds = [], 0
    for s, top in zip(chain, tops):
        result, rounds = _evaluate_size(ctx, s, subsets[s], top, eps)
        results.append(result)
        refine_rounds += rounds
    return results, refine_rounds


def _evaluate_size(ctx: _Context, size: int, subset: np.ndarray, top: TopK,
                   eps: np.ndarray) -> tuple[dict[str, Any], int]:
    """One size from its first-pass candidates: refine until certified, score exactly: (result, refine rounds).

    Noisy distractors keep their slot in the impostor count (``len(subset)``) but are never candidates.
    """
    ids_s = subset[~ctx.noise_d[subset]]
    num_imp = len(ctx.probes) * len(subset)
    ms = [far_count(f, num_imp) for f in ctx.fars]
    lists = _Lists(top, len(ids_s))
    t0 = time.perf_counter()
    theta_cmc, theta_far, rounds = _refine(lists, ctx.probes, ctx.store, ids_s, eps, float(eps.max()), ctx.ranks, ms,
                                           ctx.scan_kw)
    t1 = time.perf_counter()
    ranked, taus, roc = _exact_size(lists, ctx.probes, ctx.store, theta_cmc, theta_far, ctx.ranks, ms, num_imp,
                                    ctx.roc_points)
    ctx.timings["refine_s"] += t1 - t0
    ctx.timings["exact_s"] += time.perf_counter() - t1
    result = _size_result(size, len(ids_s), num_imp, ctx.ord_p, ctx.ord_s, ctx.gen, ranked, ctx.fars, ms, taus, roc)
    return result, rounds


def _size_result(
    size: int, clean: int, num_imp: int, ord_p: np.ndarray, ord_s: np.ndarray, gen: np.ndarray,
    ranked: np.ndarray, fars: Sequence[float], ms: Sequence[int], taus: Sequence[float], roc: dict[str, list[float]],
) -> dict[str, Any]:
    cmc = [float(np.mean(ord_s > ranked[ord_p, r])) for r in range(ranked.shape[1])]
    tar = {f"{f:g}": float(np.mean(gen > t)) for f, t in zip(fars, taus)}
    roc_tar = [float(np.mean(gen > t)) for t in roc["threshold"]]
    return {
        "size": int(size),
        "num_clean_distractors": int(clean),
        "num_impostors": int(num_imp),
        "rank1": cmc[0],
        "cmc": cmc,
        "hits_rank1": int(np.sum(ord_s > ranked[ord_p, 0])),
        "tar_at_far": tar,
        "far_thresholds": {f"{f:g}": float(t) for f, t in zip(fars, taus)},
        "far_allowed_impostors": {f"{f:g}": int(m) for f, m in zip(fars, ms)},
        "roc": {"far": roc["far"], "tar": roc_tar, "threshold": roc["threshold"]},
    }
