"""Cleaning a face dataset: apply a clean or noise list, and drop near-duplicates within an identity.

List files (FORMATS.md section 1b): one image per line, ``<path>`` or ``<path><whitespace><label>``, paths relative
to the dataset root as ``<identity>/<file>``; blank lines and ``#`` comments are ignored. Matching ignores the file
extension (lists made from ``.png`` folders still match ``.jpg`` ones) and a leading ``./``.

* ``keep`` mode (a clean list): only listed images are kept; a label moves the image to the folder of that name.
* ``drop`` mode (a noise list): listed images are removed, everything else is kept.

The source folder is never modified: the result is a new folder of hard links (or copies across file systems, or
symlinks on request) plus ``clean_report.json``.

Near-duplicates: within each identity, images whose embeddings have cosine similarity >= a threshold to an image
kept before them (in sorted path order) are dropped -- a greedy pass over faiss range-search results.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from facerco.prep.align import list_images
from facerco.utils.io import write_json

__all__ = ["CleanList", "read_clean_list", "apply_clean_list", "near_duplicates", "load_embeddings", "clean_folder"]


def _stem_key(path: str) -> str:
    path = path.strip().replace("\\", "/")
    while path.startswith("./"):
        path = path[2:]
    return str(PurePosixPath(path).with_suffix(""))


@dataclass
class CleanList:
    """Parsed list: normalized key (path without extension) -> new label or None."""

    entries: dict[str, str | None] = field(default_factory=dict)
    source: str = ""

    def contains(self, path: str) -> bool:
        return _stem_key(path) in self.entries

    def relabel(self, path: str) -> str:
        """``path`` moved under its list label (unchanged when the entry has no label or the same identity).

        The moved file is named ``<old identity>_<file name>`` so it cannot collide with the target's own files.
        """
        label = self.entries.get(_stem_key(path))
        p = PurePosixPath(path)
        if label is None or (len(p.parts) > 1 and p.parts[-2] == label):
            return path
        old = p.parts[-2] if len(p.parts) > 1 else "root"
        return f"{label}/{old}_{p.name}"

    def __len__(self) -> int:
        return len(self.entries)


def read_clean_list(path: str | os.PathLike[str]) -> CleanList:
    """Read a clean/noise list; errors name the file and line."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: clean list not found")
    out = CleanList(source=str(p))
    with open(p, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            parts = text.split()
            if len(parts) > 2:
                raise ValueError(f"{p}: line {line_no}: expected '<path> [label]', got {len(parts)} fields")
            label = parts[1] if len(parts) == 2 else None
            if label is not None and ("/" in label or label in (".", "..")):
                raise ValueError(f"{p}: line {line_no}: label {label!r} cannot be a folder name")
            key = _stem_key(parts[0])
            if key in out.entries and out.entries[key] != label:
                raise ValueError(f"{p}: line {line_no}: {parts[0]} listed twice with different labels")
            out.entries[key] = label
    return out


def _place(src: Path, dst: Path, link: str) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    if link == "symlink":
        dst.symlink_to(src.resolve())
        return
    if link == "hardlink":
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    shutil.copy2(src, dst)


def _check_out(src: Path, out: Path) -> None:
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: dataset folder not found")
    s, d = src.resolve(), out.resolve()
    if d == s or s in d.parents or d in s.parents:
        raise ValueError(f"{out}: output must not contain or be inside the source {src} (the source is never changed)")


def apply_clean_list(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    clean_list: CleanList,
    mode: str = "keep",
    drop: set[str] | None = None,
    link: str = "hardlink",
) -> dict:
    """Write the cleaned dataset ``out`` from the identity folder ``src``; returns the report (also written).

    Args:
        src: identity folder (``<identity>/<image>``).
        out: new folder (must not overlap ``src``).
        clean_list: parsed list.
        mode: ``keep`` (clean list) or ``drop`` (noise list).
        drop: extra relative paths to leave out (e.g. near-duplicates).
        link: ``hardlink`` (copy when impossible), ``copy`` or ``symlink``.
    """
    if mode not in ("keep", "drop"):
        raise ValueError(f"unknown clean mode {mode!r}; choose keep or drop")
    if link not in ("hardlink", "copy", "symlink"):
        raise ValueError(f"unknown link mode {link!r}; choose hardlink, copy or symlink")
    src_p, out_p = Path(src), Path(out)
    _check_out(src_p, out_p)
    files = [f for f in list_images(src_p) if "/" in f]
    drop = drop or set()
    counts: Counter[str] = Counter()
    seen: set[str] = set()
    ids_before, ids_after = set(), set()
    for rel in files:
        key = _stem_key(rel)
        listed = key in clean_list.entries
        if listed:
            seen.add(key)
        ids_before.add(rel.split("/")[0])
        if rel in drop:
            counts["near_duplicates"] += 1
            continue
        if (mode == "keep") != listed:
            counts["dropped"] += 1
            continue
        target = clean_list.relabel(rel) if mode == "keep" else rel
        counts["relabelled"] += target != rel
        counts["kept"] += 1
        ids_after.add(target.split("/")[0])
        _place(src_p / rel, out_p / target, link)
    report = {
        "source": str(src_p),
        "list": clean_list.source,
        "mode": mode,
        "images_before": len(files),
        "kept": counts["kept"],
        "dropped_by_list": counts["dropped"],
        "relabelled": counts["relabelled"],
        "near_duplicates": counts["near_duplicates"],
        "identities_before": len(ids_before),
        "identities_after": len(ids_after),
        "listed_but_missing": len(set(clean_list.entries) - seen),
    }
    out_p.mkdir(parents=True, exist_ok=True)
    write_json(out_p / "clean_report.json", report)
    return report


def near_duplicates(emb: np.ndarray, labels: np.ndarray, threshold: float = 0.95) -> np.ndarray:
    """Boolean mask of near-duplicate images (True = drop).

    Args:
        emb: ``(N, D)`` embeddings (normalized here).
        labels: ``(N,)`` identity of each row; duplicates are only looked for within an identity.
        threshold: cosine similarity at or above which a later image duplicates an earlier kept one.
    """
    import faiss

    emb = np.ascontiguousarray(emb, dtype=np.float32)
    labels = np.asarray(labels)
    if emb.ndim != 2 or len(emb) != len(labels):
        raise ValueError(f"embeddings {emb.shape} and labels {labels.shape} do not match")
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    dup = np.zeros(len(emb), dtype=bool)
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        if len(rows) < 2:
            continue
        index = faiss.IndexFlatIP(emb.shape[1])
        index.add(emb[rows])
        lims, sims, ids = index.range_search(emb[rows], float(threshold) - 1e-6)
        for i in range(len(rows)):
            if dup[rows[i]]:
                continue
            for j in ids[lims[i] : lims[i + 1]]:
                if j > i:
                    dup[rows[j]] = True
    return dup


def load_embeddings(embeddings: str | os.PathLike[str], paths: str | os.PathLike[str] | None = None):
    """Embeddings and their image paths: a ``.npz`` with ``emb`` (or ``embeddings``) and ``paths`` arrays, or a
    ``.npy`` matrix plus a text file with one relative path per line (same order)."""
    p = Path(embeddings)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: embeddings file not found")
    if p.suffix == ".npz":
        with np.load(p, allow_pickle=False) as z:
            key = "emb" if "emb" in z else "embeddings"
            if key not in z or "paths" not in z:
                raise ValueError(f"{p}: needs arrays 'emb' (or 'embeddings') and 'paths', has {sorted(z.files)}")
            emb, names = z[key], [str(s) for s in z["paths"]]
    else:
        if paths is None:
            raise ValueError(f"{p}: a .npy needs a paths file (one image path per line, same order)")
        emb = np.load(p, allow_pickle=False)
        names = [line.strip() for line in Path(paths).read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(names) != len(emb):
        raise ValueError(f"{p}: {len(emb)} embeddings but {len(names)} paths")
    return emb, names


def clean_folder(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    list_path: str | os.PathLike[str] | None = None,
    mode: str = "keep",
    embeddings: tuple[np.ndarray, list[str]] | None = None,
    dedup_threshold: float = 0.95,
    link: str = "hardlink",
) -> dict:
    """List cleaning and/or near-duplicate removal in one pass (see the module docstring)."""
    src_p = Path(src)
    clean = read_clean_list(list_path) if list_path is not None else CleanList(source="")
    if list_path is None:
        mode = "drop"  # an empty noise list keeps everything
    drop: set[str] = set()
    if embeddings is not None:
        emb, names = embeddings
        rel = [_relative(src_p, n) for n in names]
        labels = np.array([r.split("/")[0] for r in rel])
        mask = near_duplicates(emb, labels, dedup_threshold)
        drop = {r for r, m in zip(rel, mask) if m}
    report = apply_clean_list(src_p, out, clean, mode, drop, link)
    report["dedup_threshold"] = dedup_threshold if embeddings is not None else None
    write_json(Path(out) / "clean_report.json", report)
    return report


def _relative(root: Path, name: str) -> str:
    p = Path(name)
    if not p.is_absolute():
        return _stem_key(name) + p.suffix
    for base in (root.resolve(), root.absolute()):
        if base in p.parents:
            return p.relative_to(base).as_posix()
    raise ValueError(f"embedding path {name} is not under the dataset folder {root}")
