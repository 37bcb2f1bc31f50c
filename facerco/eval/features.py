"""The one feature extractor used by every evaluator and by export: batched, flip-fused, L2-normalized.

``embedding = normalize(f(x) + f(flip(x)))`` (FORMATS.md §2). The raw norm kept per image is the mean of the norms
of ``f(x)`` and ``f(flip(x))``, so ``norms.mean()`` is insightface's XNorm.

Models: an ``nn.Module`` (its ``.meta`` gives input size, mean and std), a facerco checkpoint (``.safetensors``,
route points included) or an insightface ``.pth`` with ``arch``, or an ``.onnx`` file (onnxruntime).
Sources: a dataset object (items ``(tensor, label)``), an identity folder, a ``.rec`` folder, a list of image paths
(or a text file listing them), or a verification ``.bin``.

Files: ``save_embeddings`` writes ``<name>.npy`` (float32) beside ``<name>.csv`` (path,label,norm);
``write_devkit_tree``/``read_devkit_tree`` handle MegaFace devkit feature files (``<image>_<algo>.bin``: int32
rows=dim, cols=1, elem_size=4, type=5, then ``dim`` float32).
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from facerco.data.transforms import EvalTransform
from facerco.eval.checks import check_rows
from facerco.utils.io import atomic_path

__all__ = [
    "Embeddings",
    "Embedder",
    "embed_batch",
    "load_embedder",
    "open_source",
    "source_files",
    "extract_embeddings",
    "save_embeddings",
    "load_embeddings",
    "write_devkit_feature",
    "read_devkit_feature",
    "write_devkit_tree",
    "read_devkit_tree",
    "devkit_name",
]

_DEVKIT_HEADER = struct.Struct("<iiii")
_CV_32F = 5
_IMAGE_EXT = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".pgm", ".ppm", ".tif", ".tiff"}


@dataclass
class Embeddings:
    """Features of N images: ``emb`` (N, D) float32 unit rows, ``norms`` (N,) raw norms, ``labels`` (N,) int64
    (-1 when unknown), ``paths`` (N,) image keys; ``fused_norms`` (N,) float64, from the extractor only: the norm of
    the fused feature before normalization, so ``emb * fused_norms[:, None]`` is ``f(x) + f(flip(x))`` (IJB pooling
    with the embedding norm kept needs it; ``norms`` is the mean of the two views' norms)."""

    emb: np.ndarray
    norms: np.ndarray
    labels: np.ndarray
    paths: list[str]
    fused_norms: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.emb)

    @property
    def xnorm(self) -> float:
        return float(np.mean(self.norms)) if len(self.norms) else float("nan")


# ---------------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------------


class Embedder:
    """A model behind one call: (N, 3, H, W) float tensor, already normalized, -> (N, D) raw float32 numpy."""

    def __init__(self, fn: Callable[[torch.Tensor], np.ndarray], input_size: tuple[int, int], mean: float,
                 std: float, device: torch.device, name: str) -> None:
        self.fn, self.input_size, self.mean, self.std, self.device, self.name = fn, input_size, mean, std, device, name

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        return self.fn(x)

    def preprocessor(self) -> EvalTransform:
        """The evaluation preprocessor for this model (its input size, mean and std): what the extractor, IJB,
        embedding export and int8 calibration feed it, so every one of them sees the same pixels."""
        return EvalTransform(self.input_size, mean=self.mean, std=self.std)


