"""Streaming per-probe top-k search over distractors that may not fit in memory.

Two interchangeable backends return the same thing: for every probe, its ``k`` highest float32 inner products with
the distractors scanned so far (values descending, ``-inf``/``-1`` padding), snapshotted after each segment of a
chain of segments (nested distractor subsets are scanned once). The float32 values only *select* candidates; the
protocol code recomputes every score it decides on in float64 (see ``identification.exact_sims``), so the two
backends give identical final results even where their float32 rounding differs.

- ``torch``: chunked matmul; a chunk is merged through a per-probe threshold (the running k-th value) so only the
  few entries that beat it are sorted. Runs on CPU or CUDA (TF32 disabled for the scan).
- ``faiss``: ``faiss.knn`` (flat inner product, exact) per chunk, GPU via ``faiss.knn_gpu`` when available.
- ``int8``: an int8 screen (:mod:`facerco.eval._screen`): rows quantized per row, scored by onnxruntime's integer
  product, merged like ``torch``. Its scores are further from float64 than float32's, by a bound it proves
  (:func:`scan_error_bound`), so the exact stage keeps more candidates; the final results are the same.

Distractors are read row-wise from a numpy array or memmap (float32 or float16), one chunk at a time. Every row
read and every probe is checked first: ``torch.topk`` orders NaN above +inf while faiss never keeps a NaN, so a
non-finite feature made the two backends disagree; it is refused instead (:mod:`facerco.eval.checks`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from facerco.eval._screen import Int8Product, Int8Stats, int8_error_bound, quantize_rows
from facerco.eval.checks import check_rows, normalize_rows

__all__ = ["DistractorStore", "TopK", "available_backends", "resolve_backend", "scan_error_bound", "scan_topk"]

_U32 = 2.0**-24
_U64 = 2.0**-53


class DistractorStore:
    """Read rows of an (M, D) float32/float16 array by sorted ids, in bounded chunks; every row read is checked.

    A non-finite row is refused when it is read (the backends order NaN differently, see :mod:`facerco.eval.checks`);
    with ``normalize`` rows are L2-normalized as they are read, the same bits in every chunk, so nothing is copied.

    Args:
        feats: array or ``np.memmap`` of shape (M, D).
        normalize: L2-normalize rows (zero rows are then refused too).
        source: name used in errors (the file, or ``distractors``).
    """

    def __init__(self, feats: np.ndarray, normalize: bool = False, source: str = "distractors") -> None:
        if feats.ndim != 2:
            raise ValueError(f"distractor features must be 2-D (M, D), got shape {feats.shape}")
        if feats.dtype not in (np.float32, np.float16):
            raise ValueError(f"distractor features must be float32 or float16, got {feats.dtype}")
        self.feats = feats
        self.normalize, self.source = normalize, source
        self.max_sq_norm = 0.0  # largest squared row norm yielded by chunks() since the last reset
        self.int8 = Int8Stats()  # the int8 screen's side of its error bound, since the last reset

    def reset_stats(self) -> None:
        """Start a new scan's maxima (the error bounds cover the rows read since)."""
        self.max_sq_norm = 0.0
        self.int8 = Int8Stats()

    def __len__(self) -> int:
        return int(self.feats.shape[0])

    @property
    def dim(self) -> int:
        return int(self.feats.shape[1])

    def read(self, ids: np.ndarray) -> np.ndarray:
        """Rows ``ids`` (sorted ascending) as a C-contiguous float32 array; a contiguous run is sliced, not gathered."""
        if len(ids) == 0:
            return np.zeros((0, self.dim), np.float32)
        lo, hi = int(ids[0]), int(ids[-1])
        rows = self.feats[lo : hi + 1] if hi - lo + 1 == len(ids) else self.feats[ids]
        norms = check_rows(rows, self.source, ids, allow_zero=not self.normalize)
        if self.normalize:
            rows = normalize_rows(rows, norms)
        if rows.dtype == np.float32 and rows.flags.c_contiguous and rows.flags.writeable:
            return np.asarray(rows)
        return np.array(rows, dtype=np.float32, order="C")  # an owned, writable copy (torch needs writable)

    def chunks(self, ids: np.ndarray, chunk_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(ids_chunk, rows)`` over ``ids`` (sorted) in chunks of at most ``chunk_size`` rows."""
        for start in range(0, len(ids), chunk_size):
            part = ids[start : start + chunk_size]
            rows = self.read(part)
            if len(rows):
                self.max_sq_norm = max(self.max_sq_norm, float(np.einsum("ij,ij->i", rows, rows).max()))
            yield part, rows


@dataclass
class TopK:
    """Per-probe top-k: ``values`` (n, k) float32 descending, ``ids`` (n, k) int64; padding is -inf / -1."""

    values: np.ndarray
    ids: np.ndarray


def available_backends() -> list[str]:
    """Backends importable here (``faiss`` needs faiss-cpu or faiss-gpu; ``torch`` and ``int8`` are always present)."""
    out = ["torch", "int8"]
    with contextlib.suppress(ImportError):
        import faiss  # noqa: F401

        out.append("faiss")
    return out


def _faiss_gpu() -> bool:
    try:
        import faiss
    except ImportError:
        return False
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def resolve_backend(backend: str, device: str = "auto") -> tuple[str, str]:
    """Pick ``(backend, device)``. ``auto``: faiss-gpu when a GPU and faiss-gpu exist, else torch (on CUDA when
    present). On CPU torch is preferred: measured ~1.25x faster than faiss-cpu's bundled BLAS on these machines.
    The int8 screen is never picked by ``auto``: its proven bound (~0.03 on 512-d unit rows) leaves so many
    candidates near the TAR@FAR=1e-4 cut that refinement and exact rescoring cost more than the float32 scan
    (``benchmarks/identification.py``: 17x the bare product at 100k distractors, torch 1.5x)."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if backend == "auto":
        backend = "faiss" if device.startswith("cuda") and _faiss_gpu() else "torch"
    if backend not in ("torch", "faiss", "int8"):
        raise ValueError(f"unknown search backend {backend!r}; expected 'auto', 'torch', 'faiss' or 'int8'")
    if backend == "int8" and device != "cpu":
        raise ValueError(f"backend 'int8' runs on the CPU (onnxruntime); got device {device!r}")
    if backend == "faiss" and "faiss" not in available_backends():
        raise RuntimeError("backend 'faiss' was asked for but faiss is not installed (pip install faiss-cpu)")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device '{device}' was asked for but CUDA is not available on this machine")
    return backend, device


# ---------------------------------------------------------------------------------------------------------------
# torch backend
# ---------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _full_fp32_matmul() -> Iterator[None]:
    """The error bound used by the exact refinement assumes IEEE float32 products: no TF32 during the scan."""
    import torch

    old_prec = torch.get_float32_matmul_precision()
    old_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old_prec)
        torch.backends.cuda.matmul.allow_tf32 = old_tf32


