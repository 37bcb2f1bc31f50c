"""Views cache (`facerco cache --views K`): student crops and teacher rows of seeded jittered views, checked
against the teacher run independently; the centred cached targets; dlib's real model on LFW photos."""

from __future__ import annotations

import importlib.util
import json

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch
from test_route_import import write_tiny_onnx

from facerco.data.datasets import open_dataset
from facerco.data.transforms import EvalTransform
from facerco.distill.anchors import CachedAnchors
from facerco.prep.align import read_image, warp_face
from facerco.prep.views import crop_landmarks, jitter_landmarks
from facerco.route.cache_reader import AnchorCache
from facerco.route.io import load_route
from facerco.route.published import import_teacher
from facerco.route.views_cache import build_views_cache, colour_jitter
from facerco.utils.io import sha256_file

needs_dlib = pytest.mark.skipif(importlib.util.find_spec("dlib") is None, reason="dlib not installed (align extra)")


def write_aligned(root, count: int = 4, size: int = 112, identities: int = 2, seed: int = 0):
    """``count`` smooth colour images (JPEG-friendly) of side ``size``, in ``identities`` folders (0: flat)."""
    rng = np.random.default_rng(seed)
    for k in range(count):
        folder = root / f"id_{k % identities}" if identities else root
        folder.mkdir(parents=True, exist_ok=True)
        proto = rng.integers(0, 256, size=(4, 4, 3)).astype(np.float32)
        cv2.imwrite(str(folder / f"{k:03d}.png"), cv2.resize(proto, (size, size), interpolation=cv2.INTER_CUBIC)
                    .clip(0, 255).astype(np.uint8))
    return root


def _shards(out):
    manifest = json.loads((out / "cache" / "manifest.json").read_text())
    return [s["sha256"] for s in manifest["anchors"]["final"]["shards"]]


def _rows(out) -> np.ndarray:
    """Every cached row (N, 2, D), float32, in dataset order."""
    cache = AnchorCache(out / "cache")
    n = sum(len(a) for a in cache._open("final"))
    return np.stack([cache.targets("final", np.arange(n), np.full(n, f)).numpy() for f in (0, 1)], axis=1)


@pytest.fixture(scope="module")
def views(tmp_path_factory):
    """A tiny ONNX teacher run, 4 aligned 112 crops (2 identities) and their K=2 views cache (3 rows a shard)."""
    root = tmp_path_factory.mktemp("views")
    onnx_file = write_tiny_onnx(root / "tiny.onnx", seed=7)
    run = root / "teacher"
    import_teacher(onnx_file, run)
    aligned = write_aligned(root / "aligned")
    out = root / "out"
    manifest = build_views_cache(run, aligned, aligned, out, views=2, seed=3, shard_size=3, progress=False)
    return root, onnx_file, run, aligned, out, manifest


def test_views_from_crops_make_2n_crops_that_the_cache_accepts(views):
    root, _, run, aligned, out, manifest = views
    plan = json.loads((out / "views.json").read_text())
    assert plan["view_source"] == "crop" and plan["views"] == 2 and plan["teacher"]["kind"] == "onnx"
    files = sorted(p.relative_to(out / "images").as_posix() for p in (out / "images").rglob("*.jpg"))
    assert files == sorted(f"id_{k % 2}/{k:03d}_v{v}.jpg" for k in range(4) for v in range(2))
    dataset = open_dataset(out / "images", "folder", EvalTransform(112))
    assert len(dataset) == 8 and dataset.num_classes == 2
    cache = AnchorCache(out / "cache")
    cache.check_dataset(dataset, route=load_route(run))  # same images, size, transform and teacher point
    assert len(_shards(out)) == 3 and json.loads(manifest.read_text())["anchors"]["final"]["complete"]
    for k in range(4):
        crop = read_image(aligned / f"id_{k % 2}/{k:03d}.png").astype(int)
        v0 = read_image(out / "images" / f"id_{k % 2}/{k:03d}_v0.jpg").astype(int)
        v1 = read_image(out / "images" / f"id_{k % 2}/{k:03d}_v1.jpg").astype(int)
        assert np.abs(v0 - crop).mean() < 1.5 and np.abs(v0 - crop).max() < 24  # the crop, re-encoded as JPEG
        assert np.abs(v1 - crop).mean() > 5  # moved and recoloured


