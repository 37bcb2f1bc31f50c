"""Decoding, transforms, RecordDataset and FolderDataset on generated images (PNG payloads are lossless)."""

from __future__ import annotations

import pickle
import struct

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from facerco.data.datasets import FolderDataset, RecordDataset, list_identity_folder, open_dataset
from facerco.data.recordio import InsightfaceWriter, IRHeader, RecordIOError, RecordReader, RecordWriter, pack
from facerco.data.transforms import (
    EvalTransform,
    TrainTransform,
    decode_image,
    encode_jpeg,
    normalize,
    normalize_batch,
)


def _image(seed: int, size: int = 112) -> np.ndarray:
    """A deterministic RGB image with asymmetric content (so a flip is visible)."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    img[:, : size // 4, 0] = 255  # red band on the left
    return img


def _png(img_rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(img_rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


def test_decode_image_is_rgb_and_exact_for_png():
    img = _image(0, 40)
    out = decode_image(_png(img))
    assert out.dtype == np.uint8 and out.shape == (40, 40, 3)
    np.testing.assert_array_equal(out, img)
    assert (out[:, :10, 0] == 255).all()  # red stays in channel 0 (RGB, not BGR)


def test_decode_gray_and_jpeg():
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    ok, buf = cv2.imencode(".png", gray)
    out = decode_image(buf.tobytes())
    assert out.shape == (8, 8, 3) and (out[..., 0] == gray).all() and (out[..., 2] == gray).all()
    yy, xx = np.mgrid[0:64, 0:64]
    smooth = np.stack([np.full_like(xx, 200), xx * 2, yy * 3], axis=-1).astype(np.uint8)  # red-dominant gradient
    jpg = encode_jpeg(smooth)
    assert jpg[:3] == b"\xff\xd8\xff"
    assert np.abs(decode_image(jpg).astype(int) - smooth).mean() < 3  # lossy, same picture, channels in RGB order


def test_decode_rejects_non_images():
    with pytest.raises(ValueError, match="not a decodable image"):
        decode_image(b"definitely not an image")
    with pytest.raises(ValueError, match="empty"):
        decode_image(b"")


def test_normalize_known_values():
    img = np.zeros((2, 3, 3), dtype=np.uint8)
    img[0, 0] = (0, 255, 51)
    t = normalize(img)
    assert t.dtype == torch.float32 and t.shape == (3, 2, 3)
    assert t[0, 0, 0].item() == -1.0 and t[1, 0, 0].item() == 1.0
    assert t[2, 0, 0].item() == pytest.approx((51 - 127.5) / 127.5, abs=1e-7)
    with pytest.raises(ValueError, match="RGB uint8"):
        normalize(img.astype(np.float32))


def test_train_transform_flips_about_half_the_time():
    img = _image(2)
    plain, flipped = normalize(img), normalize(img[:, ::-1])
    torch.manual_seed(0)
    outs = [TrainTransform()(img) for _ in range(200)]
    n_flip = sum(torch.equal(o, flipped) for o in outs)
    assert all(torch.equal(o, plain) or torch.equal(o, flipped) for o in outs)
    assert 70 < n_flip < 130
    assert all(torch.equal(TrainTransform(flip=False)(img), plain) for _ in range(20))


def test_uint8_output_and_normalize_batch_match_float_path():
    imgs = [_image(40 + i, 24) for i in range(3)]
    torch.manual_seed(5)
    floats = [TrainTransform(size=24)(im) for im in imgs]
    torch.manual_seed(5)
    raw = [TrainTransform(size=24, output="uint8")(im) for im in imgs]
    assert raw[0].dtype == torch.uint8 and raw[0].shape == (24, 24, 3)
    assert torch.equal(normalize_batch(torch.stack(raw)), torch.stack(floats))
    assert normalize_batch(torch.stack(raw)).is_contiguous(memory_format=torch.channels_last)
    conv = torch.nn.Conv2d(3, 4, 3)
    assert torch.allclose(conv(normalize_batch(torch.stack(raw))), conv(torch.stack(floats)), atol=1e-5)
    with pytest.raises(ValueError, match="uint8"):
        normalize_batch(torch.stack(floats))
    with pytest.raises(ValueError, match="output"):
        EvalTransform(output="fp16")


def test_eval_transform_resizes_and_decodes_bytes():
    t = EvalTransform(112)(_png(_image(3, 64)))
    assert t.shape == (3, 112, 112)
    assert torch.equal(EvalTransform(64)(_image(3, 64)), normalize(_image(3, 64)))


@pytest.mark.parametrize(("size", "mean", "std"), [((32, 32), 127.5, 127.5), ((40, 24), 0.0, 1.0),
                                                    ((16, 16), 123.675, 58.395), ((80, 90), 127.5, 128.0)])
def test_eval_preprocessor_is_bit_identical_to_torch_formula(size, mean, std):
    """The one evaluation preprocessor gives exactly what the extractor computed before (cv2 resize with the area
    filter when shrinking, then torch's float (x - mean) / std), for any model size, mean and std."""
    import cv2

    img = np.random.default_rng(1).integers(0, 256, size=(50, 60, 3), dtype=np.uint8)
    h, w = size
    interp = cv2.INTER_AREA if img.shape[0] > h or img.shape[1] > w else cv2.INTER_LINEAR
    resized = cv2.resize(img, (w, h), interpolation=interp)
    want = torch.from_numpy(resized).permute(2, 0, 1).float().sub_(mean).div_(std)
    got = EvalTransform(size, mean=mean, std=std)(img)
    assert got.shape == (3, h, w) and torch.equal(got, want)
    assert EvalTransform(size, mean=mean, std=std).batch_decodable == (h == w and (mean, std) == (127.5, 127.5))
    with pytest.raises(ValueError, match="uint8"):
        EvalTransform(16, output="uint8", mean=0.0, std=1.0)


# --------------------------------------------------------------------------------------------- RecordDataset


def _insightface_dataset(root, labels=(0, 0, 1, 2, 2, 2), num_classes=None):
    root.mkdir(parents=True, exist_ok=True)
    images = [_image(10 + i, 32) for i in range(len(labels))]
    with InsightfaceWriter(root / "train.rec", root / "train.idx", root / "property", (32, 32), num_classes) as w:
        for img, lab in zip(images, labels):
            w.add(_png(img), lab)
    return images, list(labels)


def test_record_dataset_items_labels_and_header(tmp_path):
    images, labels = _insightface_dataset(tmp_path / "ds")
    ds = RecordDataset(tmp_path / "ds", EvalTransform(32))
    assert len(ds) == 6 and ds.num_classes == 3 and ds.image_size == (32, 32)
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == labels
    assert ds.keys.tolist() == [1, 2, 3, 4, 5, 6] and ds.header.id_start == 7
    for i in range(len(ds)):
        x, y = ds[i]
        assert y == labels[i] and torch.equal(x, normalize(images[i]))
        np.testing.assert_array_equal(ds.read_image(i), images[i])
    assert ds.paths[0].endswith("train.rec#1")


def test_record_dataset_without_idx_scans(tmp_path):
    images, labels = _insightface_dataset(tmp_path / "ds")
    (tmp_path / "ds" / "train.idx").unlink()
    ds = RecordDataset(tmp_path / "ds", EvalTransform(32))
    assert ds.labels.tolist() == labels and ds.keys.tolist() == [1, 2, 3, 4, 5, 6]
    np.testing.assert_array_equal(ds.read_image(5), images[5])


def test_plain_im2rec_file_with_array_labels(tmp_path):
    """No header record: every record is an image; an array label's class is label[0]."""
    root = tmp_path / "plain"
    root.mkdir()
    labels = [[1.0, 0.5], [0.0, 9.0], [1.0, 1.0]]
    images = [_image(20 + i, 16) for i in range(3)]
    with RecordWriter(root / "train.rec", root / "train.idx") as w:
        for img, lab in zip(images, labels):
            w.write(pack(IRHeader(0, lab, 0, 0), _png(img)))
    ds = RecordDataset(root / "train.rec", EvalTransform(16))
    assert ds.header is None and ds.labels.tolist() == [1, 0, 1] and ds.num_classes == 2
    assert torch.equal(ds[1][0], normalize(images[1]))


def test_label_out_of_range_names_file_key_offset(tmp_path):
    _insightface_dataset(tmp_path / "ds", labels=(0, 1, 5), num_classes=6)
    (tmp_path / "ds" / "property").write_text("3,32,32\n")  # property disagrees with the records
    offset = RecordReader(tmp_path / "ds" / "train.rec").offsets[3]
    with pytest.raises(RecordIOError, match=rf"train\.rec: key 3, offset {offset}: label 5 out of range \[0, 3\)"):
        RecordDataset(tmp_path / "ds")


def test_fractional_label_is_rejected(tmp_path):
    root = tmp_path / "frac"
    root.mkdir()
    with RecordWriter(root / "train.rec", root / "train.idx") as w:
        w.write(pack(IRHeader(0, 1.5), _png(_image(0, 8))))
    with pytest.raises(RecordIOError, match="key 0, offset 0: label 1.5 out of range"):
        RecordDataset(root)


def test_non_image_payload_names_file_key_offset(tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    with InsightfaceWriter(root / "train.rec", root / "train.idx", root / "property") as w:
        w.add(_png(_image(0, 8)), 0)
        w.add(b"this is not an image", 0)
    ds = RecordDataset(root)
    offset = ds.reader.offsets[2]
    with pytest.raises(RecordIOError, match=rf"train\.rec: key 2, offset {offset}: non-image payload"):
        ds[1]


def test_dataloader_with_two_workers_matches_direct_reads(tmp_path):
    labels = tuple(i // 4 for i in range(24))
    images, _ = _insightface_dataset(tmp_path / "ds", labels=labels)
    ds = RecordDataset(tmp_path / "ds", EvalTransform(32))
    ds[0]  # open the file in the parent first: workers must not reuse its descriptor position
    loader = DataLoader(ds, batch_size=5, num_workers=2, shuffle=False)
    xs, ys = zip(*loader)
    x, y = torch.cat(xs), torch.cat(ys)
    assert y.tolist() == list(labels)
    assert torch.equal(x, torch.stack([normalize(img) for img in images]))


def test_reader_pickles_without_its_descriptor(tmp_path):
    _insightface_dataset(tmp_path / "ds")
    reader = RecordReader(tmp_path / "ds" / "train.rec")
    first = reader.read(1)
    clone = pickle.loads(pickle.dumps(reader))
    assert clone._fd is None and clone.read(1) == first
    reader._pid = -1  # as if inherited from another process: the next read opens a new descriptor
    old = reader._fd
    assert reader.read(1) == first and reader._fd != old


def test_record_dataset_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="train.rec"):
        RecordDataset(tmp_path)
    # header announces more images than the index holds
    root = tmp_path / "short"
    root.mkdir()
    with RecordWriter(root / "train.rec", root / "train.idx") as w:
        w.write(pack(IRHeader(2, [5.0, 6.0])), key=0)
        w.write(pack(IRHeader(0, 0.0), b"x"), key=1)
    with pytest.raises(RecordIOError, match="key 0 announces images 1..4 but key 2"):
        RecordDataset(root)


# --------------------------------------------------------------------------------------------- FolderDataset


def test_folder_dataset_sorted_classes_and_skips(tmp_path):
    root = tmp_path / "faces"
    for name, n in (("bob", 2), ("Alice", 1), ("carol", 3)):
        (root / name).mkdir(parents=True)
        for i in range(n):
            (root / name / f"{i:04d}.png").write_bytes(_png(_image(30 + i, 12)))
    (root / "empty").mkdir()
    (root / ".hidden").mkdir()
    (root / ".hidden" / "x.png").write_bytes(_png(_image(0, 12)))
    (root / "landmarks.csv").write_text("path\n")
    (root / "bob" / "notes.txt").write_text("not an image")
    classes, paths, labels = list_identity_folder(root)
    assert classes == ["Alice", "bob", "carol"]  # byte-wise sort: upper case first
    assert labels.tolist() == [0, 1, 1, 2, 2, 2]
    assert [p.relative_to(root).as_posix() for p in paths][:3] == ["Alice/0000.png", "bob/0000.png", "bob/0001.png"]
    ds = FolderDataset(root, EvalTransform(12))
    assert ds.num_classes == 3 and ds.labels.dtype == np.int64
    x, y = ds[5]
    assert y == 2 and torch.equal(x, normalize(_image(32, 12)))
    assert isinstance(open_dataset(root), FolderDataset)


def test_folder_dataset_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        FolderDataset(tmp_path / "nope")
    (tmp_path / "a").mkdir()
    with pytest.raises(ValueError, match="no identity sub-folders"):
        FolderDataset(tmp_path)
    (tmp_path / "a" / "x.jpg").write_bytes(struct.pack("<I", 7) * 4)
    with pytest.raises(ValueError, match=r"a/x\.jpg: not a decodable image"):
        FolderDataset(tmp_path)[0]
    with pytest.raises(ValueError, match="unknown dataset format"):
        open_dataset(tmp_path, "lmdb")


def test_flip_coins_differ_between_workers(tmp_path):
    root = tmp_path / "same"
    root.mkdir()
    img = _image(7, 16)
    with InsightfaceWriter(root / "train.rec", root / "train.idx", root / "property") as w:
        for _ in range(80):
            w.add(_png(img), 0)
    ds = RecordDataset(root, TrainTransform(size=16))
    ds[0]  # fills the parent's coin buffer: forked workers must not replay it
    flipped = normalize(cv2.flip(img, 1))
    batches = [x for x, _ in DataLoader(ds, batch_size=40, num_workers=2)]
    patterns = [[torch.equal(t, flipped) for t in batch] for batch in batches]
    assert patterns[0] != patterns[1]
    assert 20 < sum(patterns[0]) + sum(patterns[1]) < 60


def test_normalize_matches_independent_formula_and_is_contiguous():
    img = _image(9, 20)
    t = normalize(img)
    ref = (torch.from_numpy(img.astype(np.float32)).permute(2, 0, 1) - 127.5) / 127.5
    assert t.is_contiguous() and torch.equal(t, ref)