class _TorchMerger:
    """Running per-probe top-k on torch tensors, merged chunk by chunk through the running k-th value."""

    def __init__(self, n: int, k: int, device: str) -> None:
        import torch

        self.torch = torch
        self.k = k
        self.values = torch.full((n, k), float("-inf"), dtype=torch.float32, device=device)
        self.ids = torch.full((n, k), -1, dtype=torch.int64, device=device)
        self.seen = 0

    def _merge_rows(self, rows, cand_v, cand_i) -> None:  # noqa: ANN001 - torch tensors
        torch = self.torch
        allv = torch.cat([self.values[rows], cand_v], dim=1)
        alli = torch.cat([self.ids[rows], cand_i], dim=1)
        top = allv.topk(self.k, dim=1)
        self.values[rows] = top.values
        self.ids[rows] = alli.gather(1, top.indices)

    def _dense(self, sims, ids_c, rows=None) -> None:  # noqa: ANN001
        torch = self.torch
        if rows is None:
            rows = torch.arange(sims.shape[0], device=sims.device)
        else:
            sims = sims[rows]
        kk = min(self.k, sims.shape[1])
        top = sims.topk(kk, dim=1)
        self._merge_rows(rows, top.values, ids_c[top.indices])

    def update(self, sims, ids_c) -> None:  # noqa: ANN001
        """Merge one chunk of similarities ``sims`` (n, c) whose columns are distractors ``ids_c`` (c,)."""
        torch = self.torch
        n, c = sims.shape
        # The running k-th value is a valid cut as soon as every row holds k entries: later values at or below it can
        # never enter the final top-k. Sort densely only until the cut leaves few survivors (~k*c/seen per row).
        first = self.seen < 4 * self.k
        self.seen += c
        if first:
            self._dense(sims, ids_c)
            return
        mask = sims > self.values[:, -1:]
        if mask.device.type == "cpu":  # numpy's flatnonzero is several times faster than torch.nonzero on CPU
            flat = torch.from_numpy(np.flatnonzero(mask.numpy()))
            rows, cols = flat // c, flat % c
        else:
            rows, cols = mask.nonzero(as_tuple=True)
        total = rows.numel()
        if total == 0:
            return
        counts = torch.bincount(rows, minlength=n)
        present = counts > 0
        urows = present.nonzero().squeeze(1)
        cmax = int(counts.max())
        if urows.numel() * cmax > 8 * total + 4096:  # a few rows with many survivors: sort just those rows
            self._dense(sims, ids_c, urows)
            return
        compact = present.cumsum(0) - 1
        starts = counts.cumsum(0) - counts
        pos = torch.arange(total, device=sims.device) - starts[rows]
        pad_v = torch.full((urows.numel(), cmax), float("-inf"), dtype=sims.dtype, device=sims.device)
        pad_i = torch.full((urows.numel(), cmax), -1, dtype=torch.int64, device=sims.device)
        r = compact[rows]
        pad_v[r, pos] = sims[rows, cols]
        pad_i[r, pos] = ids_c[cols]
        self._merge_rows(urows, pad_v, pad_i)

    def snapshot(self) -> TopK:
        return TopK(self.values.cpu().numpy().copy(), self.ids.cpu().numpy().copy())


