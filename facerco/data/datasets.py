"""Training/evaluation datasets: insightface RecordIO folders, aligned identity folders and flat image folders.

All give items ``(image_tensor, label)`` through a transform, expose ``labels`` (np.int64, available without decoding
any image), ``num_classes``, ``classes`` (identity names when known) and ``labeled``, and ``read_bytes(i)`` /
``read_image(i)`` for tools that want the encoded or decoded image. The reader is chosen by an explicit format, never
by guessing:

- ``rec``: an insightface ``train.rec`` folder (:class:`RecordDataset`)
- ``folder``: one sub-folder per identity (:class:`FolderDataset`)
- ``images``: a flat folder of aligned images with no identities (:class:`UnlabeledFolderDataset`): every label is
  -1, ``num_classes`` is 0, ``classes`` is None and ``labeled`` is False. A student that only mimics its teacher
  (``distill.arcface_weight: 0``, ``distill.kd_weight: 0``) trains on it; whatever needs labels (a margin head, KD,
  the teacher job) refuses it at start through :func:`require_labels`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from facerco.data.recordio import (
    RecordIOError,
    RecordReader,
    read_dataset_header,
    read_property,
    unpack_header,
)
from facerco.data.transforms import EvalTransform, decode_image

__all__ = ["IMAGE_EXTENSIONS", "UNLABELED", "list_identity_folder", "list_image_folder", "RecordDataset",
           "FolderDataset", "UnlabeledFolderDataset", "open_dataset", "require_labels"]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".pgm", ".ppm", ".tif", ".tiff"})
Transform = Callable[[np.ndarray], torch.Tensor]
UNLABELED = -1  # the label of every item of an unlabeled dataset


class _BatchDecoder:
    """The engine's batch path, shared by both dataset kinds: a whole batch decoded into one uint8 tensor.

    Why: a per-image float tensor costs 4x the bytes over the DataLoader's worker queue and a tensor (plus the
    collate's stack) per image; one uint8 (B, H, W, 3) array filled in place costs neither. The engine normalizes
    it on its device with :func:`~facerco.data.transforms.normalize_batch` (the same (x - 127.5) / 127.5).
    """

    transform: Transform
    labels: np.ndarray
    read_image: Callable[[int], np.ndarray]  # each dataset's decoder (with its file-naming errors)

    @property
    def decodes_batches(self) -> bool:
        """Whether :meth:`decode_batch` gives exactly the items' pixels before normalizing: the transform is an
        :class:`EvalTransform` without a random flip of its own, square and with the (127.5, 127.5) normalization
        that :func:`~facerco.data.transforms.normalize_batch` applies (another transform is applied item by item)."""
        t = self.transform
        return isinstance(t, EvalTransform) and t.batch_decodable and not getattr(t, "flip", False)

    def decode_batch(self, indices: Sequence[int], flips: Sequence[int],
                     out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Items ``indices`` as (uint8 (B, H, W, 3) RGB at the transform's size, labels (B,) int64), image k
        mirrored left-right when ``flips[k]`` is set; written into ``out`` when given (e.g. shared memory)."""
        if not self.decodes_batches:
            raise ValueError(f"{type(self).__name__}: decode_batch needs an EvalTransform/TrainTransform(flip=False) "
                             f"transform, got {self.transform!r}")
        tf: EvalTransform = self.transform  # type: ignore[assignment]
        if len(indices) != len(flips):
            raise ValueError(f"decode_batch: {len(indices)} indices but {len(flips)} flip bits")
        shape = (len(indices), tf.size, tf.size, 3)
        if out is None:
            out = torch.empty(shape, dtype=torch.uint8)
        elif out.dtype != torch.uint8 or tuple(out.shape) != shape or not out.is_contiguous():
            raise ValueError(f"decode_batch: out must be a contiguous uint8 tensor of shape {shape}, got "
                             f"{out.dtype} {tuple(out.shape)}")
        batch = out.numpy()
        for k, (i, flip) in enumerate(zip(indices, flips, strict=True)):
            tf.prepare_into(self.read_image(int(i)), batch[k], bool(flip))
        return out, torch.from_numpy(self.labels[np.asarray(indices, dtype=np.int64)])


def list_identity_folder(root: str | os.PathLike[str]) -> tuple[list[str], list[Path], np.ndarray]:
    """List an aligned folder: one sub-folder per identity, classes and files in sorted (byte-wise) order.

    Hidden entries and sub-folders without images are skipped; files directly under ``root`` (e.g. a landmarks.csv)
    are ignored.

    Returns:
        (class names, image paths, labels int64) with labels indexing the class names.
    """
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"{base}: image folder not found")
    classes: list[str] = []
    paths: list[Path] = []
    labels: list[int] = []
    for entry in sorted(os.scandir(base), key=lambda e: e.name):
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        files = sorted(
            f.name
            for f in os.scandir(entry.path)
            if not f.name.startswith(".") and f.is_file() and os.path.splitext(f.name)[1].lower() in IMAGE_EXTENSIONS
        )
        if not files:
            continue
        label = len(classes)
        classes.append(entry.name)
        paths.extend(base / entry.name / name for name in files)
        labels.extend([label] * len(files))
    if not classes:
        flat = " (the images sit directly in it: open it as unlabeled with format 'images', data.format=images)" if (
            _image_files(base)) else ""
        raise ValueError(f"{base}: no identity sub-folders with images ({', '.join(sorted(IMAGE_EXTENSIONS))})"
                         + flat)
    return classes, paths, np.asarray(labels, dtype=np.int64)


