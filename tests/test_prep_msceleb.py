"""MS-Celeb-1M TSV: streamed decoding/alignment of a TSV the test writes, clean list, hints, resume, bad input."""

from __future__ import annotations

import base64
import csv
import gzip
import importlib.util
import itertools
import struct
from pathlib import Path

import numpy as np
import pytest

from facerco.data import synthetic
from facerco.prep.align import ARCFACE_TEMPLATE_112, REPORT_NAME, encode_image, read_image, read_report
from facerco.prep.detectors import DetectorSpec
from facerco.prep.msceleb import convert_tsv, decode_rectangle, iter_tsv
from facerco.prep.stream import hint_to_box

_COLS = [f"{a}{i}" for i in range(1, 6) for a in "xy"]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _write_tsv(tmp_path: Path, n_ids: int = 3, per_id: int = 3) -> tuple[Path, Path]:
    """7-column faces TSV plus a landmarks CSV keyed by the decoded names (<MID>/<rank>-<FaceID>.jpg)."""
    rng = np.random.default_rng(0)
    tsv, lm = tmp_path / "faces.tsv", tmp_path / "lm.csv"
    with open(tsv, "w") as out, open(lm, "w", newline="") as lm_out:
        w = csv.writer(lm_out)
        w.writerow(["path", *_COLS])
        for i in range(n_ids):
            for r in range(per_id):
                img = rng.integers(0, 255, size=(150, 130, 3), dtype=np.uint8)
                pts = ARCFACE_TEMPLATE_112 * rng.uniform(0.9, 1.1) + rng.uniform(0, 15, size=2)
                rect = struct.pack("<4f", 10.0, 20.0, 100.0, 110.0)
                mid, face_id = f"m.0{i:03d}", f"FaceId-{r % 2}"
                out.write(
                    "\t".join(
                        [
                            mid,
                            str(r + 1),
                            "http://x/i.jpg",
                            "http://x/p.html",
                            face_id,
                            _b64(rect),
                            _b64(encode_image(img, ".jpg")),
                        ]
                    )
                    + "\n"
                )
                w.writerow([f"{mid}/{r + 1}-{face_id}.jpg", *pts.reshape(-1).round(3)])
    return tsv, lm


def test_iter_tsv_parses_both_layouts_lazily(tmp_path):
    tsv, _ = _write_tsv(tmp_path, 1, 2)
    with open(tsv, "a") as out:
        out.write("m.0x\tname\t7\turl\tpage\t" + _b64(b"jpeg") + "\n")
        out.write("broken\tline\n")
    rows = iter_tsv(tsv)
    first = next(rows)  # reading starts before the bad line is reached: the file is streamed
    assert first.key == "m.0000/1-FaceId-0.jpg" and decode_rectangle(first.rect_b64) == (10.0, 20.0, 100.0, 110.0)
    second, third = next(rows), next(rows)
    assert second.key == "m.0000/2-FaceId-1.jpg" and third.key == "m.0x/7.jpg" and third.rect_b64 is None
    with pytest.raises(ValueError, match=r"faces\.tsv: line 4: 2 tab-separated columns"):
        next(rows)
    with pytest.raises(ValueError, match="16"):
        decode_rectangle(base64.b64encode(b"abc"), "x")
    gz = tmp_path / "faces.tsv.gz"
    gz.write_bytes(gzip.compress(tsv.read_bytes()))
    assert [r.key for r in itertools.islice(iter_tsv(gz), 3)] == [first.key, second.key, third.key]


def test_hint_to_box_pixels_fractions_and_outside():
    np.testing.assert_allclose(hint_to_box((10, 20, 30, 40), (100, 100, 3)), [10, 20, 40, 60])
    np.testing.assert_allclose(hint_to_box((0.1, 0.2, 0.5, 0.5), (200, 100, 3)), [10, 40, 60, 140])
    assert hint_to_box((500, 500, 50, 50), (100, 100, 3)) is None
    assert hint_to_box(None, (10, 10)) is None


@pytest.mark.parametrize("workers", [1, 2])
def test_convert_tsv_aligns_with_clean_list_and_resumes(tmp_path, workers):
    tsv, lm = _write_tsv(tmp_path)
    (tmp_path / "clean.txt").write_text("m.0000/1-FaceId-0.jpg\nm.0000/2-FaceId-1.jpg\nm.0002/3-FaceId-0.jpg m.0000\n")
    out = tmp_path / "out"
    spec = DetectorSpec("landmarks", {"path": str(lm)})
    # the relabelled image is looked up by its original name and renamed so it cannot collide
    s = convert_tsv(tsv, out, spec, clean_list=tmp_path / "clean.txt", workers=workers, progress=False)
    assert s["aligned"] == 3 and s["failed"] == 0
    assert sorted(p.name for p in (out / "m.0000").iterdir()) == [
        "1-FaceId-0.jpg",
        "2-FaceId-1.jpg",
        "m.0002_3-FaceId-0.jpg",
    ]
    assert read_image(out / "m.0000/1-FaceId-0.jpg").shape == (112, 112, 3)
    assert not (out / "m.0001").exists() and not (out / "m.0002").exists()
    s = convert_tsv(tsv, out, spec, clean_list=tmp_path / "clean.txt", workers=workers, progress=False)
    assert s["skipped"] == 3 and s["aligned"] == s["failed"] == 0


def test_convert_tsv_extract_only_and_limit(tmp_path):
    tsv, _ = _write_tsv(tmp_path)
    s = convert_tsv(tsv, tmp_path / "raw", None, limit=4, progress=False)
    assert s["aligned"] == 4
    assert read_image(tmp_path / "raw" / "m.0000/1-FaceId-0.jpg").shape == (150, 130, 3)
    assert len(read_report(tmp_path / "raw" / REPORT_NAME)) == 4


@pytest.mark.skipif(importlib.util.find_spec("dlib") is None, reason="dlib not installed")
def test_face_rectangle_hint_rescues_dlib(tmp_path):
    """A face too small for HOG without upsampling is still aligned when the TSV's rectangle is given."""
    face = synthetic.render_aligned(0, 1, 0, nuisance=synthetic.Nuisance().scaled(0.0)).image
    tsv = tmp_path / "t.tsv"
    rect = struct.pack("<4f", 20.0, 20.0, 70.0, 70.0)
    small = face[::1, ::1]
    canvas = np.full((110, 110, 3), 128, np.uint8)
    canvas[20:90, 20:90] = np.asarray(__import__("cv2").resize(small, (70, 70)))
    tsv.write_text("\t".join(["m.01", "1", "u", "p", "F-0", _b64(rect), _b64(encode_image(canvas, ".png"))]) + "\n")
    spec = DetectorSpec("dlib", {"upsample": 0})
    no_hint = convert_tsv(tsv, tmp_path / "a", spec, use_hint=False, progress=False)
    with_hint = convert_tsv(tsv, tmp_path / "b", spec, progress=False)
    assert no_hint["failed"] == 1 and with_hint["aligned"] == 1
