"""Anchor-feature cache: agreement with online targets, sharding, resume, checksums, and what a cache is valid for
(images, labels, input size, transform, teacher)."""

from __future__ import annotations

import re

import cv2
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from facerco.data.transforms import EvalTransform, TrainTransform
from facerco.route.cache_fingerprint import dataset_fingerprint
from facerco.route.cache_reader import AnchorCache
from facerco.route.cache_writer import build_cache
from facerco.utils.io import read_json, write_json


class _Images(Dataset):
    def __init__(self, n=11, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, 8, 8, generator=g)
        self.labels = np.arange(n, dtype=np.int64) % 3

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], int(self.labels[i])


def _model(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).eval()


def _anchors():
    return {"epoch_001": (lambda: _model(1), "sha-a"), "epoch_002": (lambda: _model(2), "sha-b")}


def test_cached_targets_equal_online_within_fp16(tmp_path):
    ds = _Images()
    build_cache(tmp_path, _anchors(), ds, shard_size=4, batch_size=3, progress=False)
    cache = AnchorCache(tmp_path)
    cache.check_dataset(ds)
    assert sorted(cache.anchors) == ["epoch_001", "epoch_002"] and cache.embedding_size("epoch_002") == 5
    idx = torch.tensor([10, 0, 5, 3, 4])
    flips = torch.tensor([1, 0, 1, 0, 1])
    model = _model(2)
    imgs = torch.stack([ds[i][0] for i in idx.tolist()])
    imgs = torch.where(flips.view(-1, 1, 1, 1).bool(), torch.flip(imgs, dims=[-1]), imgs)
    with torch.no_grad():
        online = model(imgs)
    cached = cache.targets("epoch_002", idx, flips)
    assert cached.dtype == torch.float32
    unit = torch.nn.functional.normalize(online, dim=1)
    assert torch.allclose(cached, unit.half().float(), atol=0, rtol=0)  # the fp16 rounding of the unit vector
    assert torch.allclose(cached, unit, rtol=1e-3, atol=1e-3)
    assert read_json(tmp_path / "manifest.json")["rows"] == "l2-normalized"
    manifest = read_json(tmp_path / "manifest.json")
    assert [s["end"] for s in manifest["anchors"]["epoch_001"]["shards"]] == [4, 8, 11]
    arr = np.load(tmp_path / "epoch_001" / "shard_00002.npy", mmap_mode="r")
    assert arr.dtype == np.float16 and arr.shape == (3, 2, 5)


def test_resume_rebuilds_only_missing_shards(tmp_path):
    ds = _Images()
    build_cache(tmp_path, _anchors(), ds, shard_size=4, batch_size=4, progress=False)
    manifest = read_json(tmp_path / "manifest.json")
    before = {s["file"]: s["sha256"] for a in manifest["anchors"].values() for s in a["shards"]}
    # simulate a kill after the first shard of the second anchor
    entry = manifest["anchors"]["epoch_002"]
    entry["shards"] = entry["shards"][:1]
    entry["complete"] = False
    write_json(tmp_path / "manifest.json", manifest)
    (tmp_path / "epoch_002" / "shard_00001.npy").unlink()
    loads = []

    def loader(seed):
        def load():
            loads.append(seed)
            return _model(seed)
        return load

    build_cache(tmp_path, {"epoch_001": (loader(1), "sha-a"), "epoch_002": (loader(2), "sha-b")}, ds,
                shard_size=4, progress=False)
    assert loads == [2]  # the complete anchor is not recomputed
    after = read_json(tmp_path / "manifest.json")
    assert after["anchors"]["epoch_002"]["complete"]
    assert {s["file"]: s["sha256"] for a in after["anchors"].values() for s in a["shards"]} == before
    with pytest.raises(ValueError, match=r"anchor epoch_001: route sha256 differs .*another checkpoint"):
        build_cache(tmp_path, {"epoch_001": (loader(1), "other")}, ds, shard_size=4, progress=False)
    with pytest.raises(ValueError, match="another dataset"):
        build_cache(tmp_path, _anchors(), _Images(n=7), shard_size=4, progress=False)


def test_corrupted_shard_and_incomplete_anchor_refused(tmp_path):
    ds = _Images()
    build_cache(tmp_path, _anchors(), ds, shard_size=8, progress=False)
    shard = tmp_path / "epoch_001" / "shard_00001.npy"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256 mismatch"):
        AnchorCache(tmp_path).targets("epoch_001", [0], [0])
    assert AnchorCache(tmp_path, verify=False).targets("epoch_002", [9], [1]).shape == (1, 5)
    with pytest.raises(ValueError, match="not cached"):
        AnchorCache(tmp_path).targets("epoch_009", [0], [0])
    with pytest.raises(ValueError, match=r"does not match the training data: number of images differs \(cache 11, "
                                         r"dataset 5\): rebuild with `facerco cache"):
        AnchorCache(tmp_path).check_dataset(_Images(n=5))
    assert dataset_fingerprint(ds)["num_items"] == 11


