"""The engine's input pipeline: which batch path a dataset takes, pinned memory, normalizing on the device.

A dataset takes one of three paths (:func:`batch_path`):

- ``decode``: a :class:`~facerco.data.datasets.RecordDataset` / ``FolderDataset`` whose transform is an
  ``EvalTransform`` (or ``TrainTransform(flip=False)``, what the jobs build). DataLoader workers read, decode,
  resize and flip each batch into one uint8 (B, H, W, 3) tensor (``decode_batch``): 4x fewer bytes over the worker
  queue than float, no tensor per image. :func:`device_images` normalizes it after the copy to the device with
  :func:`~facerco.data.transforms.normalize_batch`, the same ``(x - 127.5) / 127.5`` as the per-image path, so
  the model sees bit-identical inputs (and a run resumes across the two paths).
- ``memory``: a dataset with ``get_batch(indices)`` (tensors already in memory, possibly on the GPU): one
  indexing per batch in the main process, never pinned.
- ``items``: any other dataset of ``(CHW float, label)``: item by item through
  :class:`~facerco.train.sampler.KeyedDataset`.

Every path keeps the sampler's ``(index, flip)`` keys, one keys tensor per batch.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from facerco.data.transforms import normalize_batch
from facerco.train.sampler import GlobalBatchSampler, KeyedBatch, KeyedDataset, collate_keyed, epoch_generator

__all__ = ["BatchPath", "DecodedKeyedDataset", "batch_path", "pin_batches", "build_loader", "device_images"]

BatchPath = Literal["decode", "memory", "items"]


def batch_path(dataset: Dataset) -> BatchPath:
    """How the engine reads ``dataset``'s batches (see the module docstring)."""
    if getattr(dataset, "get_batch", None) is not None:
        return "memory"
    if bool(getattr(dataset, "decodes_batches", False)):
        return "decode"
    return "items"


def pin_batches(device: torch.device, path: BatchPath) -> bool:
    """Pin loader batches only when they are CPU tensors bound for a CUDA device.

    Why: pinning lets the host-to-device copy run asynchronously, but it is a copy of its own; an in-memory
    dataset (``memory``) hands over tensors that may already live on the GPU (torch refuses to pin those) and are
    indexed in the main process, where a pin would only add a synchronous copy.
    """
    return device.type == "cuda" and path != "memory"


class DecodedKeyedDataset(KeyedDataset):
    """:class:`KeyedDataset` over a dataset with ``decode_batch``: items are decoded and flipped straight into one
    uint8 batch in the worker, with the batch's ``(index, flip)`` keys as one (B, 2) int64 tensor."""

    def __getitems__(self, keys: Sequence[tuple[int, int]]) -> KeyedBatch:
        key_array = np.asarray(keys, dtype=np.int64).reshape(-1, 2)
        size = self.base.transform.size  # type: ignore[attr-defined]
        out = _batch_buffer((len(key_array), size, size, 3))
        images, labels = self.base.decode_batch(key_array[:, 0], key_array[:, 1], out)  # type: ignore[attr-defined]
        return KeyedBatch(images, labels, torch.from_numpy(key_array))


def _batch_buffer(shape: tuple[int, ...]) -> torch.Tensor:
    """An empty uint8 batch; inside a DataLoader worker, in shared memory from the start.

    Why: a worker's ordinary tensor is copied into fresh shared memory when it is sent to the main process (a copy
    and a page fault per 4 KiB); torch's own collate allocates its batches shared for this reason, with the same
    (private) call used here when this torch has it.
    """
    new_shared = getattr(torch.UntypedStorage, "_new_shared", None)
    if get_worker_info() is None or new_shared is None:
        return torch.empty(shape, dtype=torch.uint8)
    return torch.empty(0, dtype=torch.uint8).new(new_shared(math.prod(shape))).view(shape)


def build_loader(dataset: Dataset, sampler: GlobalBatchSampler, *, workers: int, seed: int, epoch: int,
                 device: torch.device) -> DataLoader:
    """The DataLoader of one epoch (``sampler.set_epoch`` already called): the engine's, and the loader benchmark's.

    Workers are seeded from ``(seed, epoch, worker id)`` so a random transform inside a custom dataset repeats on
    resume; the ``decode`` path itself draws nothing (flips come from the sampler's keys).
    """
    path = batch_path(dataset)

    def init_worker(worker_id: int) -> None:
        s = (seed * 1_000_003 + epoch * 10_007 + worker_id) % (1 << 32)
        random.seed(s)
        np.random.seed(s)

    keyed = DecodedKeyedDataset(dataset) if path == "decode" else KeyedDataset(dataset)
    return DataLoader(
        keyed,
        batch_sampler=sampler,
        collate_fn=collate_keyed,
        num_workers=workers,
        pin_memory=pin_batches(device, path),
        worker_init_fn=init_worker if workers > 0 else None,
        generator=epoch_generator(seed, epoch),
        persistent_workers=False,
    )


def device_images(images: torch.Tensor, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """A loader batch on ``device`` as the model's float (B, 3, H, W) input: uint8 (B, H, W, 3) batches are
    normalized there (after a 4x smaller copy); float batches pass through.

    Memory layout: contiguous NCHW by default, the layout of the per-image path, so convolutions pick the same
    kernels and a run gives the same numbers whichever path fed it; ``channels_last`` (``train.channels_last``)
    gives NHWC, which the uint8 path produces without a transposing copy.
    """
    images = images.to(device, non_blocking=True)
    if images.dtype == torch.uint8:
        images = normalize_batch(images)
    return images.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
