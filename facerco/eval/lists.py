"""Image lists of the MegaFace test suite (noise lists, distractor subset lists) matched to feature keys.

Lists name images in several styles (a bare file name, a path relative to some root, with or without extension);
feature keys are whatever the extractor recorded (often absolute paths). An entry matches the key whose trailing
path components equal the entry's, extension ignored; an entry that matches two keys is an error, one that matches
none is reported back to the caller.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import numpy as np

__all__ = ["read_image_list", "KeyIndex"]


def read_image_list(path: str | os.PathLike[str]) -> list[str]:
    """Entries of a list file: text (one per line, ``#`` comments) or JSON (a list, or a dict with ``path``)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: list file not found")
    text = p.read_text(encoding="utf-8")
    if text.lstrip().startswith(("{", "[")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{p}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
        items = data.get("path") if isinstance(data, dict) else data
        if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
            raise ValueError(f"{p}: JSON list file must be a list of strings or a dict with a 'path' list")
        return items
    return [s.strip() for s in text.splitlines() if s.strip() and not s.lstrip().startswith("#")]


def _parts(key: str) -> tuple[str, ...]:
    pp = PurePosixPath(key.replace("\\", "/"))
    parts = tuple(x for x in pp.parts if x not in ("/", "."))
    if not parts:
        return ()
    last = parts[-1]
    stem = last.rsplit(".", 1)[0] if "." in last else last
    return (*parts[:-1], stem)


class KeyIndex:
    """Suffix index over feature keys (up to ``depth`` trailing components, extension-free)."""

    def __init__(self, keys: Sequence[str], depth: int = 4) -> None:
        self.keys = list(keys)
        self.depth = depth
        self._map: dict[tuple[str, ...], int] = {}
        ambiguous = -1
        for i, key in enumerate(self.keys):
            parts = _parts(str(key))
            for d in range(1, min(depth, len(parts)) + 1):
                tail = parts[-d:]
                self._map[tail] = ambiguous if tail in self._map and self._map[tail] != i else i

    def lookup(self, entry: str, source: str = "list") -> int | None:
        """Index of the key matching ``entry``; None when absent; ValueError when several keys match."""
        parts = _parts(entry)[-self.depth :]
        hit = self._map.get(parts)
        if hit == -1:
            raise ValueError(f"{source}: entry {entry!r} matches several images; give more of its path")
        return hit

    def mask(self, entries: Sequence[str], source: str = "list") -> tuple[np.ndarray, list[str]]:
        """Boolean mask of matched keys and the entries that matched nothing."""
        out = np.zeros(len(self.keys), bool)
        missing = []
        for e in entries:
            i = self.lookup(e, source)
            if i is None:
                missing.append(e)
            else:
                out[i] = True
        return out, missing

    def indices(self, entries: Sequence[str], source: str = "list") -> np.ndarray:
        """Sorted key indices of ``entries``; every entry must match."""
        mask, missing = self.mask(entries, source)
        if missing:
            raise ValueError(f"{source}: {len(missing)} entries match no feature, e.g. {missing[:3]}")
        return np.flatnonzero(mask).astype(np.int64)
