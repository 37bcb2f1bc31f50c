"""The int8 screen for exact 1:N (issue 20): its error bound holds on rows built to break it, and near-ties inside
the bound are still decided exactly (results equal to the float64 brute force and to the float32 path)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_eval_identification import _reference  # tests/ is on sys.path under pytest

from facerco.eval import _search
from facerco.eval import identification as ident
from facerco.eval._screen import Int8Product, Int8Stats, int8_error_bound, quantize_rows


def _screen(probes: np.ndarray, dist: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(screen scores, float64 exact scores, per-probe bound) of every probe x distractor pair."""
    codes = quantize_rows(dist)
    stats = Int8Stats()
    stats.add(codes, dist)
    screen = Int8Product(probes, threads=1).scores(codes).astype(np.float64)
    exact = probes.astype(np.float64) @ dist.astype(np.float64).T
    return screen, exact, int8_error_bound(probes, stats)


def _adversarial_rows(dim: int, rng: np.random.Generator) -> np.ndarray:
    """Rows that make per-row int8 codes as wrong as they can be."""
    spike = np.full((8, dim), 1e-3, np.float32)
    spike[:, 0] = 1.0  # the scale is set by one value; every other one rounds to zero
    step = 1.0 / 127
    half = ((rng.integers(0, 60, (8, dim)) + 0.5) * step * rng.choice([-1, 1], (8, dim))).astype(np.float32)
    half[:, 0] = 1.0  # pins the scale at 1/127, so every other value sits exactly between two codes
    tiny = (rng.normal(size=(4, dim)) * 1e-30).astype(np.float32)  # subnormal-range scales
    return np.concatenate([spike, half, tiny, np.zeros((2, dim), np.float32)])


def test_bound_holds_on_adversarial_rows_and_is_not_vacuous() -> None:
    rng = np.random.default_rng(0)
    dim = 64
    dist = _adversarial_rows(dim, rng)
    residual = dist.astype(np.float64) - quantize_rows(dist).scale[:, None].astype(np.float64) * quantize_rows(
        dist).codes
    aligned = np.sign(residual[8:16]).astype(np.float32) / np.sqrt(dim)  # probes that add every rounding error up
    probes = np.concatenate([aligned, rng.normal(size=(6, dim)).astype(np.float32), dist[:4]]).astype(np.float32)
    screen, exact, eps = _screen(probes, dist)
    err = np.abs(screen - exact)
    assert (err <= eps[:, None]).all()
    assert (err[:8] / eps[:8, None]).max() > 0.2  # the aligned probes come close to it


def test_bound_holds_on_normalized_random_features() -> None:
    rng = np.random.default_rng(1)
    probes = rng.normal(size=(40, 128)).astype(np.float32)
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)
    dist = rng.standard_t(3, size=(3000, 128)).astype(np.float32)  # heavy tails: uneven per-row scales
    dist /= np.linalg.norm(dist, axis=1, keepdims=True)
    screen, exact, eps = _screen(probes, dist)
    assert (np.abs(screen - exact) <= eps[:, None]).all()
    assert eps.max() < 0.05  # tight enough to screen a million distractors (a unit-vector score spans [-1, 1])


