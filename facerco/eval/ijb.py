"""IJB-B / IJB-C template protocols: 1:1 template verification and 1:N open-set identification (numpy only).

Files (the insightface IJB test pack, ``IJB_ROOT/<IJBC|IJBB>/``; ``t`` = ``ijbc`` or ``ijbb``):

- ``meta/<t>_name_5pts_score.txt``: ``image x1 y1 … x5 y5 score`` per face (5 landmarks in loose-crop pixels, ArcFace
  order, then the detector score), one line per face;
- ``meta/<t>_face_tid_mid.txt``: ``image template_id media_id``, the same faces in the same order;
- ``meta/<t>_template_pair_label.txt``: ``t1 t2 label`` (1 = same subject);
- optional 1:N files ``meta/<t>_1N_gallery_{G1,G2}.csv`` (IJB-B: ``S1``, ``S2``) and ``meta/<t>_1N_probe_mixed.csv``:
  comma-separated, a header, ``TEMPLATE_ID,SUBJECT_ID,…`` with one row per image of a template;
- ``loose_crop/<image>``.

Pooling (as insightface's ``eval_ijbc.py``): the image feature is the flip-fused ``f(x) + f(flip(x))``; unless the
norm is kept (``norm_score``) it is L2-normalized; with ``detector_score`` it is multiplied by the face's detector
score. Image features of one media (the frames of one video, or one photo) are averaged, the media features of a
template are summed, and the sum is L2-normalized. Scores are inner products of template features.

1:1, over every row of the pair file as listed (a repeated row is scored again, as ``eval_ijbc.py`` does; repeats
are counted for the report). The headline TAR at FAR is the number ``eval_ijbc.py`` prints and papers quote: the TPR
of the sklearn ROC point whose FPR is nearest to the target. Beside it, the exact rule of the other facerco
evaluators: with ``m = ⌊FAR·#impostor pairs⌋`` the threshold τ is the (m+1)-th highest impostor score and TAR =
#{genuine > τ}/#genuine.

1:N (insightface's ``ijb_evals.py``, the numbers papers quote): a probe template is *mated* in a gallery when its
subject has a template there. Rank-k: fewer than k other gallery templates score ≥ the mate (ties count against).
Per gallery, TPIR at FPIR f with ``m = ⌊f·#non-mated⌋``: τ is the m-th highest best-gallery score of the non-mated
probes (the highest when m = 0; ``ijb_evals.py`` indexes ``sorted[max(int(n·f) − 1, 0)]``, m here is counted exactly
from the decimal f), and TPIR = #{mated probes whose mate is rank 1 and scores > τ}/#mated. The headline over the two
galleries: rank-k = (rank-k hits in G1 + in G2) / #probe templates, TPIR = the mean of the two galleries' TPIR. Also
reported, named: the exact τ (the (m+1)-th highest: at most m non-mated probes above it) and the mean of the
galleries' rank-k shares, and the closed-set numbers of insightface's ``ijb_1n.py`` (G1 ∪ G2 as one gallery).

Scale: pooling reads the image features (a memmap) in chunks of whole templates; pair scores are computed by the
fixed-order float64 dot of :mod:`facerco.eval._exact` in bounded batches (never a pairs × dims array), in threads.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facerco.eval._exact import tree_dots
from facerco.eval.checks import check_rows
from facerco.eval.identification import far_count
from facerco.eval.verification import tar_at_far

__all__ = [
    "TARGETS",
    "FARS",
    "FPIRS",
    "RANKS",
    "PAPER_RULE_11",
    "EXACT_RULE_11",
    "PAPER_RULE_1N",
    "MEAN_RULE_1N",
    "IJBFiles",
    "FaceList",
    "PairList",
    "IJBMeta",
    "ijb_files",
    "read_landmarks",
    "read_template_media",
    "read_pairs",
    "read_subject_csv",
    "load_meta",
    "image_weights",
    "pool_templates",
    "pair_scores",
    "verification_metrics",
    "insightface_tar",
    "open_set_identification",
    "combine_galleries",
    "insightface_1n",
    "evaluate_ijb",
]

TARGETS = {"IJBB": ("S1", "S2"), "IJBC": ("G1", "G2")}
FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
FPIRS = (0.01, 0.1)
RANKS = (1, 5, 10)
_LANDMARK_FIELDS = 12  # image, 10 coordinates, detector score
PAPER_RULE_11 = ("eval_ijbc.py (papers): TPR of the sklearn roc_curve point whose FPR is nearest to the target, "
                 "over every pair-file row")
EXACT_RULE_11 = ("exact: tau = the (m+1)-th highest impostor score, m = floor(FAR * #impostors), "
                 "TAR = #{genuine > tau} / #genuine")
PAPER_RULE_1N = ("ijb_evals.py (papers): rank-k = (hits in both galleries) / #probe templates; TPIR = mean over the "
                 "galleries, tau = the m-th highest non-mated best score (the highest when m = 0), "
                 "m = floor(FPIR * #non-mated)")
MEAN_RULE_1N = ("mean of galleries: rank-k = mean of the galleries' rank-k over their mated probes; TPIR = mean "
                "over the galleries, tau = the (m+1)-th highest non-mated best score (at most m above it)")


# ---------------------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IJBFiles:
    """Where one target's files are; ``galleries`` is empty when the 1:N files are absent."""

    target: str
    folder: Path
    images: Path
    landmarks: Path
    tid_mid: Path
    pairs: Path
    galleries: tuple[tuple[str, Path], ...]
    probes: Path | None