def _image_files(folder: str | os.PathLike[str]) -> list[str]:
    """Names of the visible image files directly in ``folder``, sorted byte-wise."""
    return sorted(f.name for f in os.scandir(folder)
                  if not f.name.startswith(".") and f.is_file() and os.path.splitext(f.name)[1].lower() in
                  IMAGE_EXTENSIONS)


def list_image_folder(root: str | os.PathLike[str]) -> list[Path]:
    """List a flat folder of aligned images (no identities), in sorted (byte-wise) order.

    Hidden entries and non-image files are skipped. A sub-folder holding images is refused: the folder is then an
    identity folder (format ``folder``) or a mix of both, and which images to take would be a guess.
    """
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"{base}: image folder not found")
    for entry in sorted(os.scandir(base), key=lambda e: e.name):
        if not entry.name.startswith(".") and entry.is_dir() and _image_files(entry.path):
            raise ValueError(f"{base}: sub-folder {entry.name!r} holds images; format 'images' reads a flat folder "
                             "(images directly in it, no sub-folders): use format 'folder' for one sub-folder per "
                             "identity")
    names = _image_files(base)
    if not names:
        raise ValueError(f"{base}: no images directly in the folder ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return [base / name for name in names]


def require_labels(dataset: object, fix: str) -> None:
    """Raise ValueError when ``dataset`` is unlabeled (``labeled`` False), naming its folder and ``fix``.

    For whatever needs identities: a margin head, KD over the classes, the teacher job.
    """
    if getattr(dataset, "labeled", True):
        return
    root = getattr(dataset, "root", type(dataset).__name__)
    raise ValueError(f"{root}: unlabeled folder (no identity sub-folders); {fix}")


class RecordDataset(_BatchDecoder, Dataset):
    """An insightface dataset folder: ``train.rec``, ``train.idx`` (optional: scanned when absent), ``property``.

    With the insightface header (record 0, flag 2) the images are keys ``1 .. id_start-1``; without it every record
    is an image. Labels are read once from the record headers (scalar label, or ``label[0]`` for array labels) and
    kept in memory; a label that is not an integer in ``[0, num_classes)`` raises with file, key and offset.

    Args:
        root: the dataset folder (or the ``.rec`` file itself; its ``.idx`` and ``property`` sit beside it).
        transform: maps an RGB uint8 (H, W, 3) image to a tensor; default ``EvalTransform()``.
    """

    labeled = True

    def __init__(self, root: str | os.PathLike[str], transform: Transform | None = None) -> None:
        root = Path(root)
        rec = root if root.suffix == ".rec" and root.is_file() else root / "train.rec"
        if not rec.is_file():
            raise FileNotFoundError(f"{rec}: record file not found (a RecordIO dataset folder holds train.rec)")
        self.root = rec.parent
        self.transform = transform if transform is not None else EvalTransform()
        self.reader = RecordReader(rec)
        prop = rec.parent / "property"
        self.image_size: tuple[int, int] | None = None
        declared: int | None = None
        if prop.is_file():
            declared, h, w = read_property(prop)
            self.image_size = (h, w)
        self.header = read_dataset_header(self.reader)
        if self.header is not None:
            keys = np.arange(1, self.header.id_start, dtype=np.int64)
            present = np.isin(keys, self.reader.keys)
            if not present.all():
                raise RecordIOError(
                    f"{rec}: key 0 announces images 1..{self.header.id_start - 1} but key "
                    f"{int(keys[~present][0])} is not in the file's index"
                )
        else:
            keys = self.reader.keys.copy()
        self.keys = keys
        self._offsets = self.reader.offsets[self.reader.positions(keys)]
        # bytes on disk of each image record = distance to the next record in the file: one read per image
        starts = np.sort(np.append(self.reader.offsets, self.reader.size))
        self._sizes = starts[np.searchsorted(starts, self._offsets, side="right")] - self._offsets
        self.labels = self._read_labels(declared)
        self.num_classes = declared if declared is not None else int(self.labels.max()) + 1 if len(self.labels) else 0
        self.classes = _load_class_names(self.root, self.num_classes)

    def _read_labels(self, num_classes: int | None) -> np.ndarray:
        """Class of every image from its record header (one small read per record), checked against ``property``."""
        values = self.reader.class_labels(self._offsets, self.keys)
        bad = (values != np.floor(values)) | (values < 0)
        if num_classes is not None:
            bad |= values >= num_classes
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            limit = f"[0, {num_classes})" if num_classes is not None else "non-negative integers"
            raise RecordIOError(
                f"{self.reader.path}: key {int(self.keys[i])}, offset {int(self._offsets[i])}: label {values[i]:g} "
                f"out of range {limit}" + (f" (property: num_classes={num_classes})" if num_classes is not None else "")
            )
        return values.astype(np.int64)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def paths(self) -> list[str]:
        """``<rec>#<key>`` for every image, built on demand (the listing eval reports use)."""
        return [f"{self.reader.path}#{int(k)}" for k in self.keys]

    def read_bytes(self, i: int) -> bytes:
        """The encoded image of item ``i`` (without the IRHeader)."""
        key, offset = int(self.keys[i]), int(self._offsets[i])
        record, _ = self.reader.read_at(offset, key, int(self._sizes[i]))
        try:
            _, start = unpack_header(record)
        except ValueError as exc:
            raise RecordIOError(f"{self.reader.path}: key {key}, offset {offset}: {exc}") from None
        return record[start:]

    def read_image(self, i: int) -> np.ndarray:
        """The decoded RGB uint8 image of item ``i``."""
        buf = self.read_bytes(i)
        try:
            return decode_image(buf)
        except ValueError as exc:
            raise RecordIOError(
                f"{self.reader.path}: key {int(self.keys[i])}, offset {int(self._offsets[i])}: "
                f"non-image payload ({exc})"
            ) from None

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.read_image(i)), int(self.labels[i])


