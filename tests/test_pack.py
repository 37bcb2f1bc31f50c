"""`facerco pack`, `facerco inspect` and `facerco make-bin` on generated folders, plus a real-data LFW slice."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from facerco.cli import main
from facerco.data.bins import read_bin
from facerco.data.datasets import RecordDataset
from facerco.data.recordio import RecordReader, identity_ranges, read_dataset_header, read_property
from facerco.data.transforms import EvalTransform, decode_image
from facerco.prep.pack import pack_folder


def _face(seed: int, size: int) -> np.ndarray:
    """A smooth BGR image (JPEG-friendly) that differs per seed."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    rng = np.random.default_rng(seed)
    a, b, c = rng.uniform(40, 215, 3)
    return np.stack([a + 40 * xx, b + 40 * yy, c - 40 * xx * yy], axis=-1).clip(0, 255).astype(np.uint8)


def _jpeg(img: np.ndarray, quality: int = 90) -> bytes:
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


@pytest.fixture
def aligned(tmp_path):
    """zed: 2 JPEG 112; amy: a JPEG 112 + a PNG 112 (re-encoded); bo: a JPEG 150 (resized); an empty folder."""
    root = tmp_path / "aligned"
    files = {
        "zed/a.jpg": _jpeg(_face(1, 112)),
        "zed/b.jpg": _jpeg(_face(2, 112)),
        "amy/1.jpg": _jpeg(_face(3, 112)),
        "amy/2.png": cv2.imencode(".png", _face(4, 112))[1].tobytes(),
        "bo/x.jpeg": _jpeg(_face(5, 150)),
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "empty").mkdir()
    return root, files


