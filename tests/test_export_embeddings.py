"""Embedding export: equals the shared extractor, npy/csv and devkit round trips, resume, fingerprints, CLI."""

from __future__ import annotations

import struct
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from facerco.eval import features
from facerco.export.embeddings import devkit_keys, export_embeddings


class SmallFace(nn.Module):
    """Enough structure to give different images different, non-symmetric embeddings."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 5, 4, 2), nn.BatchNorm2d(8), nn.PReLU(8), nn.AdaptiveAvgPool2d(4))
        self.fc = nn.Linear(8 * 16, 16)
        self.meta = types.SimpleNamespace(name="small_face", input_size=(112, 112), embedding_size=16, mean=127.5,
                                          std=127.5, arch_kwargs={})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.body(x), 1))


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return SmallFace().eval()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 identities x 3 images (112x112 PNG, lossless so every reader sees the same pixels)."""
    root = tmp_path_factory.mktemp("faces")
    rng = np.random.default_rng(0)
    for ident in range(3):
        (root / f"id{ident}").mkdir()
        for j in range(3):
            img = cv2.resize(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), (112, 112))
            cv2.imwrite(str(root / f"id{ident}" / f"{j:04d}.png"), img)
    return root


@pytest.fixture(scope="module")
def reference(model: nn.Module, folder: Path) -> features.Embeddings:
    return features.extract_embeddings(model, folder, batch_size=4, progress=False)


def test_npy_round_trip_equals_one_extractor_call(model, folder, reference, tmp_path) -> None:
    summary = export_embeddings(model, folder, tmp_path / "out", shard_size=4, batch_size=2, progress=False)
    assert summary["count"] == 9 and summary["dim"] == 16 and summary["shards"] == 3
    back = features.load_embeddings(tmp_path / "out" / "embeddings.npy")
    assert back.emb.dtype == np.float32
    np.testing.assert_allclose(back.emb, reference.emb, atol=1e-6)
    assert back.paths == [str(p) for p in reference.paths]
    assert back.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    np.testing.assert_allclose(back.norms, reference.norms, rtol=1e-5)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["embeddings.csv", "embeddings.npy",
                                                                     "manifest.json"]
    header = (tmp_path / "out" / "embeddings.csv").read_text().splitlines()[0]
    assert header == "path,label,norm"


def test_float16_output(model, folder, reference, tmp_path) -> None:
    export_embeddings(model, folder, tmp_path / "o", dtype="float16", progress=False)
    back = np.load(tmp_path / "o" / "embeddings.npy")
    assert back.dtype == np.float16 and back.shape == (9, 16)
    np.testing.assert_allclose(back.astype(np.float32), reference.emb, atol=2e-3)


def test_resume_skips_finished_shards(model, folder, reference, tmp_path, monkeypatch) -> None:
    real = features.extract_embeddings
    calls: list[int] = []

    def crash_on_second(*args, **kwargs):
        calls.append(len(args[1]))
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(features, "extract_embeddings", crash_on_second)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="simulated"):
        export_embeddings(model, folder, out, shard_size=4, progress=False)
    assert (out / ".shards" / "shard_00000.npz").is_file() and not (out / "manifest.json").exists()
    with pytest.raises(ValueError, match="different run"):
        export_embeddings(model, folder, out, shard_size=4, flip=False, progress=False)

    calls.clear()
    monkeypatch.setattr(features, "extract_embeddings", lambda *a, **k: calls.append(len(a[1])) or real(*a, **k))
    summary = export_embeddings(model, folder, out, shard_size=4, progress=False)
    assert calls == [4, 1] and summary["shards_skipped"] == 1
    np.testing.assert_allclose(np.load(out / "embeddings.npy"), reference.emb, atol=1e-6)
    assert not (out / ".shards").exists()

    calls.clear()
    again = export_embeddings(model, folder, out, shard_size=4, progress=False)
    assert calls == [] and again["shards_skipped"] == again["shards"] == 3


