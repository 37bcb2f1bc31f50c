"""Detection and alignment on real photos (../shared/data/detect_align, LFW); skipped when the data is absent."""

from __future__ import annotations

import importlib.util
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from facerco.prep.align import read_image
from facerco.prep.detectors import box_iou

pytestmark = pytest.mark.realdata
needs_dlib = pytest.mark.skipif(importlib.util.find_spec("dlib") is None, reason="dlib not installed (align extra)")


def _voc_boxes(xml_path: Path) -> dict[str, list[np.ndarray]]:
    """dlib imglab XML -> {file: [xyxy boxes]} (box = top, left, width, height)."""
    out: dict[str, list[np.ndarray]] = {}
    for image in ET.parse(xml_path).getroot().iter("image"):
        boxes = out.setdefault(image.get("file"), [])
        for b in image.iter("box"):
            x, y, w, h = (float(b.get(k)) for k in ("left", "top", "width", "height"))
            boxes.append(np.array([x, y, x + w, y + h]))
    return out


def _match(truth: list[np.ndarray], found: list[np.ndarray], thr: float = 0.5) -> tuple[int, int]:
    """Greedy one-to-one matching by IoU; returns (true positives, false positives)."""
    free = list(range(len(truth)))
    tp = 0
    for box in found:
        ious = [box_iou(box, truth[i]) for i in free]
        if ious and max(ious) >= thr:
            free.pop(int(np.argmax(ious)))
            tp += 1
    return tp, len(found) - tp


@needs_dlib
def test_dlib_finds_all_43_labelled_faces_without_false_positives(real_data):
    from facerco.prep.detectors import create_detector

    root = real_data / "detect_align" / "dlib_pascal_voc_faces"
    labels = {**_voc_boxes(root / "training.xml"), **_voc_boxes(root / "testing.xml")}
    assert sum(len(v) for v in labels.values()) == 43
    det = create_detector("dlib", upsample=1)
    tp = fp = 0
    for name, truth in labels.items():
        faces = det.detect(read_image(root / name))
        assert all(f.landmarks.shape == (5, 2) for f in faces)
        t, f = _match(truth, [face.box for face in faces])
        tp, fp = tp + t, fp + f
    assert (tp, fp) == (43, 0)
    assert det.detect(read_image(root / "dogs.jpg")) == []


@needs_dlib
def test_dlib_five_point_calibration_holds_on_fresh_lfw_faces(real_data):
    """FIVE_POINT_CANONICAL was fitted on 594 LFW faces; 40 others must agree within 1 template pixel."""
    from facerco.prep.detectors._dlib import FIVE_POINT_CANONICAL, DlibDetector, calibrate_five_point

    lfw = real_data / "lfw_deepfunneled"
    people = sorted(p for p in lfw.iterdir() if p.is_dir())[-40:]
    d5, d68 = DlibDetector(points="5"), DlibDetector(points="68")
    pairs = []
    for person in people:
        img = read_image(sorted(person.glob("*.jpg"))[0])
        rects, _ = d5.detect_boxes(img)
        if not rects:
            continue
        r = max(rects, key=lambda r: r.area())
        pts = [np.array([(p.x, p.y) for p in d._predictor(img, r).parts()], float) for d in (d5, d68)]
        pairs.append((pts[0], pts[1]))
    assert len(pairs) >= 35
    assert np.abs(calibrate_five_point(pairs) - FIVE_POINT_CANONICAL).max() < 1.0


def _check_bin(path: Path, pairs: int, per_set: int) -> None:
    from facerco.data.bins import read_bin
    from facerco.data.transforms import decode_image

    images, issame = read_bin(path)
    assert len(images) == 2 * pairs and issame.shape == (pairs,)
    expected = np.tile(np.r_[np.ones(per_set, bool), np.zeros(per_set, bool)], pairs // (2 * per_set))
    np.testing.assert_array_equal(issame, expected)
    assert {decode_image(b).shape for b in images[:: max(1, len(images) // 50)]} == {(112, 112, 3)}


@needs_dlib
def test_lfw_recipe_builds_a_bin_facerco_reads(real_data, tmp_path):
    """Three folds' worth (10 matched + 10 mismatched pairs of each of the first 3 folds) through the recipe."""
    import runpy

    script = Path(__file__).resolve().parents[1] / "data_prep" / "lfw_to_bin.py"
    lfw = real_data / "lfw_deepfunneled"
    mod = runpy.run_path(str(script))
    assert mod["main"]([str(lfw), str(tmp_path), "--folds", "3", "--per-set", "10", "--workers", "1"]) == 0
    _check_bin(tmp_path / "lfw.bin", 60, 10)
    report = (tmp_path / "lfw_bin_report.json").read_text()
    assert '"pairs": 60' in report


@pytest.mark.slow
@needs_dlib
def test_lfw_recipe_full_view2(real_data, tmp_path):
    from facerco.prep.detectors import DetectorSpec
    from facerco.prep.lfw import build_lfw_bin

    lfw = real_data / "lfw_deepfunneled"
    summary = build_lfw_bin(
        lfw, lfw / "pairs.txt", tmp_path, DetectorSpec("dlib", {"upsample": 1}), workers=2, progress=False
    )
    assert summary["pairs"] == 6000 and len(summary["fallback"]) < 0.01 * summary["images"]
    _check_bin(tmp_path / "lfw.bin", 6000, 300)


@needs_dlib
def test_align_cli_on_real_photos_all_faces(real_data, tmp_path):
    """face_recognition's kNN examples: one face per training photo, both people in the two-person test photos."""
    from facerco.cli import main
    from facerco.prep.align import read_report

    src = real_data / "detect_align" / "face_recognition_examples" / "knn_examples"
    assert main(["align", str(src), str(tmp_path), "--select", "all", "--workers", "1", "--no-progress"]) == 0
    report = read_report(tmp_path / "align_report.csv")
    train = {k: int(v["faces_found"]) for k, v in report.items() if k.startswith("train/")}
    assert len(train) == 9 and set(train.values()) == {1}
    assert int(report["test/kit_with_rose.jpg"]["faces_found"]) == 2
    assert int(report["test/obama_and_biden.jpg"]["faces_found"]) >= 2  # plus a partly visible third person
    assert read_image(tmp_path / "train/obama/obama_0.jpg").shape == (112, 112, 3)


@needs_dlib
def test_rgba_png_is_read_and_detected(real_data):
    from facerco.prep.detectors import create_detector

    img = read_image(real_data / "detect_align" / "face_recognition_examples" / "extra" / "32bit.png")
    assert img.shape[2] == 3
    assert len(create_detector("dlib").detect(img)) == 1
