"""The engine's input pipeline: uint8 batches decoded in workers and normalized on the device give the same inputs
(and the same training run) as the per-image float path; pinning only for CPU batches bound for CUDA."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from facerco.config import config_from_dict
from facerco.data.datasets import FolderDataset, RecordDataset
from facerco.data.transforms import EvalTransform, TrainTransform
from facerco.train.engine import Engine, seed_everything
from facerco.train.feed import DecodedKeyedDataset, batch_path, build_loader, device_images, pin_batches
from facerco.train.sampler import GlobalBatchSampler, KeyedDataset
from facerco.train.task import TrainTask

SIZE = 16


def _faces(root: Path, ids: int = 4, per_id: int = 6) -> Path:
    """JPEG faces at 20x20, so the 16x16 transform resizes (the demo's 112 -> 48 case in small)."""
    rng = np.random.default_rng(3)
    for i in range(ids):
        base = rng.integers(0, 256, size=(20, 20, 3))
        (root / f"id{i}").mkdir(parents=True)
        for k in range(per_id):
            img = np.clip(base + rng.normal(0, 25, size=base.shape), 0, 255).astype(np.uint8)
            cv2.imwrite(str(root / f"id{i}" / f"{k}.jpg"), img)
    return root


class ItemsOnly(torch.utils.data.Dataset):
    """The same dataset seen through ``__getitem__`` only: the per-image float path the engine used before."""

    def __init__(self, base: torch.utils.data.Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int):
        return self.base[i]


class InMemory(torch.utils.data.Dataset):
    def __init__(self) -> None:
        self.x = torch.zeros(8, 3, 4, 4)
        self.y = torch.zeros(8, dtype=torch.int64)

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int):
        return self.x[i], int(self.y[i])

    def get_batch(self, indices: torch.Tensor):
        return self.x[indices], self.y[indices]


def test_decoded_batch_equals_per_image_path(tmp_path):
    ds = FolderDataset(_faces(tmp_path / "faces"), TrainTransform(flip=False, size=SIZE))
    assert batch_path(ds) == "decode" and batch_path(ItemsOnly(ds)) == "items"
    keys = [(5, 1), (0, 0), (17, 1), (9, 0), (23, 1)]
    fast = DecodedKeyedDataset(ds).__getitems__(keys)
    slow = KeyedDataset(ItemsOnly(ds)).__getitems__(keys)
    assert fast.images.dtype == torch.uint8 and fast.images.shape == (5, SIZE, SIZE, 3)
    x = device_images(fast.images, torch.device("cpu"))
    assert torch.equal(x, slow.images) and x.is_contiguous()  # bit-identical, NCHW like the float path
    assert torch.equal(fast.labels, slow.labels) and torch.equal(fast.keys, slow.keys)
    assert torch.equal(device_images(slow.images, torch.device("cpu")), slow.images)  # float passes through


def test_decode_path_never_builds_per_item_tensors(tmp_path, monkeypatch):
    ds = FolderDataset(_faces(tmp_path / "faces"), EvalTransform(SIZE))

    def per_item(self, i):
        raise AssertionError("the decode path must not read items one tensor at a time")

    monkeypatch.setattr(FolderDataset, "__getitem__", per_item)
    sampler = GlobalBatchSampler(len(ds), 8, seed=1, flip=True)
    batches = list(build_loader(ds, sampler, workers=0, seed=1, epoch=0, device=torch.device("cpu")))
    assert len(batches) == 3 and all(b.images.dtype == torch.uint8 and b.keys.shape == (8, 2) for b in batches)


def test_decode_path_refuses_a_randomly_flipping_transform(tmp_path):
    ds = FolderDataset(_faces(tmp_path / "faces"), TrainTransform(flip=True, size=SIZE))
    assert batch_path(ds) == "items"  # its own random flip must still run item by item
    with pytest.raises(ValueError, match="decode_batch needs"):
        ds.decode_batch([0], [0])
    ok = FolderDataset(tmp_path / "faces", EvalTransform(SIZE))
    with pytest.raises(ValueError, match="2 indices but 1 flip"):
        ok.decode_batch([0, 1], [0])
    with pytest.raises(ValueError, match="out must be a contiguous uint8 tensor of shape"):
        ok.decode_batch([0], [0], out=torch.empty((1, 8, 8, 3), dtype=torch.uint8))
    into = torch.zeros((2, SIZE, SIZE, 3), dtype=torch.uint8)
    images, _ = ok.decode_batch([3, 4], [1, 0], out=into)
    assert images.data_ptr() == into.data_ptr() and torch.equal(into, ok.decode_batch([3, 4], [1, 0])[0])