def ijb_files(root: str | Path, target: str) -> IJBFiles:
    """The files of ``target`` under ``root`` (``IJB_ROOT`` holding ``IJBC/``, or the ``IJBC`` folder itself)."""
    name = target.upper()
    if name not in TARGETS:
        raise ValueError(f"--target must be one of {', '.join(TARGETS)}, got {target!r}")
    base = Path(root)
    folder = base / name if (base / name / "meta").is_dir() else base
    meta, t = folder / "meta", name.lower()
    if not meta.is_dir():
        raise FileNotFoundError(f"{base}: no {name}/meta folder (expected IJB_ROOT/{name}/meta and "
                                f"IJB_ROOT/{name}/loose_crop, the insightface IJB test-pack layout)")
    need = {"landmarks": meta / f"{t}_name_5pts_score.txt", "tid_mid": meta / f"{t}_face_tid_mid.txt",
            "pairs": meta / f"{t}_template_pair_label.txt", "images": folder / "loose_crop"}
    for path in need.values():
        if not path.exists():
            raise FileNotFoundError(f"{path}: not found (needed for {name} 1:1 verification)")
    one_n = [meta / f"{t}_1N_gallery_{g}.csv" for g in TARGETS[name]] + [meta / f"{t}_1N_probe_mixed.csv"]
    present = [p.is_file() for p in one_n]
    if any(present) and not all(present):
        missing = one_n[present.index(False)]
        raise FileNotFoundError(f"{missing}: not found, but other 1:N files are there (need both galleries and "
                                "the mixed probe file, or none of them)")
    galleries = tuple(zip(TARGETS[name], one_n[:2])) if all(present) else ()
    return IJBFiles(name, folder, need["images"], need["landmarks"], need["tid_mid"], need["pairs"], galleries,
                    one_n[2] if all(present) else None)


