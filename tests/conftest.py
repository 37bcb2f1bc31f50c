"""Shared fixtures: the real-data root (skips when absent) and a quiet, single-threaded torch."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_DEFAULT_REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def real_data_root() -> Path | None:
    """Root of ../shared/data, or FACERCO_REAL_DATA; None when the photos are not on this machine."""
    root = Path(os.environ.get("FACERCO_REAL_DATA", _DEFAULT_REAL))
    return root if root.is_dir() else None


@pytest.fixture
def real_data() -> Path:
    root = real_data_root()
    if root is None:
        pytest.skip("real face data not present (set FACERCO_REAL_DATA to ../shared/data)")
    return root


@pytest.fixture(autouse=True)
def _single_thread_torch():
    """Two cores and parallel test workers: one intra-op thread per worker keeps runs predictable."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