def _scan_torch(
    probes: np.ndarray, store: DistractorStore, segments: Sequence[np.ndarray], k: int, chunk_size: int,
    device: str, progress: object | None,
) -> list[TopK]:
    import torch

    out: list[TopK] = []
    with _full_fp32_matmul(), torch.inference_mode():
        p = torch.from_numpy(probes).to(device)
        merger = _TorchMerger(len(probes), k, device)
        buf = torch.empty((len(probes), chunk_size), dtype=torch.float32, device=device)  # one (n, chunk) buffer
        for seg in segments:
            for ids, rows in store.chunks(seg, chunk_size):
                d = torch.from_numpy(rows).to(device, non_blocking=True)
                sims = buf if len(ids) == chunk_size else torch.empty((len(probes), len(ids)), device=device)
                torch.mm(p, d.T, out=sims)
                merger.update(sims, torch.from_numpy(ids).to(device))
                del sims
                if progress is not None:
                    progress.update(len(ids))  # type: ignore[attr-defined]
            out.append(merger.snapshot())
    return out


# ---------------------------------------------------------------------------------------------------------------
# faiss backend
# ---------------------------------------------------------------------------------------------------------------


def _merge_np(cur: TopK, vals: np.ndarray, ids: np.ndarray) -> TopK:
    k = cur.values.shape[1]
    allv = np.concatenate([cur.values, vals], axis=1)
    alli = np.concatenate([cur.ids, ids], axis=1)
    order = np.argsort(-allv, axis=1, kind="stable")[:, :k]
    return TopK(np.take_along_axis(allv, order, 1), np.take_along_axis(alli, order, 1))


def _scan_faiss(
    probes: np.ndarray, store: DistractorStore, segments: Sequence[np.ndarray], k: int, chunk_size: int,
    device: str, progress: object | None,
) -> list[TopK]:
    import faiss

    use_gpu = device.startswith("cuda") and _faiss_gpu() and k <= 2048
    res = faiss.StandardGpuResources() if use_gpu else None
    n = len(probes)
    cur = TopK(np.full((n, k), -np.inf, np.float32), np.full((n, k), -1, np.int64))
    out: list[TopK] = []
    for seg in segments:
        for ids, rows in store.chunks(seg, chunk_size):
            kk = min(k, len(ids))
            if res is not None:
                dist, local = faiss.knn_gpu(res, probes, rows, kk, metric=faiss.METRIC_INNER_PRODUCT)
            else:
                dist, local = faiss.knn(probes, rows, kk, metric=faiss.METRIC_INNER_PRODUCT)
            glob = np.where(local >= 0, ids[np.clip(local, 0, None)], -1)
            dist = np.where(local >= 0, dist, -np.inf).astype(np.float32)
            cur = _merge_np(cur, dist, glob)
            if progress is not None:
                progress.update(len(ids))  # type: ignore[attr-defined]
        out.append(TopK(cur.values.copy(), cur.ids.copy()))
    return out


