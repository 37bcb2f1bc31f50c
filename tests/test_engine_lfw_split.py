"""The seeded LFW identity split: known answers on a fake tree, and the real numbers when LFW is present."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from facerco.data.lfw_split import CROP_BOX, crop_resize, format_pairs, lfw_split, prepare_lfw


def _fake_lfw(root: Path) -> Path:
    """10 people with 5 images, 4 with 2, 6 singletons; pairs.txt with 10 folds of 1 + 1."""
    counts = {f"P{i}": 5 for i in range(10)} | {f"Q{i}": 2 for i in range(4)} | {f"S{i}": 1 for i in range(6)}
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for k in range(1, n + 1):
            img = np.full((250, 250, 3), 10 * k, np.uint8)
            cv2.imwrite(str(root / name / f"{name}_{k:04d}.jpg"), img)
    lines = ["10\t1"]
    for f in range(10):
        lines += [f"P{f}\t1\t2" if f % 2 else f"Q{f % 4}\t1\t2", f"S{f % 6}\t1\tQ{(f + 1) % 4}\t1"]
    (root / "pairs.txt").write_text("\n".join(lines) + "\n")
    return root


def test_split_is_seeded_disjoint_and_keeps_only_heldout_pairs(tmp_path):
    root = _fake_lfw(tmp_path / "lfw")
    a, b = lfw_split(root, num_train=4, seed=0), lfw_split(root, num_train=4, seed=0)
    assert a.train == b.train and len(a.train) == 4 and all(n.startswith("P") for n in a.train)
    assert lfw_split(root, num_train=4, seed=1).train != a.train
    assert set(a.train).isdisjoint(a.test) and len(a.test) == 6 + 4 and a.distractors == [f"S{i}" for i in range(6)]
    for p in a.pairs:
        assert p.name1 not in a.train and p.name2 not in a.train
    # each fold keeps the same number m of matched and mismatched pairs (m = 1 here unless a fold lost one)
    folds = sorted({p.fold for p in a.pairs})
    for f in folds:
        same = [p.same for p in a.pairs if p.fold == f]
        assert same == [True] * a.pairs_per_set + [False] * a.pairs_per_set
    text = format_pairs(a)
    assert text.splitlines()[0] == f"{len(folds)}\t{a.pairs_per_set}"
    with pytest.raises(ValueError, match="num_train"):
        lfw_split(root, num_train=11)


def test_crop_box_and_prepare(tmp_path):
    img = np.zeros((250, 250, 3), np.uint8)
    x0, y0, x1, y1 = CROP_BOX
    img[y0:y1, x0:x1] = 200
    out = crop_resize(img, 112)
    assert out.shape == (112, 112, 3) and out.min() == 200  # exactly the box, nothing outside it
    root = _fake_lfw(tmp_path / "lfw")
    split = prepare_lfw(root, tmp_path / "prep", num_train=4, seed=0, size=32)
    assert sorted(p.name for p in (tmp_path / "prep" / "train").iterdir()) == split.train
    assert cv2.imread(str(tmp_path / "prep" / "train" / split.train[0] / f"{split.train[0]}_0001.jpg")).shape == (
        32, 32, 3)
    assert (tmp_path / "prep" / "pairs_heldout.txt").read_text() == format_pairs(split)


@pytest.mark.realdata
def test_real_lfw_split_numbers(real_data):
    split = lfw_split(real_data / "lfw_deepfunneled", num_train=400, seed=0)
    s = split.summary()
    assert s["train_identities"] == 400 and s["distractors"] == 4069
    assert s["train_identities"] + s["test_identities"] == 1680  # everyone with >= 2 images
    assert s["heldout_pairs"] == 3000 and split.pairs_per_set == 150
