"""How facerco starts worker processes (alignment and streamed data preparation)."""

from __future__ import annotations

import multiprocessing as mp
from multiprocessing.context import BaseContext

__all__ = ["process_context"]


def process_context() -> BaseContext:
    """``forkserver`` where it exists, else ``spawn``.

    Why not ``fork``: forking a process that already runs threads (torch's intra-op pool, a progress bar's monitor,
    a test runner) can copy a held lock into the child, which then waits for ever; that hung the test suite once.
    forkserver forks from a clean single-threaded server, so workers start fast and safely. Everything sent to the
    workers (jobs, detector specs) is picklable for that reason.
    """
    return mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
