"""Provenance of a benchmark or study result (issue 22, item 1): which code, which machine, which command, when.

Every results JSON written under ``benchmarks/`` carries the block :meth:`Recorder.finish` returns::

    recorder = Recorder(counted=True, allow_dirty=args.allow_dirty)  # at start: refuses a dirty tree if counted
    ...                                                             # the run
    result["provenance"] = recorder.finish()                        # at the end: versions, CPU, times

A *counted* result (one a README table or a verdict rests on) is refused from a tree with uncommitted changes unless
``--allow-dirty`` is given, and then the block says so (``allow_dirty: true`` and the changed paths). Outside a git
checkout ``commit`` and ``dirty`` are ``None``. Nothing here needs the network; torch is imported only if it is
installed, for its version and thread count.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import platform
import shlex
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["Recorder", "add_provenance_args", "git_state", "cpu_info", "versions", "DIRTY_LIST_CAP"]

REPO = Path(__file__).resolve().parents[1]
DIRTY_LIST_CAP = 50
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16",
             "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")
PACKAGES = {"facerco": ("facerco",), "torch": ("torch",), "numpy": ("numpy",),
            "onnxruntime": ("onnxruntime", "onnxruntime-gpu"), "faiss": ("faiss-cpu", "faiss-gpu", "faiss"),
            "dlib": ("dlib",)}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _git(repo: Path, *args: str) -> str | None:
    """Stdout of ``git -C repo args`` or None when git is missing or ``repo`` is not a checkout."""
    try:
        proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=30,
                              check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def git_state(repo: Path | None = None) -> dict[str, Any]:
    """``{"commit", "dirty", "dirty_files", "dirty_count"}`` of ``repo`` (default: the checkout holding this file);
    None values outside a git checkout.

    ``dirty_files`` lists at most :data:`DIRTY_LIST_CAP` changed paths (``git status --porcelain``, untracked
    files included); ``dirty_count`` is the full count.
    """
    repo = REPO if repo is None else repo
    head = _git(repo, "rev-parse", "HEAD")
    status = _git(repo, "status", "--porcelain", "--untracked-files=normal") if head is not None else None
    if head is None or status is None:
        return {"commit": None, "dirty": None, "dirty_files": None, "dirty_count": None}
    paths = [line[3:] for line in status.splitlines() if line.strip()]
    return {"commit": head.strip(), "dirty": bool(paths), "dirty_files": paths[:DIRTY_LIST_CAP],
            "dirty_count": len(paths)}


def _version(module: str, dists: tuple[str, ...]) -> str | None:
    """The installed distribution's version, else the module's ``__version__``; None when it cannot be imported."""
    for dist in dists:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    try:
        return str(getattr(importlib.import_module(module), "__version__", None) or "unknown")
    except Exception:  # noqa: BLE001 (a broken optional install is recorded as absent)
        return None


def versions() -> dict[str, str | None]:
    """Versions of facerco, torch, numpy, onnxruntime, faiss and dlib (None where not importable) and Python."""
    out: dict[str, str | None] = {name: _version(name, dists) for name, dists in PACKAGES.items()}
    out["python"] = platform.python_version()
    return out


def cpu_info(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, Any]:
    """CPU model, the flags that decide kernel choice (AVX2/AVX-512/VNNI/BF16/AMX), and the logical CPU count."""
    model, flags = platform.processor() or None, set()
    try:
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                model = value.strip()
            elif key.strip() in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {"model": model, "flags": {f: f in flags for f in CPU_FLAGS} if flags else None,
            "logical_cpus": os.cpu_count(),
            "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None}


def _torch_threads() -> int | None:
    try:
        import torch
    except ImportError:
        return None
    return int(torch.get_num_threads())


class Recorder:
    """Collects the provenance of one run: the git state and command at start, versions/CPU/times at the end.

    Args:
        counted: the result is one a table or verdict rests on; a dirty tree is then refused unless ``allow_dirty``.
        allow_dirty: write a counted result from a dirty tree anyway (recorded in the block).
        threads: torch threads the run used, when the caller knows better than ``torch.get_num_threads()`` at the
            end (for instance worker processes with their own setting).

    Raises:
        SystemExit: with a one-line message, when ``counted`` and the tree is dirty and not ``allow_dirty``.
    """

    def __init__(self, *, counted: bool = True, allow_dirty: bool = False, threads: int | None = None) -> None:
        self.counted, self.allow_dirty, self.threads = bool(counted), bool(allow_dirty), threads
        self.started, self._t0 = _now(), time.monotonic()
        self.argv = list(sys.argv)
        self.git = git_state()
        if self.counted and self.git["dirty"] and not self.allow_dirty:
            files = self.git["dirty_files"]
            shown = ", ".join(files[:5]) + (", …" if self.git["dirty_count"] > 5 else "")
            raise SystemExit(f"refusing to write a counted result from a dirty tree ({self.git['dirty_count']} "
                             f"changed files: {shown}); commit first or pass --allow-dirty (recorded)")

    def finish(self, **extra: Any) -> dict[str, Any]:
        """The provenance block (a JSON-ready dict); ``extra`` keys are added last."""
        threads = self.threads if self.threads is not None else _torch_threads()
        return {"recorded": True, "commit": self.git["commit"], "dirty": self.git["dirty"],
                "dirty_files": self.git["dirty_files"], "dirty_count": self.git["dirty_count"],
                "allow_dirty": self.allow_dirty, "counted": self.counted, "versions": versions(),
                "cpu": cpu_info(), "torch_threads": threads, "command": shlex.join(self.argv), "argv": self.argv,
                "executable": sys.executable, "cwd": os.getcwd(), "started": self.started, "ended": _now(),
                "seconds": round(time.monotonic() - self._t0, 3), **extra}


def add_provenance_args(parser: argparse.ArgumentParser) -> None:
    """Add ``--allow-dirty``: write a counted result from a tree with uncommitted changes (recorded)."""
    parser.add_argument("--allow-dirty", action="store_true",
                        help="write a counted result from a tree with uncommitted changes (recorded in provenance)")