def test_pack_layout_copy_and_reencode(aligned, tmp_path):
    root, files = aligned
    result = pack_folder(root, tmp_path / "out", progress=False)
    assert (result.num_images, result.num_identities, result.copied, result.reencoded) == (5, 3, 3, 2)
    out = tmp_path / "out"
    assert read_property(out / "property") == (3, 112, 112)
    reader = RecordReader(out / "train.rec")
    header = read_dataset_header(reader)
    assert (header.id_start, header.id_end) == (6, 9)
    assert identity_ranges(reader, header) == [(1, 3), (3, 4), (4, 6)]  # amy, bo, zed
    ds = RecordDataset(out, EvalTransform())
    assert ds.classes == ["amy", "bo", "zed"] and ds.labels.tolist() == [0, 0, 1, 2, 2]
    assert ds.read_bytes(0) == files["amy/1.jpg"]  # 112x112 JPEG: copied byte for byte
    assert ds.read_bytes(3) == files["zed/a.jpg"] and ds.read_bytes(4) == files["zed/b.jpg"]
    png_as_jpeg = ds.read_bytes(1)
    assert png_as_jpeg[:3] == b"\xff\xd8\xff"
    expected = cv2.imencode(".jpg", _face(4, 112), [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    assert png_as_jpeg == expected  # encoded from BGR at quality 95
    resized = decode_image(ds.read_bytes(2))
    assert resized.shape == (112, 112, 3)
    ref = cv2.cvtColor(cv2.resize(_face(5, 150), (112, 112), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
    assert np.abs(resized.astype(int) - ref).mean() < 3
    manifest = json.loads((out / "pack.json").read_text())
    assert manifest["identities"] == ["amy", "bo", "zed"] and manifest["num_images"] == 5
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def test_pack_is_deterministic_and_refuses_to_overwrite(aligned, tmp_path):
    root, _ = aligned
    pack_folder(root, tmp_path / "a", progress=False, workers=1)
    pack_folder(root, tmp_path / "b", progress=False, workers=3)
    for name in ("train.rec", "train.idx", "property"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    with pytest.raises(FileExistsError, match="--overwrite"):
        pack_folder(root, tmp_path / "a", progress=False)
    pack_folder(root, tmp_path / "a", progress=False, overwrite=True)


def test_pack_keep_size(aligned, tmp_path):
    root, files = aligned
    result = pack_folder(root, tmp_path / "out", size=0, progress=False)
    assert result.copied == 4 and result.reencoded == 1  # every JPEG copied, the PNG encoded
    ds = RecordDataset(tmp_path / "out")
    assert ds.read_bytes(2) == files["bo/x.jpeg"]


def test_pack_is_atomic_on_a_bad_image(aligned, tmp_path):
    root, _ = aligned
    (root / "zed" / "c.jpg").write_bytes(b"\xff\xd8\xff truncated garbage")
    with pytest.raises(ValueError, match=r"zed/c\.jpg: not a decodable image"):
        pack_folder(root, tmp_path / "out", progress=False)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == []


def test_cli_inspect_an_unlabeled_flat_folder(aligned, tmp_path, capsys):
    """`data.format: images` folders have no identities: counts and a contact sheet, no histogram (was a crash)."""
    import shutil

    root, _ = aligned
    flat = tmp_path / "flat"
    flat.mkdir()
    for i, img in enumerate(sorted(p for p in root.rglob("*") if p.is_file())):
        shutil.copy(img, flat / f"{i}{img.suffix}")
    assert main(["inspect", str(flat), "--out", str(tmp_path / "insp"), "--format", "images"]) == 0
    assert "images      5" in capsys.readouterr().out
    stats = json.loads((tmp_path / "insp" / "inspect.json").read_text())
    assert stats["unlabeled"] and stats["identities"] == 0 and stats["histogram"] == []
    assert (tmp_path / "insp" / "contact_sheet.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "insp" / "histogram.png").exists()


def test_cli_pack_inspect_make_bin(aligned, tmp_path, capsys):
    root, _ = aligned
    assert main(["pack", str(root), str(tmp_path / "ds"), "--no-progress"]) == 0
    assert "packed 5 images of 3 identities" in capsys.readouterr().out
    assert main(["pack", str(root), str(tmp_path / "ds"), "--no-progress"]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "ds"), "--out", str(tmp_path / "insp")]) == 0
    out = capsys.readouterr().out
    assert "images      5" in out and "identities  3" in out
    stats = json.loads((tmp_path / "insp" / "inspect.json").read_text())
    assert stats["format"] == "rec" and stats["histogram"] == [["1", 1], ["2", 2]]
    for png in ("histogram.png", "contact_sheet.png"):
        assert (tmp_path / "insp" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    sheet = cv2.imread(str(tmp_path / "insp" / "contact_sheet.png"))
    assert sheet.shape[0] > 200 and sheet.shape[1] > 200
    assert main(["inspect", str(root), "--out", str(tmp_path / "insp2"), "--format", "folder"]) == 0
    assert json.loads((tmp_path / "insp2" / "inspect.json").read_text())["images"] == 5
    assert main(["inspect", str(tmp_path / "nothing")]) == 1  # clean error, no traceback

    lfw = tmp_path / "lfw"
    for name in ("Ann_A", "Bob_B"):
        (lfw / name).mkdir(parents=True)
        for i in (1, 2):
            (lfw / name / f"{name}_{i:04d}.jpg").write_bytes(_jpeg(_face(i + len(name), 250)))
    (tmp_path / "pairs.txt").write_text("1\t1\nAnn_A\t1\t2\nAnn_A\t2\tBob_B\t1\n")
    args = [str(tmp_path / "pairs.txt"), str(lfw), str(tmp_path / "v.bin"), "--no-progress"]
    assert main(["make-bin", *args]) == 0
    images, issame = read_bin(tmp_path / "v.bin")
    assert issame.tolist() == [True, False] and images[2] == (lfw / "Ann_A" / "Ann_A_0002.jpg").read_bytes()
    assert main(["make-bin", *args, "--size", "112"]) == 0
    images, _ = read_bin(tmp_path / "v.bin")
    assert [decode_image(b).shape for b in images] == [(112, 112, 3)] * 4


@pytest.mark.realdata
def test_real_lfw_slice_round_trip(real_data, tmp_path):
    """Pack 20 LFW identities (linked, never copied) and read every image back byte for byte."""
    src = real_data / "lfw_deepfunneled"
    if not src.is_dir():
        pytest.skip("lfw_deepfunneled absent")
    names = sorted(p.name for p in src.iterdir() if p.is_dir())[1000:1020]
    linked = tmp_path / "slice"
    linked.mkdir()
    for name in names:
        (linked / name).symlink_to(src / name, target_is_directory=True)
    result = pack_folder(linked, tmp_path / "ds", size=0, progress=False)
    assert result.num_identities == 20 and result.reencoded == 0
    ds = RecordDataset(tmp_path / "ds")
    assert ds.classes == names and ds.image_size == (250, 250)
    expected = [f for name in names for f in sorted((src / name).iterdir()) if f.suffix == ".jpg"]
    assert len(ds) == len(expected) == result.num_images
    for i, path in enumerate(expected):
        assert ds.read_bytes(i) == path.read_bytes(), path
        assert ds.classes[ds.labels[i]] == path.parent.name
    x, y = ds[0]
    assert x.shape == (3, 112, 112) and y == 0  # EvalTransform resizes 250 -> 112
    small = pack_folder(linked, tmp_path / "ds112", progress=False)
    assert small.reencoded == result.num_images
    assert decode_image(RecordDataset(tmp_path / "ds112").read_bytes(0)).shape == (112, 112, 3)
