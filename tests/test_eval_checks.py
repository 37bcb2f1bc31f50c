"""Bad features at every evaluator entry point: NaN/Inf rows fail naming the file and row (or image), zero rows are
refused, unnormalized rows are L2-normalized by the evaluator (and the report says so); torch and faiss agree."""

from __future__ import annotations

import json
import re
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from facerco.cli import main
from facerco.eval import features as F
from facerco.eval.identification import evaluate_identification
from facerco.eval.verification import evaluate_verification

BACKENDS = ["torch", "faiss"]


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _sets(n_dist: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """24 probes of 6 identities and ``n_dist`` distractors, unit rows, dimension 16."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(6), 4)
    probes = rng.normal(size=(6, 16))[labels] + 0.8 * rng.normal(size=(24, 16))
    return _unit(probes), labels, _unit(rng.normal(size=(n_dist, 16)))


def _save(tmp_path: Path, probes: np.ndarray, labels: np.ndarray, dist: np.ndarray) -> tuple[Path, Path]:
    pkeys = [f"id{lab}/img_{i}.png" for i, lab in enumerate(labels)]
    dkeys = [f"Flickr/{i // 100}/{i}.jpg" for i in range(len(dist))]
    F.save_embeddings(F.Embeddings(probes, np.ones(len(probes), np.float32), labels, pkeys), tmp_path / "probes")
    F.save_embeddings(F.Embeddings(dist, np.ones(len(dist), np.float32), np.full(len(dist), -1), dkeys),
                      tmp_path / "dist")
    return tmp_path / "probes.npy", tmp_path / "dist.npy"


def _numbers(result: dict) -> list:
    """Counts-based numbers (thresholds move by float32 ulps when rows are renormalized, so they are left out)."""
    return [(s["size"], s["cmc"], s["tar_at_far"]) for s in result["sizes"]]


def _megaface(probes: Path | str, dist: Path | str, out: Path, *extra: str) -> int:
    return main(["eval", "megaface", "--probes", str(probes), "--distractors", str(dist), "--device", "cpu",
                 "--backend", "torch", "--sizes", "10", "2000", "--far", "1e-3", "--out", str(out), *extra])


# ---------------------------------------------------------------------------------------------------------------
# the check itself
# ---------------------------------------------------------------------------------------------------------------


def test_normalize_rows_same_bits_in_any_chunk_and_unit_rows_kept():
    from facerco.eval.checks import check_rows, normalize_rows

    rng = np.random.default_rng(0)
    x = (rng.normal(size=(300, 64)) * rng.uniform(0.5, 2, (300, 1))).astype(np.float32)
    whole = normalize_rows(x, check_rows(x, "x"))
    parts = np.concatenate([normalize_rows(x[s : s + 7], check_rows(x[s : s + 7], "x")) for s in range(0, 300, 7)])
    assert np.array_equal(whole, parts)  # the identification stage reads rows in many different chunks
    np.testing.assert_allclose(np.linalg.norm(whole, axis=1), 1, rtol=1e-6)
    assert normalize_rows(whole, check_rows(whole, "u")) is whole
    extreme = np.array([[1e30] * 4, [1e-30] * 4], np.float32)  # float32 sums overflow / underflow, rows are fine
    np.testing.assert_allclose(check_rows(extreme, "e"), [2e30, 2e-30], rtol=1e-6)
    with pytest.raises(ValueError, match=r"e: row 1 \(b\) is not finite \(1 of 4 values; first -inf at column 2\)"):
        check_rows(np.array([[1, 0, 0, 0], [0, 1, -np.inf, 0]], np.float32), "e", keys=["a", "b"])


# ---------------------------------------------------------------------------------------------------------------
# library: evaluate_identification / evaluate_verification
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("role", "row", "value"), [("probes", 7, np.nan), ("distractors", 123, np.inf),
                                                     ("distractors", 1999, -np.inf)])
def test_identification_refuses_non_finite_rows(backend, role, row, value):
    probes, labels, dist = _sets()
    (probes if role == "probes" else dist)[row, 3] = value
    with pytest.raises(ValueError, match=rf"{role}: row {row} is not finite"):
        evaluate_identification(probes, labels, dist, backend=backend, device="cpu", progress=False)


def test_identification_normalize_refuses_zero_rows_and_equals_unit_input():
    probes, labels, dist = _sets()
    rng = np.random.default_rng(1)
    scaled_p = probes * rng.uniform(0.2, 3, size=(len(probes), 1)).astype(np.float32)
    scaled_d = dist * rng.uniform(0.5, 8, size=(len(dist), 1)).astype(np.float32)
    want = evaluate_identification(probes, labels, dist, device="cpu", backend="torch", progress=False)
    got = evaluate_identification(scaled_p, labels, scaled_d, device="cpu", backend="torch", normalize=True,
                                  progress=False)
    assert _numbers(got) == _numbers(want) and got["normalized"] is True
    scaled_d[55] = 0
    with pytest.raises(ValueError, match="distractors: row 55 has norm 0"):
        evaluate_identification(scaled_p, labels, scaled_d, device="cpu", normalize=True, progress=False)


def test_backends_identical_on_every_accepted_input():
    """torch.topk ranks NaN above +inf while faiss never keeps a NaN: that is why they disagreed. NaN is refused now;
    on everything accepted (unnormalized, wildly scaled, float16, explicit subsets, noise) the reports are equal."""
    probes, labels, dist = _sets(n_dist=3000, seed=2)
    rng = np.random.default_rng(3)
    cases = {
        "unit": (probes, dist, {}),
        "scaled rows": (probes * rng.uniform(0.01, 50, (24, 1)), dist * rng.uniform(0.01, 50, (3000, 1)), {}),
        "normalized by evaluator": (probes * 3, dist * rng.uniform(0.01, 50, (3000, 1)), {"normalize": True}),
        "float16, subsets, noise": (probes, dist.astype(np.float16), {
            "subsets": {100: np.sort(rng.choice(3000, 100, replace=False)), 3000: np.arange(3000)},
            "probe_noise": np.arange(24) % 9 == 0, "distractor_noise": np.arange(3000) % 97 == 0}),
    }
    for name, (p, d, kw) in cases.items():
        p = np.asarray(p, np.float32)
        d = d if d.dtype == np.float16 else np.asarray(d, np.float32)
        out = [evaluate_identification(p, labels, d, fars=(1e-4, 1e-3), backend=b, device="cpu", chunk_size=700,
                                       progress=False, **kw) for b in BACKENDS]
        for r in out:
            r.pop("backend"), r.pop("timings")
        assert out[0] == out[1], name


@pytest.mark.parametrize(("value", "message"), [(np.nan, "emb1: row 3 is not finite"),
                                                (np.inf, "emb1: row 3 is not finite"),
                                                (0.0, "emb1: row 3 has norm 0")])
def test_verification_refuses_bad_rows(value, message):
    rng = np.random.default_rng(0)
    e1, e2 = _unit(rng.normal(size=(20, 8))), _unit(rng.normal(size=(20, 8)))
    e1[3] = value if value == 0 else e1[3]
    e1[3, 2] = value
    with pytest.raises(ValueError, match=message):
        evaluate_verification(e1, e2, np.arange(20) % 2 == 0, nfolds=2)


def test_verification_records_input_norms():
    rng = np.random.default_rng(0)
    e1, e2 = _unit(rng.normal(size=(20, 8))), _unit(rng.normal(size=(20, 8)))
    same = np.arange(20) % 2 == 0
    want = evaluate_verification(e1, e2, same, nfolds=2)
    got = evaluate_verification(e1 * 5, e2, same, nfolds=2)
    assert got["accuracy"] == want["accuracy"]
    assert got["features"]["max_norm"] == pytest.approx(5, rel=1e-5) and got["features"]["renormalized_rows"] == 20
    assert want["features"]["renormalized_rows"] == 0


# ---------------------------------------------------------------------------------------------------------------
# `facerco eval megaface`: .npy and devkit trees
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("role", "row", "value", "message"), [
    ("distractors", 42, np.nan, "dist.npy: row 42 (Flickr/0/42.jpg) is not finite"),
    ("probes", 5, np.inf, "probes.npy: row 5 (id1/img_5.png) is not finite"),
    ("distractors", 1500, 0.0, "dist.npy: row 1500 (Flickr/15/1500.jpg) has norm 0"),
    ("probes", 0, 0.0, "probes.npy: row 0 (id0/img_0.png) has norm 0"),
])
def test_megaface_cli_npy_bad_rows(tmp_path, capsys, role, row, value, message):
    probes, labels, dist = _sets()
    arr = probes if role == "probes" else dist
    arr[row] = arr[row] if value != 0 else 0
    arr[row, 0] = value
    p, d = _save(tmp_path, probes, labels, dist)
    assert _megaface(p, d, tmp_path / "rep") == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "rep" / "report.json").exists()


def test_megaface_cli_npy_unnormalized_rows_are_normalized_and_reported(tmp_path, capsys):
    probes, labels, dist = _sets()
    _megaface(*_save(tmp_path, probes, labels, dist), tmp_path / "unit")
    rng = np.random.default_rng(5)
    (tmp_path / "s").mkdir()
    scaled = _save(tmp_path / "s", probes * 3, labels, dist * rng.uniform(1, 5, (len(dist), 1)).astype(np.float32))
    assert _megaface(*scaled, tmp_path / "scaled") == 0
    unit = json.loads((tmp_path / "unit" / "report.json").read_text())["identification"]["features"]
    rep = json.loads((tmp_path / "scaled" / "report.json").read_text())["identification"]["features"]
    assert _numbers(rep) == _numbers(unit) and rep["sizes"][-1]["rank1"] > 0.1
    check = rep["features"]
    assert check["normalized_by_evaluator"] is True
    assert check["probes"]["min_norm"] == pytest.approx(3, rel=1e-5) and check["probes"]["renormalized_rows"] == 24
    assert 1 <= check["distractors"]["min_norm"] < check["distractors"]["max_norm"] <= 5
    assert unit["features"]["distractors"]["renormalized_rows"] == 0
    assert "L2-normalized by the evaluator" in (tmp_path / "scaled" / "report.md").read_text()


def _devkit(tmp_path: Path, probes: np.ndarray, labels: np.ndarray, dist: np.ndarray) -> tuple[Path, Path]:
    pkeys = [f"id{lab}/img_{i}.png" for i, lab in enumerate(labels)]
    dkeys = [f"Flickr/{i // 100}/{i}.jpg" for i in range(len(dist))]
    F.write_devkit_tree(F.Embeddings(probes, np.ones(len(probes)), labels, pkeys), tmp_path / "fs", "a1")
    F.write_devkit_tree(F.Embeddings(dist, np.ones(len(dist)), np.full(len(dist), -1), dkeys), tmp_path / "mf", "a1")
    return tmp_path / "fs", tmp_path / "mf"


@pytest.mark.parametrize(("value", "message"), [
    (np.nan, r"mf/Flickr/7/777\.jpg_a1\.bin: 1 of 16 values are not finite"),
    (0.0, r"mf: row \d+ \(Flickr/7/777\.jpg_a1\.bin\) has norm 0"),  # rows are in sorted key order
])
def test_megaface_cli_devkit_bad_rows(tmp_path, capsys, value, message):
    probes, labels, dist = _sets()
    dist[777] = dist[777] if value != 0 else 0
    dist[777, 4] = value
    fs, mf = _devkit(tmp_path, probes, labels, dist)
    assert _megaface(fs, mf, tmp_path / "rep", "--algo", "a1") == 1
    assert re.search(message, capsys.readouterr().err)


def test_megaface_cli_devkit_unnormalized_rows_are_normalized(tmp_path):
    probes, labels, dist = _sets()
    (tmp_path / "u").mkdir()
    (tmp_path / "s").mkdir()
    assert _megaface(*_devkit(tmp_path / "u", probes, labels, dist), tmp_path / "unit", "--algo", "a1") == 0
    assert _megaface(*_devkit(tmp_path / "s", probes, labels, dist * 5), tmp_path / "scaled", "--algo", "a1") == 0
    unit = json.loads((tmp_path / "unit" / "report.json").read_text())["identification"]["features"]
    rep = json.loads((tmp_path / "scaled" / "report.json").read_text())["identification"]["features"]
    assert _numbers(rep) == _numbers(unit)
    assert rep["features"]["distractors"]["max_norm"] == pytest.approx(5, rel=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# the extractor's own output, `export embeddings` and `eval verify` (model -> features)
# ---------------------------------------------------------------------------------------------------------------


class _Flat(nn.Module):
    """Gives a non-finite (``mode='nan'``) or zero (``mode='zero'``) embedding for a flat (one-colour) image."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.mode = mode
        self.fc = nn.Linear(3 * 16 * 16, 8)
        self.meta = types.SimpleNamespace(name="flat", input_size=(16, 16), embedding_size=8, mean=127.5, std=127.5,
                                          arch_kwargs={})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spread = (x.amax(dim=(1, 2, 3)) - x.amin(dim=(1, 2, 3)))[:, None]
        out = self.fc(x.flatten(1)) + 0.1
        return out / spread if self.mode == "nan" else out * (spread > 0)


@pytest.fixture
def faces(tmp_path: Path) -> Path:
    """6 noise images and one flat image (``b/flat.png``, the 7th in file order)."""
    rng = np.random.default_rng(0)
    for i in range(6):
        (tmp_path / "faces" / "ab"[i // 3]).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(tmp_path / "faces" / "ab"[i // 3] / f"{i}.png"), rng.integers(0, 255, (16, 16, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "faces" / "b" / "flat.png"), np.full((16, 16, 3), 90, np.uint8))
    return tmp_path / "faces"


@pytest.mark.parametrize(("mode", "message"), [("nan", r"image 6 \(.*flat\.png\) is not finite"),
                                               ("zero", r"image 6 \(.*flat\.png\) has norm 0")])
def test_extractor_output_is_checked(faces, mode, message):
    with pytest.raises(ValueError, match=rf"_Flat output: {message}"):
        F.extract_embeddings(_Flat(mode), faces, batch_size=4, device="cpu", progress=False)


def test_export_embeddings_checks_extractor_output_and_read_back(faces, tmp_path):
    from facerco.export.embeddings import export_embeddings

    with pytest.raises(ValueError, match="flat.png"):
        export_embeddings(_Flat("nan"), faces, tmp_path / "e1", shard_size=3, progress=False)
    (faces / "b" / "flat.png").unlink()
    out = tmp_path / "e2"
    export_embeddings(_Flat("nan"), faces, out, shard_size=3, progress=False)
    shard = out / ".shards" / "shard_00001.npz"  # resume state: damage a finished shard, then rerun after a crash
    out.joinpath(".shards").mkdir(exist_ok=True)
    ok = F.extract_embeddings(_Flat("nan"), faces, progress=False)
    bad = ok.emb[3:6].copy()
    bad[1, 2] = np.nan
    with open(shard, "wb") as handle:
        np.savez(handle, emb=bad, norms=ok.norms[3:6], labels=ok.labels[3:6], paths=np.asarray(ok.paths[3:6]))
    (out / "manifest.json").unlink()
    with pytest.raises(ValueError, match=r"shard_00001.npz: row 1 \(.*4.png\) is not finite"):
        export_embeddings(_Flat("nan"), faces, out, shard_size=3, progress=False)


def test_eval_verify_cli_names_the_image_of_a_nan_embedding(tmp_path, capsys):
    from facerco.data.bins import write_bin
    from facerco.models import create_model
    from facerco.models.checkpoint import save_model_checkpoint

    model = create_model("iresnet_tiny", input_size=48).eval()
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if n.endswith("weight") and p.ndim == 2)[0, 0] = float("nan")
    save_model_checkpoint(tmp_path / "m.safetensors", model)
    rng = np.random.default_rng(0)
    imgs = [cv2.imencode(".png", rng.integers(0, 255, (48, 48, 3), np.uint8))[1].tobytes() for _ in range(4)]
    write_bin(tmp_path / "t.bin", imgs, [True, False])
    rc = main(["eval", "verify", str(tmp_path / "m.safetensors"), "--bin", str(tmp_path / "t.bin"), "--device", "cpu",
               "--nfolds", "2", "--out", str(tmp_path / "rep")])
    assert rc == 1
    assert "image 0 (t.bin#0) is not finite" in capsys.readouterr().err