def _near_tie_set(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distractors that tie or nearly tie (a few float32 ulps) with genuine scores; the int8 codes cannot tell them
    apart, so only the exact stage decides."""
    rng = np.random.default_rng(seed)
    dim, n_ids, per_id = 32, 12, 4
    centers = rng.normal(size=(n_ids, dim))
    labels = np.repeat(np.arange(n_ids), per_id)
    probes = (centers[labels] + 0.8 * rng.normal(size=(len(labels), dim))).astype(np.float32)
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)
    dist = rng.normal(size=(20_000, dim)).astype(np.float32)
    dist /= np.linalg.norm(dist, axis=1, keepdims=True)
    for t, g in enumerate(rng.choice(len(probes), 40, replace=False)):
        base = probes[g].copy()
        nudged = base.copy()
        j = int(np.argmax(np.abs(base)))
        nudged[j] = np.nextafter(base[j], np.float32(np.inf if t % 3 else -np.inf), dtype=np.float32)
        dist[3 * t] = base  # an exact tie with g (a tie counts against the probe)
        dist[3 * t + 1] = nudged  # one ulp away: above or below g
        dist[3 * t + 2] = np.nextafter(nudged, np.float32(0), dtype=np.float32)
    return probes, labels, dist


@pytest.mark.parametrize("seed", [0, 1])
def test_near_ties_inside_the_bound_are_decided_exactly(seed: int) -> None:
    probes, labels, dist = _near_tie_set(seed)
    fars = (1e-5, 1e-4, 1e-3)
    kw = {"sizes": [1000, 20_000], "fars": fars, "device": "cpu", "progress": False, "chunk_size": 4096}
    screened = ident.evaluate_identification(probes, labels, dist, backend="int8", **kw)
    float32 = ident.evaluate_identification(probes, labels, dist, backend="torch", **kw)
    assert screened["sizes"] == float32["sizes"]
    subsets = ident.nested_subsets(len(dist), [1000, 20_000], 0)
    for r in screened["sizes"]:
        cmc, tar = _reference(probes, labels, dist, subsets[r["size"]], 10, fars)
        assert r["cmc"] == cmc and r["tar_at_far"] == tar
    assert screened["backend"] == "int8"


def test_small_first_k_forces_refinement_and_still_matches() -> None:
    probes, labels, dist = _near_tie_set(2)
    kw = {"sizes": [20_000], "fars": (1e-4,), "device": "cpu", "progress": False, "topk": 2}
    screened = ident.evaluate_identification(probes, labels, dist, backend="int8", **kw)
    assert screened["refine_rounds"] > 0
    assert screened["sizes"] == ident.evaluate_identification(probes, labels, dist, backend="torch", **kw)["sizes"]


def test_auto_never_picks_the_screen_and_the_screen_is_cpu_only() -> None:
    assert _search.resolve_backend("auto", "cpu") == ("torch", "cpu")
    assert _search.resolve_backend("int8", "cpu") == ("int8", "cpu")
    with pytest.raises(ValueError, match="runs on the CPU"):
        _search.resolve_backend("int8", "cuda")


def test_integer_product_is_exact_at_the_measured_probe_levels() -> None:
    """AVX2's u8s8 kernel saturates int16 pair sums with 8-bit codes on both sides; the probe levels chosen for this
    machine must give the exact integer product even for extreme codes."""
    from facerco.eval._screen import _session, _shifted, probe_levels

    levels = probe_levels()
    assert levels in (63, 127)
    rng = np.random.default_rng(0)
    probe_codes = rng.choice([-levels, levels], size=(9, 256)).astype(np.int8)
    chunk = rng.choice([-127, 127], size=(33, 256)).astype(np.int8)
    (dots,) = _session(256, probe_codes, 1).run(None, {"chunk": _shifted(chunk)})
    np.testing.assert_array_equal(dots, chunk.astype(np.int64) @ probe_codes.astype(np.int64).T)


def _masked(report: dict) -> dict:
    """A report without what differs between two runs by design: creation time, backend name, list size, timings."""
    out = json.loads(json.dumps(report))
    out["meta"].pop("created")
    for result in out["identification"].values():
        for key in ("backend", "topk", "refine_rounds", "timings"):
            result.pop(key)
    return out


def test_megaface_command_reports_equal_the_float32_path(tmp_path: Path) -> None:
    from facerco.eval import run_megaface
    from facerco.eval.features import Embeddings, save_embeddings

    probes, labels, dist = _near_tie_set(3)
    save_embeddings(Embeddings(probes, np.ones(len(probes), np.float32), labels,
                               [f"p{i}.jpg" for i in range(len(probes))]), tmp_path / "probes.npy")
    np.save(tmp_path / "distractors.npy", dist)
    reports = {}
    for backend in ("torch", "int8"):
        out = tmp_path / backend
        run_megaface(tmp_path / "probes.npy", tmp_path / "distractors.npy", out=out, backend=backend,
                     sizes=[100, 20_000], fars=(1e-4, 1e-3))
        reports[backend] = json.loads((out / "report.json").read_text())
        md = (out / "report.md").read_text().replace(f"backend {backend} on", "backend on")
        reports[f"{backend}.md"] = [line for line in md.splitlines() if not line.startswith("- created:")]
    assert reports["int8"]["identification"]["features"]["backend"] == "int8"
    assert _masked(reports["int8"]) == _masked(reports["torch"])
    assert reports["int8.md"] == reports["torch.md"]