def test_a_rerun_is_a_no_op(views):
    root, _, run, aligned, out, manifest = views
    crops = sorted((out / "images").rglob("*.jpg"))
    stamps = [p.stat().st_mtime_ns for p in crops]
    shas = _shards(out)
    assert build_views_cache(run, aligned, aligned, out, views=2, seed=3, shard_size=3, progress=False) == manifest
    assert [p.stat().st_mtime_ns for p in crops] == stamps and _shards(out) == shas
    assert [sha256_file(f) for f in sorted((out / "cache" / "final").glob("*.npy"))] == shas
    with pytest.raises(ValueError, match="written with other settings"):
        build_views_cache(run, aligned, aligned, out, views=2, seed=4, shard_size=3, progress=False)


def test_cached_rows_are_the_teachers_embeddings_of_each_view(views):
    root, onnx_file, run, aligned, out, _ = views
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    specs = {s["file"]: s for s in json.loads((out / "views.json").read_text())["specs"]}
    dataset = open_dataset(out / "images", "folder", EvalTransform(112))
    rows = _rows(out)
    for i, path in enumerate(dataset.paths):
        spec = specs[path.relative_to(out / "images").as_posix()]
        crop = read_image(aligned / spec["photo"])
        if spec["view"]:  # the teacher's 112 view of the moved points, recoloured like the student's crop
            crop = colour_jitter(warp_face(crop, np.asarray(spec["landmarks"], np.float32).reshape(5, 2), 112),
                                 spec["colour"])
        else:
            assert spec["landmarks"] == pytest.approx(crop_landmarks(112).reshape(-1).tolist(), abs=1e-3)
        both = np.stack([crop, crop[:, ::-1]]).astype(np.float32)
        emb = session.run(None, {"data": ((both - 127.5) / 127.5).transpose(0, 3, 1, 2)})[0]
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        np.testing.assert_allclose(rows[i], emb, atol=2e-3)
    assert np.abs(rows[:, 0] - rows[:, 1]).max() > 1e-2  # the flipped row is another view


def test_anchor_cache_mean_and_centred_targets(views):
    out = views[4]
    rows = np.concatenate([np.load(f).astype(np.float64) for f in sorted((out / "cache" / "final").glob("*.npy"))])
    assert rows.shape == (8, 2, 16)
    cache = AnchorCache(out / "cache")
    mean = cache.mean("final")
    assert mean.dtype == np.float32 and mean.shape == (16,)
    np.testing.assert_allclose(mean, rows.mean(axis=(0, 1)), rtol=1e-6, atol=1e-7)
    keys = torch.tensor([[0, 0], [5, 1], [7, 0], [2, 1]])
    plain = CachedAnchors(cache).embeddings("final", torch.zeros(4, 3, 112, 112), keys)
    np.testing.assert_allclose(plain.numpy(), rows[keys[:, 0], keys[:, 1]], atol=1e-7)
    centred = CachedAnchors(cache, center=True).embeddings("final", torch.zeros(4, 3, 112, 112), keys)
    want = rows[keys[:, 0], keys[:, 1]] - rows.mean(axis=(0, 1))
    np.testing.assert_allclose(centred.numpy(), want / np.linalg.norm(want, axis=1, keepdims=True), atol=1e-6)
    with pytest.raises(ValueError, match=r"need the dataset keys"):
        CachedAnchors(cache, center=True).embeddings("final", torch.zeros(1, 3, 112, 112), None)


def test_flat_aligned_folder_gives_flat_views(views, tmp_path):
    run = views[2]
    aligned = write_aligned(tmp_path / "flat", count=3, identities=0)
    out = tmp_path / "out"
    build_views_cache(run, aligned, aligned, out, views=2, progress=False)
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"{k:03d}_v{v}.jpg" for k in range(3)
                                                                  for v in range(2)]
    AnchorCache(out / "cache").check_dataset(open_dataset(out / "images", "images", EvalTransform(112)))


def test_views_from_224_crops_use_the_224_template(views, tmp_path):
    run = views[2]
    aligned = write_aligned(tmp_path / "aligned", count=2, size=224)
    out = tmp_path / "out"
    build_views_cache(run, aligned, aligned, out, views=1, progress=False)
    plan = json.loads((out / "views.json").read_text())
    assert plan["specs"][0]["landmarks"] == pytest.approx(crop_landmarks(224).reshape(-1).tolist(), abs=1e-3)
    crop = read_image(aligned / "id_0" / "000.png").astype(int)
    v0 = read_image(out / "images" / "id_0" / "000_v0.jpg").astype(int)
    assert v0.shape == (112, 112, 3) and np.abs(v0 - crop[::2, ::2]).mean() < 1.5  # the whole crop, halved