def _lines(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of every non-blank, non-comment line."""
    with open(path, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, 1):
            fields = line.split()
            if fields and not fields[0].startswith("#"):
                yield lineno, fields


@dataclass
class FaceList:
    """The faces of ``<t>_name_5pts_score.txt``: image names, landmarks (N, 5, 2) float32, detector scores (N,),
    and each face's line number."""

    names: list[str]
    landmarks: np.ndarray
    scores: np.ndarray
    lines: np.ndarray


def read_landmarks(path: str | Path) -> FaceList:
    """Read the face list; a row without exactly 10 coordinates and a score, or a non-finite value, is an error
    naming the file and line."""
    path = Path(path)
    names, values, lines = [], [], []
    for lineno, fields in _lines(path):
        if len(fields) != _LANDMARK_FIELDS:
            raise ValueError(f"{path}: line {lineno}: expected 'image x1 y1 ... x5 y5 score' ({_LANDMARK_FIELDS} "
                             f"fields), got {len(fields)}")
        try:
            row = [float(v) for v in fields[1:]]
        except ValueError:
            raise ValueError(f"{path}: line {lineno}: landmarks and score must be numbers, got "
                             f"{' '.join(fields[1:])!r}") from None
        if not all(math.isfinite(v) for v in row):
            raise ValueError(f"{path}: line {lineno}: landmarks and score must be finite, got {' '.join(fields[1:])}")
        names.append(fields[0])
        values.append(row)
        lines.append(lineno)
    if not names:
        raise ValueError(f"{path}: no faces listed")
    arr = np.asarray(values, np.float64)
    return FaceList(names, arr[:, :10].astype(np.float32).reshape(-1, 5, 2), arr[:, 10].astype(np.float32),
                    np.asarray(lines, np.int64))


def read_template_media(path: str | Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(image names, template ids (N,), media ids (N,))``; a bad row is an error naming the file and line."""
    path = Path(path)
    names, ids = [], []
    for lineno, fields in _lines(path):
        if len(fields) != 3:
            raise ValueError(f"{path}: line {lineno}: expected 'image template_id media_id', got {len(fields)} fields")
        try:
            ids.append((int(fields[1]), int(fields[2])))
        except ValueError:
            raise ValueError(f"{path}: line {lineno}: template and media ids must be integers, got "
                             f"{fields[1]!r} {fields[2]!r}") from None
        names.append(fields[0])
    if not names:
        raise ValueError(f"{path}: no faces listed")
    arr = np.asarray(ids, np.int64)
    return names, arr[:, 0].copy(), arr[:, 1].copy()


@dataclass
class PairList:
    """Template pairs of the pair file, in file order: ids (P,), labels (P,) int8, ``repeated`` (P,) bool (True for a
    row that lists an earlier row's pair again, in either order: scored as listed, as ``eval_ijbc.py`` does, and
    counted for the report), and where the first repeat is."""

    t1: np.ndarray
    t2: np.ndarray
    label: np.ndarray
    repeated: np.ndarray
    first_repeat: str | None = None

    @property
    def repeats(self) -> int:
        return int(self.repeated.sum())


def _row_lines(path: Path, rows: Sequence[int]) -> dict[int, int]:
    """File line numbers of data rows (0-based, blank and comment lines skipped): only for error messages."""
    want, out = set(int(r) for r in rows), {}
    for row, (lineno, _) in enumerate(_lines(path)):
        if row in want:
            out[row] = lineno
            if len(out) == len(want):
                break
    return out


def _int_rows(path: Path, ncols: int, form: str) -> np.ndarray:
    """An (R, ncols) int64 table read by numpy's C parser; on failure a second pass names the first bad line."""
    try:
        with open(path, encoding="utf-8") as handle:
            arr = np.loadtxt(handle, dtype=np.int64, ndmin=2)
    except ValueError:
        for lineno, fields in _lines(path):
            if len(fields) != ncols or not all(f.lstrip("+-").isdigit() for f in fields):
                raise ValueError(f"{path}: line {lineno}: expected '{form}' ({ncols} integers), got "
                                 f"{' '.join(fields)!r}") from None
        raise
    if arr.size == 0:
        raise ValueError(f"{path}: no rows")
    if arr.shape[1] != ncols:
        raise ValueError(f"{path}: line {_row_lines(path, [0])[0]}: expected '{form}' ({ncols} integers), got "
                         f"{arr.shape[1]} fields")
    return arr


def _pair_keys(t1: np.ndarray, t2: np.ndarray) -> np.ndarray:
    """One int64 per unordered pair {t1, t2} (ids made compact first when the direct key could overflow)."""
    lo, hi = np.minimum(t1, t2), np.maximum(t1, t2)
    if len(lo) and (lo.min() < 0 or int(hi.max()) + 1 > 2**31):
        ids, inv = np.unique(np.concatenate([lo, hi]), return_inverse=True)
        lo, hi = inv[: len(t1)], inv[len(t1) :]
    return lo.astype(np.int64) * (int(hi.max(initial=0)) + 1) + hi


def _first_occurrence(keys: np.ndarray) -> np.ndarray:
    """(P,) index of the first row holding the same key as each row (itself when it is the first)."""
    order = np.argsort(keys, kind="stable")
    ks = keys[order]
    start = np.ones(len(keys), bool)
    start[1:] = ks[1:] != ks[:-1]
    group_first = order[np.maximum.accumulate(np.where(start, np.arange(len(keys)), 0))]
    out = np.empty(len(keys), np.int64)
    out[order] = group_first
    return out


def read_pairs(path: str | Path) -> PairList:
    """Read ``t1 t2 label`` rows, every row kept as listed. A label other than 0/1 is an error; a pair listed again
    (either order) is counted, and is an error naming both lines when its label differs."""
    path = Path(path)
    arr = _int_rows(path, 3, "t1 t2 label")
    t1, t2, label = arr[:, 0].copy(), arr[:, 1].copy(), arr[:, 2]
    bad = np.flatnonzero((label != 0) & (label != 1))
    if len(bad):
        line = _row_lines(path, [bad[0]])[int(bad[0])]
        raise ValueError(f"{path}: line {line}: label must be 0 or 1, got {label[bad[0]]}")
    first_of = _first_occurrence(_pair_keys(t1, t2))
    repeated = first_of != np.arange(len(t1))
    first_repeat = None
    if repeated.any():
        rep = np.flatnonzero(repeated)
        conflict = rep[label[rep] != label[first_of[rep]]]
        row = int(conflict[0]) if len(conflict) else int(rep[0])
        lines = _row_lines(path, [row, int(first_of[row])])
        where = f"line {lines[row]} repeats the pair of line {lines[int(first_of[row])]} ({t1[row]} {t2[row]})"
        if len(conflict):
            raise ValueError(f"{path}: {where} with label {label[row]} instead of {label[first_of[row]]}")
        first_repeat = f"{path.name}: {where}"
    return PairList(t1, t2, label.astype(np.int8), repeated, first_repeat)


def read_subject_csv(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(template ids, subject ids, line of each template's first row)`` of a 1:N csv, one entry per template in
    first-seen order. Columns TEMPLATE_ID and SUBJECT_ID (by header name, else the first two); a template listed
    with two subjects is an error naming the lines."""
    path = Path(path)
    first: dict[int, tuple[int, int]] = {}
    with open(path, encoding="utf-8", newline="") as handle:
        rows = csv.reader(handle)
        cols = (0, 1)
        for lineno, row in enumerate(rows, 1):
            if not row or not "".join(row).strip():
                continue
            if lineno == 1 and not row[0].strip().lstrip("+-").isdigit():
                header = [c.strip().upper() for c in row]
                if "TEMPLATE_ID" in header and "SUBJECT_ID" in header:
                    cols = (header.index("TEMPLATE_ID"), header.index("SUBJECT_ID"))
                continue
            try:
                tid, sid = int(row[cols[0]]), int(row[cols[1]])
            except (IndexError, ValueError):
                raise ValueError(f"{path}: line {lineno}: expected integer TEMPLATE_ID and SUBJECT_ID, got "
                                 f"{','.join(row)!r}") from None
            seen = first.setdefault(tid, (sid, lineno))
            if seen[0] != sid:
                raise ValueError(f"{path}: line {lineno}: template {tid} has subject {sid}, but line {seen[1]} "
                                 f"gives subject {seen[0]}")
    if not first:
        raise ValueError(f"{path}: no templates listed")
    tids = np.fromiter(first, np.int64, len(first))
    vals = np.asarray(list(first.values()), np.int64)
    return tids, vals[:, 0].copy(), vals[:, 1].copy()


# ---------------------------------------------------------------------------------------------------------------
# Metadata
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class IJBMeta:
    """Everything read from the meta files of one target, checked against each other and the image folder."""

    files: IJBFiles
    faces: FaceList
    templates: np.ndarray
    medias: np.ndarray
    template_ids: np.ndarray
    pairs: PairList
    galleries: list[tuple[str, np.ndarray, np.ndarray]]
    probes: tuple[np.ndarray, np.ndarray] | None

    def image_paths(self) -> list[Path]:
        return [self.files.images / n for n in self.faces.names]


def _check_faces(files: IJBFiles, faces: FaceList, names: list[str]) -> None:
    """The two face lists name the same images in the same order, and every image exists."""
    if len(names) != len(faces.names):
        raise ValueError(f"{files.tid_mid}: {len(names)} faces, but {files.landmarks} lists {len(faces.names)} (the "
                         "two files must list the same faces in the same order)")
    for i, (a, b) in enumerate(zip(names, faces.names)):
        if a != b:
            raise ValueError(f"{files.tid_mid}: face {i + 1} is {a!r}, but {files.landmarks} line {faces.lines[i]} "
                             f"is {b!r} (the two files must list the same faces in the same order)")
    for i, name in enumerate(faces.names):
        if not (files.images / name).is_file():
            raise FileNotFoundError(f"{files.landmarks}: line {faces.lines[i]}: image {files.images / name} not found")


def _known(ids: np.ndarray, template_ids: np.ndarray, path: Path, lines: Any, tid_mid: Path) -> None:
    """Every template referenced by ``path`` has media in the tid/mid file (else an error naming the line)."""
    pos = np.searchsorted(template_ids, ids)
    missing = np.flatnonzero((pos >= len(template_ids)) | (template_ids[np.minimum(pos, len(template_ids) - 1)] != ids))
    if len(missing):
        i = int(missing[0])
        line = lines(i) if callable(lines) else lines[i]
        raise ValueError(f"{path}: line {line}: template {ids[i]} has no media (no face of it in {tid_mid.name})")


def load_meta(root: str | Path, target: str) -> IJBMeta:
    """Read and cross-check every meta file of ``target`` (errors name the file and line)."""
    files = ijb_files(root, target)
    faces = read_landmarks(files.landmarks)
    names, templates, medias = read_template_media(files.tid_mid)
    _check_faces(files, faces, names)
    template_ids = np.unique(templates)
    pairs = read_pairs(files.pairs)
    for col in (pairs.t1, pairs.t2):
        _known(col, template_ids, files.pairs, lambda i: _row_lines(files.pairs, [i])[i], files.tid_mid)
    galleries = []
    probes = None
    for gname, path in files.galleries:
        tids, sids, lines = read_subject_csv(path)
        _known(tids, template_ids, path, lines, files.tid_mid)
        _, first = np.unique(sids, return_index=True)
        if len(first) != len(sids):
            dup = np.setdiff1d(np.arange(len(sids)), first)[0]
            other = int(np.flatnonzero(sids == sids[dup])[0])
            raise ValueError(f"{path}: line {lines[dup]}: subject {sids[dup]} already has template {tids[other]} "
                             f"(line {lines[other]}); a gallery holds one template per subject")
        galleries.append((gname, tids, sids))
    if files.probes is not None:
        tids, sids, lines = read_subject_csv(files.probes)
        _known(tids, template_ids, files.probes, lines, files.tid_mid)
        probes = (tids, sids)
    return IJBMeta(files, faces, templates, medias, template_ids, pairs, galleries, probes)


# ---------------------------------------------------------------------------------------------------------------
# Pooling
# ---------------------------------------------------------------------------------------------------------------


def image_weights(fused_norms: np.ndarray, detector_scores: np.ndarray, norm_score: bool, detector_score: bool
                  ) -> np.ndarray:
    """(N,) float64 factor of each unit image feature: its fused norm when the norm is kept, times its detector
    score when scores weight the pooling (``eval_ijbc.py``'s use_norm_score / use_detector_score)."""
    w = np.ones(len(detector_scores), np.float64)
    if norm_score:
        w *= np.asarray(fused_norms, np.float64)
    if detector_score:
        w *= np.asarray(detector_scores, np.float64)
    return w


def _template_chunks(starts: np.ndarray, total: int, chunk: int) -> Iterator[tuple[int, int]]:
    """Ranges of whole templates holding about ``chunk`` images each (a bigger template gets a range alone)."""
    ends = np.append(starts[1:], total)
    a = 0
    while a < len(starts):
        b = max(a + 1, int(np.searchsorted(ends, starts[a] + chunk, side="right")))
        yield a, b
        a = b


def pool_templates(feats: np.ndarray, weights: np.ndarray, templates: np.ndarray, medias: np.ndarray,
                   chunk: int = 16384) -> tuple[np.ndarray, np.ndarray]:
    """Template features: per media the mean of ``weights[i] * feats[i]``, summed over the template's media, then
    L2-normalized.

    Args:
        feats: (N, D) image features (float32 array or memmap, read ``chunk`` images at a time).
        weights: (N,) factor per image (:func:`image_weights`).
        templates, medias: (N,) ids of each image.

    Returns:
        ``(template ids (T,) sorted, features (T, D) float64 unit rows)``.
    """
    n, dim = feats.shape
    if not (len(weights) == len(templates) == len(medias) == n):
        raise ValueError(f"pooling needs one weight, template and media per image ({n}), got {len(weights)}, "
                         f"{len(templates)}, {len(medias)}")
    tmpl_ids, t_idx = np.unique(templates, return_inverse=True)
    order = np.lexsort((medias, t_idx))
    t_sorted, m_sorted = t_idx[order], medias[order]
    new_media = np.ones(n, bool)
    new_media[1:] = (t_sorted[1:] != t_sorted[:-1]) | (m_sorted[1:] != m_sorted[:-1])
    starts = np.searchsorted(t_sorted, np.arange(len(tmpl_ids)))
    out = np.empty((len(tmpl_ids), dim), np.float64)
    for ta, tb in _template_chunks(starts, n, chunk):
        a, b = int(starts[ta]), int(starts[tb]) if tb < len(starts) else n
        idx = order[a:b]
        rows = np.asarray(feats[idx], np.float64) * np.asarray(weights, np.float64)[idx, None]
        m_start = np.flatnonzero(new_media[a:b])
        counts = np.diff(np.append(m_start, b - a))
        media = np.add.reduceat(rows, m_start, axis=0) / counts[:, None]
        owner = t_sorted[a + m_start]
        t_start = np.flatnonzero(np.append(True, owner[1:] != owner[:-1]))
        out[ta:tb] = np.add.reduceat(media, t_start, axis=0)
    keys = [f"id {t}" for t in tmpl_ids]
    try:
        norms = check_rows(out, "pooled templates", 0, keys, what="template")
    except ValueError as exc:
        raise ValueError(f"{exc} (its images' weights sum to zero: detector scores of 0 with --detector-score?)"
                         ) from None
    return tmpl_ids, out / norms[:, None]


# ---------------------------------------------------------------------------------------------------------------
# 1:1 verification
# ---------------------------------------------------------------------------------------------------------------


def pair_scores(feats: np.ndarray, i1: np.ndarray, i2: np.ndarray, batch: int = 1 << 18, workers: int = 1
                ) -> np.ndarray:
    """(P,) float64 ``feats[i1[p]] · feats[i2[p]]`` by the fixed-order dot of :mod:`facerco.eval._exact`: rows are
    gathered 256 pairs at a time (never a P × D array) and a pair's score has the same bits whatever the batch or
    thread count; ``workers`` threads share the batches."""
    if len(i1) != len(i2):
        raise ValueError(f"pair_scores needs two index arrays of one length, got {len(i1)} and {len(i2)}")
    out = np.empty(len(i1), np.float64)

    def run(start: int) -> None:
        out[start : start + batch] = tree_dots(feats, i1[start : start + batch], feats, i2[start : start + batch])

    starts = range(0, len(i1), batch)
    if workers > 1 and len(starts) > 1:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(run, starts))
    else:
        for s in starts:
            run(s)
    return out


def _far_grid(num_impostors: int, points: int) -> list[float]:
    """FAR values for the ROC curve: from 1/#impostors to 1, log-spaced, three significant digits."""
    lo = 1.0 / num_impostors
    return sorted({float(f"{f:.3g}") for f in np.geomspace(lo, 1.0, points)})


def verification_metrics(scores: np.ndarray, labels: np.ndarray, fars: Sequence[float] = FARS,
                         roc_points: int = 60) -> dict[str, Any]:
    """TAR at each FAR (exact rule, module doc) and an ROC curve sampled at log-spaced FARs, from pair scores.

    Returns:
        ``num_pairs``, ``num_genuine``, ``num_impostor``, ``tar_at_far`` {far: {tar, threshold,
        allowed_impostors}}, ``roc`` {far, tar, threshold}.
    """
    labels = np.asarray(labels)
    gen, imp = scores[labels == 1], scores[labels == 0]
    if not len(gen) or not len(imp):
        raise ValueError(f"1:1 needs genuine and impostor pairs, got {len(gen)} genuine and {len(imp)} impostor")
    grid = _far_grid(len(imp), roc_points)
    table = tar_at_far(-gen, -imp, [*fars, *grid])  # distances = -scores: the same strict rule

    def entry(far: float) -> dict[str, Any]:
        e = table[f"{far:g}"]
        return {"tar": e["tar"], "threshold": -e["threshold"], "allowed_impostors": e["allowed_impostors"]}

    return {
        "num_pairs": int(len(scores)),
        "num_genuine": int(len(gen)),
        "num_impostor": int(len(imp)),
        "tar_at_far": {f"{f:g}": entry(f) for f in fars},
        "roc": {"far": grid, "tar": [entry(f)["tar"] for f in grid],
                "threshold": [entry(f)["threshold"] for f in grid]},
    }


def insightface_tar(scores: np.ndarray, labels: np.ndarray, fars: Sequence[float] = FARS) -> dict[str, Any]:
    """The TAR ``eval_ijbc.py`` prints, which papers quote: sklearn's ``roc_curve`` (intermediate points dropped),
    the points in reverse order, the first point whose FPR is nearest to the target (ties: the first in that order),
    its TPR; and the AUC.

    Returns:
        ``rule``, ``tar_at_far`` {far: {tar, fpr, threshold}} (the chosen ROC point), ``auc``.
    """
    from sklearn.metrics import auc, roc_curve

    fpr, tpr, thr = roc_curve(np.asarray(labels), scores)
    area = float(auc(fpr, tpr))
    fpr, tpr, thr = fpr[::-1], tpr[::-1], thr[::-1]
    table = {}
    for f in fars:
        i = int(np.argmin(np.abs(fpr - f)))
        table[f"{f:g}"] = {"tar": float(tpr[i]), "fpr": float(fpr[i]), "threshold": float(thr[i])}
    return {"rule": PAPER_RULE_11, "tar_at_far": table, "auc": area}


# ---------------------------------------------------------------------------------------------------------------
# 1:N identification
# ---------------------------------------------------------------------------------------------------------------


def _search(feats: np.ndarray, probe_rows: np.ndarray, gallery_rows: np.ndarray, mate: np.ndarray, chunk: int,
            keep_negatives: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per probe: rank of its mate (0 if none), mate score, best gallery score; plus the ``keep_negatives``
    highest non-mate scores over all probes. Probe × gallery scores exist one chunk of probes at a time."""
    n = len(probe_rows)
    gallery = np.ascontiguousarray(feats[gallery_rows])
    rank, mate_s, top = np.zeros(n, np.int64), np.full(n, np.nan), np.empty(n)
    negatives = np.zeros(0)
    for s in range(0, n, chunk):
        sims = feats[probe_rows[s : s + chunk]] @ gallery.T
        top[s : s + chunk] = sims.max(axis=1)
        m = mate[s : s + chunk]
        has = np.flatnonzero(m >= 0)
        ms = sims[has, m[has]]
        mate_s[s + has] = ms
        rank[s + has] = (sims[has] >= ms[:, None]).sum(axis=1)  # the mate itself counts once: rank 1 + #others ≥
        if keep_negatives:
            sims[has, m[has]] = -np.inf
            flat = np.concatenate([negatives, sims.ravel()])
            k = min(keep_negatives, len(flat))
            negatives = np.partition(flat, len(flat) - k)[len(flat) - k :]
    return rank, mate_s, top, negatives


def _mates(probe_subjects: np.ndarray, gallery_subjects: np.ndarray) -> np.ndarray:
    """Gallery column of each probe's subject, -1 when the subject is not in the gallery."""
    col = {int(s): i for i, s in enumerate(gallery_subjects)}
    return np.array([col.get(int(s), -1) for s in probe_subjects], np.int64)


def _nonmated_threshold(nonmated_top: np.ndarray, fpir: float, rule: str) -> tuple[float, int]:
    """τ and its 1-based order statistic among the non-mated best scores sorted high to low (``rule`` in the
    module doc: ``"ijb_evals"`` the ⌊f·n⌋-th highest, at least the highest; ``"exact"`` the (⌊f·n⌋+1)-th highest)."""
    m = far_count(fpir, len(nonmated_top))
    k = max(m, 1) if rule == "ijb_evals" else m + 1
    return (float(nonmated_top[k - 1]) if k <= len(nonmated_top) else -math.inf), k


def open_set_identification(feats: np.ndarray, gallery_rows: np.ndarray, gallery_subjects: np.ndarray,
                            probe_rows: np.ndarray, probe_subjects: np.ndarray, ranks: Sequence[int] = RANKS,
                            fpirs: Sequence[float] = FPIRS, chunk: int = 4096) -> dict[str, Any]:
    """Rank-k of mated probes and TPIR at FPIR for one gallery (rules in the module doc).

    Args:
        feats: (T, D) unit template features; the rows below index it.
        gallery_rows, gallery_subjects: (G,) one template per subject.
        probe_rows, probe_subjects: (Q,).

    Returns:
        ``num_gallery``, ``num_mated``, ``num_nonmated``, ``rank`` {k: share of mated probes}, ``rank_hits``
        {k: count}, ``tpir_at_fpir`` {f: {tpir, threshold, threshold_rank}} with ``ijb_evals.py``'s τ, and
        ``tpir_at_fpir_exact`` {f: {tpir, threshold, allowed_nonmated}} with at most ⌊f·#non-mated⌋ above τ.
    """
    mate = _mates(probe_subjects, gallery_subjects)
    mated = mate >= 0
    if not mated.any():
        raise ValueError("1:N: no probe's subject is in the gallery")
    rank, mate_s, top, _ = _search(feats, probe_rows, gallery_rows, mate, chunk)
    nonmated_top = np.sort(top[~mated])[::-1]
    first = mated & (rank == 1)
    tpir, exact = {}, {}
    for f in fpirs:
        for rule, table in (("ijb_evals", tpir), ("exact", exact)):
            tau, k = _nonmated_threshold(nonmated_top, f, rule)
            value = float((first & (mate_s > tau)).sum() / mated.sum()) if len(nonmated_top) else float("nan")
            extra = {"threshold_rank": k} if rule == "ijb_evals" else {"allowed_nonmated": k - 1}
            table[f"{f:g}"] = {"tpir": value, "threshold": tau, **extra}
    hits = {str(r): int(np.count_nonzero(rank[mated] <= r)) for r in ranks}
    return {
        "num_gallery": int(len(gallery_rows)),
        "num_mated": int(mated.sum()),
        "num_nonmated": int((~mated).sum()),
        "rank": {r: h / int(mated.sum()) for r, h in hits.items()},
        "rank_hits": hits,
        "tpir_at_fpir": tpir,
        "tpir_at_fpir_exact": exact,
    }


def combine_galleries(per: dict[str, dict[str, Any]], num_probes: int) -> dict[str, dict[str, Any]]:
    """The two-gallery numbers from :func:`open_set_identification`'s per-gallery results.

    Returns:
        ``headline`` (``ijb_evals.py``, the paper-comparable numbers): rank-k = the galleries' rank-k hits summed
        over the number of probe templates, TPIR = the mean of the galleries' TPIR with ``ijb_evals.py``'s τ;
        ``mean_of_galleries``: rank-k = the mean of the galleries' rank-k shares, TPIR = the mean of their TPIR
        with the exact τ. Each with its ``rule``.
    """
    runs = list(per.values())
    ranks, fpirs = list(runs[0]["rank"]), list(runs[0]["tpir_at_fpir"])
    headline = {"rule": PAPER_RULE_1N,
                "rank": {r: sum(x["rank_hits"][r] for x in runs) / num_probes for r in ranks},
                "tpir_at_fpir": {f: {"tpir": float(np.mean([x["tpir_at_fpir"][f]["tpir"] for x in runs]))}
                                 for f in fpirs}}
    mean = {"rule": MEAN_RULE_1N, "rank": {r: float(np.mean([x["rank"][r] for x in runs])) for r in ranks},
            "tpir_at_fpir": {f: {"tpir": float(np.mean([x["tpir_at_fpir_exact"][f]["tpir"] for x in runs]))}
                             for f in fpirs}}
    return {"headline": headline, "mean_of_galleries": mean}


def insightface_1n(feats: np.ndarray, gallery_rows: np.ndarray, gallery_subjects: np.ndarray, probe_rows: np.ndarray,
                   probe_subjects: np.ndarray, ranks: Sequence[int] = RANKS, fars: Sequence[float] = FPIRS,
                   chunk: int = 4096) -> dict[str, Any]:
    """insightface ``ijb_1n.py``'s numbers on one gallery (it passes G1 ∪ G2): closed-set rank-k over all probes,
    and at each "FAR" f the fraction of probes whose mate scores above the ⌈f·#probes⌉-th highest non-mate score
    among all probe × gallery pairs."""
    mate = _mates(probe_subjects, gallery_subjects)
    if (mate < 0).any():
        raise ValueError(f"{int((mate < 0).sum())} probes have no template in G1 ∪ G2 (closed-set insightface "
                         "numbers need one for every probe)")
    n = len(probe_rows)
    need = [math.ceil(n * f) for f in fars]
    rank, mate_s, _, negatives = _search(feats, probe_rows, gallery_rows, mate, chunk, keep_negatives=max(need))
    negatives = np.sort(negatives)[::-1]
    recall = {f"{f:g}": float(np.mean(mate_s > negatives[k - 1])) for f, k in zip(fars, need)}
    return {"rule": "closed set on G1+G2, as ijb_1n.py", "rank": {str(r): float(np.mean(rank <= r)) for r in ranks},
            "tpir_at_far": recall}


def _rows(template_ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    return np.searchsorted(template_ids, wanted)


def _identification(meta: IJBMeta, tmpl_ids: np.ndarray, feats: np.ndarray) -> dict[str, Any]:
    """Both galleries against the mixed probes, the two-gallery numbers, and ``ijb_1n.py``'s combined gallery."""
    assert meta.probes is not None
    p_rows, p_subj = _rows(tmpl_ids, meta.probes[0]), meta.probes[1]
    per = {g: open_set_identification(feats, _rows(tmpl_ids, t), s, p_rows, p_subj) for g, t, s in meta.galleries}
    out: dict[str, Any] = {"galleries": per, **combine_galleries(per, len(p_rows)), "num_probes": int(len(p_rows))}
    g_t = np.concatenate([t for _, t, _ in meta.galleries])
    g_s = np.concatenate([s for _, _, s in meta.galleries])
    try:
        out["insightface"] = insightface_1n(feats, _rows(tmpl_ids, g_t), g_s, p_rows, p_subj)
    except ValueError as exc:
        out["insightface"] = {"skipped": str(exc)}
    return out


# ---------------------------------------------------------------------------------------------------------------
# One model
# ---------------------------------------------------------------------------------------------------------------


def _verification(scores: np.ndarray, pairs: PairList, fars: Sequence[float]) -> dict[str, Any]:
    """1:1 over every row of the pair file: the paper-comparable TAR (``eval_ijbc.py``) as ``tar_at_far``, the
    exact rule under ``exact``, the exact ROC, and the count of repeated rows."""
    exact = verification_metrics(scores, pairs.label, fars)
    paper = insightface_tar(scores, pairs.label, fars)
    return {
        "num_pairs": exact["num_pairs"], "num_genuine": exact["num_genuine"],
        "num_impostor": exact["num_impostor"], "repeated_rows": pairs.repeats, "first_repeat": pairs.first_repeat,
        **paper,
        "exact": {"rule": EXACT_RULE_11, "tar_at_far": exact["tar_at_far"]},
        "roc": exact["roc"],
    }


def _count_media(templates: np.ndarray, medias: np.ndarray) -> int:
    """Distinct (template, media) pairs: a media seen in two templates counts in each."""
    order = np.lexsort((medias, templates))
    t, m = templates[order], medias[order]
    return int(1 + np.count_nonzero((t[1:] != t[:-1]) | (m[1:] != m[:-1]))) if len(t) else 0


def evaluate_ijb(meta: IJBMeta, feats: np.ndarray, fused_norms: np.ndarray, norm_score: bool = True,
                 detector_score: bool = True, workers: int = 1, fars: Sequence[float] = FARS
                 ) -> tuple[dict[str, Any], np.ndarray]:
    """Pool, score every listed pair, and run 1:N when its files are there.

    Args:
        meta: from :func:`load_meta`.
        feats: (N, D) unit flip-fused image features in face-list order (array or memmap).
        fused_norms: (N,) norms of the fused features before normalization.
        norm_score, detector_score: pooling options (module doc).
        workers: threads for the pair scores.

    Returns:
        ``(result dict, scores of every pair-file row in file order (P,) float64)``.
    """
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    weights = image_weights(fused_norms, meta.faces.scores, norm_score, detector_score)
    tmpl_ids, tfeats = pool_templates(feats, weights, meta.templates, meta.medias)
    timings["pooling_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    pairs = meta.pairs
    scores = pair_scores(tfeats, _rows(tmpl_ids, pairs.t1), _rows(tmpl_ids, pairs.t2), workers=workers)
    verification = _verification(scores, pairs, fars)
    timings["verification_s"] = time.perf_counter() - t0
    result: dict[str, Any] = {
        "target": meta.files.target,
        "options": {"norm_score": bool(norm_score), "detector_score": bool(detector_score), "flip": True},
        "num_images": int(len(meta.templates)),
        "num_templates": int(len(tmpl_ids)),
        "num_media": _count_media(meta.templates, meta.medias),
        "verification": verification,
    }
    if meta.probes is not None:
        t0 = time.perf_counter()
        result["identification"] = _identification(meta, tmpl_ids, tfeats)
        timings["identification_s"] = time.perf_counter() - t0
    result["timings"] = {k: round(v, 3) for k, v in timings.items()}
    return result, scores
