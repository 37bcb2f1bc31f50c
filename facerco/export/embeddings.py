"""Export embeddings of a whole image source for outside tools: ``.npy`` + index CSV, or a MegaFace devkit tree.

Features come from the shared extractor (:func:`facerco.eval.features.extract_embeddings`: flip-fused,
L2-normalised), so an export equals what evaluation computes. The job is cut into shards of ``shard_size``
images; each finished shard is written atomically under ``OUT/.shards/`` and skipped when the job is rerun with
the same model, source and settings (a fingerprint in ``OUT/.shards/plan.json`` guards against mixing runs).
Once every shard exists the final files are assembled atomically, ``OUT/manifest.json`` is written last, and the
shard folder is removed.

Outputs (``OUT`` is a directory):
- ``npy``: ``embeddings.npy`` (N, D) float32 or float16 and ``embeddings.csv`` (path,label,norm), the layout
  :func:`facerco.eval.features.load_embeddings` reads.
- ``megaface``: ``<key>_<algo>.bin`` per image (devkit header + float32, FORMATS.md §6), keys relative to the
  source folder (``<container>/<index:08d>`` for ``.rec``/``.bin`` sources, which have no file names).
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn
from torch.utils.data import Dataset

from facerco.eval.checks import check_rows
from facerco.utils.io import atomic_path, atomic_write_text, read_json, sha256_file, write_json

__all__ = ["FORMATS", "DTYPES", "export_embeddings", "devkit_keys"]

FORMATS = ("npy", "megaface")
DTYPES = ("float32", "float16")
_SHARD_DIR = ".shards"
_PLAN_VERSION = 1


class _Slice(Dataset):
    """Items ``start:stop`` of a dataset, with the matching ``paths``/``labels`` the extractor reports."""

    def __init__(self, base: Dataset, paths: list[str], start: int, stop: int) -> None:
        self.base, self.start, self.stop = base, start, stop
        self.paths = paths[start:stop]
        labels = getattr(base, "labels", None)
        self.labels = None if labels is None else np.asarray(labels)[start:stop]

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int) -> Any:
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.base[self.start + i]


def _model_fingerprint(model: nn.Module | str | os.PathLike[str]) -> str:
    if isinstance(model, nn.Module):
        digest = hashlib.sha256()
        for name, tensor in sorted(model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return f"module:{digest.hexdigest()}"
    path = Path(model)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model file not found")
    return f"file:{sha256_file(path)}"


def _paths_digest(paths: list[str]) -> str:
    return hashlib.sha256("\n".join(paths).encode("utf-8")).hexdigest()


def devkit_keys(paths: list[str], source: Any) -> list[str]:
    """Relative keys for devkit files: path under the source folder, or ``<container>/<index:08d>``."""
    keys = []
    root = Path(source) if not isinstance(source, list | tuple | Dataset) else None
    files = [Path(p) for p in paths]
    if all("#" not in p for p in paths):
        base = root if root is not None and root.is_dir() else Path(os.path.commonpath([f.parent for f in files]))
        for f in files:
            try:
                keys.append(f.relative_to(base).as_posix())
            except ValueError:
                raise ValueError(f"{f}: image is not under {base}; cannot name its devkit feature file") from None
        return keys
    for p in paths:
        container, _, index = p.rpartition("#")
        if not index.isdigit():
            raise ValueError(f"image key {p!r} has neither a file path nor a '<container>#<index>' form")
        keys.append(f"{Path(container).stem}/{int(index):08d}")
    return keys


class _Plan:
    """The shard folder: fingerprint check, per-shard files, completion."""

    def __init__(self, out: Path, fingerprint: dict[str, Any], shard_size: int, count: int, overwrite: bool) -> None:
        self.dir = out / _SHARD_DIR
        self.shard_size, self.count = shard_size, count
        self.num_shards = -(-count // shard_size)
        plan_file = self.dir / "plan.json"
        if plan_file.is_file():
            old = read_json(plan_file)
            if old != fingerprint:
                if not overwrite:
                    raise ValueError(f"{plan_file}: shards from a different run (model, source or settings differ); "
                                     "rerun with --overwrite to discard them or choose another output folder")
                shutil.rmtree(self.dir)
        if not plan_file.is_file():
            write_json(plan_file, fingerprint)

    def range(self, i: int) -> tuple[int, int]:
        return i * self.shard_size, min((i + 1) * self.shard_size, self.count)

    def file(self, i: int) -> Path:
        return self.dir / f"shard_{i:05d}.npz"

    def done(self, i: int) -> bool:
        return self.file(i).is_file()


def _save_shard(path: Path, emb: Any, with_features: bool) -> None:
    arrays = {"norms": emb.norms, "labels": emb.labels, "paths": np.asarray(emb.paths, dtype=str)}
    if with_features:
        arrays["emb"] = emb.emb
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)


def _load_shard(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def _assemble_npy(plan: _Plan, out: Path, dtype: str, dim: int) -> list[str]:
    npy, index = out / "embeddings.npy", out / "embeddings.csv"
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "label", "norm"])
    with atomic_path(npy) as tmp:
        feats = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.dtype(dtype), shape=(plan.count, dim))
        for i in range(plan.num_shards):
            start, stop = plan.range(i)
            shard = _load_shard(plan.file(i))
            # read back from disk (a resumed run's shards may be from a damaged or edited file): same check as eval
            check_rows(shard["emb"], str(plan.file(i)), keys=[str(p) for p in shard["paths"]])
            feats[start:stop] = shard["emb"].astype(dtype)
            for p, lab, nrm in zip(shard["paths"], shard["labels"], shard["norms"]):
                writer.writerow([str(p), int(lab), f"{float(nrm):.6g}"])
        feats.flush()
        del feats
    atomic_write_text(index, buf.getvalue())
    return [npy.name, index.name]


def _fingerprint(model_id: str, source: Any, paths: list[str], fmt: str, dtype: str, algo: str | None, flip: bool,
                 shard_size: int) -> dict[str, Any]:
    return {"version": _PLAN_VERSION, "model": model_id, "source": str(source), "count": len(paths),
            "paths_sha256": _paths_digest(paths), "format": fmt, "dtype": dtype, "algo": algo, "flip": flip,
            "shard_size": shard_size}


def _check_args(fmt: str, dtype: str, algo: str | None, shard_size: int) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if fmt == "megaface" and not algo:
        raise ValueError("the megaface format needs --algo NAME (feature files are <image>_<algo>.bin)")
    if fmt == "megaface" and dtype != "float32":
        raise ValueError("MegaFace devkit feature files are float32 (header type 5); drop --dtype float16")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")


def export_embeddings(
    model: nn.Module | str | os.PathLike[str],
    source: Any,
    out: str | os.PathLike[str],
    *,
    fmt: str = "npy",
    dtype: str = "float32",
    algo: str | None = None,
    batch_size: int = 256,
    device: str = "auto",
    flip: bool = True,
    shard_size: int = 8192,
    arch: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Embed every image of ``source`` into ``out`` (a directory), resumably; see the module docstring.

    Args:
        model: nn.Module, checkpoint path (``arch`` for insightface ``.pth``) or ``.onnx`` path.
        source: image folder, ``.rec`` folder, list of paths, list file, ``.bin`` or dataset object.
        out: output directory (created).
        fmt: ``npy`` or ``megaface``.
        dtype: ``float32`` or ``float16`` (``npy`` only).
        algo: algorithm name for devkit file names (``megaface`` only).
        batch_size, device, flip: passed to the extractor.
        shard_size: images per resumable shard.
        overwrite: discard shards of a different earlier run instead of failing.
        progress: show progress bars.

    Returns:
        Summary dict (also saved as ``out/manifest.json``): count, dim, format, dtype, shards, shards_skipped, files.
    """
    from facerco.eval.features import extract_embeddings, load_embedder, open_source

    _check_args(fmt, dtype, algo, shard_size)
    out = Path(out)
    embedder = load_embedder(model, device, arch)
    dataset = open_source(source, embedder.preprocessor())
    listed = getattr(dataset, "paths", None)
    paths = [str(p) for p in (listed if listed is not None else range(len(dataset)))]
    if not paths:
        raise ValueError(f"{source}: no images to embed")
    keys = devkit_keys(paths, source) if fmt == "megaface" else None
    fingerprint = _fingerprint(_model_fingerprint(model), source, paths, fmt, dtype, algo, flip, shard_size)
    manifest_file = out / "manifest.json"
    if manifest_file.is_file() and read_json(manifest_file).get("fingerprint") == fingerprint:
        summary = read_json(manifest_file)
        return {**summary, "shards_skipped": summary["shards"]}
    plan = _Plan(out, fingerprint, shard_size, len(paths), overwrite)
    skipped, dim = 0, None
    for i in range(plan.num_shards):
        if plan.done(i):
            skipped += 1
            _note(progress, f"shard {i + 1}/{plan.num_shards}: already done, skipped")
        else:
            start, stop = plan.range(i)
            emb = extract_embeddings(embedder, _Slice(dataset, paths, start, stop), batch_size=batch_size,
                                     flip=flip, progress=progress)
            if fmt == "megaface":
                from facerco.eval.features import write_devkit_tree

                write_devkit_tree(emb, out, algo or "", keys[start:stop])
            _save_shard(plan.file(i), emb, with_features=fmt == "npy")
            dim = emb.emb.shape[1]
            _note(progress, f"shard {i + 1}/{plan.num_shards}: images {start}-{stop - 1} written")
    dim = dim or _shard_dim(plan, fmt, out, algo, keys)
    files = _assemble_npy(plan, out, dtype, dim) if fmt == "npy" else [f"{len(paths)} devkit files *_{algo}.bin"]
    summary = {"fingerprint": fingerprint, "count": len(paths), "dim": int(dim), "format": fmt, "dtype": dtype,
               "shards": plan.num_shards, "files": files}
    write_json(manifest_file, summary)
    shutil.rmtree(plan.dir)
    return {**summary, "shards_skipped": skipped}


def _shard_dim(plan: _Plan, fmt: str, out: Path, algo: str | None, keys: list[str] | None) -> int:
    """Embedding size when every shard was resumed (nothing computed in this run)."""
    if fmt == "npy":
        return int(_load_shard(plan.file(0))["emb"].shape[1])
    from facerco.eval.features import devkit_name, read_devkit_feature

    return len(read_devkit_feature(out / devkit_name(keys[0], algo or "")))


def _note(enabled: bool, message: str) -> None:
    """One line per shard, printed between the extractor's per-image progress bars."""
    if enabled:
        from tqdm import tqdm

        tqdm.write(message)
