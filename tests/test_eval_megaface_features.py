"""facerco.eval.megaface_features: FaceScrub labels from paths, distractor image lists, devkit folders, the feature
cache and list options, at the library level (the CLI end to end is in test_eval_cli.py and test_eval_cache.py)."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
import torch

from facerco.eval import features as F
from facerco.eval.feature_cache import FeatureCache, model_key
from facerco.eval.megaface_features import (
    FeatureOptions,
    identity_labels,
    image_files,
    load_role,
    noise_mask,
    role_features,
    subset_lists,
)


def test_identity_labels_rank_sorted_identity_folders():
    keys = ["Zoe/1.png", "Adam/3.png", "Zoe/2.png", "Mia/x/1.png", "Adam/1.png", "Mia/1.png"]
    labels = identity_labels(keys)
    assert labels.dtype == np.int64
    # sorted folders: Adam 0, Mia 1, Mia/x 2, Zoe 3
    assert labels.tolist() == [3, 0, 3, 2, 0, 1]


def test_image_files_from_folder_and_from_list(tmp_path):
    for rel in ("b/2.jpg", "a/1.PNG", "a/notes.txt", "c/3.webp"):
        (tmp_path / "imgs" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "imgs" / rel).write_bytes(b"x")
    assert image_files(tmp_path / "imgs", None) == [str(tmp_path / "imgs" / r) for r in ("a/1.PNG", "b/2.jpg",
                                                                                         "c/3.webp")]
    lst = tmp_path / "lists" / "d.txt"
    lst.parent.mkdir()
    lst.write_text(f"# distractors\nx/1.jpg\n{tmp_path / 'abs.jpg'}\n")
    assert image_files(lst, None) == [str(lst.parent / "x/1.jpg"), str(tmp_path / "abs.jpg")]
    assert image_files(lst, str(tmp_path / "root")) == [str(tmp_path / "root" / "x/1.jpg"), str(tmp_path / "abs.jpg")]


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.normal(size=(n, 8)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_devkit_folders_label_probes_by_identity_and_gather_distractors(tmp_path):
    rng = np.random.default_rng(0)
    pkeys = ["Bob/Bob_1.jpg", "Ann/Ann_1.jpg", "Bob/Bob_2.jpg"]
    F.write_devkit_tree(F.Embeddings(_unit(rng, 3), np.ones(3, np.float32), np.zeros(3, np.int64), pkeys),
                        tmp_path / "fs", "a1")
    dkeys = [f"Flickr/{i}.jpg" for i in range(4)]
    F.write_devkit_tree(F.Embeddings(_unit(rng, 4), np.ones(4, np.float32), np.full(4, -1), dkeys),
                        tmp_path / "mf", "a1")
    opts = FeatureOptions(tmp_path / "out", algo="a1")
    probes, where, keys = load_role(str(tmp_path / "fs"), "probes", None, opts, None)
    assert where == str(tmp_path / "fs") and all(k.endswith("_a1.bin") for k in keys)
    by_key = dict(zip(probes.paths, probes.labels.tolist(), strict=True))
    assert by_key == {"Ann/Ann_1.jpg": 0, "Bob/Bob_1.jpg": 1, "Bob/Bob_2.jpg": 1}
    dist, stats = role_features(str(tmp_path / "mf"), "distractors", None, opts, None)
    assert (dist.labels == -1).all() and stats.rows == 4 and stats.renormalized_rows == 0
    assert (tmp_path / "out" / "features" / "devkit_distractors.npy").is_file()


def test_sources_that_cannot_be_read_name_the_path(tmp_path):
    opts = FeatureOptions(tmp_path / "out")
    with pytest.raises(FileNotFoundError, match=r"missing.*probes not found"):
        load_role(str(tmp_path / "missing"), "probes", None, opts, None)
    (tmp_path / "list.txt").write_text("a.jpg\n")
    with pytest.raises(ValueError, match=r"list.txt: distractors must be a .npy"):
        load_role(str(tmp_path / "list.txt"), "distractors", None, opts, None)


def test_extracted_features_are_cached_per_model_and_sources(tmp_path, capsys, monkeypatch):
    from facerco.models import create_model
    from facerco.models.checkpoint import save_model_checkpoint

    rng = np.random.default_rng(0)
    for i in range(6):
        path = tmp_path / "probes" / f"id{i % 2}" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), cv2.resize(rng.integers(0, 255, (6, 6, 3), np.uint8), (48, 48)))
    torch.manual_seed(0)
    save_model_checkpoint(tmp_path / "m.safetensors", create_model("iresnet_tiny", input_size=48).eval())
    calls: list[int] = []
    real = F.extract_embeddings
    monkeypatch.setattr(F, "extract_embeddings", lambda *a, **k: calls.append(1) or real(*a, **k))
    opts = FeatureOptions(tmp_path / "out", batch_size=4, device="cpu", num_workers=0)
    model = str(tmp_path / "m.safetensors")

    def run() -> F.Embeddings:
        cache = FeatureCache(tmp_path / "out" / "features" / "m", model_key(model))
        emb, _ = role_features(str(tmp_path / "probes"), "probes", model, opts, cache)
        return emb

    first = run()
    assert calls == [1] and "probes: computing features (no cache yet)" in capsys.readouterr().out
    assert first.labels.tolist() == [0, 0, 0, 1, 1, 1] and np.allclose(np.linalg.norm(first.emb, axis=1), 1)
    again = run()
    assert calls == [1] and "using cached probes features" in capsys.readouterr().out
    assert np.array_equal(np.asarray(again.emb), np.asarray(first.emb)) and again.paths == first.paths
    img = tmp_path / "probes" / "id0" / "0.png"
    os.utime(img, ns=(img.stat().st_atime_ns, img.stat().st_mtime_ns + 10**9))
    run()
    assert calls == [1, 1] and "probes: source files changed" in capsys.readouterr().out


def test_subset_lists_and_noise_mask(tmp_path, capsys):
    keys = [f"Flickr/{i}.jpg" for i in range(5)]
    assert subset_lists([], keys) is None and noise_mask(None, keys, "distractors") is None
    (tmp_path / "s2.txt").write_text("3.jpg\nFlickr/1.jpg\n")
    assert {k: v.tolist() for k, v in subset_lists([f"2={tmp_path / 's2.txt'}"], keys).items()} == {2: [1, 3]}
    with pytest.raises(ValueError, match="expects SIZE=FILE"):
        subset_lists(["two=x.txt"], keys)
    with pytest.raises(ValueError, match=r"s2.txt: lists 2 distinct distractors, not 3"):
        subset_lists([f"3={tmp_path / 's2.txt'}"], keys)
    (tmp_path / "n.txt").write_text("4.jpg\nother/9.jpg\n")
    assert noise_mask(tmp_path / "n.txt", keys, "distractors").tolist() == [False, False, False, False, True]
    assert "1 matched, 1 not among the distractors" in capsys.readouterr().out

