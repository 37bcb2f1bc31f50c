"""The 10-fold verification protocol against a hand-computed answer."""

from __future__ import annotations

import numpy as np
import pytest

from facerco.eval.verification import THRESHOLDS, evaluate_verification, kfold_splits, tar_at_far


def _pairs_with_distances(dists):
    """Unit 2-D embeddings whose squared L2 distances are ``dists`` (d = 2 - 2 cos)."""
    d = np.asarray(dists, np.float64)
    x = 1 - d / 2
    e1 = np.tile([1.0, 0.0], (len(d), 1))
    e2 = np.stack([x, np.sqrt(1 - x**2)], axis=1)
    return e1, e2


def test_known_answer_ten_folds():
    # fold i = pairs (2i, 2i+1): a genuine pair at 0.505 and an impostor at 2.495, except
    # pair 0 (genuine, far: 3.0) and pair 3 (impostor, close: 0.2).
    dists = [0.505, 2.495] * 10
    dists[0], dists[3] = 3.0, 0.2
    issame = np.array([True, False] * 10)
    e1, e2 = _pairs_with_distances(dists)
    r = evaluate_verification(e1, e2, issame, nfolds=10, norms=np.array([2.0, 4.0]), fars=(0.1, 0.05))
    # by hand: every fold's training folds peak first at threshold 0.51; fold 0 loses pair 0, fold 1 loses pair 3
    assert r["best_thresholds"] == pytest.approx([0.51] * 10)
    assert r["fold_accuracies"] == [0.5, 0.5] + [1.0] * 8
    assert r["accuracy"] == pytest.approx(0.9)
    assert r["accuracy_std"] == pytest.approx(0.2)
    assert r["best_threshold"] == pytest.approx(0.51)
    assert r["xnorm"] == 3.0
    # FAR 0.1 of 10 impostors allows 1 above the threshold: tau = 2.495, genuine below it: 9 of 10
    assert r["tar_at_far"]["0.1"]["tar"] == pytest.approx(0.9)
    assert r["tar_at_far"]["0.05"]["tar"] == 0.0  # tau = the closest impostor (0.2); no genuine is closer
    assert len(r["roc"]["tpr"]) == 400 and r["roc"]["threshold"][-1] == pytest.approx(3.99)


def test_kfold_splits_match_sklearn_layout():
    folds = kfold_splits(23, 10)
    assert [len(f) for f in folds] == [3, 3, 3, 2, 2, 2, 2, 2, 2, 2]
    assert np.array_equal(np.concatenate(folds), np.arange(23))
    assert all(len(f) == 600 for f in kfold_splits(6000, 10))
    with pytest.raises(ValueError, match="nfolds"):
        kfold_splits(5, 10)


def test_thresholds_grid_and_tar_convention():
    assert len(THRESHOLDS) == 400 and THRESHOLDS[0] == 0.0
    gen = np.array([0.1, 0.3, 0.5, 0.7])
    imp = np.array([0.3, 0.9, 1.0, 1.2])
    out = tar_at_far(gen, imp, (0.25, 0.0))
    assert out["0.25"]["threshold"] == 0.9 and out["0.25"]["tar"] == 1.0  # one impostor (0.3) accepted
    assert out["0"]["threshold"] == 0.3 and out["0"]["tar"] == 0.25  # strict: the tie at 0.3 is rejected


def test_shape_errors():
    with pytest.raises(ValueError, match="issame"):
        evaluate_verification(np.ones((4, 2)), np.ones((4, 2)), np.ones(3, bool), nfolds=2)


def test_verify_bin_and_pairs_from_checkpoint(tmp_path):
    import cv2

    from facerco.data.bins import write_bin
    from facerco.eval.verification import verify_bin, verify_pairs
    from facerco.models import create_model
    from facerco.models.checkpoint import save_model_checkpoint

    model = create_model("mbf_0.8m").eval()
    ckpt = tmp_path / "m.safetensors"
    save_model_checkpoint(ckpt, model)
    rng = np.random.default_rng(0)
    names = ["Ann_A", "Bob_B"]
    for name in names:
        (tmp_path / "lfw" / name).mkdir(parents=True)
        for i in (1, 2):
            img = rng.integers(0, 256, size=(120, 120, 3), dtype=np.uint8)
            cv2.imwrite(str(tmp_path / "lfw" / name / f"{name}_{i:04d}.jpg"), img)
    # 2 folds of 1 matched + 1 mismatched pair
    (tmp_path / "pairs.txt").write_text("2\t1\nAnn_A\t1\t2\nAnn_A\t1\tBob_B\t1\nBob_B\t1\t2\nBob_B\t2\tAnn_A\t2\n")
    r = verify_pairs(ckpt, tmp_path / "pairs.txt", tmp_path / "lfw", nfolds=2, device="cpu")
    assert r["num_pairs"] == 4 and 0 <= r["accuracy"] <= 1 and r["xnorm"] > 0
    files = sorted((tmp_path / "lfw").rglob("*.jpg"))
    write_bin(tmp_path / "t.bin", [f.read_bytes() for f in files], [True, True])
    import facerco.eval.verification as V

    calls = []
    real_decode = V._decode_all
    V._decode_all = lambda *a: calls.append(1) or real_decode(*a)
    try:
        again = verify_pairs(model, tmp_path / "pairs.txt", tmp_path / "lfw", nfolds=2, device="cpu")
    finally:
        V._decode_all = real_decode
    assert calls == [] and again["accuracy"] == r["accuracy"]  # decoded images came from the cache
    rb = verify_bin(model, tmp_path / "t.bin", batch_size=3, device="cpu", nfolds=2)
    rc = verify_bin(ckpt, tmp_path / "t.bin", batch_size=3, device="cpu", nfolds=2)
    assert rb["name"] == "t" and rb["accuracy"] == rc["accuracy"]
    assert rb["xnorm"] == pytest.approx(rc["xnorm"], rel=1e-5)
