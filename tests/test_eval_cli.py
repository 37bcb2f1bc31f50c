"""`facerco eval megaface|verify` end to end on generated features and images; list matching."""

from __future__ import annotations

import json

import numpy as np
import pytest

from facerco.cli import main
from facerco.eval.features import Embeddings, save_embeddings, write_devkit_tree
from facerco.eval.identification import evaluate_identification
from facerco.eval.lists import KeyIndex, read_image_list


def _set(tmp_path, n_dist=3000):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(6), 4)
    probes = rng.normal(size=(6, 16))[labels] + 0.8 * rng.normal(size=(24, 16))
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)
    dist = rng.normal(size=(n_dist, 16))
    dist /= np.linalg.norm(dist, axis=1, keepdims=True)
    pkeys = [f"id{lab}/img_{i}.png" for i, lab in enumerate(labels)]
    dkeys = [f"Flickr/{i // 100}/{i}.jpg" for i in range(n_dist)]
    p = Embeddings(probes.astype(np.float32), np.ones(24, np.float32), labels, pkeys)
    d = Embeddings(dist.astype(np.float32), np.ones(n_dist, np.float32), np.full(n_dist, -1), dkeys)
    save_embeddings(p, tmp_path / "probes")
    save_embeddings(d, tmp_path / "dist")
    return p, d


def test_megaface_cli_with_noise_and_subset_lists(tmp_path):
    p, d = _set(tmp_path)
    (tmp_path / "pn.txt").write_text("img_3.png\nid1/img_5\n")
    (tmp_path / "dn.txt").write_text("# noisy\n7.jpg\nFlickr/12/1234.jpg\n")
    (tmp_path / "s100.json").write_text(json.dumps({"path": d.paths[:100]}))
    (tmp_path / "s3000.txt").write_text("\n".join(d.paths))
    rc = main(["eval", "megaface", "--probes", str(tmp_path / "probes.npy"), "--distractors",
               str(tmp_path / "dist.npy"), "--backend", "faiss", "--device", "cpu", "--far", "1e-4", "1e-3",
               "--probe-noise", str(tmp_path / "pn.txt"), "--distractor-noise", str(tmp_path / "dn.txt"),
               "--subset-list", f"100={tmp_path / 's100.json'}", f"3000={tmp_path / 's3000.txt'}",
               "--out", str(tmp_path / "rep")])
    assert rc == 0
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())["identification"]["features"]
    assert rep["num_probe_noise"] == 2 and rep["num_distractor_noise"] == 2
    pn = np.zeros(24, bool)
    pn[[3, 5]] = True
    dn = np.zeros(3000, bool)
    dn[[7, 1234]] = True
    want = evaluate_identification(p.emb, p.labels, d.emb, subsets={100: np.arange(100), 3000: np.arange(3000)},
                                   fars=(1e-4, 1e-3), probe_noise=pn, distractor_noise=dn, backend="torch",
                                   device="cpu", progress=False)
    assert [s["cmc"] for s in rep["sizes"]] == [s["cmc"] for s in want["sizes"]]
    assert [s["tar_at_far"] for s in rep["sizes"]] == [s["tar_at_far"] for s in want["sizes"]]
    assert (tmp_path / "rep" / "cmc.png").is_file()


def test_megaface_cli_devkit_trees(tmp_path):
    p, d = _set(tmp_path, n_dist=500)
    write_devkit_tree(p, tmp_path / "fs", "algo1")
    write_devkit_tree(d, tmp_path / "mf", "algo1")
    rc = main(["eval", "megaface", "--probes", str(tmp_path / "fs"), "--distractors", str(tmp_path / "mf"),
               "--algo", "algo1", "--device", "cpu", "--sizes", "10", "500", "--out", str(tmp_path / "rep")])
    assert rc == 0
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())["identification"]["features"]
    assert rep["num_identities"] == 6 and [s["size"] for s in rep["sizes"]] == [10, 500]


def test_key_index_matching_rules(tmp_path):
    idx = KeyIndex(["/data/fs/Ann/Ann_1.png", "/data/fs/Bob/Ann_1.png", "/data/fs/Bob/Bob_2.png"])
    assert idx.lookup("Bob_2.jpg") == 2 and idx.lookup("Bob/Ann_1") == 1 and idx.lookup("nobody.png") is None
    with pytest.raises(ValueError, match="several images"):
        idx.lookup("Ann_1.png")
    with pytest.raises(ValueError, match="match no feature"):
        idx.indices(["Bob_2", "zzz"], "x.txt")
    (tmp_path / "bad.json").write_text('{"path": [1, 2]}')
    with pytest.raises(ValueError, match="bad.json"):
        read_image_list(tmp_path / "bad.json")


def test_verify_cli_needs_one_source(tmp_path, capsys):
    assert main(["eval", "verify", "m.safetensors", "--out", str(tmp_path)]) == 1
    assert "either --bin" in capsys.readouterr().err
