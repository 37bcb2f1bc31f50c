"""`facerco eval ijb`: known-answer pooling, TAR@FAR and 1:N against brute force, the paper-comparable rules of
insightface's eval_ijbc.py / ijb_evals.py on hand-computed cases, the CLI end to end on a generated IJB tree,
resumable extraction, and one-line errors naming the file and line for bad meta files and corrupt crops."""

from __future__ import annotations

import json
import math
import shutil
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from facerco.cli import main
from facerco.eval.feature_cache import model_key
from facerco.eval.features import Embedder, load_embedder
from facerco.eval.ijb import (
    FaceList,
    IJBFiles,
    IJBMeta,
    PairList,
    combine_galleries,
    evaluate_ijb,
    image_weights,
    insightface_tar,
    load_meta,
    open_set_identification,
    pair_scores,
    pool_templates,
    verification_metrics,
)
from facerco.eval.ijb_features import IJB_TEMPLATE_112, AlignedFaces, ijb_features
from facerco.eval.ijb_fixture import TWIN_TEMPLATE, write_ijb_fixture
from facerco.models import create_model
from facerco.models.checkpoint import save_model_checkpoint
from facerco.prep.align import ARCFACE_TEMPLATE_112, read_image, warp_face

FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


# ---------------------------------------------------------------------------------------------------------------
# brute-force references (written independently of facerco.eval.ijb)
# ---------------------------------------------------------------------------------------------------------------


def _allowed(far: float, n: int) -> int:
    return math.floor(Fraction(repr(far)) * n)


def brute_tar(gen: np.ndarray, imp: np.ndarray, far: float) -> float:
    """Best TAR over every threshold that lets at most ⌊far·#imp⌋ impostors strictly above it."""
    m = _allowed(far, len(imp))
    best = 0.0
    for tau in [-np.inf, *np.unique(np.concatenate([gen, imp]))]:
        if (imp > tau).sum() <= m:
            best = max(best, float((gen > tau).sum() / len(gen)))
    return best


def brute_pool(feats, weights, templates, medias) -> dict[int, np.ndarray]:
    out = {}
    for t in sorted(set(templates.tolist())):
        total = 0.0
        for m in sorted(set(medias[templates == t].tolist())):
            sel = (templates == t) & (medias == m)
            total = total + np.mean(feats[sel].astype(np.float64) * weights[sel, None], axis=0)
        out[t] = total / np.linalg.norm(total)
    return out


