"""The flip-fused extractor on every source kind, ONNX parity, saved files and devkit feature files."""

from __future__ import annotations

import struct

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from facerco.data.bins import write_bin
from facerco.eval import features as F
from facerco.models.meta import ModelMeta


class _Tiny(nn.Module):
    """A deterministic, asymmetric toy embedder (so flipping changes its output)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, stride=4)
        self.fc = nn.Linear(4 * 8 * 8, 6)
        self.meta = ModelMeta(name="tiny", input_size=(32, 32), embedding_size=6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(40, 36, 3), dtype=np.uint8) for _ in range(n)]


def _reference_input(img, size=32):
    """The evaluation input written out independently: area-shrink to the model side, then torch's (x - 127.5) / 127.5
    (the formula of the extractor before its preprocessor became ``EvalTransform``; values must stay bit-identical)."""
    small = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(small).permute(2, 0, 1).float().sub_(127.5).div_(127.5)


def _expected(model, imgs):
    x = torch.stack([_reference_input(im) for im in imgs])
    with torch.no_grad():
        a, b = model(x).double().numpy(), model(x.flip(3)).double().numpy()
    fused = a + b
    norms = (np.linalg.norm(a, axis=1) + np.linalg.norm(b, axis=1)) / 2
    return fused / np.linalg.norm(fused, axis=1, keepdims=True), norms


def test_flip_fusion_folder_list_bin(tmp_path):
    model = _Tiny()
    imgs = _images(6)
    files = []
    for i, im in enumerate(imgs):
        d = tmp_path / "faces" / f"id{i // 3}"
        d.mkdir(parents=True, exist_ok=True)
        files.append(d / f"{i}.png")
        cv2.imwrite(str(files[-1]), cv2.cvtColor(im, cv2.COLOR_RGB2BGR))
    want, want_norm = _expected(model, imgs)
    model.train()
    out = F.extract_embeddings(model, tmp_path / "faces", batch_size=4, device="cpu", progress=False)
    assert model.training  # the caller's mode is restored
    np.testing.assert_allclose(out.emb, want, atol=1e-5)
    np.testing.assert_allclose(out.norms, want_norm, rtol=1e-5)
    assert out.labels.tolist() == [0, 0, 0, 1, 1, 1]
    listed = F.extract_embeddings(model, [str(f) for f in files], batch_size=5, device="cpu", progress=False)
    np.testing.assert_allclose(listed.emb, want, atol=1e-5)
    (tmp_path / "list.txt").write_text("".join(f"{f.relative_to(tmp_path)} {i % 2}\n" for i, f in enumerate(files)))
    from_list = F.extract_embeddings(model, tmp_path / "list.txt", device="cpu", progress=False)
    assert from_list.labels.tolist() == [0, 1, 0, 1, 0, 1]
    bufs = [cv2.imencode(".png", cv2.cvtColor(im, cv2.COLOR_RGB2BGR))[1].tobytes() for im in imgs]
    write_bin(tmp_path / "v.bin", bufs, [True, False, True])
    from_bin = F.extract_embeddings(model, tmp_path / "v.bin", device="cpu", progress=False)
    np.testing.assert_allclose(from_bin.emb, want, atol=1e-5)
    no_flip = F.extract_embeddings(model, tmp_path / "v.bin", device="cpu", flip=False, progress=False)
    assert not np.allclose(no_flip.emb, want, atol=1e-3)
    np.testing.assert_allclose(np.linalg.norm(no_flip.emb, axis=1), 1, rtol=1e-5)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_onnx_model_matches_module(tmp_path):
    model = _Tiny().eval()
    path = tmp_path / "tiny.onnx"
    torch.onnx.export(model, torch.zeros(1, 3, 32, 32), str(path), input_names=["data"], output_names=["emb"],
                      dynamic_axes={"data": {0: "n"}}, dynamo=False)
    imgs = _images(3, seed=1)
    a = F.extract_embeddings(model, imgs_to_files(tmp_path, imgs), device="cpu", progress=False)
    b = F.extract_embeddings(path, imgs_to_files(tmp_path, imgs), device="cpu", progress=False)
    np.testing.assert_allclose(a.emb, b.emb, atol=1e-5)


def imgs_to_files(tmp_path, imgs):
    out = []
    for i, im in enumerate(imgs):
        p = tmp_path / f"img{i}.png"
        cv2.imwrite(str(p), cv2.cvtColor(im, cv2.COLOR_RGB2BGR))
        out.append(str(p))
    return out


def test_save_load_and_devkit_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    emb = F.Embeddings(rng.normal(size=(4, 8)).astype(np.float32), np.arange(4, dtype=np.float32) + 1,
                       np.array([3, 3, 5, -1]), ["a/x.jpg", "a/y.jpg", "b/z.jpg", "c/w.png"])
    npy = F.save_embeddings(emb, tmp_path / "feats")
    back = F.load_embeddings(npy, mmap=True)
    assert isinstance(back.emb, np.memmap)
    np.testing.assert_array_equal(back.emb, emb.emb)
    assert back.paths == emb.paths and back.labels.tolist() == [3, 3, 5, -1] and back.xnorm == 2.5

    written = F.write_devkit_tree(emb, tmp_path / "dev", "facerco")
    assert written[0] == tmp_path / "dev" / "a" / "x.jpg_facerco.bin"
    raw = written[0].read_bytes()
    assert struct.unpack("<iiii", raw[:16]) == (8, 1, 4, 5) and len(raw) == 16 + 32
    feats, keys = F.read_devkit_tree(tmp_path / "dev", "facerco")
    assert keys == sorted(emb.paths)
    order = [emb.paths.index(k) for k in keys]
    np.testing.assert_array_equal(feats, emb.emb[order])
    mm, _ = F.read_devkit_tree(tmp_path / "dev", "facerco", keys=keys, out=tmp_path / "cache" / "d.npy")
    assert isinstance(mm, np.memmap)
    np.testing.assert_array_equal(np.load(tmp_path / "cache" / "d.npy"), feats)
    bad = tmp_path / "bad_facerco.bin"
    bad.write_bytes(struct.pack("<iiii", 8, 1, 4, 6) + b"\0" * 32)
    with pytest.raises(ValueError, match="type at offset 12"):
        F.read_devkit_feature(bad)
    bad.write_bytes(struct.pack("<iiii", 9, 1, 4, 5) + b"\0" * 32)
    with pytest.raises(ValueError, match="9 float32"):
        F.read_devkit_feature(bad)


def test_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        F.extract_embeddings(tmp_path / "nope.safetensors", tmp_path, progress=False)
    (tmp_path / "l.txt").write_text("a.png 1 2\n")
    with pytest.raises(ValueError, match="l.txt: line 1"):
        F.extract_embeddings(_Tiny(), tmp_path / "l.txt", device="cpu", progress=False)
