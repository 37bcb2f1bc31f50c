"""LFW ``pairs.txt`` (View 2) parser (FORMATS.md §2).

Layout: a first line ``folds<TAB>n`` (or a single ``n`` for the one-fold dev files), then per fold ``n`` matched lines
``name<TAB>i<TAB>j`` followed by ``n`` mismatched lines ``name1<TAB>i<TAB>name2<TAB>j``; image ``i`` of ``name`` is
``<root>/name/name_%04d.jpg``.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["PairsFormatError", "read_lfw_pairs"]


class PairsFormatError(ValueError):
    """A malformed pairs file; the message names the file and the line."""


def _index(p: Path, lineno: int, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise PairsFormatError(f"{p}: line {lineno}: image number {text!r} is not an integer") from None
    if value < 1:
        raise PairsFormatError(f"{p}: line {lineno}: image number {value} must be >= 1")
    return value


def read_lfw_pairs(
    pairs_txt: str | os.PathLike[str],
    root: str | os.PathLike[str],
    ext: str = "jpg",
    check_exists: bool = True,
) -> list[tuple[Path, Path, bool]]:
    """Parse an LFW pairs file into ``(path1, path2, issame)`` in file order (the fold order of the protocol).

    Args:
        pairs_txt: the pairs file.
        root: folder holding ``<name>/<name>_NNNN.<ext>``.
        ext: image extension.
        check_exists: raise (naming the line) when an image file is missing.
    """
    p = Path(pairs_txt)
    base = Path(root)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: pairs file not found")
    lines = p.read_text(encoding="utf-8").splitlines()
    if not lines:
        raise PairsFormatError(f"{p}: line 1: empty file (expected 'folds<TAB>pairs_per_set')")
    head = lines[0].split()
    try:
        folds, per_set = (1, int(head[0])) if len(head) == 1 else (int(head[0]), int(head[1]))
        if len(head) > 2 or folds < 1 or per_set < 1:
            raise ValueError
    except (ValueError, IndexError):
        raise PairsFormatError(f"{p}: line 1: expected 'folds<TAB>pairs_per_set', got {lines[0]!r}") from None

    pairs: list[tuple[Path, Path, bool]] = []
    for lineno, line in enumerate(lines[1:], 2):
        fields = line.split()
        if not fields:
            continue
        if len(fields) == 3:
            name, i, j = fields
            a, b, same = (name, _index(p, lineno, i)), (name, _index(p, lineno, j)), True
        elif len(fields) == 4:
            a, b, same = (fields[0], _index(p, lineno, fields[1])), (fields[2], _index(p, lineno, fields[3])), False
        else:
            raise PairsFormatError(
                f"{p}: line {lineno}: expected 3 fields (matched) or 4 fields (mismatched), got {len(fields)}: {line!r}"
            )
        expected_same = (len(pairs) % (2 * per_set)) < per_set
        if same != expected_same:
            kind = "matched" if expected_same else "mismatched"
            raise PairsFormatError(
                f"{p}: line {lineno}: expected a {kind} pair here (each fold: {per_set} matched "
                f"then {per_set} mismatched)"
            )
        paths = tuple(base / name / f"{name}_{idx:04d}.{ext}" for name, idx in (a, b))
        if check_exists:
            for path in paths:
                if not path.is_file():
                    raise FileNotFoundError(f"{p}: line {lineno}: image {path} not found")
        pairs.append((paths[0], paths[1], same))
    if len(pairs) != 2 * folds * per_set:
        raise PairsFormatError(
            f"{p}: header announces {folds} folds x {2 * per_set} pairs = {2 * folds * per_set}, found {len(pairs)}"
        )
    return pairs
