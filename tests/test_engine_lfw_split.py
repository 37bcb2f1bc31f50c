"""The seeded LFW identity split: known answers on a fake tree, and the real numbers when LFW is present.

Disjointness is checked from what a consumer reads (``split.json`` and the two pairs files), not from the
module's own bookkeeping: train, val and test share no person, and each pairs file names only its own part's people.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from facerco.data.lfw_split import (
    CROP_BOX,
    crop_resize,
    format_pairs,
    is_prepared,
    lfw_split,
    prepare_hint,
    prepare_lfw,
    read_split,
)
from facerco.data.pairs import read_lfw_pairs

SMALL = {"num_train": 4, "num_val": 4, "num_val_distractors": 3, "val_pairs_per_set": 1}


def _fake_lfw(root: Path, per_fold: int = 20) -> Path:
    """12 people with 5 images, 8 with 3, 10 singletons; pairs.txt: 10 folds of m seeded matched + m mismatched."""
    counts = {f"P{i:02d}": 5 for i in range(12)} | {f"Q{i}": 3 for i in range(8)} | {f"S{i}": 1 for i in range(10)}
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for k in range(1, n + 1):
            img = np.full((250, 250, 3), 10 * k, np.uint8)
            cv2.imwrite(str(root / name / f"{name}_{k:04d}.jpg"), img)
    multi, everyone = sorted(n for n, c in counts.items() if c > 1), sorted(counts)
    rng = np.random.default_rng(123)
    lines = [f"10\t{per_fold}"]
    for _ in range(10):
        lines += [f"{multi[int(rng.integers(len(multi)))]}\t1\t2" for _ in range(per_fold)]
        for _ in range(per_fold):
            a, b = sorted(everyone[int(k)] for k in rng.choice(len(everyone), size=2, replace=False))
            lines.append(f"{a}\t1\t{b}\t1")
    (root / "pairs.txt").write_text("\n".join(lines) + "\n")
    return root


def _pair_names(pairs_txt: Path, root: Path) -> tuple[set[str], list[tuple[str, str, bool]]]:
    """The people a pairs file names (read back through the real parser, images checked under ``root``)."""
    pairs = [(a.parent.name, b.parent.name, same) for a, b, same in read_lfw_pairs(pairs_txt, root)]
    return {n for a, b, _ in pairs for n in (a, b)}, pairs


def _assert_parts_disjoint(record: dict, val_pairs: Path, val_root: Path, test_pairs: Path, test_root: Path) -> None:
    train, val, test = set(record["train"]), set(record["val"]), set(record["test"])
    val_d, test_d = set(record["val_distractors"]), set(record["test_distractors"])
    val_part, test_part = val | val_d, test | test_d
    assert not train & val_part and not train & test_part and not val_part & test_part
    assert record["distractors"] == record["test_distractors"]  # the old key still means the test distractors
    val_names, vp = _pair_names(val_pairs, val_root)
    test_names, tp = _pair_names(test_pairs, test_root)
    assert vp and tp and val_names <= val_part and test_names <= test_part
    assert all(a in val for a, b, same in vp if same)


def test_split_is_seeded_disjoint_and_keeps_only_heldout_pairs(tmp_path):
    root = _fake_lfw(tmp_path / "lfw")
    a, b = lfw_split(root, seed=0, **SMALL), lfw_split(root, seed=0, **SMALL)
    assert a == b and len(a.train) == 4 and all(n.startswith("P") for n in a.train)
    assert lfw_split(root, seed=1, **SMALL).train != a.train
    assert len(a.val) == 4 and len(a.val_distractors) == 3 and len(a.test) == 8 + 12 - 4 - 4
    assert sorted(a.distractors + a.val_distractors) == [f"S{i}" for i in range(10)]
    assert not set(a.train) & set(a.val) and not set(a.val) & set(a.test) and not set(a.train) & set(a.test)
    test_part = set(a.test) | set(a.distractors)
    for p in a.pairs:
        assert p.name1 in test_part and p.name2 in test_part
    # each fold keeps the same number m of matched and mismatched pairs (the smallest surviving count)
    folds = sorted({p.fold for p in a.pairs})
    for f in folds:
        same = [p.same for p in a.pairs if p.fold == f]
        assert same == [True] * a.pairs_per_set + [False] * a.pairs_per_set
    text = format_pairs(a)
    assert text.splitlines()[0] == f"{len(folds)}\t{a.pairs_per_set}"
    with pytest.raises(ValueError, match="num_train"):
        lfw_split(root, num_train=13)
    with pytest.raises(ValueError, match="num_val must be"):
        lfw_split(root, **(SMALL | {"num_val": 16}))  # 16 people outside train: none would be left for test
    with pytest.raises(ValueError, match="num_val_distractors"):
        lfw_split(root, **(SMALL | {"num_val_distractors": 10}))


def _official_per_fold(pairs_txt: Path, people: set[str]) -> int:
    """Fewest official matched or mismatched pairs inside ``people`` over the folds (counted from the file)."""
    lines = pairs_txt.read_text().splitlines()
    per = int(lines[0].split()[1])
    fewest = per
    for f in range(int(lines[0].split()[0])):
        block = [ln.split("\t") for ln in lines[1 + 2 * per * f: 1 + 2 * per * (f + 1)]]
        inside = [len(x) == 3 for x in block if x[0] in people and x[-2 if len(x) == 4 else 0] in people]
        fewest = min(fewest, sum(inside), len(inside) - sum(inside))
    return fewest


def test_generated_validation_pairs(tmp_path):
    root = _fake_lfw(tmp_path / "lfw")
    more = SMALL | {"num_val": 8, "val_pairs_per_set": 3}  # >= 8 x 3 = 24 distinct matched pairs for 30
    split = lfw_split(root, seed=0, **more)
    part = set(split.val) | set(split.val_distractors)
    assert _official_per_fold(root / "pairs.txt", part) < 3 and split.val_pairs_source == "generated"
    assert len(split.val_pairs) == 10 * 2 * 3 and split.val_pairs_per_set == 3
    for f in range(10):
        assert [p.same for p in split.val_pairs if p.fold == f] == [True] * 3 + [False] * 3
    keys = [(p.name1, p.index1, p.name2, p.index2) for p in split.val_pairs]
    assert len(set(keys)) == len(keys)
    for p in split.val_pairs:
        assert 1 <= p.index1 <= split.counts[p.name1] and 1 <= p.index2 <= split.counts[p.name2]
        assert (p.name1 == p.name2 and p.index1 < p.index2 and p.name1 in split.val) if p.same else (
            p.name1 < p.name2 and p.name1 in part and p.name2 in part)
    assert format_pairs(split, "val").splitlines()[0] == "10\t3"
    assert lfw_split(root, seed=0, **more).val_pairs == split.val_pairs
    with pytest.raises(ValueError, match="distinct matched pairs"):
        lfw_split(root, seed=0, **(more | {"val_pairs_per_set": 10}))  # 8 people with <= 10 pairs each < 100


def test_official_validation_pairs_when_enough_survive(tmp_path):
    root = _fake_lfw(tmp_path / "lfw")
    split = lfw_split(root, seed=0, num_train=1, num_val=9, num_val_distractors=5, val_pairs_per_set=1)
    assert _official_per_fold(root / "pairs.txt", set(split.val) | set(split.val_distractors)) >= 1
    assert split.val_pairs_source == "official" and len(split.val_pairs) == 20
    official = (root / "pairs.txt").read_text().splitlines()[1:]
    val_lines = format_pairs(split, "val").splitlines()[1:]
    for f in range(10):  # fold f of pairs_val.txt: one matched then one mismatched line of official fold f
        block = official[40 * f: 40 * (f + 1)]
        assert val_lines[2 * f] in block[:20] and val_lines[2 * f + 1] in block[20:]


def test_crop_box_and_prepare(tmp_path):
    img = np.zeros((250, 250, 3), np.uint8)
    x0, y0, x1, y1 = CROP_BOX
    img[y0:y1, x0:x1] = 200
    out = crop_resize(img, 112)
    assert out.shape == (112, 112, 3) and out.min() == 200  # exactly the box, nothing outside it
    root = _fake_lfw(tmp_path / "lfw")
    prep = tmp_path / "prep"
    split = prepare_lfw(root, prep, seed=0, size=32, **SMALL)
    assert sorted(p.name for p in (prep / "train").iterdir()) == split.train
    assert sorted(p.name for p in (prep / "val").iterdir()) == sorted(split.val + split.val_distractors)
    assert sorted(p.name for p in (prep / "eval").iterdir()) == sorted(split.test + split.distractors)
    assert cv2.imread(str(prep / "train" / split.train[0] / f"{split.train[0]}_0001.jpg")).shape == (32, 32, 3)
    assert (prep / "pairs_heldout.txt").read_text() == format_pairs(split)
    assert (prep / "pairs_val.txt").read_text() == format_pairs(split, "val")
    record = read_split(prep)
    assert record["counts"] == split.summary() and record["val_pairs_source"] == "generated"
    _assert_parts_disjoint(record, prep / "pairs_val.txt", prep / "val", prep / "pairs_heldout.txt", prep / "eval")
    assert is_prepared(prep) and prepare_hint(prep / "pairs_val.txt") == ""


def _make_version1(prep: Path) -> None:
    """Turn a prepared folder into what the pre-validation version wrote: val people in eval/, no pairs_val.txt."""
    record = json.loads((prep / "split.json").read_text())
    for name in record["val"] + record["val_distractors"]:
        os.replace(prep / "val" / name, prep / "eval" / name)
    (prep / "val").rmdir()
    (prep / "pairs_val.txt").unlink()
    old = {k: record[k] for k in ("source", "seed", "num_train", "size", "train")}
    old |= {"test": record["test"] + record["val"], "distractors": record["distractors"] + record["val_distractors"]}
    (prep / "split.json").write_text(json.dumps(old))


def test_old_prepared_folder_says_rerun_and_rerun_upgrades_it(tmp_path):
    from facerco.train.validation import sets_validator

    root = _fake_lfw(tmp_path / "lfw")
    prep = tmp_path / "prep"
    split = prepare_lfw(root, prep, seed=0, size=32, **SMALL)
    _make_version1(prep)
    assert not is_prepared(prep)
    with pytest.raises(ValueError, match=r"prepared before the validation split.*re-run: python -m facerco"):
        read_split(prep)
    with pytest.raises(FileNotFoundError, match=r"pairs_val.txt: data.val_pairs not found \(.*re-run"):
        sets_validator([], str(prep / "pairs_val.txt"), str(prep / "val"), 8, "cpu")
    mtime = (prep / "eval" / split.val[0] / f"{split.val[0]}_0001.jpg").stat().st_mtime_ns
    assert prepare_lfw(root, prep, seed=0, size=32, **SMALL) == split
    assert (prep / "val" / split.val[0] / f"{split.val[0]}_0001.jpg").stat().st_mtime_ns == mtime  # moved, kept
    assert not set(split.val) & {p.name for p in (prep / "eval").iterdir()}
    assert is_prepared(prep)
    before = sorted(str(p.relative_to(prep)) for p in prep.rglob("*"))
    with pytest.raises(ValueError, match="another seed"):
        prepare_lfw(root, prep, seed=1, size=32, **SMALL)
    assert sorted(str(p.relative_to(prep)) for p in prep.rglob("*")) == before  # refused before touching it


@pytest.mark.realdata
def test_real_lfw_split_numbers(real_data, tmp_path):
    lfw = real_data / "lfw_deepfunneled"
    split = lfw_split(lfw, num_train=400, seed=0)
    s = split.summary()
    print("real LFW split (num_train=400, seed=0):", s, "val pairs:", split.val_pairs_source)
    assert s["train_identities"] == 400 and s["val_distractors"] + s["test_distractors"] == 4069
    assert s["train_identities"] + s["val_identities"] + s["test_identities"] == 1680  # everyone with >= 2 images
    assert s["val_identities"] == 170 and s["val_pairs"] == 1200 and split.val_pairs_source == "generated"
    assert s["heldout_pairs"] == 2660 and split.pairs_per_set == 133
    (tmp_path / "pairs_val.txt").write_text(format_pairs(split, "val"))
    (tmp_path / "pairs_heldout.txt").write_text(format_pairs(split))
    record = {"train": split.train, "val": split.val, "test": split.test, "val_distractors": split.val_distractors,
              "test_distractors": split.distractors, "distractors": split.distractors}
    _assert_parts_disjoint(record, tmp_path / "pairs_val.txt", lfw, tmp_path / "pairs_heldout.txt", lfw)
