"""Row-wise float64 dot products by a fixed summation tree: the same bits for a given pair of rows whatever the
batch, backend or machine.

Shared by the exact identification stage (deciding scores) and the feature checks (row norms, so that a row
normalizes to the same float32 values in whichever chunk it is read).
"""

from __future__ import annotations

import numpy as np

__all__ = ["tree_dots"]


def tree_dots(a: np.ndarray, ia: np.ndarray | None, b: np.ndarray, ib: np.ndarray | None, chunk: int = 256
              ) -> np.ndarray:
    """``a[ia[t]] · b[ib[t]]`` (rows gathered chunk by chunk; None = identity) by the fixed float64 tree.

    Products of two float32 (or float16) values are exact in float64 and the sum uses only element-wise IEEE
    additions in a fixed order. Small chunks keep the float64 buffer in cache (2.5x faster than 8192-row chunks).
    """
    n = len(a) if ia is None else len(ia)
    dim = a.shape[1]
    width = 1 << max(0, (dim - 1).bit_length())
    out = np.empty(n, np.float64)
    buf = np.zeros((min(chunk, n), width), np.float64)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        prod = buf[:m]
        rows_a = a[s : s + m] if ia is None else a[ia[s : s + m]]
        rows_b = b[s : s + m] if ib is None else b[ib[s : s + m]]
        np.multiply(rows_a, rows_b, out=prod[:, :dim], dtype=np.float64)
        if width > dim:
            prod[:, dim:] = 0.0
        w = width
        while w > 1:  # fixed tree: element i pairs with i + w/2, in place
            half = w // 2
            np.add(prod[:, :half], prod[:, half:w], out=prod[:, :half])
            w = half
        out[s : s + m] = prod[:, 0]
    return out
