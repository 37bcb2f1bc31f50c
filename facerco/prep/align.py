"""Five-point similarity alignment to the ArcFace template, for one image or a whole folder tree.

The warp is the one every ArcFace-family model was trained on (FORMATS.md section 3): a least-squares similarity
(rotation, uniform scale, translation; Umeyama 1991) from the five detected points to the template, then a bilinear
``cv2.warpAffine`` with a black border. A tree job mirrors ``SRC`` into ``DST``, runs in worker processes, can be
killed and restarted (finished files are skipped), never writes under ``SRC``, and appends one row per input file
to ``DST/align_report.csv``: ``file, faces_found, chosen_score, failure_reason, outputs`` (``;``-separated crop
paths) and ``landmarks`` (the chosen face's ten coordinates, space-separated, so a crop can be redone at another
size without detecting again). ``faces_found`` is -1 for a crop found on disk without a row (job killed between
the two writes).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from facerco.prep.detectors import SELECT_POLICIES, Detector, DetectorSpec, Face, select_faces
from facerco.utils.io import atomic_write_bytes
from facerco.utils.workers import process_context

__all__ = [
    "ARCFACE_TEMPLATE_112",
    "IMAGE_EXTENSIONS",
    "REPORT_NAME",
    "REPORT_COLUMNS",
    "AlignResult",
    "arcface_template",
    "umeyama",
    "estimate_transform",
    "warp_face",
    "read_image",
    "write_image",
    "align_image",
    "list_images",
    "read_report",
    "align_tree",
]

# ArcFace 112x112 template: left eye, right eye, nose tip, left mouth corner, right mouth corner (x, y).
ARCFACE_TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm", ".tif", ".tiff", ".webp")
_WRITABLE = (".jpg", ".jpeg", ".png", ".bmp")
REPORT_NAME = "align_report.csv"
REPORT_COLUMNS = ["file", "faces_found", "chosen_score", "failure_reason", "outputs", "landmarks"]


def arcface_template(size: int = 112, template: np.ndarray | None = None) -> np.ndarray:
    """The five template points for a ``size x size`` crop; ``size`` must be a multiple of 112. ``template``: other
    112-pixel points to scale instead of :data:`ARCFACE_TEMPLATE_112` (the IJB evaluation's float32 variant)."""
    if size <= 0 or size % 112:
        raise ValueError(f"aligned size must be a positive multiple of 112 (ArcFace template), got {size}")
    base = ARCFACE_TEMPLATE_112 if template is None else template
    return base * (size / 112.0)


def umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity ``dst ~ s R src + t`` (Umeyama 1991, eqs. 38-43, no reflection).

    Computed in the common precision of the inputs (float32 inputs stay float32), so five float32 landmarks give
    the same matrix, to the last bit in practice, as skimage's estimator that insightface's ``norm_crop`` uses:
    cv2 samples at 1/32 pixel, so even 1e-6 differences in the matrix show up as 1-2 grey levels at sharp edges.

    Args:
        src: ``(N, 2)`` source points, N >= 2.
        dst: ``(N, 2)`` target points.

    Returns:
        ``(2, 3)`` affine matrix ``[s R | t]`` (float64 holding the computed values).
    """
    src, dst = np.asarray(src), np.asarray(dst)
    dtype = np.result_type(src.dtype, dst.dtype, np.float32)
    src, dst = src.astype(dtype, copy=False), dst.astype(dtype, copy=False)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or src.shape[0] < 2:
        raise ValueError(f"umeyama needs two (N, 2) arrays with N >= 2, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    s_c, d_c = src - mu_s, dst - mu_d
    var_s = s_c.var(axis=0).sum()
    if not var_s > 0:
        raise ValueError("umeyama: source points are all identical")
    cov = d_c.T @ s_c / len(src)
    sign = np.ones(2)
    if np.linalg.det(cov) < 0:
        sign[1] = -1.0
    u, sig, vt = np.linalg.svd(cov)
    rot = u @ np.diag(sign) @ vt
    scale = 1.0 / var_s * (sig @ sign)
    trans = mu_d - scale * (rot @ mu_s)
    return np.hstack([scale * rot, trans[:, None]]).astype(np.float64)


def estimate_transform(landmarks: np.ndarray, size: int = 112, template: np.ndarray | None = None) -> np.ndarray:
    """``(2, 3)`` matrix taking image pixels to the ``size`` crop, from five ArcFace-order landmarks (float32);
    ``template`` as in :func:`arcface_template`."""
    pts = np.asarray(landmarks, dtype=np.float32)
    if pts.shape != (5, 2) or not np.isfinite(pts).all():
        raise ValueError(f"alignment needs five finite (x, y) landmarks, got shape {pts.shape}")
    return umeyama(pts, arcface_template(size, template).astype(np.float32))


def warp_face(image: np.ndarray, landmarks: np.ndarray, size: int = 112, template: np.ndarray | None = None
              ) -> np.ndarray:
    """Aligned ``(size, size, C)`` crop: similarity to the template, bilinear, black border."""
    m = estimate_transform(landmarks, size, template)
    return cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode any image file to RGB uint8 ``(H, W, 3)`` (grey is expanded, alpha dropped)."""
    buf = np.fromfile(str(path), dtype=np.uint8)
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if buf.size else None
    if img is None:
        raise ValueError(f"{path}: not a readable image")
    return decode_to_rgb(img, path)


def decode_to_rgb(img: np.ndarray, name: object = "image") -> np.ndarray:
    """Convert a cv2-decoded array (grey, BGR, BGRA, 16-bit) to RGB uint8."""
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    if img.dtype != np.uint8:
        raise ValueError(f"{name}: unsupported pixel type {img.dtype}")
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def encode_image(rgb: np.ndarray, suffix: str = ".jpg", quality: int = 95) -> bytes:
    """Encode RGB uint8 as JPEG (quality 95, the usual for face datasets) or a lossless format by suffix."""
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if suffix.lower() in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(suffix, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError(f"could not encode image as {suffix}")
    return buf.tobytes()


def write_bytes_public(path: str | os.PathLike[str], data: bytes) -> None:
    """Write-then-rename, so a killed job never leaves a truncated image that a resume would skip.

    No fsync: millions of small crops, and a process kill, not a power cut, is what resuming must survive.
    """
    atomic_write_bytes(path, data, fsync=False)


def write_image(path: str | os.PathLike[str], rgb: np.ndarray, quality: int = 95) -> None:
    """Atomically write an RGB image; the format follows the file suffix."""
    write_bytes_public(path, encode_image(rgb, Path(path).suffix, quality))


@dataclass
class AlignResult:
    """What happened to one input image."""

    faces_found: int
    chosen_score: float | None
    failure_reason: str
    crops: list[np.ndarray]
    faces: list[Face]


def align_image(
    image: np.ndarray,
    detector: Detector,
    *,
    key: str | None = None,
    hint: np.ndarray | None = None,
    size: int = 112,
    policy: str = "largest",
) -> AlignResult:
    """Detect, choose face(s) by ``policy`` and warp each to the template."""
    faces = detector.detect(image, key=key, hint=hint)
    if not faces:
        return AlignResult(0, None, "no_face", [], [])
    chosen = select_faces(faces, image.shape, policy, hint=hint)
    crops = [warp_face(image, f.landmarks, size) for f in chosen]
    return AlignResult(len(faces), chosen[0].score, "", crops, chosen)


def list_images(root: str | os.PathLike[str]) -> list[str]:
    """Image files under ``root`` as sorted POSIX paths relative to it."""
    root = Path(root)
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            if name.lower().endswith(IMAGE_EXTENSIONS):
                out.append((Path(dirpath) / name).relative_to(root).as_posix())
    return sorted(out)


def _output_names(rel: str, n: int, fmt: str, policy: str) -> list[str]:
    path = Path(rel)
    if fmt == "same":
        suffix = path.suffix.lower() if path.suffix.lower() in _WRITABLE else ".png"
    else:
        suffix = "." + fmt.lstrip(".")
    if policy != "all":
        return [path.with_suffix(suffix).as_posix()]
    return [path.with_name(f"{path.stem}_{k}{suffix}").as_posix() for k in range(n)]


def read_report(path: str | os.PathLike[str]) -> dict[str, dict[str, str]]:
    """Rows of an ``align_report.csv`` keyed by file; a torn last line (job killed mid-write) is ignored."""
    p = Path(path)
    if not p.is_file():
        return {}
    rows: dict[str, dict[str, str]] = {}
    with open(p, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames != REPORT_COLUMNS:
            raise ValueError(f"{p}: not an align report (header {reader.fieldnames}, expected {REPORT_COLUMNS})")
        for row in reader:
            if row.get("landmarks") is None:  # torn line
                continue
            rows[row["file"]] = row
    return rows


# ---- worker side ---------------------------------------------------------------------------------------------
_WORKER: dict[str, object] = {}


@dataclass(frozen=True)
class _Job:
    src: str
    dst: str
    spec: DetectorSpec
    size: int
    policy: str
    fmt: str
    quality: int


def _start_detector(state: dict[str, object], spec: DetectorSpec | None) -> None:
    """Build a worker's detector into ``state``. A failure (bad model or landmarks file) is kept for
    :func:`_raise_start_error` to raise at the first task: a pool initializer that raises makes the pool restart
    crashing workers for ever."""
    state.pop("error", None)
    try:
        state["detector"] = spec.build() if spec is not None else None
    except Exception as exc:  # noqa: BLE001 - re-raised in the parent through the first task
        state["error"] = f"{spec.name if spec else ''} detector cannot start: {' '.join(str(exc).split())}"


def _raise_start_error(state: dict[str, object]) -> None:
    if "error" in state:
        raise RuntimeError(state["error"])


def _init_worker(job: _Job) -> None:
    cv2.setNumThreads(1)
    _WORKER["job"] = job
    _start_detector(_WORKER, job.spec)


def _process(rel: str) -> list[str]:
    _raise_start_error(_WORKER)
    job: _Job = _WORKER["job"]  # type: ignore[assignment]
    detector: Detector = _WORKER["detector"]  # type: ignore[assignment]
    try:
        image = read_image(Path(job.src) / rel)
    except (ValueError, OSError) as exc:
        return [rel, "0", "", f"unreadable: {exc}", "", ""]
    try:
        res = align_image(image, detector, key=rel, size=job.size, policy=job.policy)
        names = _output_names(rel, len(res.crops), job.fmt, job.policy)
        for name, crop in zip(names, res.crops):
            write_image(Path(job.dst) / name, crop, job.quality)
    except (ValueError, RuntimeError, OSError, cv2.error) as exc:
        return [rel, "0", "", f"error: {type(exc).__name__}: {exc}".replace("\n", " "), "", ""]
    score = "" if res.chosen_score is None else f"{res.chosen_score:.4f}"
    lmk = " ".join(f"{v:.2f}" for v in res.faces[0].landmarks.reshape(-1)) if res.faces else ""
    return [rel, str(res.faces_found), score, res.failure_reason, ";".join(names if res.crops else []), lmk]


def _run(todo: list[str], job: _Job, workers: int) -> Iterator[list[str]]:
    if workers <= 1:
        _init_worker(job)
        _raise_start_error(_WORKER)
        yield from map(_process, todo)
        return
    ctx = process_context()
    with ctx.Pool(workers, initializer=_init_worker, initargs=(job,)) as pool:
        yield from pool.imap_unordered(_process, todo, chunksize=4)


def _check_dirs(src: Path, dst: Path) -> None:
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: source folder not found")
    s, d = src.resolve(), dst.resolve()
    if d == s or s in d.parents:
        raise ValueError(f"{dst}: output must be outside the source tree {src} (the source is never written)")


def align_tree(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    spec: DetectorSpec,
    *,
    size: int = 112,
    policy: str = "largest",
    fmt: str = "same",
    quality: int = 95,
    workers: int = 1,
    files: Iterable[str] | None = None,
    progress: bool = True,
) -> dict[str, int]:
    """Align every image under ``src`` into the mirrored tree ``dst``; resumable.

    Args:
        src: input root (read only).
        dst: output root; receives the crops and ``align_report.csv``.
        spec: detector to build in each worker.
        size: crop side, a multiple of 112.
        policy: ``largest``, ``central`` or ``all`` (``all`` writes ``<stem>_<k>`` per face).
        fmt: ``same`` (keep jpg/png/bmp, others -> png), ``jpg`` or ``png``.
        quality: JPEG quality.
        workers: processes (1 = in this process).
        files: restrict to these relative paths (default: every image under ``src``).
        progress: show a tqdm bar.

    Returns:
        Counts: ``total``, ``skipped`` (already done), ``aligned``, ``failed`` in this run.
    """
    from tqdm import tqdm

    src, dst = Path(src), Path(dst)
    _check_dirs(src, dst)
    arcface_template(size)
    if policy not in SELECT_POLICIES:
        raise ValueError(f"unknown policy {policy!r}; choose one of {', '.join(SELECT_POLICIES)}")
    if fmt not in ("same", "jpg", "png"):
        raise ValueError(f"unknown output format {fmt!r}; choose same, jpg or png")
    all_files = sorted(files) if files is not None else list_images(src)
    dst.mkdir(parents=True, exist_ok=True)
    report_path = dst / REPORT_NAME
    done = read_report(report_path)
    todo = []
    for rel in all_files:
        if rel in done:
            continue
        outs = _output_names(rel, 1, fmt, policy)
        if policy != "all" and (dst / outs[0]).is_file():
            done[rel] = {}  # finished before the report row was written: keep it, note it
            _append_rows(report_path, [[rel, "-1", "", "", outs[0], ""]])
            continue
        todo.append(rel)
    counts = {"total": len(all_files), "skipped": len(all_files) - len(todo), "aligned": 0, "failed": 0}
    job = _Job(str(src), str(dst), spec, size, policy, fmt, quality)
    with _open_report(report_path) as handle:
        writer = csv.writer(handle)
        bar = tqdm(total=len(todo), desc="align", unit="img", disable=not progress)
        try:
            for row in _run(todo, job, workers):
                writer.writerow(row)
                handle.flush()
                counts["aligned" if row[4] else "failed"] += 1
                bar.update(1)
        finally:
            bar.close()  # before an error is printed, so the error starts its own line
    return counts


def _open_report(path: Path, columns: list[str] = REPORT_COLUMNS):
    """Open a CSV report for appending: header when new, and a newline first if a killed job left a torn line."""
    torn = False
    if path.is_file() and path.stat().st_size > 0:
        with open(path, "rb") as handle:
            handle.seek(-1, os.SEEK_END)
            torn = handle.read(1) != b"\n"
    handle = open(path, "a", newline="", encoding="utf-8")  # noqa: SIM115 - returned to a with block
    if torn:
        handle.write("\n")
    if handle.tell() == 0:
        csv.writer(handle).writerow(columns)
    return handle


def _append_rows(path: Path, rows: list[list[str]]) -> None:
    with _open_report(path) as handle:
        csv.writer(handle).writerows(rows)
