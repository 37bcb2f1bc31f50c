"""The ``eval megaface`` feature cache: ``OUT/features/<name>/{probes,distractors}.npy``, reused only when the model
file and the source files are unchanged.

Why: the cache used to be reused whenever the files existed, so retraining a model into the same path and rerunning
brought the old numbers back. Each role's features are now stored with a key in ``manifest.json`` beside them:

- the model: its file's sha256 (and ``--arch``), not its path or mtime, so a retrained file at the same path differs;
- the sources: the count and a digest of (absolute path, size, mtime_ns) of every file the images come from.

Any difference recomputes that role and says why (``model changed: features recomputed``). The manifest entry of a
role is dropped before its features are rewritten and recorded after them, so a run stopped half-way never leaves a
key claiming features it did not finish. numpy-free; the model hash reads the file once per run.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from facerco.utils.io import read_json, sha256_file, write_json

__all__ = ["MANIFEST", "FeatureCache", "model_key", "files_key"]

MANIFEST = "manifest.json"
_VERSION = 1


def model_key(model: str | os.PathLike[str], arch: str | None = None) -> dict[str, Any]:
    """The model as the features depend on it: the file's sha256 and ``arch`` (the path is kept for people)."""
    path = Path(model)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model file not found")
    return {"path": str(path.resolve()), "sha256": sha256_file(path), "arch": arch}


def files_key(files: Sequence[str | os.PathLike[str]], source: str) -> dict[str, Any]:
    """Count and digest of (absolute path, size, mtime_ns) of ``files``: adding, removing, rewriting or touching
    any of them changes the key. ``source`` (what the user named) is kept for people, not compared."""
    digest = hashlib.sha256()
    for f in files:
        try:
            st = os.stat(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"{f}: source file not found") from None
        digest.update(f"{os.path.abspath(f)}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return {"source": source, "count": len(files), "digest": digest.hexdigest()}


def _why_changed(old: dict[str, Any], model: dict[str, Any], sources: dict[str, Any]) -> str | None:
    """The first difference between a manifest entry and the current key, in words; None when they match."""
    old_model, old_sources = old.get("model") or {}, old.get("sources") or {}
    if (old_model.get("sha256"), old_model.get("arch")) != (model["sha256"], model["arch"]):
        return "model changed"
    if old_sources.get("count") != sources["count"]:
        return f"source files changed ({old_sources.get('count')} files before, {sources['count']} now)"
    if old_sources.get("digest") != sources["digest"]:
        return "source files changed (a path, size or modification time differs)"
    if old_sources.get("align") != sources.get("align"):  # how crops are cut from the sources, where a key names it
        return f"alignment changed ({old_sources.get('align')} before, {sources.get('align')} now)"
    return None


class FeatureCache:
    """One model's cached features in ``folder``, keyed by :func:`model_key` and :func:`files_key` per role."""

    def __init__(self, folder: str | os.PathLike[str], model: dict[str, Any]) -> None:
        self.folder, self.model = Path(folder), model
        path = self.folder / MANIFEST
        data = read_json(path) if path.is_file() else None
        self.manifest: dict[str, Any] | None = data if isinstance(data, dict) and data.get("version") == _VERSION \
            else None
        self._found = self.manifest is not None  # as found on disk, before this run records anything

    def npy(self, role: str) -> Path:
        return self.folder / f"{role}.npy"

    def stale(self, role: str, sources: dict[str, Any]) -> str | None:
        """Why ``role``'s cached features cannot be reused (None: they can)."""
        if not self.npy(role).is_file():
            return "no cached features"
        if not self._found:
            return "no manifest (features cached by an older facerco)"
        entry = (self.manifest or {}).get("roles", {}).get(role)
        if not isinstance(entry, dict):
            return f"no {role} entry in {MANIFEST}"
        return _why_changed(entry, self.model, sources)

    def _write(self, roles: dict[str, Any]) -> None:
        self.manifest = {"version": _VERSION, "roles": roles}
        write_json(self.folder / MANIFEST, self.manifest)

    def forget(self, role: str) -> None:
        """Drop ``role``'s key before its features are rewritten."""
        roles = dict((self.manifest or {}).get("roles", {}))
        if roles.pop(role, None) is not None:
            self._write(roles)

    def record(self, role: str, sources: dict[str, Any]) -> None:
        """Store ``role``'s key once its features are written."""
        roles = dict((self.manifest or {}).get("roles", {}))
        roles[role] = {"model": self.model, "sources": sources}
        self._write(roles)