def eval_ijbc_tar(scores: np.ndarray, labels: np.ndarray, far: float) -> float:
    """eval_ijbc.py's table entry, written as its loop is: min over (|fpr − target|, index) of the flipped ROC."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(labels, scores)
    fpr, tpr = np.flipud(fpr), np.flipud(tpr)
    _, i = min(zip(abs(fpr - far), range(len(fpr))))
    return float(tpr[i])


def brute_open_set(feats: dict[int, np.ndarray], gallery: list[tuple[int, int]], probes: list[tuple[int, int]],
                   fpir: float, rank: int, rule: str = "exact") -> tuple[float, float]:
    """(rank-k rate of mated probes, TPIR at FPIR) by sorting every probe's full score list. ``rule="exact"``: the
    best TPIR over thresholds with at most ⌊fpir·n⌋ non-mated probes above; ``"ijb_evals"``: τ = the
    sorted-descending non-mated best scores at index max(int(n·fpir) − 1, 0), as ijb_evals.py indexes them."""
    g_sub = [s for _, s in gallery]
    mated, nonmated_top, hits_k = [], [], 0
    for t, s in probes:
        sims = np.array([feats[t] @ feats[g] for g, _ in gallery])
        if s in g_sub:
            j = g_sub.index(s)
            r = 1 + int(sum(sims[k] >= sims[j] for k in range(len(sims)) if k != j))
            mated.append((r, sims[j]))
            hits_k += r <= rank
        else:
            nonmated_top.append(sims.max())
    nm = np.array(nonmated_top)
    if rule == "ijb_evals":
        tau = np.sort(nm)[::-1][max(int(len(nm) * fpir) - 1, 0)]
        return hits_k / len(mated), sum(r == 1 and v > tau for r, v in mated) / len(mated)
    m = _allowed(fpir, len(nm))
    best = 0.0
    for tau in [-np.inf, *np.unique(nm)]:
        if (nm > tau).sum() <= m:
            best = max(best, sum(r == 1 and v > tau for r, v in mated) / len(mated))
    return hits_k / len(mated), best


# ---------------------------------------------------------------------------------------------------------------
# protocol pieces
# ---------------------------------------------------------------------------------------------------------------


def test_pooling_known_answer():
    """Media mean, template sum, L2 normalization, checked against numbers worked out by hand."""
    feats = np.array([[1, 0, 0], [0.6, 0.8, 0], [0, 1, 0], [0, 0, 1]], np.float32)
    templates = np.array([7, 5, 7, 7])
    medias = np.array([1, 3, 1, 2])
    w = image_weights(np.array([4.0, 1.0, 2.0, 1.0]), np.array([0.5, 0.5, 2.0, 1.0], np.float32), True, True)
    assert w.tolist() == [2.0, 0.5, 4.0, 1.0]
    for chunk in (1, 100):
        ids, pooled = pool_templates(feats, w, templates, medias, chunk=chunk)
        assert ids.tolist() == [5, 7]
        # template 7: media 1 = mean(2·e1, 4·e2) = (1, 2, 0); media 2 = (0, 0, 1); sum (1, 2, 1) / √6
        np.testing.assert_allclose(pooled[1], np.array([1, 2, 1]) / math.sqrt(6), rtol=0, atol=1e-15)
        np.testing.assert_allclose(pooled[0], [0.6, 0.8, 0], rtol=0, atol=1e-7)
    plain = image_weights(np.array([4.0, 1.0, 2.0, 1.0]), np.array([0.5, 0.5, 2.0, 1.0]), False, False)
    _, pooled = pool_templates(feats, plain, templates, medias)
    np.testing.assert_allclose(pooled[1], np.array([0.5, 0.5, 1]) / math.sqrt(1.5), rtol=0, atol=1e-15)


def test_zero_template_is_refused():
    with pytest.raises(ValueError, match=r"template 0 \(id 3\) has norm 0.*detector scores of 0"):
        pool_templates(np.eye(2, dtype=np.float32), np.array([0.0, 1.0]), np.array([3, 4]), np.array([1, 2]))


def test_identical_templates_score_one_and_scores_do_not_depend_on_batching():
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(6, 64)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    feats = np.concatenate([feats, feats])  # template 2 repeats template 1's faces
    templates, medias = np.repeat([1, 2], 6), np.tile([1, 1, 2, 3, 3, 3], 2)
    _, pooled = pool_templates(feats, np.tile(rng.uniform(0.5, 2, 6), 2), templates, medias)
    assert abs(pair_scores(pooled, np.array([0]), np.array([1]))[0] - 1.0) < 1e-12
    t = rng.normal(size=(50, 96))
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    i1, i2 = rng.integers(0, 50, 1000), rng.integers(0, 50, 1000)
    one = pair_scores(t, i1, i2)
    assert np.array_equal(one, pair_scores(t, i1, i2, batch=37, workers=3))
    np.testing.assert_allclose(one, np.einsum("ij,ij->i", t[i1], t[i2]), rtol=0, atol=1e-14)


def test_tar_at_far_matches_brute_force_with_ties():
    rng = np.random.default_rng(2)
    labels = np.r_[np.ones(300, int), np.zeros(4000, int)]
    scores = np.round(np.r_[rng.normal(0.6, 0.15, 300), rng.normal(0.1, 0.15, 4000)], 2)  # many ties
    res = verification_metrics(scores, labels, FARS)
    gen, imp = scores[labels == 1], scores[labels == 0]
    for far in FARS:
        assert res["tar_at_far"][f"{far:g}"]["tar"] == brute_tar(gen, imp, far)
    for far, tar in zip(res["roc"]["far"][::7], res["roc"]["tar"][::7]):
        assert tar == brute_tar(gen, imp, far)
    assert res["num_genuine"] == 300 and res["num_impostor"] == 4000


def test_open_set_identification_matches_brute_force():
    rng = np.random.default_rng(3)
    feats = rng.normal(size=(60, 16))
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    gallery = [(i, 100 + i) for i in range(10)]  # rows 0..9: subjects 100..109
    probes = [(10 + k, 100 + int(rng.integers(0, 16))) for k in range(50)]  # subjects 110..115 are non-mated
    for row, subj in probes[:20]:  # make some probes close to their mate
        if subj < 110:
            feats[row] = feats[subj - 100] + 0.5 * rng.normal(size=16)
            feats[row] /= np.linalg.norm(feats[row])
    res = open_set_identification(feats, np.arange(10), np.array([s for _, s in gallery]),
                                  np.array([r for r, _ in probes]), np.array([s for _, s in probes]), chunk=7)
    feat_of = dict(enumerate(feats))
    for rank in (1, 5, 10):
        for fpir in (0.01, 0.1):
            want_rank, want_tpir = brute_open_set(feat_of, gallery, probes, fpir, rank)
            assert res["rank"][str(rank)] == pytest.approx(want_rank, abs=1e-15)
            assert res["tpir_at_fpir_exact"][f"{fpir:g}"]["tpir"] == pytest.approx(want_tpir, abs=1e-15)
            _, want_ref = brute_open_set(feat_of, gallery, probes, fpir, rank, rule="ijb_evals")
            assert res["tpir_at_fpir"][f"{fpir:g}"]["tpir"] == pytest.approx(want_ref, abs=1e-15)


# ---------------------------------------------------------------------------------------------------------------
# the paper-comparable rules (insightface eval_ijbc.py, ijb_evals.py) on hand-computed cases (issue 22, item 5)
# ---------------------------------------------------------------------------------------------------------------


def test_headline_tar_is_eval_ijbc_nearest_roc_point_hand_computed():
    """(a) genuine 0.9 0.8 0.4, impostors 0.85 0.3 0.2 0.1. sklearn's ROC (intermediate points dropped): (0, 0),
    (0, 1/3) at 0.9, (1/4, 1/3) at 0.85, (1/4, 1) at 0.4, (1, 1). FAR 0.2: the nearest FPR is 1/4, whose first point
    in reverse order is (1/4, 1): TAR 1, where the exact rule (no impostor above τ = 0.85) gives 1/3. FAR 0.1: FPR 0
    is nearest: 1/3 both. FAR 0.125 lies halfway between FPR 0 and 1/4: the reverse order meets 1/4 first: 1."""
    scores = np.array([0.9, 0.8, 0.4, 0.85, 0.3, 0.2, 0.1])
    labels = np.array([1, 1, 1, 0, 0, 0, 0])
    paper = insightface_tar(scores, labels, (0.2, 0.1, 0.125))
    assert {f: x["tar"] for f, x in paper["tar_at_far"].items()} == {"0.2": 1.0, "0.1": 1 / 3, "0.125": 1.0}
    assert paper["tar_at_far"]["0.2"] == {"tar": 1.0, "fpr": 0.25, "threshold": 0.4}
    assert paper["auc"] == pytest.approx(5 / 6, abs=1e-15)
    exact = verification_metrics(scores, labels, (0.2, 0.1, 0.125))["tar_at_far"]
    assert {f: x["tar"] for f, x in exact.items()} == {"0.2": 1 / 3, "0.1": 1 / 3, "0.125": 1 / 3}
    for far in (0.2, 0.1, 0.125):
        assert paper["tar_at_far"][f"{far:g}"]["tar"] == eval_ijbc_tar(scores, labels, far)


def _tiny_meta(t1, t2, label, templates=(1, 2, 3, 4)) -> IJBMeta:
    """One face per template, one media each; the pair file as given (repeats included)."""
    n = len(templates)
    files = IJBFiles("IJBC", Path("."), Path("."), Path("l.txt"), Path("t.txt"), Path("p.txt"), (), None)
    faces = FaceList([f"{i}.jpg" for i in range(n)], np.zeros((n, 5, 2), np.float32), np.ones(n, np.float32),
                     np.arange(1, n + 1))
    t1, t2 = np.array(t1), np.array(t2)
    keys = [frozenset(p) for p in zip(t1.tolist(), t2.tolist())]
    repeated = np.array([k in keys[:i] for i, k in enumerate(keys)])
    pairs = PairList(t1, t2, np.array(label, np.int8), repeated, None)
    ids = np.array(templates)
    return IJBMeta(files, faces, ids, np.arange(n), ids, pairs, [], None)


def test_every_pair_row_is_scored_as_listed_hand_computed():
    """(b) templates 1 = 2 = (1, 0), 3 = (0.6, 0.8), 4 = (0, 1). Rows: (1 2 1) 1.0, (1 3 1) 0.6, (3 4 0) 0.8,
    (1 4 0) 0.0, then (3 4 0) and (4 3 0) again. Over all six rows the impostors are 0.8 0.0 0.8 0.8:
    - exact, FAR 0.5: m = 2, τ = the third highest impostor = 0.8, TAR = #{1.0} / 2 = 0.5 (0.3: m = 1, τ = 0.8: 0.5);
    - eval_ijbc.py: ROC (0, 0), (0, 1/2), (3/4, 1/2), (3/4, 1), (1, 1); FAR 0.3 is nearest FPR 0: 0.5; FAR 0.5 is
      nearest 3/4: 1.0.
    Dropping the two repeats would give 1.0 (exact, 0.5) and 1.0 (eval_ijbc.py, 0.3) instead."""
    meta = _tiny_meta([1, 1, 3, 1, 3, 4], [2, 3, 4, 4, 4, 3], [1, 1, 0, 0, 0, 0])
    feats = np.array([[1, 0], [1, 0], [0.6, 0.8], [0, 1]], np.float32)
    res, scores = evaluate_ijb(meta, feats, np.ones(4), norm_score=False, detector_score=False, fars=(0.3, 0.5))
    np.testing.assert_allclose(scores, [1.0, 0.6, 0.8, 0.0, 0.8, 0.8], atol=1e-7)
    v = res["verification"]
    assert (v["num_pairs"], v["num_genuine"], v["num_impostor"], v["repeated_rows"]) == (6, 2, 4, 2)
    assert {f: x["tar"] for f, x in v["tar_at_far"].items()} == {"0.3": 0.5, "0.5": 1.0}
    assert {f: x["tar"] for f, x in v["exact"]["tar_at_far"].items()} == {"0.3": 0.5, "0.5": 0.5}
    assert v["rule"].startswith("eval_ijbc.py") and v["exact"]["rule"].startswith("exact")


def test_ijb_crops_use_eval_ijbc_float32_template():
    """(c) eval_ijbc.py builds the template in float32 from the 96x112 points and adds 8.0 to every x in float32:
    float32(62.7299) + 8 = 70.72990417…, one float32 step above float32(70.7299) = 70.72989654…; the other nine
    numbers are the same. The rest of facerco keeps ARCFACE_TEMPLATE_112."""
    fifth = np.float32(62.7299) + np.float32(8.0)
    assert IJB_TEMPLATE_112.dtype == np.float32 and IJB_TEMPLATE_112[4, 0] == fifth == np.float32(70.729904)
    assert fifth == np.nextafter(np.float32(70.7299), np.float32(100))
    assert ARCFACE_TEMPLATE_112[4, 0] == np.float32(70.7299)
    same = np.ones((5, 2), bool)
    same[4, 0] = False
    assert (IJB_TEMPLATE_112 == ARCFACE_TEMPLATE_112)[same].all()


def test_ijb_crops_are_warped_to_the_ijb_template(tree):
    base, _, model = tree
    meta = load_meta(base / "root", "IJBC")
    net = load_embedder(model, "cpu")
    faces = AlignedFaces(meta, net, 0, 4)
    for i in range(4):
        img = read_image(meta.image_paths()[i])
        want = faces.prepare(warp_face(img, meta.faces.landmarks[i], 112, IJB_TEMPLATE_112))
        assert torch.equal(faces[i][0], want)


def test_features_cut_with_another_template_are_recomputed(tree, tmp_path, capsys):
    """A cache written before the IJB template changed (its key names no alignment) is not reused."""
    base, _, model = tree
    meta = load_meta(base / "root", "IJBC")
    net, key = load_embedder(model, "cpu"), model_key(model)
    kw = dict(batch_size=16, device="cpu", num_workers=0, block=76, progress=False)
    ijb_features(meta, net, tmp_path / "f", key, **kw)
    manifest = tmp_path / "f" / "manifest.json"
    data = json.loads(manifest.read_text())
    del data["roles"]["ijbc"]["sources"]["align"]
    manifest.write_text(json.dumps(data))
    capsys.readouterr()
    ijb_features(meta, net, tmp_path / "f", key, **kw)
    assert "cached features not reused (alignment changed (None before, 112 px, eval_ijbc.py float32 template now))" \
        in capsys.readouterr().out
    ijb_features(meta, net, tmp_path / "f", key, **kw)
    assert "using cached ijbc features" in capsys.readouterr().out


def _unit(*scores: float) -> np.ndarray:
    """A unit vector of R^5 whose first four coordinates are ``scores`` (the inner products with e1..e4)."""
    v = np.array([*scores, 0.0])
    v[4] = math.sqrt(1 - float(v @ v))
    return v


def test_1n_headline_follows_ijb_evals_hand_computed():
    """(d) G1 = e1 (subject 1), e2 (subject 2); G2 = e3 (3), e4 (4). Probes (subject: scores to e1..e4):
    P1 (1: .9 .1 0 0), P2 (1: .3 .5 .1 0), P3 (2: .2 .48 0 0), P4 (3: .4 0 .7 .2), P5 (4: 0 .5 0 .35),
    P6 (5: .45 0 .3 0; in no gallery).
    G1: mated P1 (rank 1, .9), P2 (rank 2), P3 (rank 1, .48); non-mated best scores .5 .45 .4 (P5, P6, P4).
      FPIR 0.4: m = ⌊1.2⌋ = 1. ijb_evals τ = the 1st highest = .5: TPIR 1/3 (P1); exact τ = the 2nd = .45: 2/3.
      FPIR 0.7: m = 2. ijb_evals τ = .45: 2/3; exact τ = .4: 2/3.
    G2: mated P4 (rank 1, .7), P5 (rank 1, .35); non-mated best .3 .1 0 0. FPIR 0.4: m = 1, τ = .3 (exact .1): 1;
      FPIR 0.7: m = 2, τ = .1 (exact 0): 1.
    Headline (ijb_evals.py): rank-1 = (2 + 2) / 6 probes = 2/3, rank-2 = (3 + 2) / 6 = 5/6; TPIR = mean of the
    galleries: 0.4 → (1/3 + 1) / 2 = 2/3, 0.7 → (2/3 + 1) / 2 = 5/6.
    Mean of galleries: rank-1 = (2/3 + 1) / 2 = 5/6, rank-2 = 1; TPIR (exact τ) 0.4 → 5/6, 0.7 → 5/6."""
    e = np.eye(5)
    probes = [(1, _unit(.9, .1, 0, 0)), (1, _unit(.3, .5, .1, 0)), (2, _unit(.2, .48, 0, 0)),
              (3, _unit(.4, 0, .7, .2)), (4, _unit(0, .5, 0, .35)), (5, _unit(.45, 0, .3, 0))]
    feats = np.vstack([e[:4], [v for _, v in probes]])
    p_rows, p_subj = np.arange(4, 10), np.array([s for s, _ in probes])
    kw = dict(ranks=(1, 2), fpirs=(0.4, 0.7))
    per = {"G1": open_set_identification(feats, np.array([0, 1]), np.array([1, 2]), p_rows, p_subj, **kw),
           "G2": open_set_identification(feats, np.array([2, 3]), np.array([3, 4]), p_rows, p_subj, **kw)}
    g1, g2 = per["G1"], per["G2"]
    assert (g1["num_mated"], g1["num_nonmated"], g2["num_mated"], g2["num_nonmated"]) == (3, 3, 2, 4)
    assert g1["rank_hits"] == {"1": 2, "2": 3} and g2["rank_hits"] == {"1": 2, "2": 2}
    assert g1["tpir_at_fpir"]["0.4"] == {"tpir": 1 / 3, "threshold": 0.5, "threshold_rank": 1}
    assert g1["tpir_at_fpir"]["0.7"] == {"tpir": 2 / 3, "threshold": 0.45, "threshold_rank": 2}
    assert g1["tpir_at_fpir_exact"]["0.4"] == {"tpir": 2 / 3, "threshold": 0.45, "allowed_nonmated": 1}
    assert g1["tpir_at_fpir_exact"]["0.7"] == {"tpir": 2 / 3, "threshold": 0.4, "allowed_nonmated": 2}
    assert [g2["tpir_at_fpir"][f]["threshold"] for f in ("0.4", "0.7")] == pytest.approx([0.3, 0.1], abs=1e-15)
    assert [g2["tpir_at_fpir_exact"][f]["threshold"] for f in ("0.4", "0.7")] == pytest.approx([0.1, 0.0], abs=1e-15)
    both = combine_galleries(per, num_probes=6)
    head, mean = both["headline"], both["mean_of_galleries"]
    assert head["rank"] == {"1": 4 / 6, "2": 5 / 6}
    assert {f: x["tpir"] for f, x in head["tpir_at_fpir"].items()} == pytest.approx({"0.4": 2 / 3, "0.7": 5 / 6})
    assert mean["rank"] == pytest.approx({"1": 5 / 6, "2": 1.0})
    assert {f: x["tpir"] for f, x in mean["tpir_at_fpir"].items()} == pytest.approx({"0.4": 5 / 6, "0.7": 5 / 6})
    assert head["rule"].startswith("ijb_evals.py") and mean["rule"].startswith("mean of galleries")


# ---------------------------------------------------------------------------------------------------------------
# the generated tree, the extractor and the CLI
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    base = tmp_path_factory.mktemp("ijb")
    info = write_ijb_fixture(base / "root", "IJBC", subjects=8, seed=0)
    torch.manual_seed(0)
    model = save_model_checkpoint(base / "tiny.safetensors", create_model("iresnet_tiny", input_size=48).eval())
    return base, info, Path(model)


def _cli(base: Path, model: Path, out: Path, *extra: str) -> dict:
    rc = main(["eval", "ijb", "--model", str(model), "--names", "tiny", "--root", str(base / "root"), "--target",
               "IJBC", "--device", "cpu", "--num-workers", "0", "--batch-size", "16", "--block", "24", "--workers", "2",
               "--out", str(out), *extra])
    assert rc == 0
    return json.loads((out / "report.json").read_text())["ijb"]["tiny"]


def test_cli_end_to_end_matches_brute_force(tree, capsys):
    base, info, model = tree
    out = base / "out"
    rep = _cli(base, model, out)
    printed = capsys.readouterr().out
    assert "peak memory" in printed and "1:1 TAR% at FAR" in printed and "rank-1" in printed
    assert (out / "ijb_roc.png").is_file() and "TAR@FAR=0.0001 %" in (out / "report.md").read_text()
    assert rep["options"] == {"norm_score": True, "detector_score": True, "flip": True}

    # the cached features are the model's flip-fused features of the warped loose crops
    meta = load_meta(base / "root", "IJBC")
    feats = np.load(out / "features" / "tiny" / "ijbc.npy")
    norms = np.load(out / "features" / "tiny" / "ijbc.norms.npy")
    net = load_embedder(model, "cpu")
    for i in (0, 30, len(feats) - 1):
        crop = warp_face(read_image(meta.image_paths()[i]), meta.faces.landmarks[i], 112, IJB_TEMPLATE_112)
        small = cv2.resize(crop, (48, 48), interpolation=cv2.INTER_AREA)
        x = torch.from_numpy(small).permute(2, 0, 1).float()[None].sub(127.5).div(127.5)
        raw = net(torch.cat([x, x.flip(3)])).astype(np.float64).sum(axis=0)
        np.testing.assert_allclose(feats[i], raw / np.linalg.norm(raw), atol=1e-5)
        assert norms[i, 1] == pytest.approx(np.linalg.norm(raw), rel=1e-5)

    # every number again, from those features, by brute force
    w = norms[:, 1] * meta.faces.scores.astype(np.float64)
    pooled = brute_pool(feats, w, meta.templates, meta.medias)
    lines = (base / "root" / "IJBC" / "meta" / "ijbc_template_pair_label.txt").read_text().split("\n")
    pairs = [tuple(map(int, x.split())) for x in lines if x]
    scores = np.array([pooled[a] @ pooled[b] for a, b, _ in pairs])
    labels = np.array([lab for *_, lab in pairs])
    for far in FARS:  # the headline is eval_ijbc.py's number (item 5a); the exact rule sits beside it
        want = brute_tar(scores[labels == 1], scores[labels == 0], far)
        assert rep["verification"]["exact"]["tar_at_far"][f"{far:g}"]["tar"] == pytest.approx(want, abs=1e-15)
        paper = eval_ijbc_tar(scores, labels, far)
        assert rep["verification"]["tar_at_far"][f"{far:g}"]["tar"] == pytest.approx(paper, abs=1e-15)
    saved = np.load(rep["scores_file"])
    np.testing.assert_allclose(saved, scores, rtol=0, atol=1e-12)
    twin = [i for i, (a, b, _) in enumerate(pairs) if b == TWIN_TEMPLATE and info["subject_of"][a] == 0]
    assert len(twin) == 1 and abs(saved[twin[0]] - 1.0) < 1e-6
    probes = [(t, info["subject_of"][t]) for t in info["probes"]]
    ident = rep["identification"]
    for rank in (1, 5):
        for fpir in (0.01, 0.1):
            got, got_ref, hits = [], [], 0
            for g in ("G1", "G2"):
                gallery = [(t, info["subject_of"][t]) for t in info["galleries"][g]]
                want_rank, want_tpir = brute_open_set(pooled, gallery, probes, fpir, rank)
                _, want_ref = brute_open_set(pooled, gallery, probes, fpir, rank, rule="ijb_evals")
                x = ident["galleries"][g]
                assert x["rank"][str(rank)] == pytest.approx(want_rank, abs=1e-15)
                assert x["tpir_at_fpir_exact"][f"{fpir:g}"]["tpir"] == pytest.approx(want_tpir, abs=1e-15)
                assert x["tpir_at_fpir"][f"{fpir:g}"]["tpir"] == pytest.approx(want_ref, abs=1e-15)
                got.append(want_tpir)
                got_ref.append(want_ref)
                hits += round(want_rank * x["num_mated"])
            mean, head = ident["mean_of_galleries"], ident["headline"]  # item 5d: ijb_evals.py is the headline
            assert mean["tpir_at_fpir"][f"{fpir:g}"]["tpir"] == pytest.approx(np.mean(got), abs=1e-15)
            assert head["tpir_at_fpir"][f"{fpir:g}"]["tpir"] == pytest.approx(np.mean(got_ref), abs=1e-15)
            assert head["rank"][str(rank)] == pytest.approx(hits / len(probes), abs=1e-15)

    # a second run reuses the cached features; the options change the pooling and are reported
    again = _cli(base, model, out, "--no-norm-score", "--no-detector-score")
    assert "using cached ijbc features" in capsys.readouterr().out
    assert again["options"]["norm_score"] is False and again["options"]["detector_score"] is False
    pooled = brute_pool(feats, np.ones(len(feats)), meta.templates, meta.medias)
    scores = np.array([pooled[a] @ pooled[b] for a, b, _ in pairs])
    for far in FARS:
        want = brute_tar(scores[labels == 1], scores[labels == 0], far)
        assert again["verification"]["exact"]["tar_at_far"][f"{far:g}"]["tar"] == pytest.approx(want, abs=1e-15)
    md = (out / "report.md").read_text()
    assert "| **eval_ijbc.py (papers)** |" in md and "| **ijb_evals.py (papers)** |" in md
    assert "| exact |" in md and "mean of galleries, exact τ" in md and "ijb_1n.py (closed set)" in md


def test_extraction_resumes_after_a_stop(tree, tmp_path, capsys):
    base, _, model = tree
    meta = load_meta(base / "root", "IJBC")
    net = load_embedder(model, "cpu")
    calls = {"n": 0, "stop_after": 3}

    def fn(x):
        calls["n"] += 1
        if calls["n"] > calls["stop_after"]:
            raise KeyboardInterrupt
        return net(x)

    flaky = Embedder(fn, net.input_size, net.mean, net.std, net.device, net.name)
    key = model_key(model)
    kw = dict(batch_size=8, device="cpu", num_workers=0, block=16, progress=False)
    with pytest.raises(KeyboardInterrupt):
        ijb_features(meta, flaky, tmp_path / "f", key, **kw)
    assert json.loads((tmp_path / "f" / "ijbc.progress.json").read_text())["done"] == 16
    calls.update(n=0, stop_after=10**9)
    feats, norms = ijb_features(meta, flaky, tmp_path / "f", key, **kw)
    assert "resuming feature extraction at face 16 of 76" in capsys.readouterr().out
    assert calls["n"] == 8  # faces 16..75 in blocks of 16 (the last one 12), two batches of 8 each
    fresh, fresh_norms = ijb_features(meta, net, tmp_path / "g", key, **kw)
    np.testing.assert_array_equal(np.asarray(feats), np.asarray(fresh))
    np.testing.assert_array_equal(np.asarray(norms), np.asarray(fresh_norms))
    assert not (tmp_path / "f" / "ijbc.progress.json").exists()


# ---------------------------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------------------------


def _edit(root: Path, name: str, fn) -> Path:
    path = root / "IJBC" / "meta" / name
    lines = path.read_text().splitlines()
    path.write_text("\n".join(fn(lines)) + "\n")
    return path


def _set(lines, i, value):
    lines[i] = value
    return lines


@pytest.mark.parametrize("case, pattern", [
    ("landmark_count", r"5pts_score.txt: line 3: expected 'image x1 y1 ... x5 y5 score' \(12 fields\), got 11"),
    ("missing_image", r"ijbc_name_5pts_score.txt: line 5: image .*loose_crop/5.jpg not found"),
    ("template_no_media", r"ijbc_template_pair_label.txt: line 7: template 4242 has no media"),
    ("gallery_no_media", r"ijbc_1N_gallery_G2.csv: line 2: template 777 has no media"),
    ("pair_bad_field", r"ijbc_template_pair_label.txt: line 4: expected 't1 t2 label' \(3 integers\), got '1000 x 1'"),
    ("pair_label", r"ijbc_template_pair_label.txt: line 2: label must be 0 or 1, got 2"),
    ("pair_conflict", r"pair_label.txt: line 137 repeats the pair of line 1 .* with label 0 instead of 1"),
    ("lists_disagree", r"ijbc_face_tid_mid.txt: face 2 is 'x.jpg', but .*ijbc_name_5pts_score.txt line 2 is '2.jpg'"),
    ("gallery_subject_twice", r"ijbc_1N_gallery_G1.csv: line \d+: subject 2 already has template 1002"),
    ("probe_two_subjects", r"ijbc_1N_probe_mixed.csv: line 3: template 2000 has subject 5, but line 2 gives subject 0"),
    ("one_n_partial", r"ijbc_1N_gallery_G2.csv: not found, but other 1:N files are there"),
])
def test_bad_meta_is_one_error_naming_file_and_line(tree, tmp_path, case, pattern):
    root = tmp_path / "root"
    shutil.copytree(tree[0] / "root", root)
    meta = root / "IJBC" / "meta"
    if case == "landmark_count":
        _edit(root, "ijbc_name_5pts_score.txt", lambda ls: _set(ls, 2, ls[2].rsplit(" ", 1)[0]))
    elif case == "missing_image":
        (root / "IJBC" / "loose_crop" / "5.jpg").unlink()
    elif case == "template_no_media":
        _edit(root, "ijbc_template_pair_label.txt", lambda ls: _set(ls, 6, "1000 4242 0"))
    elif case == "gallery_no_media":
        _edit(root, "ijbc_1N_gallery_G2.csv", lambda ls: _set(ls, 1, "777,1,x.jpg"))
    elif case == "pair_bad_field":
        _edit(root, "ijbc_template_pair_label.txt", lambda ls: _set(ls, 3, "1000 x 1"))
    elif case == "pair_label":
        _edit(root, "ijbc_template_pair_label.txt", lambda ls: _set(ls, 1, ls[1][:-1] + "2"))
    elif case == "pair_conflict":
        _edit(root, "ijbc_template_pair_label.txt", lambda ls: [*ls, " ".join(ls[0].split()[1::-1]) + " 0"])
    elif case == "lists_disagree":
        _edit(root, "ijbc_face_tid_mid.txt", lambda ls: _set(ls, 1, "x.jpg" + ls[1][5:]))
    elif case == "gallery_subject_twice":
        _edit(root, "ijbc_1N_gallery_G1.csv", lambda ls: [*ls, "1001,2,x.jpg"])
    elif case == "probe_two_subjects":
        _edit(root, "ijbc_1N_probe_mixed.csv", lambda ls: _set(ls, 2, "2000,5,x.jpg"))
    elif case == "one_n_partial":
        (meta / "ijbc_1N_gallery_G2.csv").unlink()
    with pytest.raises((ValueError, FileNotFoundError), match=pattern):
        load_meta(root, "IJBC")


def test_repeated_pairs_are_scored_as_listed_and_counted(tree, tmp_path, capsys):
    """Repeated rows count in every rule, as eval_ijbc.py counts them (issue 22, item 5b: they used to be dropped)."""
    root = tmp_path / "root"
    shutil.copytree(tree[0] / "root", root)
    _edit(root, "ijbc_template_pair_label.txt", lambda ls: [*ls, ls[5], " ".join(ls[9].split()[1::-1] + ["0"])])
    meta = load_meta(root, "IJBC")
    assert meta.pairs.repeats == 2 and "line 137 repeats the pair of line 6" in meta.pairs.first_repeat
    out = tmp_path / "out"
    rc = main(["eval", "ijb", "--model", str(tree[2]), "--names", "tiny", "--root", str(root), "--device", "cpu",
               "--num-workers", "0", "--out", str(out)])
    assert rc == 0 and "2 repeated rows, scored as listed" in capsys.readouterr().out
    rep = json.loads((out / "report.json").read_text())["ijb"]["tiny"]
    v = rep["verification"]
    assert v["repeated_rows"] == 2 and v["num_pairs"] == 138
    scores = np.load(rep["scores_file"])
    labels = meta.pairs.label.astype(int)
    assert len(scores) == 138 and scores[136] == scores[5] and scores[137] == scores[9]
    for far in FARS:
        assert v["tar_at_far"][f"{far:g}"]["tar"] == eval_ijbc_tar(scores, labels, far)
        want = brute_tar(scores[labels == 1], scores[labels == 0], far)
        assert v["exact"]["tar_at_far"][f"{far:g}"]["tar"] == pytest.approx(want, abs=1e-15)


def test_cli_bad_input_is_one_line(tree, tmp_path, capsys):
    root = tmp_path / "root"
    shutil.copytree(tree[0] / "root", root)
    _edit(root, "ijbc_name_5pts_score.txt", lambda ls: _set(ls, 0, ls[0] + " 7"))
    rc = main(["eval", "ijb", "--model", str(tree[2]), "--root", str(root), "--device", "cpu", "--out",
               str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and len(err.splitlines()) == 1 and "ijbc_name_5pts_score.txt: line 1: expected" in err


def test_corrupt_crop_error_on_its_own_line_and_no_empty_feature_folder(tree, tmp_path, capsys):
    """(e) The progress bar's line is ended before the error is printed; a run that wrote nothing leaves no
    features/<model>/ (nor features/) folder behind."""
    root = tmp_path / "root"
    shutil.copytree(tree[0] / "root", root)
    (root / "IJBC" / "loose_crop" / "5.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "out"
    rc = main(["eval", "ijb", "--model", str(tree[2]), "--names", "tiny", "--root", str(root), "--device", "cpu",
               "--num-workers", "0", "--block", "24", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1
    lines = [x for x in err.split("\n") if "error:" in x]
    assert len(lines) == 1 and lines[0].startswith("facerco eval: error: ")
    assert "ijbc_name_5pts_score.txt: line 5:" in lines[0] and "5.jpg: not a readable image" in lines[0]
    assert "embed" in err.split("facerco eval: error:")[0]  # the bar was shown, and ended, before the error
    assert not (out / "features").exists()