def _load_class_names(root: Path, num_classes: int) -> list[str] | None:
    """Identity names from the pack manifest written by ``facerco pack``, when present and consistent."""
    manifest = root / "pack.json"
    if not manifest.is_file():
        return None
    from facerco.utils.io import read_json

    names = read_json(manifest).get("identities")
    return list(names) if isinstance(names, list) and len(names) == num_classes else None


class FolderDataset(_BatchDecoder, Dataset):
    """An aligned image folder: one sub-folder per identity, sorted class order (see :func:`list_identity_folder`).

    Args:
        root: the folder.
        transform: maps an RGB uint8 (H, W, 3) image to a tensor; default ``EvalTransform()``.
    """

    labeled = True

    def __init__(self, root: str | os.PathLike[str], transform: Transform | None = None) -> None:
        self.root = Path(root)
        self.transform = transform if transform is not None else EvalTransform()
        self.classes, self.paths, self.labels = self._list(self.root)
        self.num_classes = len(self.classes or ())

    @staticmethod
    def _list(root: Path) -> tuple[list[str] | None, list[Path], np.ndarray]:
        """(class names, image paths, labels) of the folder."""
        return list_identity_folder(root)

    def __len__(self) -> int:
        return len(self.paths)

    def read_bytes(self, i: int) -> bytes:
        return self.paths[i].read_bytes()

    def read_image(self, i: int) -> np.ndarray:
        try:
            return decode_image(self.read_bytes(i))
        except ValueError as exc:
            raise ValueError(f"{self.paths[i]}: {exc}") from None

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.read_image(i)), int(self.labels[i])


class UnlabeledFolderDataset(FolderDataset):
    """A flat folder of aligned images without identities (see :func:`list_image_folder`): every label is
    :data:`UNLABELED` (-1), ``num_classes`` 0, ``classes`` None. For students that only mimic a teacher.

    Args:
        root: the folder.
        transform: maps an RGB uint8 (H, W, 3) image to a tensor; default ``EvalTransform()``.
    """

    labeled = False

    @staticmethod
    def _list(root: Path) -> tuple[list[str] | None, list[Path], np.ndarray]:
        paths = list_image_folder(root)
        return None, paths, np.full(len(paths), UNLABELED, dtype=np.int64)


def open_dataset(
    path: str | os.PathLike[str],
    fmt: Literal["rec", "folder", "images", "auto"] = "auto",
    transform: Transform | None = None,
) -> RecordDataset | FolderDataset:
    """Open a dataset by explicit format (see the module docstring); ``auto`` picks ``rec`` only when ``train.rec``
    (or a .rec file) is given, else ``folder`` (never ``images``: an unlabeled set is asked for by name)."""
    p = Path(path)
    if fmt == "auto":
        fmt = "rec" if (p.suffix == ".rec" and p.is_file()) or (p / "train.rec").is_file() else "folder"
    if fmt == "rec":
        return RecordDataset(p, transform)
    if fmt == "folder":
        return FolderDataset(p, transform)
    if fmt == "images":
        return UnlabeledFolderDataset(p, transform)
    raise ValueError(f"unknown dataset format {fmt!r}; expected 'rec', 'folder', 'images' or 'auto'")
