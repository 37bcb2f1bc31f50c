"""Cleaning: clean/noise lists (keep, drop, relabel), near-duplicates vs brute force, `facerco clean`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from facerco.prep.align import write_image
from facerco.prep.clean import apply_clean_list, clean_folder, near_duplicates, read_clean_list


def _folder(root: Path) -> list[str]:
    rels = [f"id{i}/{j:02d}.jpg" for i in range(3) for j in range(4)]
    for k, rel in enumerate(rels):
        write_image(root / rel, np.full((8, 8, 3), k * 10, np.uint8))
    return rels


def _tree(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg"))


def test_read_clean_list_formats_and_errors(tmp_path):
    (tmp_path / "l.txt").write_text("# comment\n./id0/00.png\nid1/01.jpg  newid\n\nid2\\03.jpg\n")
    cl = read_clean_list(tmp_path / "l.txt")
    assert len(cl) == 3 and cl.contains("id0/00.jpg") and cl.contains("id2/03.jpg") and not cl.contains("id0/01.jpg")
    assert cl.relabel("id1/01.jpg") == "newid/id1_01.jpg" and cl.relabel("id0/00.jpg") == "id0/00.jpg"
    (tmp_path / "bad.txt").write_text("a/b.jpg x y\n")
    with pytest.raises(ValueError, match=r"bad\.txt: line 1"):
        read_clean_list(tmp_path / "bad.txt")
    (tmp_path / "dup.txt").write_text("a/b.jpg 1\na/b.jpg 2\n")
    with pytest.raises(ValueError, match="line 2.*twice"):
        read_clean_list(tmp_path / "dup.txt")


def test_keep_mode_keeps_listed_and_relabels(tmp_path):
    src = tmp_path / "src"
    _folder(src)
    (tmp_path / "clean.txt").write_text("id0/00.jpg\nid0/01.jpg\nid1/02.jpg id0\nid9/00.jpg\n")
    report = apply_clean_list(src, tmp_path / "out", read_clean_list(tmp_path / "clean.txt"), "keep")
    assert _tree(tmp_path / "out") == ["id0/00.jpg", "id0/01.jpg", "id0/id1_02.jpg"]
    assert report["kept"] == 3 and report["relabelled"] == 1 and report["dropped_by_list"] == 9
    assert report["listed_but_missing"] == 1 and report["identities_after"] == 1
    assert len(_tree(src)) == 12  # source untouched
    with pytest.raises(ValueError, match="must not contain"):
        apply_clean_list(src, src / "x", read_clean_list(tmp_path / "clean.txt"))


def test_drop_mode_removes_listed(tmp_path):
    src = tmp_path / "src"
    rels = _folder(src)
    (tmp_path / "noise.txt").write_text("id2/00.jpg\nid2/01.jpg\n")
    report = apply_clean_list(src, tmp_path / "out", read_clean_list(tmp_path / "noise.txt"), "drop", link="copy")
    assert _tree(tmp_path / "out") == [r for r in rels if r not in ("id2/00.jpg", "id2/01.jpg")]
    assert report["kept"] == 10 and report["dropped_by_list"] == 2


def _brute_duplicates(emb, labels, thr):
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    dup = np.zeros(len(emb), bool)
    for i in range(len(emb)):
        for j in range(i):
            if labels[i] == labels[j] and not dup[j] and emb[i] @ emb[j] >= thr:
                dup[i] = True
                break
    return dup


def test_near_duplicates_match_brute_force():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(30, 16))
    emb = np.concatenate([base, base[:10] + rng.normal(0, 0.05, (10, 16)), base[10:20] + rng.normal(0, 1, (10, 16))])
    labels = np.concatenate([np.arange(30) % 4, np.arange(10) % 4, np.arange(10, 20) % 4])
    for thr in (0.9, 0.99, 0.5):
        np.testing.assert_array_equal(near_duplicates(emb, labels, thr), _brute_duplicates(emb, labels, thr))
    assert near_duplicates(emb, labels, 0.95)[30:40].sum() >= 8


def test_clean_cli_with_embeddings(tmp_path):
    from facerco.cli import main

    src = tmp_path / "src"
    rels = _folder(src)
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(len(rels), 8)).astype(np.float32)
    emb[1] = emb[0] * 2  # id0/01 duplicates id0/00
    emb[5] = emb[4] + 1e-4  # id1/01 duplicates id1/00
    emb[9] = emb[0]  # same vector, other identity: not a duplicate
    np.savez(tmp_path / "emb.npz", emb=emb, paths=np.array([str(src / r) for r in rels]))
    rc = main(["clean", str(src), str(tmp_path / "out"), "--dedup", "0.98", "--embeddings", str(tmp_path / "emb.npz")])
    assert rc == 0
    assert set(rels) - set(_tree(tmp_path / "out")) == {"id0/01.jpg", "id1/01.jpg"}
    assert json.loads((tmp_path / "out" / "clean_report.json").read_text())["near_duplicates"] == 2
    np.save(tmp_path / "e.npy", emb)
    (tmp_path / "p.txt").write_text("\n".join(rels))
    report = clean_folder(src, tmp_path / "out2", embeddings=(emb, rels), dedup_threshold=0.98)
    assert report["kept"] == 10
    assert main(["clean", str(src), str(tmp_path / "o3")]) == 1
