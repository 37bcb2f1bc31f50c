"""Exactness of the streaming MegaFace evaluator against a brute-force float64 reference (ties included)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from facerco.eval import identification as ident
from facerco.eval._search import DistractorStore, _gamma, scan_topk

BACKENDS = ["torch", "faiss", "int8"]  # int8: the low-precision screen, same exact results


def _reference(probes, labels, dist, subset, ranks, fars, noise_d=None):
    """Brute force: every probe × distractor score in float64 (BLAS), counting ranks by definition."""
    p64 = probes.astype(np.float64)
    ids = np.asarray(subset)
    clean = ids if noise_d is None else ids[~noise_d[ids]]
    s = p64 @ dist[clean].astype(np.float64).T  # (N, s_clean)
    g = p64 @ p64.T
    same = labels[:, None] == labels[None, :]
    np.fill_diagonal(same, False)
    pp, gg = np.nonzero(same)
    gen_ord = g[pp, gg]
    # rank of g for probe p = 1 + #{d: s(p,d) >= s(p,g)}
    ahead = np.array([(s[p] >= v).sum() for p, v in zip(pp, gen_ord)])
    cmc = [float(np.mean(ahead < r)) for r in range(1, ranks + 1)]
    iu, ju = np.nonzero(np.triu(same, 1))
    gen = g[iu, ju]
    n_imp = len(probes) * len(ids)
    imp = np.sort(np.concatenate([s.ravel(), np.full(len(probes) * (len(ids) - len(clean)), -np.inf)]))[::-1]
    tar = {}
    for f in fars:
        m = ident.far_count(f, n_imp)
        tau = imp[m] if m < len(imp) else -np.inf
        assert (imp > tau).sum() <= m
        tar[f"{f:g}"] = float(np.mean(gen > tau))
    return cmc, tar


def _quantized_set(seed, n_ids=20, per_id=5, n_dist=100_000, dim=32):
    """Integer-valued features / 16: every dot product is exact in float32 and float64, so ties are exact."""
    rng = np.random.default_rng(seed)
    centers = rng.integers(-3, 4, size=(n_ids, dim))
    labels = np.repeat(np.arange(n_ids), per_id)
    probes = np.clip(centers[labels] + rng.integers(-2, 3, size=(len(labels), dim)), -4, 4)
    dist = rng.integers(-3, 4, size=(n_dist, dim))
    dist[:200] = dist[200:400]  # duplicated distractors
    dist[400:450] = probes[rng.integers(0, len(probes), 50)]  # distractors identical to probes: exact ties with g
    dist[450:500] = dist[450]  # a block of identical rows
    return (probes / 16).astype(np.float32), labels, (dist / 16).astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_against_bruteforce_quantized_ties(seed):
    probes, labels, dist = _quantized_set(seed)
    fars = (1e-6, 1e-5, 1e-4)
    res = {b: ident.evaluate_identification(probes, labels, dist, seed=seed, fars=fars, backend=b, device="cpu",
                                            chunk_size=8192, progress=False) for b in BACKENDS}
    subsets = ident.nested_subsets(len(dist), ident.default_sizes(len(dist)), seed)
    assert [r["size"] for r in res["torch"]["sizes"]] == [10, 100, 1000, 10_000, 100_000]
    assert res["int8"]["sizes"] == res["torch"]["sizes"]  # every number, ROC included
    for r_t, r_f in zip(res["torch"]["sizes"], res["faiss"]["sizes"]):
        cmc, tar = _reference(probes, labels, dist, subsets[r_t["size"]], 10, fars)
        assert r_t["cmc"] == cmc, r_t["size"]
        assert r_f["cmc"] == cmc, r_t["size"]
        assert r_t["tar_at_far"] == tar
        assert r_f["tar_at_far"] == tar
        assert r_t["far_thresholds"] == r_f["far_thresholds"]
    big = res["torch"]["sizes"][-1]
    assert 0.02 < big["rank1"] < 0.98  # the set is neither trivial nor hopeless
    assert big["cmc"] == sorted(big["cmc"])


def test_exact_continuous_features_and_small_topk_refinement():
    rng = np.random.default_rng(7)
    dim, n_ids, per_id = 32, 15, 4
    centers = rng.normal(size=(n_ids, dim))
    labels = np.repeat(np.arange(n_ids), per_id)
    probes = centers[labels] + 1.2 * rng.normal(size=(len(labels), dim))
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)
    dist = rng.normal(size=(100_000, dim))
    dist /= np.linalg.norm(dist, axis=1, keepdims=True)
    probes, dist = probes.astype(np.float32), dist.astype(np.float32)
    fars = (1e-5, 1e-4, 1e-3)
    # topk=2 forces the refinement loop (CMC needs 10 per probe, FAR 1e-3 needs ~100 in total)
    out = [ident.evaluate_identification(probes, labels, dist, sizes=[1000, 100_000], fars=fars, backend=b,
                                         device="cpu", topk=2, progress=False) for b in BACKENDS]
    subsets = ident.nested_subsets(len(dist), [1000, 100_000], 0)
    assert out[0]["refine_rounds"] > 0
    assert out[2]["sizes"] == out[0]["sizes"] and out[2]["refine_rounds"] > 0
    for a, b in zip(out[0]["sizes"], out[1]["sizes"]):
        cmc, tar = _reference(probes, labels, dist, subsets[a["size"]], 10, fars)
        assert a["cmc"] == cmc == b["cmc"]
        assert a["tar_at_far"] == tar == b["tar_at_far"]
        assert a["roc"] == b["roc"]


def test_noise_lists_match_reference_and_extra_dimension_trick():
    probes, labels, dist = _quantized_set(3, n_dist=20_000)
    rng = np.random.default_rng(3)
    noise_d = np.zeros(len(dist), bool)
    noise_d[rng.choice(len(dist), 300, replace=False)] = True
    noise_d[400:450] = True  # the probe copies are the "mislabeled" distractors
    noise_p = np.zeros(len(probes), bool)
    noise_p[[0, 7, 13]] = True
    fars = (1e-5, 1e-4)
    res = ident.evaluate_identification(probes, labels, dist, sizes=[10, 1000, 20_000], fars=fars, backend="torch",
                                        device="cpu", probe_noise=noise_p, distractor_noise=noise_d, progress=False)
    assert res["num_probe_noise"] == 3 and res["num_distractor_noise"] == int(noise_d.sum())
    cleaned = ident.probe_noise_replace(probes, labels, noise_p)
    # probe 0 becomes the normalized mean of identity 0's clean images
    mean = probes[1:5].astype(np.float64).mean(0)
    np.testing.assert_allclose(cleaned[0], mean / np.linalg.norm(mean), rtol=1e-6)
    subsets = ident.nested_subsets(len(dist), [10, 1000, 20_000], 0)
    for r in res["sizes"]:
        cmc, tar = _reference(cleaned, labels, dist, subsets[r["size"]], 10, fars, noise_d)
        assert r["cmc"] == cmc and r["tar_at_far"] == tar
    # the refined protocol's trick: append a dimension, 100 on noisy distractors, 0 elsewhere. In similarity form
    # (sim = 1 - |a-b|^2/2 for unit probes) a noisy distractor scores about -5000, below every real score.
    big = subsets[20_000]
    p_ext = np.hstack([cleaned, np.zeros((len(cleaned), 1), np.float32)]).astype(np.float64)
    d_ext = np.hstack([dist[big], 100 * noise_d[big, None]]).astype(np.float64)
    d_ext[noise_d[big], :-1] = 0
    sq = (p_ext**2).sum(1)[:, None] + (d_ext**2).sum(1)[None, :] - 2 * p_ext @ d_ext.T
    sims = np.where(noise_d[big][None, :], 1 - sq / 2, p_ext @ d_ext.T)
    assert sims[:, noise_d[big]].max() < -4000 < sims[:, ~noise_d[big]].min()


def test_non_nested_subset_lists_and_identical_backends():
    probes, labels, dist = _quantized_set(4, n_dist=5000)
    rng = np.random.default_rng(0)
    subsets = {100: np.sort(rng.choice(5000, 100, replace=False)), 1000: np.sort(rng.choice(5000, 1000, replace=False))}
    assert ident._chains(subsets) == [[100], [1000]] or not np.isin(subsets[100], subsets[1000]).all()
    out = ident.evaluate_identification(probes, labels, dist, subsets=subsets, backend="faiss", device="cpu",
                                        fars=(1e-3,), progress=False)
    for r in out["sizes"]:
        cmc, tar = _reference(probes, labels, dist, subsets[r["size"]], 10, (1e-3,))
        assert r["cmc"] == cmc and r["tar_at_far"] == tar


def test_scan_topk_backends_agree_and_memmap(tmp_path):
    rng = np.random.default_rng(1)
    probes = rng.normal(size=(30, 16)).astype(np.float32)
    dist = rng.normal(size=(5000, 16)).astype(np.float16)
    path = tmp_path / "d.npy"
    np.save(path, dist)
    mm = np.load(path, mmap_mode="r")
    ids = np.arange(5000, dtype=np.int64)
    segs = [ids[:300], ids[300:]]
    tops = [scan_topk(probes, DistractorStore(mm), segs, 7, backend=b, chunk_size=700) for b in BACKENDS[:2]]
    full = probes.astype(np.float64) @ dist.astype(np.float64).T
    for t in tops:
        np.testing.assert_allclose(t[0].values, -np.sort(-full[:, :300], axis=1)[:, :7], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(t[1].values, -np.sort(-full, axis=1)[:, :7], rtol=1e-5, atol=1e-5)


def test_exact_sims_is_order_free_and_symmetric():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(50, 100)).astype(np.float32)
    b = rng.normal(size=(50, 100)).astype(np.float32)
    s = ident.exact_sims(a, b)
    assert np.array_equal(s, ident.exact_sims(b, a))
    assert np.array_equal(s[::-1], ident.exact_sims(a[::-1], b[::-1]))
    assert np.array_equal(s[:1], ident.exact_sims(a[:1], b[:1]))
    np.testing.assert_allclose(s, (a.astype(np.float64) * b).sum(1), rtol=1e-12)


def test_far_count_and_errors():
    assert ident.far_count(1e-6, 3530 * 1_000_000) == 3530
    assert ident.far_count(1e-4, 3000) == 0
    assert ident.far_count(1e-3, 3000) == 3
    assert ident.default_sizes(4069) == [10, 100, 1000, 4069]
    with pytest.raises(ValueError, match="outside"):
        ident.nested_subsets(50, [100])
    with pytest.raises(ValueError, match="no identity"):
        ident.evaluate_identification(np.eye(3, dtype=np.float32), np.arange(3), np.eye(3, dtype=np.float32),
                                      progress=False)
    assert math.isclose(_gamma(512), 512 * 2**-24, rel_tol=1e-3)


def test_protocol_modules_do_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, facerco.eval.verification, facerco.eval.identification, facerco.eval.report; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
