"""prep: detector interface, landmarks-file backend, face selection, the resumable `facerco align` tree job."""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest

from facerco.data import synthetic
from facerco.prep.align import (
    ARCFACE_TEMPLATE_112,
    REPORT_NAME,
    align_tree,
    estimate_transform,
    read_image,
    read_report,
    write_image,
)
from facerco.prep.detectors import DetectorSpec, Face, create_detector, parse_detector_options, select_faces

needs_dlib = pytest.mark.skipif(importlib.util.find_spec("dlib") is None, reason="dlib not installed (align extra)")
_ZERO_POSE = dict(
    yaw=0.0, pitch=0.0, roll=0.0, scale=0.0, shift=0.0, smile=0.0, mouth_open=0.0, eye_closure=0.0, gaze=0.0
)


def _tf(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:, :2].T + m[:, 2]


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(p.relative_to(root).as_posix().encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def test_unknown_detector_and_bad_options_raise():
    with pytest.raises(ValueError, match="unknown detector 'mtcnn'.*dlib"):
        create_detector("mtcnn")
    with pytest.raises(ValueError, match="key=value"):
        parse_detector_options(["upsample"])
    assert parse_detector_options(["upsample=2", "threshold=0.5", "use_hint=false", "points=68"]) == {
        "upsample": 2,
        "threshold": 0.5,
        "use_hint": False,
        "points": 68,
    }


def test_select_faces_policies():
    def face(x1, y1, x2, y2, score=1.0):
        return Face(box=(x1, y1, x2, y2), landmarks=np.zeros((5, 2)), score=score)

    big_corner, small_centre = face(0, 0, 60, 60), face(90, 90, 130, 130)
    faces = [small_centre, big_corner]
    assert select_faces(faces, (220, 220), "largest") == [big_corner]
    assert select_faces(faces, (220, 220), "central") == [small_centre]
    assert select_faces(faces, (220, 220), "all") == [big_corner, small_centre]
    assert select_faces(faces, (220, 220), "largest", hint=np.array([85, 85, 135, 135])) == [small_centre]
    assert select_faces([], (10, 10)) == []
    with pytest.raises(ValueError, match="unknown face selection policy"):
        select_faces(faces, (10, 10), "best")


def test_landmarks_backend_reads_csv_and_json(tmp_path):
    pts = ARCFACE_TEMPLATE_112 + 10
    rows = ["path," + ",".join(f"{a}{i}" for i in range(1, 6) for a in "xy")]
    rows.append("a/1.jpg," + ",".join(f"{v:.3f}" for v in pts.reshape(-1)))
    rows.append("./a/2.jpg," + ",".join(f"{v:.3f}" for v in (pts + 5).reshape(-1)))
    (tmp_path / "lm.csv").write_text("\n".join(rows) + "\n")
    det = create_detector("landmarks", path=str(tmp_path / "lm.csv"))
    [face] = det.detect(np.zeros((10, 10, 3), np.uint8), key="a/1.jpg")
    np.testing.assert_allclose(face.landmarks, pts, atol=1e-3)
    assert face.box[0] <= pts[:, 0].min() and face.box[2] >= pts[:, 0].max()
    assert det.detect(np.zeros((10, 10, 3), np.uint8), key="a/2.jpg")[0].landmarks[0, 0] == pytest.approx(
        pts[0, 0] + 5, abs=1e-3
    )
    assert det.detect(np.zeros((10, 10, 3), np.uint8), key="missing.jpg") == []

    (tmp_path / "lm.json").write_text(json.dumps({"x.png": [pts.tolist(), (pts + 1).tolist()]}))
    faces = create_detector("landmarks", path=str(tmp_path / "lm.json")).detect(np.zeros((4, 4, 3)), key="x.png")
    assert len(faces) == 2

    (tmp_path / "bad.csv").write_text(rows[0] + "\nq.jpg,1,2,3\n")
    with pytest.raises(ValueError, match=r"bad\.csv: line 2"):
        create_detector("landmarks", path=str(tmp_path / "bad.csv"))
    (tmp_path / "short.csv").write_text("path,x1,y1\n")
    with pytest.raises(ValueError, match="lacks column"):
        create_detector("landmarks", path=str(tmp_path / "short.csv"))


def _landmark_tree(tmp_path: Path, n: int = 6) -> tuple[Path, Path]:
    """A source tree of randomly placed 'faces' with a landmarks.csv, plus one image without landmarks."""
    rng = np.random.default_rng(3)
    src = tmp_path / "src"
    rows = []
    for k in range(n):
        rel = f"id{k % 2}/img{k}.jpg"
        a, s = np.deg2rad(rng.uniform(-20, 20)), rng.uniform(1.0, 2.0)
        rot = s * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        pts = ARCFACE_TEMPLATE_112 @ rot.T + rng.uniform(20, 60, size=2)
        img = rng.integers(0, 255, size=(320, 320, 3), dtype=np.uint8)
        write_image(src / rel, img)
        rows.append([rel, *pts.reshape(-1).round(3)])
    write_image(src / "id1" / "noface.png", np.zeros((50, 50, 3), np.uint8))
    (src / "id0" / "broken.jpg").write_bytes(b"not a jpeg")
    lm = tmp_path / "landmarks.csv"
    with open(lm, "w", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(["path"] + [f"{a}{i}" for i in range(1, 6) for a in "xy"])
        w.writerows(rows)
    return src, lm


@pytest.mark.parametrize("workers", [1, 2])
def test_align_tree_mirrors_reports_and_resumes(tmp_path, workers):
    src, lm = _landmark_tree(tmp_path)
    before = _tree_digest(src)
    dst = tmp_path / "out"
    spec = DetectorSpec("landmarks", {"path": str(lm)})
    counts = align_tree(src, dst, spec, workers=workers, progress=False)
    assert counts == {"total": 8, "skipped": 0, "aligned": 6, "failed": 2}
    assert _tree_digest(src) == before
    assert sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*.jpg")) == [
        "id0/img0.jpg",
        "id0/img2.jpg",
        "id0/img4.jpg",
        "id1/img1.jpg",
        "id1/img3.jpg",
        "id1/img5.jpg",
    ]
    assert read_image(dst / "id0/img0.jpg").shape == (112, 112, 3)
    umask = os.umask(0o022)
    os.umask(umask)
    assert (dst / "id0/img0.jpg").stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600
    assert not list(dst.rglob("*.tmp"))
    report = read_report(dst / REPORT_NAME)
    assert report["id1/noface.png"]["failure_reason"] == "no_face"
    assert report["id0/broken.jpg"]["failure_reason"].startswith("unreadable")
    assert report["id0/img0.jpg"]["faces_found"] == "1" and report["id0/img0.jpg"]["outputs"] == "id0/img0.jpg"
    # a rerun does nothing; a file whose row was lost (killed before the report write) is skipped, not redone
    (dst / REPORT_NAME).write_text((dst / REPORT_NAME).read_text().rsplit("\n", 2)[0] + "\nid0/img9")
    counts = align_tree(src, dst, spec, workers=workers, progress=False)
    assert counts["aligned"] + counts["failed"] <= 1 and counts["skipped"] >= 7
    assert set(read_report(dst / REPORT_NAME)) == {r for r in report}
    assert _tree_digest(src) == before


def test_align_tree_refuses_output_inside_source_and_bad_sizes(tmp_path):
    src, lm = _landmark_tree(tmp_path, n=1)
    spec = DetectorSpec("landmarks", {"path": str(lm)})
    with pytest.raises(ValueError, match="outside the source"):
        align_tree(src, src / "aligned", spec, progress=False)
    with pytest.raises(ValueError, match="multiple of 112"):
        align_tree(src, tmp_path / "o", spec, size=100, progress=False)
    with pytest.raises(FileNotFoundError, match="source folder"):
        align_tree(tmp_path / "nope", tmp_path / "o", spec, progress=False)


def test_align_cli_all_faces_224(tmp_path):
    from facerco.cli import main

    src, lm = _landmark_tree(tmp_path, n=2)
    rc = main(
        [
            "align",
            str(src),
            str(tmp_path / "out"),
            "--detector",
            "landmarks",
            "--landmarks",
            str(lm),
            "--size",
            "224",
            "--select",
            "all",
            "--format",
            "png",
            "--workers",
            "1",
            "--no-progress",
        ]
    )
    assert rc == 0
    assert read_image(tmp_path / "out" / "id0" / "img0_0.png").shape == (224, 224, 3)
    assert main(["align", str(src), str(tmp_path / "o2"), "--detector", "insightface"]) == 1


def _wild_faces(tmp_path: Path, n_id: int, n_img: int, zero_pose: bool) -> tuple[Path, Path]:
    nuisance = synthetic.Nuisance(**_ZERO_POSE) if zero_pose else None
    root = tmp_path / "wild"
    csv_path = synthetic.write_identity_folder(root, n_id, n_img, seed=1, wild=True, nuisance=nuisance)
    return root, csv_path


def test_wild_synthetic_faces_aligned_from_ground_truth_land_on_template(tmp_path):
    """Generated in-the-wild faces (no pose/expression nuisance) aligned from their landmarks: < 1 px off."""
    root, csv_path = _wild_faces(tmp_path, 3, 4, zero_pose=True)
    det = create_detector("landmarks", path=str(csv_path))
    counts = align_tree(root, tmp_path / "aligned", DetectorSpec("landmarks", {"path": str(csv_path)}), progress=False)
    assert counts["aligned"] == 12
    worst = 0.0
    for key in det._table:  # noqa: SLF001 - the test wants every key
        [face] = det.detect(read_image(root / key), key=key)
        worst = max(
            worst, float(np.abs(_tf(estimate_transform(face.landmarks), face.landmarks) - ARCFACE_TEMPLATE_112).max())
        )
    assert worst < 1.0


@needs_dlib
def test_dlib_five_point_mapping_follows_arcface_order():
    """dlib's 5 points (right-eye corners, left-eye corners, nose bottom) must map to ArcFace order, not mirrored."""
    from facerco.prep.detectors._dlib import FIVE_POINT_CANONICAL, landmarks_from_5, landmarks_from_68

    c = FIVE_POINT_CANONICAL
    pts5 = np.array([c[1] + [8, 0], c[1] - [8, 0], c[0] - [8, 0], c[0] + [8, 0], c[2]]) * 2 + 30
    lmk = landmarks_from_5(pts5)
    np.testing.assert_allclose(_tf(estimate_transform(lmk), lmk), ARCFACE_TEMPLATE_112, atol=1e-3)
    assert lmk[0, 0] < lmk[1, 0] and lmk[3, 0] < lmk[4, 0] and lmk[2, 1] < lmk[3, 1]
    pts68 = np.zeros((68, 2))
    pts68[36:42], pts68[42:48], pts68[30], pts68[48], pts68[54] = [10, 20], [50, 20], [30, 40], [15, 60], [45, 60]
    np.testing.assert_allclose(landmarks_from_68(pts68), [[10, 20], [50, 20], [30, 40], [15, 60], [45, 60]])


@needs_dlib
def test_dlib_on_wild_synthetic_faces_within_measured_bound(tmp_path):
    """dlib (upsample 1) on generated wild faces without pose nuisance, benchmarks/align.py on 100 scenes: 63% found;
    worst of the five ground-truth points after alignment, from the template: median 3.96 px, p90 8.1 px (5-point),
    3.23 / 7.55 px (68-point), in the 112x112 frame. The bound here leaves room for the 24-scene sample."""
    root, csv_path = _wild_faces(tmp_path, 6, 4, zero_pose=True)
    truth = create_detector("landmarks", path=str(csv_path))
    det = create_detector("dlib", upsample=1, points="5")
    errs, found = [], 0
    for key in truth._table:  # noqa: SLF001
        img = read_image(root / key)
        gt = truth.detect(img, key=key)[0].landmarks
        faces = select_faces(det.detect(img), img.shape, "largest")
        if not faces:
            continue
        found += 1
        errs.append(np.linalg.norm(_tf(estimate_transform(faces[0].landmarks), gt) - ARCFACE_TEMPLATE_112, axis=1))
    assert found >= 10
    assert np.median(np.max(errs, axis=1)) < 6.0


def _fake_scrfd(path: Path, size: int = 64) -> None:
    """A constant-output ONNX with SCRFD's 9 outputs (3 strides x score/bbox/kps, 2 anchors): one face at the
    stride-16 anchor of row 2, column 1 (centre (16, 32)), distances in stride units."""
    import onnx
    from onnx import TensorProto
    from onnx import helper as h
    from onnx import numpy_helper as nh

    groups: dict[str, list] = {"score": [], "bbox": [], "kps": []}
    for s in (8, 16, 32):
        n = (size // s) ** 2 * 2
        sc, bb, kp = np.zeros((n, 1), np.float32), np.ones((n, 4), np.float32), np.zeros((n, 10), np.float32)
        if s == 16:
            i = (2 * (size // s) + 1) * 2
            sc[i], bb[i] = 0.9, [1.0, 1.0, 1.0, 1.5]
            kp[i] = [-0.5, -0.3, 0.5, -0.3, 0.0, 0.2, -0.4, 0.7, 0.4, 0.7]
        for k, arr in (("score", sc), ("bbox", bb), ("kps", kp)):
            groups[k].append((f"{k}_{s}", arr))
    nodes, outs = [], []
    for k in ("score", "bbox", "kps"):
        for name, arr in groups[k]:
            nodes.append(h.make_node("Constant", [], [name], value=nh.from_array(arr, name + "_v")))
            outs.append(h.make_tensor_value_info(name, TensorProto.FLOAT, list(arr.shape)))
    inp = h.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, size, size])
    model = h.make_model(h.make_graph(nodes, "fake_scrfd", [inp], outs), opset_imports=[h.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))


@pytest.mark.skipif(importlib.util.find_spec("insightface") is None, reason="insightface not installed")
def test_insightface_backend_decodes_scrfd_outputs(tmp_path):
    _fake_scrfd(tmp_path / "det.onnx")
    det = create_detector("insightface", model_path=str(tmp_path / "det.onnx"), threads=1)
    [face] = det.detect(np.zeros((64, 64, 3), np.uint8))
    np.testing.assert_allclose(face.box, [0, 16, 32, 56], atol=1e-4)
    expected = np.array([[8, 27.2], [24, 27.2], [16, 35.2], [9.6, 43.2], [22.4, 43.2]])
    np.testing.assert_allclose(face.landmarks, expected, atol=1e-4)
    assert face.score == pytest.approx(0.9)
    [face] = det.detect(np.zeros((128, 96, 3), np.uint8))  # resized by 0.5 into the 64x64 input: coordinates x2
    np.testing.assert_allclose(face.landmarks, expected * 2, atol=1e-4)
    (tmp_path / "det.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="onnx files only"):
        create_detector("insightface", model_path=str(tmp_path / "det.bin"))
    with pytest.raises(FileNotFoundError, match="never downloads"):
        create_detector("insightface", model_path=str(tmp_path / "missing.onnx"))


def test_landmarks_backend_reads_celeba_and_vggface2_layouts_and_fixes_mirrored_order(tmp_path):
    from facerco.prep.detectors._landmarks import canonical_order

    pts = (ARCFACE_TEMPLATE_112 * 1.3 + 7).round(1)
    mirrored = pts[[1, 0, 2, 4, 3]]
    coords = " ".join(f"{v:g}" for v in pts.reshape(-1))
    header = "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y"
    (tmp_path / "list_landmarks_celeba.txt").write_text(f"1\n{header}\n000001.jpg {coords}\n")
    det = create_detector("landmarks", path=str(tmp_path / "list_landmarks_celeba.txt"))
    np.testing.assert_allclose(det.detect(np.zeros((4, 4, 3)), key="000001.jpg")[0].landmarks, pts, atol=1e-4)

    vgg = "NAME_ID,P1X,P1Y,P2X,P2Y,P3X,P3Y,P4X,P4Y,P5X,P5Y\nn000002/0001_01," + ",".join(
        f"{v:g}" for v in mirrored.reshape(-1)
    )
    (tmp_path / "loose_landmark_test.csv").write_text(vgg + "\n")
    det = create_detector("landmarks", path=str(tmp_path / "loose_landmark_test.csv"))
    [face] = det.detect(np.zeros((4, 4, 3)), key="n000002/0001_01.jpg")  # matched without the extension
    np.testing.assert_allclose(face.landmarks, pts, atol=1e-4)  # mirrored order recognised and swapped

    rot = np.array([[0.0, -1.0], [1.0, 0.0]])  # a face rolled by 90 degrees keeps its order
    np.testing.assert_allclose(canonical_order(pts @ rot.T), pts @ rot.T)
    (tmp_path / "bad.txt").write_text("a.jpg 1 2 3\n")
    with pytest.raises(ValueError, match=r"bad\.txt: line 1: expected"):
        create_detector("landmarks", path=str(tmp_path / "bad.txt"))
