"""LFW (or any LFW-layout set) + pairs.txt -> aligned crops -> a verification ``.bin`` (FORMATS.md section 2).

Only the images the pairs use are aligned. The labelled person of an LFW image is the one in the centre, so the
``central`` policy is used. An image where the detector finds nothing still has to be in the ``.bin`` (every pair
counts in the 10-fold protocol), so it is warped with the median landmarks of the images that were detected: LFW
crops are centred on the face, which makes that median a good fixed alignment; the report lists these files.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from facerco.prep.align import REPORT_NAME, align_tree, read_image, read_report, warp_face, write_image
from facerco.prep.detectors import DetectorSpec
from facerco.utils.io import atomic_write_text, write_json

__all__ = ["subset_pairs", "build_lfw_bin"]


def subset_pairs(
    pairs_txt: str | os.PathLike[str], out: str | os.PathLike[str], folds: int, per_set: int | None = None
) -> Path:
    """Write the first ``folds`` folds of an LFW pairs file to ``out``, optionally only the first ``per_set``
    matched and ``per_set`` mismatched pairs of each (header rewritten), for quick checks."""
    lines = Path(pairs_txt).read_text(encoding="utf-8").splitlines()
    head = lines[0].split()
    if len(head) != 2:
        raise ValueError(f"{pairs_txt}: line 1: expected 'folds<TAB>pairs_per_set', got {lines[0]!r}")
    total, n = int(head[0]), int(head[1])
    keep = n if per_set is None else per_set
    if not 1 <= folds <= total or not 1 <= keep <= n:
        raise ValueError(f"{pairs_txt}: asked for {folds} folds of {keep} pairs per set; the file has {total} of {n}")
    body = []
    for start in range(1, 1 + folds * 2 * n, n):
        body += lines[start : start + keep]
    atomic_write_text(out, f"{folds}\t{keep}\n" + "\n".join(body) + "\n")
    return Path(out)


def build_lfw_bin(
    lfw_root: str | os.PathLike[str],
    pairs_txt: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    spec: DetectorSpec,
    *,
    size: int = 112,
    workers: int = 1,
    folds: int | None = None,
    per_set: int | None = None,
    name: str = "lfw.bin",
    progress: bool = True,
) -> dict:
    """Align the pair images of ``lfw_root`` into ``out_dir/aligned`` and write ``out_dir/<name>``.

    Resumable (alignment skips finished files). Returns and writes ``out_dir/lfw_bin_report.json``: pairs, images,
    detected, fallback files, seconds.
    """
    from facerco.data.bins import make_bin
    from facerco.data.pairs import read_lfw_pairs

    start = time.perf_counter()
    root, out = Path(lfw_root), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if folds is not None or per_set is not None:
        pairs_txt = subset_pairs(pairs_txt, out / "pairs_subset.txt", folds or 10, per_set)
    pairs = read_lfw_pairs(pairs_txt, root)
    files = sorted({p.relative_to(root).as_posix() for a, b, _ in pairs for p in (a, b)})
    aligned = out / "aligned"
    counts = align_tree(
        root, aligned, spec, size=size, policy="central", fmt="same", workers=workers, files=files, progress=progress
    )
    report = read_report(aligned / REPORT_NAME)
    fallback = [f for f in files if not report.get(f, {}).get("outputs")]
    if fallback:
        _fallback_align(root, aligned, fallback, report, size)
    num_pairs = make_bin(pairs_txt, aligned, out / name, progress=progress)
    summary = {
        "bin": str(out / name),
        "pairs": num_pairs,
        "images": len(files),
        "aligned_this_run": counts["aligned"],
        "fallback": fallback,
        "seconds": round(time.perf_counter() - start, 1),
        "detector": spec.name,
        "detector_options": spec.options,
        "size": size,
    }
    write_json(out / "lfw_bin_report.json", summary)
    return summary


def _fallback_align(root: Path, aligned: Path, files: list[str], report: dict, size: int) -> None:
    """Warp undetected images with the median landmarks of the detected ones (see the module docstring)."""
    found = [np.array(r["landmarks"].split(), dtype=np.float32) for r in report.values() if r.get("landmarks")]
    if not found:
        raise RuntimeError(f"{aligned}: no image was detected, so there are no landmarks to fall back on")
    median = np.median(np.stack(found), axis=0).reshape(5, 2)
    for rel in files:
        write_image((aligned / rel).with_suffix(".jpg"), warp_face(read_image(root / rel), median, size))