# ------------------------------------------------------------------------------------------ what a cache is valid for


def _pooled(seed):
    """Any image size in, 5-d out: lets one anchor embed 16 px and 12 px datasets alike."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(12, 5)).eval()


def _faces(root, shift=0, n_id=3, per_id=3, size=20):
    """A small identity folder; ``shift`` rolls every image (a re-alignment that keeps names and labels)."""
    rng = np.random.default_rng(0)
    for i in range(n_id):
        (root / f"id{i}").mkdir(parents=True, exist_ok=True)
        for j in range(per_id):
            img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            cv2.imwrite(str(root / f"id{i}" / f"{j}.png"), np.roll(img, shift, axis=1))
    return root


def _cache_of(ds, out, **meta):
    build_cache(out, {"epoch_001": (lambda: _pooled(1), "a" * 64), "epoch_002": (lambda: _pooled(2), "b" * 64)},
                ds, shard_size=4, progress=False, meta=meta)
    return AnchorCache(out)


def test_realigned_rec_with_the_same_labels_is_refused(tmp_path):
    from facerco.data.datasets import RecordDataset
    from facerco.prep.pack import pack_folder

    pack_folder(_faces(tmp_path / "a"), tmp_path / "rec", size=16, workers=1, progress=False)
    before = RecordDataset(tmp_path / "rec", EvalTransform(16))
    cache = _cache_of(before, tmp_path / "cache")
    cache.check_dataset(RecordDataset(tmp_path / "rec", TrainTransform(flip=False, size=16)))  # the student's view
    pack_folder(_faces(tmp_path / "b", shift=3), tmp_path / "rec", size=16, workers=1, overwrite=True, progress=False)
    after = RecordDataset(tmp_path / "rec", EvalTransform(16))
    assert np.array_equal(after.labels, before.labels) and len(after) == len(before)
    with pytest.raises(ValueError, match=r"manifest\.json: the cache does not match the training data: .*content of "
                                         r"the sampled images \(hash of their bytes\) differs \(cache [0-9a-f]{12}…"):
        cache.check_dataset(after)
    with pytest.raises(ValueError, match="built for another dataset or input: .*content of the sampled images"):
        _cache_of(after, tmp_path / "cache")  # resuming into the old directory is refused too


def test_rewritten_folder_images_and_other_input_size_are_refused(tmp_path):
    from facerco.data.datasets import FolderDataset

    faces = _faces(tmp_path / "f")
    cache = _cache_of(FolderDataset(faces, EvalTransform(16)), tmp_path / "cache", teacher_run="", dataset=str(faces))
    with pytest.raises(ValueError, match=r"input size differs \(cache 16x16, dataset 12x12\): rebuild with "
                                         rf"`facerco cache RUN {re.escape(str(faces))} --out NEW_DIR`"):
        cache.check_dataset(FolderDataset(faces, EvalTransform(12)))
    with pytest.raises(ValueError, match=r"transform differs: random_flip \(cache False, dataset True\)"):
        cache.check_dataset(FolderDataset(faces, TrainTransform(flip=True, size=16)))
    _faces(tmp_path / "f", shift=1)  # same names, same labels, same sizes: other pixels
    with pytest.raises(ValueError, match="content of the sampled images"):
        cache.check_dataset(FolderDataset(faces, EvalTransform(16)))


def test_other_image_size_of_an_in_memory_dataset_is_refused(tmp_path):
    cache = _cache_of(_Images(n=6), tmp_path / "cache")

    class Bigger(_Images):
        def __init__(self):
            super().__init__(n=6)
            self.x = torch.nn.functional.interpolate(self.x, size=(10, 10))

    with pytest.raises(ValueError, match=r"input size differs \(cache 8x8, dataset 10x10\)"):
        cache.check_dataset(Bigger())


def test_retrained_teacher_with_the_same_point_names_is_refused(tmp_path):
    ds = _Images(n=6)
    cache = _cache_of(ds, tmp_path / "cache")
    cache.check_dataset(ds, route={"epoch_001": "a" * 64, "epoch_002": "b" * 64})
    retrained = {"epoch_001": "c" * 64, "epoch_002": "b" * 64}
    with pytest.raises(ValueError, match=r"anchor epoch_001: route sha256 differs \(cache aaaaaaaaaaaa…, route "
                                         r"cccccccccccc…\): the teacher .* rebuild with `facerco cache"):
        cache.check_dataset(ds, route=retrained)
    cache.check_dataset(ds, route=retrained, anchors=["epoch_002"])  # the student follows only epoch_002
    with pytest.raises(ValueError, match="anchor epoch_002: not a point of the route"):
        cache.check_dataset(ds, route={"epoch_001": "a" * 64}, anchors=["epoch_002"])
    with pytest.raises(ValueError, match="anchor 'epoch_009' is not cached"):
        cache.check_route(retrained, anchors=["epoch_009"])


def test_a_missing_recorded_teacher_run_warns(tmp_path):
    ds = _Images(n=6)
    cache = _cache_of(ds, tmp_path / "cache", teacher_run=str(tmp_path / "gone"))
    with pytest.warns(UserWarning, match=r"route sha256 not checked: the teacher run .*gone"):
        cache.check_dataset(ds)


def test_version_1_cache_is_refused_with_the_fix(tmp_path):
    ds = _Images(n=6)
    _cache_of(ds, tmp_path / "cache", teacher_run="runs/t", dataset="data/train")
    manifest = read_json(tmp_path / "cache" / "manifest.json")
    old = {**manifest, "version": 1, "dataset": {k: manifest["dataset"][k] for k in ("num_items", "labels_sha256")}}
    del old["flip"]
    write_json(tmp_path / "cache" / "manifest.json", old)
    hint = r"records only the labels.*cannot be checked; rebuild with `facerco cache runs/t data/train --out NEW_DIR`"
    with pytest.raises(ValueError, match=r"manifest\.json: anchor cache version 1 .*" + hint):
        AnchorCache(tmp_path / "cache")
    with pytest.raises(ValueError, match="anchor cache version 1"):
        _cache_of(ds, tmp_path / "cache")
    write_json(tmp_path / "cache" / "manifest.json", {**manifest, "flip": "vertical"})
    with pytest.raises(ValueError, match="flipped rows follow 'vertical'"):
        AnchorCache(tmp_path / "cache")


def test_fingerprint_is_cheap_and_stable(tmp_path):
    from facerco.data.datasets import FolderDataset

    faces = _faces(tmp_path / "f", n_id=4, per_id=40)
    a = dataset_fingerprint(FolderDataset(faces, EvalTransform(16)))
    assert a == dataset_fingerprint(FolderDataset(faces, TrainTransform(flip=False, size=16, output="uint8")))
    assert a["images"]["samples"] == 64 and a["input_size"] == [16, 16]
    assert a["transform"]["normalize"] == [-1.0, 1.0] and a["transform"]["random_flip"] is False


def test_rows_of_a_teacher_beyond_fp16_range_stay_finite(tmp_path):
    ds = _Images()
    big = _model(1)
    with torch.no_grad():
        big[-1].weight.mul_(1e6)  # raw embeddings far above float16's 65,504
    with torch.no_grad():
        raw = big(ds[0][0][None])
    assert raw.abs().max() > 65504
    build_cache(tmp_path, {"epoch_001": (lambda: big, "sha-a")}, ds, shard_size=8, batch_size=4, progress=False)
    rows = AnchorCache(tmp_path).targets("epoch_001", torch.arange(len(ds)), torch.zeros(len(ds), dtype=torch.long))
    assert torch.isfinite(rows).all()
    assert torch.allclose(rows.norm(dim=1), torch.ones(len(ds)), atol=2e-3)


def test_resuming_a_cache_of_raw_rows_keeps_writing_raw_rows(tmp_path):
    ds = _Images()
    build_cache(tmp_path, _anchors(), ds, shard_size=4, batch_size=4, progress=False)
    manifest = read_json(tmp_path / "manifest.json")
    del manifest["rows"]  # as written by facerco before rows were normalized
    entry = manifest["anchors"]["epoch_002"]
    entry["shards"], entry["complete"] = entry["shards"][:1], False
    write_json(tmp_path / "manifest.json", manifest)
    (tmp_path / "epoch_002" / "shard_00001.npy").unlink()
    build_cache(tmp_path, _anchors(), ds, shard_size=4, batch_size=4, progress=False)
    arr = np.load(tmp_path / "epoch_002" / "shard_00001.npy")
    with torch.no_grad():
        online = _model(2)(torch.stack([ds[i][0] for i in range(4, 8)]))
    assert np.array_equal(arr[:, 0], online.half().numpy())  # raw, like the shards already there
    assert "rows" not in read_json(tmp_path / "manifest.json")