def test_megaface_devkit_tree_reads_back(model, folder, reference, tmp_path) -> None:
    out = tmp_path / "mf"
    export_embeddings(model, folder, out, fmt="megaface", algo="facerco", shard_size=5, progress=False)
    feats, keys = features.read_devkit_tree(out, "facerco")
    assert keys == [f"id{i}/{j:04d}.png" for i in range(3) for j in range(3)]
    np.testing.assert_allclose(feats, reference.emb, atol=1e-6)
    raw = (out / "id1" / "0002.png_facerco.bin").read_bytes()
    assert struct.unpack("<4i", raw[:16]) == (16, 1, 4, 5) and len(raw) == 16 + 4 * 16
    np.testing.assert_allclose(np.frombuffer(raw[16:], "<f4"), reference.emb[5], atol=1e-6)


def test_bin_and_list_sources(model, folder, tmp_path) -> None:
    from facerco.data.bins import write_bin

    files = sorted(folder.rglob("*.png"))[:4]
    write_bin(tmp_path / "pairs.bin", [f.read_bytes() for f in files], np.array([True, False]))
    export_embeddings(model, tmp_path / "pairs.bin", tmp_path / "b", fmt="megaface", algo="x", progress=False)
    assert sorted(p.relative_to(tmp_path / "b").as_posix() for p in (tmp_path / "b").rglob("*.bin")) == [
        f"pairs/{i:08d}_x.bin" for i in range(4)]
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{f} {k}\n" for k, f in enumerate(files)))
    export_embeddings(model, listing, tmp_path / "l", progress=False)
    from_list = features.load_embeddings(tmp_path / "l" / "embeddings.npy")
    assert from_list.labels.tolist() == [0, 1, 2, 3]
    from_bin = features.extract_embeddings(model, tmp_path / "pairs.bin", progress=False)
    np.testing.assert_allclose(from_list.emb, from_bin.emb, atol=1e-6)


def test_devkit_keys_forms(tmp_path) -> None:
    assert devkit_keys([str(tmp_path / "a" / "x.jpg"), str(tmp_path / "b" / "y.jpg")], tmp_path) == ["a/x.jpg",
                                                                                                    "b/y.jpg"]
    assert devkit_keys(["/d/train.rec#7", "/d/train.rec#12"], "/d") == ["train/00000007", "train/00000012"]
    with pytest.raises(ValueError, match="neither"):
        devkit_keys(["x#y"], "/d")


def test_bad_arguments(model, folder, tmp_path) -> None:
    with pytest.raises(ValueError, match="--algo"):
        export_embeddings(model, folder, tmp_path, fmt="megaface")
    with pytest.raises(ValueError, match="float32"):
        export_embeddings(model, folder, tmp_path, fmt="megaface", algo="a", dtype="float16")
    with pytest.raises(ValueError, match="unknown format"):
        export_embeddings(model, folder, tmp_path, fmt="hdf5")
    with pytest.raises(FileNotFoundError):
        export_embeddings(tmp_path / "missing.onnx", folder, tmp_path)


def test_cli_with_onnx_model(model, folder, reference, tmp_path) -> None:
    from facerco.cli import main
    from facerco.export.onnx import export_onnx

    export_onnx(model, tmp_path / "m.onnx", exporter="legacy")
    rc = main(["export", "embeddings", str(tmp_path / "m.onnx"), str(folder), "-o", str(tmp_path / "e"),
               "--shard-size", "4", "--dtype", "float16"])
    assert rc == 0
    got = np.load(tmp_path / "e" / "embeddings.npy")
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float32), reference.emb, atol=2e-3)


@pytest.mark.realdata
def test_real_folder_devkit_and_npy_agree(model, real_data, tmp_path) -> None:
    """All 400 AT&T photos (92x112 PGM, resized by the extractor): devkit tree and npy hold the same features."""
    src = real_data / "orl_att_faces"
    npy = export_embeddings(model, src, tmp_path / "n", shard_size=128, batch_size=100, progress=False)
    export_embeddings(model, src, tmp_path / "m", fmt="megaface", algo="t", shard_size=128, batch_size=100,
                      progress=False)
    assert npy["count"] == 400 and npy["shards"] == 4
    back = features.load_embeddings(tmp_path / "n" / "embeddings.npy")
    assert np.bincount(back.labels).tolist() == [10] * 40
    feats, keys = features.read_devkit_tree(tmp_path / "m", "t", keys=devkit_keys(back.paths, src))
    assert keys[0].startswith("s1/") and keys[0].endswith(".pgm")
    np.testing.assert_allclose(feats, back.emb, atol=1e-6)