def test_jitter_moves_the_points_by_a_seeded_similarity():
    angle = np.deg2rad(20)
    rot = 1.7 * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    points = (crop_landmarks(112) @ rot.T + [40.0, 25.0]).astype(np.float32)  # a face in some photo
    a = jitter_landmarks(points, np.random.default_rng([3, 1, 1]))
    assert np.array_equal(a, jitter_landmarks(points, np.random.default_rng([3, 1, 1])))
    assert not np.allclose(a, jitter_landmarks(points, np.random.default_rng([3, 1, 2])), atol=1e-3)
    assert a.shape == (5, 2) and a.dtype == np.float32 and np.abs(a - points).max() > 0.5
    for seed in range(5):
        moved = jitter_landmarks(points, np.random.default_rng(seed)).astype(np.float64)
        iu = np.triu_indices(5, 1)
        before = np.linalg.norm(points[:, None] - points[None], axis=2)[iu]
        after = np.linalg.norm(moved[:, None] - moved[None], axis=2)[iu]
        ratio = after / before
        np.testing.assert_allclose(ratio, ratio.mean(), rtol=1e-4)
        assert 0.92 - 1e-3 <= ratio.mean() <= 1.08 + 1e-3  # scale within 1 +- max_scale


# ---- dlib's real model on LFW photos ----------------------------------------------------------------------------


@pytest.mark.realdata
@needs_dlib
def test_dlib_teacher_matches_dlib_descriptors_on_lfw(real_data, tmp_path):
    from facerco.prep.align import align_tree
    from facerco.prep.detectors import DetectorSpec
    from facerco.prep.detectors._dlib import DlibDetector
    from facerco.prep.views import dlib_shape

    run = tmp_path / "dlib"
    manifest = json.loads(import_teacher("dlib", run).read_text())
    assert manifest["teacher"]["kind"] == "dlib" and manifest["teacher"]["embedding_size"] == 128
    assert manifest["teacher"]["view"]["name"] == "dlib150" and manifest["points"][0]["file"] == "route/final.dat"
    teacher = load_route(run).load_point("final").model
    lfw = real_data / "lfw_deepfunneled"
    photos = tmp_path / "photos"
    detector = DlibDetector(points="5")
    seen = {}
    for person in ("Aaron_Eckhart", "AJ_Cook", "Abdullah_Gul"):
        src = sorted((lfw / person).glob("*.jpg"))[0]
        (photos / person).mkdir(parents=True)
        (photos / person / src.name).write_bytes(src.read_bytes())
        photo = read_image(src)
        landmarks = detector.detect(photo)[0].landmarks
        got = teacher.embed_crops(teacher.view.crop(photo, landmarks)[None])
        want = np.asarray(teacher.net.compute_face_descriptor(photo, dlib_shape(landmarks)), np.float32)
        assert got.shape == (1, 128) and np.array_equal(got[0], want)
        seen[f"{person}/{src.name}"] = (photo, landmarks)
    aligned = tmp_path / "aligned"
    align_tree(photos, aligned, DetectorSpec("dlib", {"points": "5"}), progress=False)
    out = tmp_path / "views"
    build_views_cache(run, aligned, photos, out, views=1, progress=False)
    plan = json.loads((out / "views.json").read_text())
    assert plan["view_source"] == "photo" and len(plan["specs"]) == 3
    specs = {s["file"]: s for s in plan["specs"]}
    dataset = open_dataset(out / "images", "folder", EvalTransform(112))
    rows = _rows(out)
    for i, path in enumerate(dataset.paths):
        spec = specs[path.relative_to(out / "images").as_posix()]
        photo, detected = seen[spec["photo"]]
        landmarks = np.asarray(spec["landmarks"], np.float32).reshape(5, 2)  # align_report keeps 2 decimals
        np.testing.assert_allclose(landmarks, detected, atol=6e-3)
        want = np.asarray(teacher.net.compute_face_descriptor(photo, dlib_shape(landmarks)), np.float32)
        np.testing.assert_allclose(rows[i, 0], want / np.linalg.norm(want), atol=2e-3)
