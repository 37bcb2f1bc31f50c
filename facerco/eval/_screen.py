"""int8 screen for the exact 1:N stage: rows quantized to int8, scored by onnxruntime's integer matrix product, with
a proven bound on how far a screen score can be from the float64 score that the exact stage decides on.

Why onnxruntime: its ``MatMulInteger`` runs MLAS's u8s8 kernels (AVX2, AVX512-VNNI, AMX-INT8 picked at run time)
with the probe matrix packed once as a constant; torch's CPU ``_int_mm`` and bf16 ``mm`` were 40x and 7x slower
than fp32 on an AVX2 box, and faiss has no int8 flat product.

Bound. Each row ``x`` (float32) is stored as ``s·q`` with ``q`` int8 in [-L, L] and ``s = max|x| / L``
(float32; L = 127 for distractors, 127 or 63 for probes, see :func:`probe_levels`); ``r = x - s·q`` is its
residual, computed exactly in float64 (``s·q`` has at most 31 significant bits).
For a probe ``p`` and a distractor ``d``::

    p·d - p̂·d̂ = p·r_d + r_p·d̂            so   |p·d - p̂·d̂| <= ‖p‖·‖r_d‖ + ‖r_p‖·‖d̂‖      (Cauchy–Schwarz)

with the rows' actual residual norms, not a worst case. ``q_p·q_d`` is exact in int32 (|q_p·q_d| <= D·127² < 2³¹
for D < 133,000); the screen value ``fl32(fl32(fl32(q_p·q_d)·s_d)·s_p)`` has three float32 roundings, so it is within
``3.0001·u·‖p̂‖‖d̂‖`` of ``p̂·d̂`` (u = 2⁻²⁴). The exact stage's float64 tree sum is within ``γ_D(2⁻⁵³)·‖p‖‖d‖`` of
``p·d``. Per probe, over the distractors scanned (R = max ‖r_d‖, N = max ‖d̂‖, M = max ‖d‖)::

    eps(p) = ‖p‖·R + ‖r_p‖·N + 3.0001·u·(‖p‖ + ‖r_p‖)·N + γ_D(2⁻⁵³)·‖p‖·M

All norms are computed in float64 and inflated by 1e-9 relative (their own rounding is below D·2⁻⁵³).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Int8Rows", "Int8Stats", "quantize_rows", "Int8Product", "int8_error_bound", "probe_levels"]

_U32 = 2.0**-24
_U64 = 2.0**-53
_INFLATE = 1.0 + 1e-9


@dataclass
class Int8Rows:
    """Rows as ``scale[:, None] * codes``, with the float64 norms of the residual and of the quantized row."""

    codes: np.ndarray  # (n, D) int8
    scale: np.ndarray  # (n,) float32
    residual_norm: np.ndarray  # (n,) float64
    quantized_norm: np.ndarray  # (n,) float64


# The probe side is the graph's int8 operand. MLAS's AVX2 u8s8 kernel (VPMADDUBSW) adds two uint8*int8 products in
# int16 and saturates past 32767 (255*127*2 does; 255*63*2 does not), so there probes keep 7 bits; VNNI/AMX kernels
# accumulate in int32 and take 8. Which one runs is measured, not assumed (:func:`probe_levels`). The bound uses the
# actual residuals, so coarser probe codes only widen it; results do not change.
SAFE_PROBE_LEVELS = 63
DISTRACTOR_LEVELS = 127


def quantize_rows(rows: np.ndarray, levels: int = DISTRACTOR_LEVELS) -> Int8Rows:
    """Symmetric per-row codes in [-levels, levels] of float32 ``rows``; a zero row gets scale 1 and zero codes."""
    rows = np.asarray(rows, np.float32)
    peak = np.abs(rows).max(axis=1) if rows.shape[1] else np.zeros(len(rows), np.float32)
    scale = np.where(peak > 0, peak / np.float32(levels), np.float32(1.0)).astype(np.float32)
    codes = np.clip(np.rint(rows / scale[:, None]), -levels, levels).astype(np.int8)
    approx = scale[:, None].astype(np.float64) * codes  # exact: 24-bit scale times a 7-bit integer
    residual = rows.astype(np.float64) - approx
    return Int8Rows(codes, scale, np.sqrt(np.einsum("ij,ij->i", residual, residual)) * _INFLATE,
                    np.sqrt(np.einsum("ij,ij->i", approx, approx)) * _INFLATE)


@dataclass
class Int8Stats:
    """The distractor side of the bound: maxima over every row the screen scanned since the last reset."""

    max_residual: float = 0.0
    max_quantized: float = 0.0
    max_norm: float = 0.0

    def add(self, q: Int8Rows, rows: np.ndarray) -> None:
        if len(rows) == 0:
            return
        self.max_residual = max(self.max_residual, float(q.residual_norm.max()))
        self.max_quantized = max(self.max_quantized, float(q.quantized_norm.max()))
        norms = np.sqrt(np.einsum("ij,ij->i", rows.astype(np.float64), rows.astype(np.float64)))
        self.max_norm = max(self.max_norm, float(norms.max()) * _INFLATE)


def _gamma64(dim: int) -> float:
    return dim * _U64 / (1 - dim * _U64) * 1.0001


def _session(dim: int, probe_codes: np.ndarray, threads: int | None) -> object:
    """An onnxruntime session computing (chunk codes + 128 as uint8, zero point 128) x probe codes -> int32."""
    import onnxruntime as ort
    import torch
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["chunk", "probes", "zero"], ["dots"])], "int8_screen",
        [helper.make_tensor_value_info("chunk", TensorProto.UINT8, ["c", dim])],
        [helper.make_tensor_value_info("dots", TensorProto.INT32, ["c", probe_codes.shape[0]])],
        initializer=[numpy_helper.from_array(np.ascontiguousarray(probe_codes.T), "probes"),
                     numpy_helper.from_array(np.array(128, np.uint8), "zero")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _shifted(codes: np.ndarray) -> np.ndarray:
    """int8 v -> uint8 v + 128, bit for bit (the u8s8 kernels' unsigned operand)."""
    return codes.view(np.uint8) ^ np.uint8(0x80)


_LEVELS: list[int] = []


def probe_levels() -> int:
    """127 where this machine's integer product is exact on the worst case (extreme codes of one sign in every
    pair of a 64-wide row), else 63; measured once per process."""
    if not _LEVELS:
        dim = 64
        probe = np.full((1, dim), 127, np.int8)
        chunk = np.concatenate([np.full((1, dim), 127, np.int8), np.full((1, dim), -128 + 1, np.int8)])
        (dots,) = _session(dim, probe, 1).run(None, {"chunk": _shifted(chunk)})  # type: ignore[attr-defined]
        exact = chunk.astype(np.int64) @ probe.astype(np.int64).T
        _LEVELS.append(127 if np.array_equal(dots, exact) else SAFE_PROBE_LEVELS)
    return _LEVELS[0]


def int8_error_bound(probes: np.ndarray, stats: Int8Stats) -> np.ndarray:
    """Per probe, the largest possible |screen score - float64 exact score| over the scanned distractors."""
    q = quantize_rows(probes, probe_levels())
    p_norm = np.sqrt(np.einsum("ij,ij->i", probes.astype(np.float64), probes.astype(np.float64))) * _INFLATE
    rounding = 3.0001 * _U32 * (p_norm + q.residual_norm) * stats.max_quantized
    exact_sum = _gamma64(probes.shape[1]) * p_norm * stats.max_norm
    return p_norm * stats.max_residual + q.residual_norm * stats.max_quantized + rounding + exact_sum + 1e-300


class Int8Product:
    """``scale_p · scale_d · (q_p · q_d)`` for a fixed probe set against distractor chunks, in onnxruntime.

    The probes' codes are a constant of the graph (packed once by MLAS); each call feeds a chunk of distractor codes
    (shifted to uint8 with zero point 128, the u8s8 kernels' layout) and returns float32 (n_probes, chunk) scores.
    """

    def __init__(self, probes: np.ndarray, threads: int | None = None) -> None:
        q = quantize_rows(probes, probe_levels())
        self.probe_scale = q.scale
        self.session = _session(probes.shape[1], q.codes, threads)

    def chunk_scores(self, chunk: Int8Rows) -> np.ndarray:
        """``fl32(fl32(q_p·q_d)·s_d)`` as float32 (n_probes, len(chunk)), a transposed view of one contiguous buffer.

        The probe's scale is left out: it orders one probe's scores the same way, so a scan can keep its top-k on
        these and multiply the kept values by ``probe_scale`` afterwards (the same float32 operations, in order).
        """
        import torch

        (dots,) = self.session.run(None, {"chunk": _shifted(chunk.codes)})  # type: ignore[attr-defined]
        return torch.mul(torch.from_numpy(dots), torch.from_numpy(chunk.scale)[:, None]).numpy().T

    def scores(self, chunk: Int8Rows) -> np.ndarray:
        """The screen scores ``fl32(fl32(fl32(q_p·q_d)·s_d)·s_p)``, float32 (n_probes, len(chunk))."""
        return self.chunk_scores(chunk) * self.probe_scale[:, None]
