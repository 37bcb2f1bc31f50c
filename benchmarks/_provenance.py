"""Provenance of a benchmark or study result (issue 22, item 1): which code, which machine, which command, when.

Every results JSON written under ``benchmarks/`` carries the block :meth:`Recorder.finish` returns::

    recorder = Recorder(counted=True, allow_dirty=args.allow_dirty)  # at start: refuses a dirty tree if counted
    ...                                                             # the run
    result["provenance"] = recorder.finish()                        # at the end: versions, CPU, times

A *counted* result (one a README table or a verdict rests on) is refused from a tree with uncommitted changes unless
``--allow-dirty`` is given, and then the block says so (``allow_dirty: true`` and the changed paths). What counts:
a study run that trains counted seeds (the scripts decide), and a benchmark whose ``--out`` lies under
``benchmarks/results/`` (:func:`counted_output`), where committed results live. The git state is read again at the
end (``at_end``), so a tree that changed while the run was under way shows. Outside a git checkout ``commit`` and
``dirty`` are ``None``. Nothing here needs the network; torch is imported only if it is installed, for its version
and thread count.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.metadata
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["Recorder", "add_provenance_args", "benchmark_recorder", "command_line", "counted_output", "git_state",
           "cpu_info", "versions", "tree_fingerprint", "DIRTY_LIST_CAP"]

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
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
    """``{"commit", "dirty", "dirty_files", "dirty_count", "diff_sha256"}`` of ``repo`` (default: the checkout
    holding this file); None values outside a git checkout.

    ``dirty_files`` lists at most :data:`DIRTY_LIST_CAP` changed paths (``git status --porcelain``, untracked
    files included); ``dirty_count`` is the full count; ``diff_sha256`` hashes ``git diff HEAD`` (the tracked
    changes; None when there are none), so two dirty states can be told apart.
    """
    repo = REPO if repo is None else repo
    head = _git(repo, "rev-parse", "HEAD")
    status = _git(repo, "status", "--porcelain", "--untracked-files=normal") if head is not None else None
    if head is None or status is None:
        return {"commit": None, "dirty": None, "dirty_files": None, "dirty_count": None, "diff_sha256": None}
    paths = [line[3:] for line in status.splitlines() if line.strip()]
    diff = _git(repo, "diff", "HEAD", "--binary") if paths else None
    return {"commit": head.strip(), "dirty": bool(paths), "dirty_files": paths[:DIRTY_LIST_CAP],
            "dirty_count": len(paths), "diff_sha256": hashlib.sha256(diff.encode()).hexdigest() if diff else None}


SOURCE_GLOBS = ("facerco/**/*.py", "benchmarks/*.py", "benchmarks/*.sh", "configs/**/*.yaml", "pyproject.toml")


def tree_fingerprint(repo: Path | None = None, globs: Sequence[str] = SOURCE_GLOBS) -> dict[str, Any]:
    """``{"sha256", "files"}`` over the source files matching ``globs`` (sorted relative paths, each path and its
    bytes hashed): identifies the code where ``.git`` is missing (a copy of the tree on another machine); recompute it
    in a checkout of the declared commit to confirm that the run used that commit's code."""
    repo = REPO if repo is None else repo
    paths = sorted({p for g in globs for p in repo.glob(g) if p.is_file() and "__pycache__" not in p.parts})
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.relative_to(repo).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return {"sha256": digest.hexdigest(), "files": len(paths), "globs": list(globs)}


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
        argv: the command line (program first) when ``main(argv)`` was called in-process; default ``sys.argv``
            (see :func:`command_line`).

    Raises:
        SystemExit: with a one-line message, when ``counted`` and the tree is dirty and not ``allow_dirty``.
    """

    def __init__(self, *, counted: bool = True, allow_dirty: bool = False, threads: int | None = None,
                 argv: Sequence[str] | None = None) -> None:
        self.counted, self.allow_dirty, self.threads = bool(counted), bool(allow_dirty), threads
        self.started, self._t0 = _now(), time.monotonic()
        self.argv = list(sys.argv if argv is None else argv)
        self.git = git_state()
        if self.counted and self.git["dirty"] and not self.allow_dirty:
            files = self.git["dirty_files"]
            shown = ", ".join(files[:5]) + (", …" if self.git["dirty_count"] > 5 else "")
            raise SystemExit(f"refusing to write a counted result from a dirty tree ({self.git['dirty_count']} "
                             f"changed files: {shown}); commit first or pass --allow-dirty (recorded)")

    def finish(self, **extra: Any) -> dict[str, Any]:
        """The provenance block (a JSON-ready dict); ``extra`` keys are added last.

        ``at_end`` is the git state read again now; ``tree_changed`` is True when the commit, the changed paths or
        the tracked diff differ from the start (None outside a checkout).
        """
        threads = self.threads if self.threads is not None else _torch_threads()
        end = git_state()
        keys = ("commit", "dirty_files", "diff_sha256")
        changed = None if end["commit"] is None else any(end[k] != self.git[k] for k in keys)
        return {"recorded": True, "commit": self.git["commit"], "dirty": self.git["dirty"],
                "dirty_files": self.git["dirty_files"], "dirty_count": self.git["dirty_count"],
                "diff_sha256": self.git["diff_sha256"], "at_end": end, "tree_changed": changed,
                "allow_dirty": self.allow_dirty, "counted": self.counted, "versions": versions(),
                "cpu": cpu_info(), "torch_threads": threads, "command": shlex.join(self.argv), "argv": self.argv,
                "executable": sys.executable, "cwd": os.getcwd(), "started": self.started, "ended": _now(),
                "seconds": round(time.monotonic() - self._t0, 3), **extra}


def add_provenance_args(parser: argparse.ArgumentParser) -> None:
    """Add ``--allow-dirty``: write a counted result from a tree with uncommitted changes (recorded)."""
    parser.add_argument("--allow-dirty", action="store_true",
                        help="write a counted result from a tree with uncommitted changes (recorded in provenance)")


def command_line(script: str | Path, argv: Sequence[str] | None) -> list[str]:
    """``sys.argv`` when ``argv`` is None (a real command line), else ``[script, *argv]`` with ``script`` relative to
    the checkout (``main(argv)`` called in-process, where ``sys.argv`` is the caller's)."""
    if argv is None:
        return list(sys.argv)
    path = Path(script).resolve()
    return [str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path), *map(str, argv)]


def counted_output(out: str | Path) -> bool:
    """Whether a benchmark writing ``out`` writes a counted result: ``out`` lies under ``benchmarks/results/``."""
    return Path(out).resolve().is_relative_to(RESULTS.resolve())


def benchmark_recorder(script: str | Path, argv: Sequence[str] | None, args: argparse.Namespace) -> Recorder:
    """The recorder of a benchmark's ``main(argv)``: counted when ``args.out`` is under ``benchmarks/results/``,
    ``args.allow_dirty`` from :func:`add_provenance_args`."""
    return Recorder(counted=counted_output(args.out), allow_dirty=args.allow_dirty, argv=command_line(script, argv))