def test_pinning_only_for_cpu_batches_bound_for_cuda(tmp_path):
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    rec = FolderDataset(_faces(tmp_path / "faces"), EvalTransform(SIZE))
    assert pin_batches(cuda, batch_path(rec)) and not pin_batches(cpu, batch_path(rec))
    assert pin_batches(cuda, batch_path(ItemsOnly(rec)))
    memory = InMemory()  # stands for a GPU-resident dataset: its get_batch tensors must never be pinned
    assert batch_path(memory) == "memory" and not pin_batches(cuda, "memory")
    sampler = GlobalBatchSampler(len(memory), 4)
    assert build_loader(memory, sampler, workers=0, seed=0, epoch=0, device=cuda).pin_memory is False
    assert build_loader(rec, GlobalBatchSampler(len(rec), 4), workers=0, seed=0, epoch=0, device=cuda).pin_memory


def test_one_worker_gives_the_same_batches_as_none(tmp_path):
    from facerco.prep.pack import pack_folder

    pack_folder(_faces(tmp_path / "faces"), tmp_path / "rec")
    ds = RecordDataset(tmp_path / "rec", TrainTransform(flip=False, size=SIZE))
    sampler = GlobalBatchSampler(len(ds), 6, seed=2, flip=True)
    cpu = torch.device("cpu")
    inline = list(build_loader(ds, sampler, workers=0, seed=2, epoch=0, device=cpu))
    worker = list(build_loader(ds, sampler, workers=1, seed=2, epoch=0, device=cpu))
    assert len(inline) == len(worker) == 4
    for a, b in zip(inline, worker, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


# ----------------------------------------------------------------------------------------------------------------
# a whole run: the decode path trains exactly like the per-image path, and resumes a run the per-image path wrote


class ConvTask(TrainTask):
    rank_local_prefixes = ()

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.PReLU(4), nn.Flatten(), nn.Dropout(0.2),
                                      nn.Linear(4 * 7 * 7, 8))
        self.head = nn.Linear(8, classes, bias=False)

    def training_step(self, images, labels, step, **kwargs):
        return {"loss": nn.functional.cross_entropy(self.head(self.backbone(images)), labels)}


def _cfg(out: Path, max_steps: int = 0, channels_last: bool = False):
    return config_from_dict({
        "train": {"output": str(out), "epochs": 3, "batch_size": 4, "log_every": 1, "tensorboard": False,
                  "progress": False, "checkpoint_every_steps": 2, "max_steps": max_steps, "resume": True,
                  "channels_last": channels_last},
        "data": {"num_workers": 0, "flip": True}, "schedule": {"warmup_epochs": 0.5, "decay": "cosine"},
        "optim": {"lr": 0.1}})


def _run(out: Path, dataset, max_steps: int = 0, channels_last: bool = False) -> list[float]:
    seed_everything(0)
    engine = Engine(ConvTask(), dataset, _cfg(out, max_steps, channels_last))
    assert engine.task.backbone[0].weight.is_contiguous() != channels_last  # NHWC weights when asked for
    engine.fit()
    return [json.loads(x)["loss"] for x in (out / "log.jsonl").read_text().splitlines() if '"train"' in x]


def test_decode_path_trains_and_resumes_like_the_per_image_path(tmp_path):
    ds = FolderDataset(_faces(tmp_path / "faces"), TrainTransform(flip=False, size=SIZE))
    slow = _run(tmp_path / "items", ItemsOnly(ds))
    fast = _run(tmp_path / "decode", ds)
    assert fast == slow and len(fast) == 18
    _run(tmp_path / "mixed", ItemsOnly(ds), max_steps=7)  # a run folder written by the per-image path...
    assert _run(tmp_path / "mixed", ds) == slow  # ...resumed on the decode path: the same run


def test_channels_last_trains_the_same_model_and_resumes_exactly(tmp_path):
    ds = FolderDataset(_faces(tmp_path / "faces"), TrainTransform(flip=False, size=SIZE))
    nchw = _run(tmp_path / "nchw", ds)
    nhwc = _run(tmp_path / "nhwc", ds, channels_last=True)
    assert len(nhwc) == 18 and nhwc != [] and np.allclose(nhwc, nchw, rtol=1e-4, atol=1e-5)  # other rounding only
    _run(tmp_path / "cut", ds, max_steps=5, channels_last=True)
    assert _run(tmp_path / "cut", ds, channels_last=True) == nhwc  # resumed bitwise within the layout


def test_run_folder_from_before_a_new_config_key_still_resumes(tmp_path):
    import yaml

    from facerco.config import dump_config
    from facerco.train.job import check_resume_config

    old = yaml.safe_load(dump_config(_cfg(tmp_path)))
    del old["train"]["channels_last"]  # written before the key existed
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    (tmp_path / "last.pt").write_bytes(b"")
    check_resume_config(tmp_path, _cfg(tmp_path))  # absent = the default it had then
    with pytest.raises(ValueError, match=r"train.channels_last: False -> True"):
        check_resume_config(tmp_path, _cfg(tmp_path, channels_last=True))
