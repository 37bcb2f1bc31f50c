"""Anchor-feature cache: agreement with online targets, sharding, resume and checksums."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from facerco.route.cache import AnchorCache, build_cache, dataset_fingerprint
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
    assert torch.allclose(cached, online.half().float(), atol=0, rtol=0)  # exactly the fp16 rounding of online
    assert torch.allclose(cached, online, rtol=1e-3, atol=1e-3)
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
    with pytest.raises(ValueError, match="another checkpoint"):
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
    with pytest.raises(ValueError, match="built for dataset"):
        AnchorCache(tmp_path).check_dataset(_Images(n=5))
    assert dataset_fingerprint(ds)["num_items"] == 11
