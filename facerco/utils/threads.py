"""Torch CPU threads for a job: the cores other processes are not using, unless pinned.

Moved here from ``facerco demo`` so that the teacher and student jobs (``train.threads``) choose the same way.

Why: torch's CPU kernels split each op over all threads and wait for the slowest; with another process holding one
of 2 cores, 2 threads ran a student step 2.2x slower than 1 thread (1,607 vs 723 ms, mbf_0.8m at 48 px), while on
idle cores 2 threads are 1.7x faster. :func:`busy_cores`, measured before a job starts, says how many cores are
taken. The thread count changes the numbers (summation order), so a job prints it and records it.

- :func:`busy_cores`: cores busy right now, from ``/proc/stat`` over an interval (Linux), else the load average
- :func:`choose_threads`: ``requested`` if > 0, else the free cores (at least 1, at most torch's current count)
- :func:`job_threads`: a context manager that sets the count for a job, prints why, and restores the caller's
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["AUTO_INTERVAL_S", "ThreadChoice", "busy_cores", "choose_threads", "job_threads"]

AUTO_INTERVAL_S = 0.5  # how long busy_cores watches /proc/stat before a job starts


def _load_average() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all cores from the first line of ``/proc/stat``; None where it cannot be read."""
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            fields = [int(v) for v in handle.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    if len(fields) < 4:
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])


def busy_cores(interval: float = AUTO_INTERVAL_S) -> float:
    """How many cores other processes keep busy right now: CPU time over ``interval`` from ``/proc/stat`` (Linux),
    else the 1-minute load average (which lags: it still counts a job that just ended)."""
    first = _cpu_times()
    if first is None:
        return _load_average()
    time.sleep(interval)
    second = _cpu_times()
    total = second[1] - first[1] if second else 0
    if second is None or total <= 0:
        return _load_average()
    cpus = os.cpu_count() or 1
    return cpus * (second[0] - first[0]) / total


def _usable_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def choose_threads(requested: int = 0, cpus: int | None = None, busy: float | None = None,
                   default: int | None = None) -> int:
    """Torch threads: ``requested`` if > 0, else the cores not already busy, at least 1 and never more than
    ``default`` (torch's current count, which a caller or ``OMP_NUM_THREADS`` may have lowered).

    Args:
        requested: a pinned count (> 0), or 0 for the automatic choice.
        cpus: cores this process may run on; default: its CPU affinity.
        busy: cores busy elsewhere; default: :func:`busy_cores` (measured only when it can change the answer).
        default: the upper bound; default: ``torch.get_num_threads()``.
    """
    if requested < 0:
        raise ValueError(f"threads must be >= 0 (0 = the cores not busy), got {requested}")
    if requested > 0:
        return requested
    if default is None:
        import torch

        default = torch.get_num_threads()
    if default <= 1:  # nothing to choose: skip the measurement
        return 1
    cpus = cpus if cpus is not None else _usable_cpus()
    busy = busy if busy is not None else busy_cores()
    return max(1, min(default, cpus - int(round(busy))))


@dataclass(frozen=True)
class ThreadChoice:
    """The thread count a job runs with and why (printed at start, recorded in its summary)."""

    threads: int
    requested: int

    @property
    def reason(self) -> str:
        if self.requested > 0:
            return "train.threads pins it"
        return f"the cores not busy at start, measured over {AUTO_INTERVAL_S:g} s; train.threads=N pins it"

    def to_dict(self) -> dict[str, int | str]:
        return {"threads": self.threads, "requested": self.requested, "reason": self.reason}


@contextmanager
def job_threads(requested: int, job: str, announce: bool = True) -> Iterator[ThreadChoice]:
    """Set torch's thread count for the body (:func:`choose_threads`), print one line saying how many and why, and
    restore the caller's count afterwards (a test or notebook running a job keeps its setting)."""
    import torch

    before = torch.get_num_threads()
    choice = ThreadChoice(choose_threads(requested), requested)
    torch.set_num_threads(choice.threads)
    if announce:
        print(f"{job}: {choice.threads} torch thread(s) ({choice.reason})", flush=True)
    try:
        yield choice
    finally:
        torch.set_num_threads(before)