# ---------------------------------------------------------------------------------------------------------------
# int8 screen
# ---------------------------------------------------------------------------------------------------------------


def _scan_int8(
    probes: np.ndarray, store: DistractorStore, segments: Sequence[np.ndarray], k: int, chunk_size: int,
    device: str, progress: object | None,
) -> list[TopK]:
    import torch

    product = Int8Product(probes)
    merger = _TorchMerger(len(probes), k, "cpu")
    out: list[TopK] = []
    with torch.inference_mode():
        for seg in segments:
            for ids, rows in store.chunks(seg, chunk_size):
                codes = quantize_rows(rows)
                store.int8.add(codes, rows)
                merger.update(torch.from_numpy(product.chunk_scores(codes)), torch.from_numpy(ids))
                if progress is not None:
                    progress.update(len(ids))  # type: ignore[attr-defined]
            top = merger.snapshot()  # kept on probe-unscaled scores: the probe's scale is applied here, once
            out.append(TopK(top.values * product.probe_scale[:, None], top.ids))
    return out


def _gamma(dim: int) -> float:
    """Bound on |float32 dot - float64 dot| per unit of |a|·|b|: γ_D(u32) + γ_D(u64), valid for any order/FMA."""
    g32 = dim * _U32 / (1 - dim * _U32)
    g64 = dim * _U64 / (1 - dim * _U64)
    return (g32 + g64) * 1.0001


def scan_error_bound(backend: str, probes: np.ndarray, store: DistractorStore) -> np.ndarray:
    """Per probe, the largest |scan score - float64 exact score| over the rows ``store`` yielded since its last
    :meth:`DistractorStore.reset_stats`: float32 rounding for torch/faiss, the int8 screen's proven bound for int8."""
    if backend == "int8":
        return int8_error_bound(probes, store.int8)
    p_norm = np.linalg.norm(probes.astype(np.float64), axis=1)
    d_norm = float(np.sqrt(store.max_sq_norm * (1 + 1e-3)))  # float32 norms: inflate past their rounding
    return _gamma(probes.shape[1]) * p_norm * d_norm + 1e-300


def scan_topk(
    probes: np.ndarray,
    store: DistractorStore,
    segments: Sequence[np.ndarray],
    k: int,
    backend: str = "torch",
    device: str = "cpu",
    chunk_size: int = 16384,
    progress: object | None = None,
) -> list[TopK]:
    """Per-probe top-``k`` float32 inner products over the union of ``segments`` scanned in order.

    Args:
        probes: (n, D) float32 C-contiguous.
        store: the distractors.
        segments: sorted int64 id arrays; a snapshot is taken after each (nested subsets share one scan).
        k: entries kept per probe.
        backend: ``torch``, ``faiss`` or ``int8`` (already resolved).
        device: ``cpu`` or ``cuda[:i]``.
        chunk_size: distractor rows per matmul; memory is about n * chunk_size * 4 bytes.
        progress: optional object with ``update(rows)`` (a tqdm bar).

    Returns:
        One ``TopK`` per segment: the top-k over all segments up to and including it.
    """
    if probes.dtype != np.float32 or probes.ndim != 2 or probes.shape[1] != store.dim:
        raise ValueError(f"probes must be float32 (n, {store.dim}), got {probes.dtype} {probes.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    check_rows(probes, "probes", allow_zero=True)  # NaN would rank differently in each backend
    probes = np.ascontiguousarray(probes)
    fn = {"torch": _scan_torch, "faiss": _scan_faiss, "int8": _scan_int8}[backend]
    return fn(probes, store, segments, k, chunk_size, device, progress)