def _module_embedder(model: nn.Module, device: torch.device, name: str) -> Embedder:
    meta = getattr(model, "meta", None)
    size = tuple(getattr(meta, "input_size", (112, 112)))
    mean, std = float(getattr(meta, "mean", 127.5)), float(getattr(meta, "std", 127.5))

    def run(x: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return embed_batch(model, x, device).cpu().numpy()

    return Embedder(run, size, mean, std, device, name)  # type: ignore[arg-type]


def embed_batch(model: nn.Module, images: torch.Tensor, device: torch.device | str | None = None,
                chunk_size: int = 0, flip: bool = False) -> torch.Tensor:
    """Raw float32 embeddings (N, D), on ``device``, of normalized images (N, C, H, W): the extractor's batch path.

    Every "embed these images" in facerco goes through here (extraction, GSS probes, compare, the anchor cache), so
    they agree bit for bit. No autograd graph; eval mode for the forward and the caller's mode back after, because
    training code probes its own student mid-run.

    Args:
        model: the backbone.
        images: normalized network input, on any device.
        device: where the forward runs; None: the device of the model's first parameter (CPU without parameters).
        chunk_size: > 0 forwards that many images at a time (bounded memory); 0 one forward for all. On CPU another
            chunk size can move the last bits (gemm blocking), so a caller keeps its own fixed.
        flip: embed the horizontal flip ``torch.flip(x, dims=[-1])`` instead (callers fuse or store both views).
    """
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    outs = []
    with torch.no_grad(), _eval_mode(model):
        for chunk in torch.split(images, chunk_size) if chunk_size > 0 else (images,):
            x = chunk.to(device, non_blocking=True)
            outs.append(model(torch.flip(x, dims=[-1]) if flip else x).float())
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def _onnx_embedder(path: Path, device: torch.device) -> Embedder:
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        sess = ort.InferenceSession(str(path), providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ValueError(f"{path}: cannot open ONNX model: {exc}") from exc
    inp = sess.get_inputs()[0]
    shape = inp.shape
    size = (int(shape[2]), int(shape[3])) if all(isinstance(s, int) for s in shape[2:4]) else (112, 112)

    def run(x: torch.Tensor) -> np.ndarray:
        return np.asarray(sess.run(None, {inp.name: x.cpu().numpy().astype(np.float32)})[0], np.float32)

    return Embedder(run, size, 127.5, 127.5, torch.device("cpu"), f"onnx ({_path_tail(path)})")


def _path_tail(path: Path) -> str:
    """The last three parts of a model's path: a run's route point and a student's file, both often named only
    ``epoch_NNN``/``student``, read as ``teacher/route/epoch_006`` and ``mimic_final/seed0/student``."""
    return "/".join(path.with_suffix("").parts[-3:])


def _checkpoint_label(path: Path, metadata: dict[str, Any]) -> str:
    """What progress bars and errors call a checkpoint: its role and architecture, then where it lives."""
    role = metadata.get("kind") or metadata.get("job") or "model"
    return f"{role} {metadata.get('arch') or 'model'} ({_path_tail(path)})"


def load_embedder(model: nn.Module | str | os.PathLike[str] | Embedder, device: str = "auto",
                  arch: str | None = None) -> Embedder:
    """Wrap an nn.Module, a checkpoint path or an ONNX path as an :class:`Embedder`.

    Args:
        model: the model or its file.
        device: ``auto`` = the module's own device for an nn.Module, else CUDA when present.
        arch: architecture name for an insightface ``.pth``/``.pt`` state_dict.
    """
    from facerco.utils.device import resolve_device

    if isinstance(model, Embedder):
        return model
    if isinstance(model, nn.Module):
        if device == "auto":
            param = next(model.parameters(), None)
            dev = param.device if param is not None else torch.device("cpu")
        else:
            dev = resolve_device(device)
            model.to(dev)
        return _module_embedder(model, dev, type(model).__name__)
    path = Path(model)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model file not found")
    dev = resolve_device(device)
    if path.suffix.lower() == ".onnx":
        return _onnx_embedder(path, dev)
    from facerco.models.checkpoint import load_model

    loaded = load_model(path, device=dev, arch=arch)
    return _module_embedder(loaded.model, dev, _checkpoint_label(path, loaded.metadata))


@contextlib.contextmanager
def _eval_mode(model: Any) -> Iterator[None]:
    """Eval mode for the extraction, then the caller's mode back (the engine validates mid-training)."""
    was = model.training if isinstance(model, nn.Module) else None
    if was:
        model.eval()
    try:
        yield
    finally:
        if was:
            model.train()


# ---------------------------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------------------------


class _ListSource(torch.utils.data.Dataset):
    """Images given as encoded bytes or file paths, with optional labels."""

    def __init__(self, items: Sequence[bytes | Path], labels: Sequence[int] | None, paths: list[str],
                 transform: Callable[[Any], torch.Tensor]) -> None:
        self.items, self.paths, self.transform = items, paths, transform
        self.labels = np.asarray(labels if labels is not None else [-1] * len(items), np.int64)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        item = self.items[i]
        if isinstance(item, Path):
            if not item.is_file():
                raise FileNotFoundError(f"{item}: image not found")
            item = item.read_bytes()
        try:
            return self.transform(item), int(self.labels[i])
        except ValueError as exc:
            raise ValueError(f"{self.paths[i]}: {exc}") from None


def _read_list_file(path: Path) -> tuple[list[Path], list[int] | None]:
    """A text list: one image per line, ``path`` or ``path label``; relative paths are relative to the list."""
    files: list[Path] = []
    labels: list[int] = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fields = line.strip().split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) > 2:
            raise ValueError(f"{path}: line {lineno}: expected 'path' or 'path label', got {line!r}")
        p = Path(fields[0])
        files.append(p if p.is_absolute() else path.parent / p)
        if len(fields) == 2:
            try:
                labels.append(int(fields[1]))
            except ValueError:
                raise ValueError(f"{path}: line {lineno}: label {fields[1]!r} is not an integer") from None
    if labels and len(labels) != len(files):
        raise ValueError(f"{path}: some lines have a label and some do not")
    return files, labels or None


def open_source(source: Any, transform: Callable[[Any], torch.Tensor]) -> torch.utils.data.Dataset:
    """A dataset of ``(tensor, label)`` with ``paths`` and ``labels`` for any accepted source (see module doc)."""
    if isinstance(source, torch.utils.data.Dataset) and not isinstance(source, _ListSource):
        return source
    if isinstance(source, list | tuple):
        files = [Path(s) for s in source]
        return _ListSource(files, None, [str(f) for f in files], transform)
    path = Path(source)
    if path.is_file() and path.suffix == ".bin":
        from facerco.data.bins import read_bin

        images, _ = read_bin(path)
        return _ListSource(images, None, [f"{path.name}#{i}" for i in range(len(images))], transform)
    if path.is_file() and path.suffix.lower() in {".txt", ".lst", ".list"}:
        files, labels = _read_list_file(path)
        return _ListSource(files, labels, [str(f) for f in files], transform)
    if path.is_file() and path.suffix.lower() in _IMAGE_EXT:
        return _ListSource([path], None, [str(path)], transform)
    if path.is_dir() or path.suffix == ".rec":
        from facerco.data.datasets import open_dataset

        return open_dataset(path, "auto", transform)
    raise FileNotFoundError(f"{path}: not a dataset folder, .rec, .bin, list file or image")


def source_files(source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The files an image source is read from (what a feature cache must watch): the listed images; a list file
    and its entries; every file under a folder; or the file itself (with its ``.idx`` for a ``.rec``)."""
    if isinstance(source, list | tuple):
        return [Path(s) for s in source]
    path = Path(source)
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image source not found")
    files = [path]
    if path.suffix.lower() in {".txt", ".lst", ".list"}:
        files += _read_list_file(path)[0]
    if path.suffix == ".rec" and path.with_suffix(".idx").is_file():
        files.append(path.with_suffix(".idx"))
    return files


def _dataset_paths(ds: Any) -> list[str]:
    paths = getattr(ds, "paths", None)
    if paths is None:
        return [str(i) for i in range(len(ds))]
    return [str(p) for p in paths]


# ---------------------------------------------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------------------------------------------


def extract_embeddings(
    model: nn.Module | str | os.PathLike[str] | Embedder,
    source: Any,
    batch_size: int = 256,
    device: str = "auto",
    flip: bool = True,
    transform: Callable[[Any], torch.Tensor] | None = None,
    num_workers: int = 0,
    progress: bool = True,
    arch: str | None = None,
) -> Embeddings:
    """Flip-fused, L2-normalized embeddings of every image of ``source``, in source order.

    Args:
        model: nn.Module, checkpoint path, ``.onnx`` path, or an :class:`Embedder`.
        source: dataset object, identity folder, ``.rec`` folder, list of paths, list file, or ``.bin``.
        batch_size: images per forward (each forward also runs the flipped copies).
        device: ``auto``, ``cpu``, ``cuda[:i]``.
        flip: fuse ``f(x) + f(flip(x))`` (the verification protocol); False uses ``f(x)`` alone.
        transform: image -> normalized CHW tensor for file sources; default resizes to the model input and
            normalizes with the model's mean/std.
        num_workers: DataLoader workers.
        progress: show a tqdm bar.
        arch: architecture for insightface ``.pth`` checkpoints.

    Returns:
        :class:`Embeddings`.
    """
    emb_fn = model if isinstance(model, Embedder) else load_embedder(model, device, arch)
    tf = transform or emb_fn.preprocessor()
    ds = open_source(source, tf)
    if len(ds) == 0:
        raise ValueError(f"{source}: no images to embed")
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                         pin_memory=emb_fn.device.type == "cuda")
    feats, norms, labels, fused_norms = [], [], [], []
    paths = _dataset_paths(ds)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(ds), unit="img", desc=f"embed {emb_fn.name}")
    inner = model if isinstance(model, nn.Module) else None
    done = 0
    with _eval_mode(inner), np.errstate(invalid="ignore", over="ignore"):
        for x, y in loader:
            n = x.shape[0]
            out = emb_fn(torch.cat([x, x.flip(3)]) if flip else x).astype(np.float32)
            views = [out[:n], out[n:]] if flip else [out]
            fused = np.sum(views, axis=0, dtype=np.float64)
            # a model giving NaN/Inf (or a zero embedding) for an image fails here, naming the image
            length = check_rows(fused, f"{emb_fn.name} output", done, paths, what="image")
            norms.append(np.mean([np.linalg.norm(v.astype(np.float64), axis=1) for v in views], axis=0))
            feats.append((fused / length[:, None]).astype(np.float32))
            fused_norms.append(length)
            labels.append(np.asarray(y, np.int64))
            done += n
            if bar is not None:
                bar.update(n)
    if bar is not None:
        bar.close()
    return Embeddings(np.concatenate(feats), np.concatenate(norms).astype(np.float32), np.concatenate(labels), paths,
                      np.concatenate(fused_norms))


# ---------------------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------------------


def _npy_path(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    return p if p.suffix == ".npy" else p.with_name(p.name + ".npy")


def save_embeddings(emb: Embeddings, path: str | os.PathLike[str]) -> Path:
    """Write ``<path>.npy`` (float32 (N, D)) and ``<path>.csv`` (path,label,norm) atomically; returns the .npy."""
    npy = _npy_path(path)
    with atomic_path(npy) as tmp, open(tmp, "wb") as handle:
        np.save(handle, np.ascontiguousarray(emb.emb, np.float32))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "label", "norm"])
    for p, lab, nrm in zip(emb.paths, emb.labels, emb.norms):
        writer.writerow([p, int(lab), f"{float(nrm):.6g}"])
    from facerco.utils.io import atomic_write_text

    atomic_write_text(npy.with_suffix(".csv"), buf.getvalue())
    return npy


def load_embeddings(path: str | os.PathLike[str], mmap: bool = False) -> Embeddings:
    """Read what :func:`save_embeddings` wrote (``mmap=True`` memory-maps the features)."""
    npy = _npy_path(path)
    if not npy.is_file():
        raise FileNotFoundError(f"{npy}: features file not found")
    feats = np.load(npy, mmap_mode="r" if mmap else None, allow_pickle=False)
    if feats.ndim != 2:
        raise ValueError(f"{npy}: expected a 2-D feature array, got shape {feats.shape}")
    index = npy.with_suffix(".csv")
    paths, labels, norms = [str(i) for i in range(len(feats))], np.full(len(feats), -1), np.full(len(feats), np.nan)
    if index.is_file():
        with open(index, encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
        if len(rows) != len(feats):
            raise ValueError(f"{index}: {len(rows)} rows but {npy.name} has {len(feats)} features")
        try:
            paths = [r["path"] for r in rows]
            labels = np.array([int(r["label"]) for r in rows])
            norms = np.array([float(r.get("norm") or "nan") for r in rows])
        except (KeyError, ValueError) as exc:
            raise ValueError(f"{index}: bad index row ({exc}); expected columns path,label[,norm]") from None
    return Embeddings(feats, norms.astype(np.float32), labels.astype(np.int64), paths)


def devkit_name(image_key: str, algo: str) -> str:
    """MegaFace devkit feature file name of an image: ``<image file name>_<algo>.bin`` (same folder)."""
    if not algo or "/" in algo:
        raise ValueError(f"algo name must be a non-empty file-name part, got {algo!r}")
    return f"{image_key}_{algo}.bin"


def write_devkit_feature(path: str | os.PathLike[str], vec: np.ndarray) -> None:
    """One devkit feature file: int32 header (rows=dim, cols=1, elem_size=4, type=5 CV_32F), then float32.

    Written to a temporary name and renamed (never half a file), without the fsync of ``atomic_path``: a feature
    tree has up to a million of these and each is cheap to rewrite.
    """
    v = np.ascontiguousarray(vec, dtype="<f4").ravel()
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    tmp.write_bytes(_DEVKIT_HEADER.pack(len(v), 1, 4, _CV_32F) + v.tobytes())
    os.replace(tmp, final)


def read_devkit_feature(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one devkit feature file, checking every header field and that every value is finite (errors name the
    file and the field or value)."""
    p = Path(path)
    data = p.read_bytes()
    if len(data) < _DEVKIT_HEADER.size:
        raise ValueError(f"{p}: {len(data)} bytes, shorter than the 16-byte devkit header")
    rows, cols, elem, typ = _DEVKIT_HEADER.unpack_from(data)
    for name, offset, got, want in (("cols", 4, cols, 1), ("elem_size", 8, elem, 4), ("type", 12, typ, _CV_32F)):
        if got != want:
            raise ValueError(f"{p}: header field {name} at offset {offset} is {got}, expected {want}")
    if rows <= 0 or len(data) != 16 + 4 * rows:
        raise ValueError(f"{p}: header says {rows} float32 values but the file has {len(data) - 16} payload bytes")
    vec = np.frombuffer(data, dtype="<f4", offset=16).astype(np.float32)
    bad = np.flatnonzero(~np.isfinite(vec))
    if len(bad):
        raise ValueError(f"{p}: {len(bad)} of {len(vec)} values are not finite (first {vec[bad[0]]} at index "
                         f"{bad[0]})")
    return vec


def write_devkit_tree(emb: Embeddings, root: str | os.PathLike[str], algo: str,
                      keys: Sequence[str] | None = None) -> list[Path]:
    """Write one devkit file per image under ``root``, mirroring each image key (a relative path)."""
    keys = list(keys) if keys is not None else list(emb.paths)
    if len(keys) != len(emb):
        raise ValueError(f"{len(keys)} keys for {len(emb)} embeddings")
    out = []
    base = Path(root)
    for key, vec in zip(keys, emb.emb):
        rel = Path(key)
        if rel.is_absolute() or ".." in rel.parts:
            raise ValueError(f"devkit key {key!r} must be a relative path inside {base}")
        target = base / devkit_name(str(rel), algo)
        write_devkit_feature(target, vec)
        out.append(target)
    return out


def read_devkit_tree(root: str | os.PathLike[str], algo: str, keys: Sequence[str] | None = None,
                     progress: bool = False, out: str | os.PathLike[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """Read devkit features for ``keys`` (image paths relative to ``root``), or every ``*_<algo>.bin`` found.

    Args:
        out: optional ``.npy`` path; rows are written straight into it (a memmap), so a million files never sit in
            memory at once, and the returned array is that memmap.

    Returns:
        ``(features (N, D) float32, keys)``; keys are the image paths (the feature suffix removed).
    """
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"{base}: devkit feature folder not found")
    suffix = f"_{algo}.bin"
    if keys is None:
        keys = sorted(str(p.relative_to(base))[: -len(suffix)] for p in base.rglob(f"*{suffix}"))
        if not keys:
            raise ValueError(f"{base}: no '*{suffix}' feature files found")
    it: Any = keys
    if progress:
        from tqdm import tqdm

        it = tqdm(keys, unit="file", desc=f"read {base.name}")
    keys = list(keys)
    first = read_devkit_feature(base / devkit_name(keys[0], algo))
    if out is None:
        feats = np.empty((len(keys), len(first)), np.float32)
    else:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        feats = np.lib.format.open_memmap(out, mode="w+", dtype=np.float32, shape=(len(keys), len(first)))
    for i, key in enumerate(it):
        vec = first if i == 0 else read_devkit_feature(base / devkit_name(key, algo))
        if len(vec) != len(first):
            raise ValueError(f"{base / devkit_name(key, algo)}: {len(vec)} values, but {keys[0]} has {len(first)}")
        feats[i] = vec
    if isinstance(feats, np.memmap):
        feats.flush()
    return feats, keys
