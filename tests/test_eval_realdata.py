"""The evaluator on a slice of real LFW photos, against answers computed independently (known-answer test).

The model is a fixed, seeded iresnet_tiny (48 px). The test embeds every image itself (cv2 decode, area resize,
(x - 127.5) / 127.5, f(x) + f(flip x), L2) and scores by brute force: the verification protocol of FORMATS.md §2
(consecutive folds, threshold grid 0:0.01:4, first best on ties, "same" when dist < threshold) and rank-1 of the
MegaFace protocol (every ordered same-identity pair, a hit when the genuine score beats every distractor). The CLI's
numbers must equal those within one pair (one probe pair) of float noise. Reads ../shared/data (FACERCO_REAL_DATA);
skips when absent.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from facerco.cli import main
from facerco.models import create_model
from facerco.models.checkpoint import save_model_checkpoint

pytestmark = pytest.mark.realdata

SIZE = 48
PER_FOLD = 50  # matched and as many mismatched pairs taken from each of the first two official folds


def _people(root: Path, min_images: int, limit: int) -> list[tuple[str, int]]:
    out = []
    for line in (root / "people_counts.tsv").read_text().splitlines():
        name, count = line.split("\t")
        if int(count) >= min_images if min_images > 1 else int(count) == 1:
            out.append((name, int(count)))
        if len(out) == limit:
            break
    return out


def _pair_paths(root: Path, line: str) -> tuple[Path, Path, bool]:
    f = line.split("\t")
    if len(f) == 3:
        return root / f[0] / f"{f[0]}_{int(f[1]):04d}.jpg", root / f[0] / f"{f[0]}_{int(f[2]):04d}.jpg", True
    return root / f[0] / f"{f[0]}_{int(f[1]):04d}.jpg", root / f[2] / f"{f[2]}_{int(f[3]):04d}.jpg", False


@torch.no_grad()
def _embed(model: torch.nn.Module, paths: list[Path]) -> np.ndarray:
    """Flip-fused unit embeddings, computed without facerco's extractor."""
    images = []
    for path in paths:
        img = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        images.append(cv2.resize(img, (SIZE, SIZE), interpolation=cv2.INTER_AREA))
    x = torch.from_numpy((np.stack(images).astype(np.float32) - 127.5) / 127.5).permute(0, 3, 1, 2)
    e = torch.cat([model(c) + model(torch.flip(c, dims=[3])) for c in x.split(64)]).double().numpy()
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def _brute_force_verification(dist: np.ndarray, same: np.ndarray, nfolds: int) -> float:
    """Mean held-out accuracy, every fold's threshold searched one candidate at a time."""
    n = len(dist)
    sizes = [n // nfolds + (1 if k < n % nfolds else 0) for k in range(nfolds)]
    accs, start = [], 0
    for size in sizes:
        test = np.zeros(n, bool)
        test[start:start + size] = True
        start += size
        best_t, best_acc = None, -1.0
        for t in [i / 100 for i in range(400)]:
            acc = np.mean((dist[~test] < t) == same[~test])
            if acc > best_acc:
                best_t, best_acc = t, acc
        accs.append(np.mean((dist[test] < best_t) == same[test]))
    return float(np.mean(accs))


def _brute_force_rank1(probes: np.ndarray, labels: np.ndarray, distractors: np.ndarray) -> float:
    hits = total = 0
    for p in range(len(probes)):
        best_distractor = max(float(probes[p] @ d) for d in distractors)
        for g in range(len(probes)):
            if g != p and labels[g] == labels[p]:
                total += 1
                hits += float(probes[p] @ probes[g]) > best_distractor
    return hits / total


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    model = create_model("iresnet_tiny", input_size=SIZE).eval()
    ckpt = save_model_checkpoint(tmp_path_factory.mktemp("model") / "tiny.safetensors", model)
    return model, ckpt


def test_lfw_verification_known_answer(real_data, tiny, tmp_path):
    model, ckpt = tiny
    lfw = real_data / "lfw_deepfunneled"
    lines = (lfw / "pairs.txt").read_text().splitlines()[1:]
    keep = [lines[f * 600 + off + i] for f in (0, 1) for off in (0, 300) for i in range(PER_FOLD)]
    (tmp_path / "pairs.txt").write_text(f"2\t{PER_FOLD}\n" + "\n".join(keep) + "\n")
    assert main(["eval", "verify", str(ckpt), "--pairs", str(tmp_path / "pairs.txt"), "--root", str(lfw),
                 "--nfolds", "2", "--names", "tiny", "--device", "cpu", "--num-workers", "0",
                 "--out", str(tmp_path / "ver")]) == 0
    ver = json.loads((tmp_path / "ver" / "report.json").read_text())["verification"]["tiny"]["pairs"]
    pairs = [_pair_paths(lfw, line) for line in keep]
    a, b = _embed(model, [p[0] for p in pairs]), _embed(model, [p[1] for p in pairs])
    same = np.array([p[2] for p in pairs])
    want = _brute_force_verification(((a - b) ** 2).sum(axis=1), same, nfolds=2)
    assert ver["num_pairs"] == 4 * PER_FOLD and ver["num_genuine"] == 2 * PER_FOLD
    assert abs(ver["accuracy"] - want) <= 1 / (2 * PER_FOLD) + 1e-12  # one held-out pair of float noise at most
    # the answer itself, for the pinned torch/OpenCV (setup.cfg): a seeded random network's features of real faces
    # carry some identity (0.615; 0.495 with the pairs scrambled), so a mis-paired or mis-read set shows
    assert want == pytest.approx(0.615, abs=0.03)


def test_lfw_identification_known_answer(real_data, tiny, tmp_path):
    model, ckpt = tiny
    lfw = real_data / "lfw_deepfunneled"
    probes = _people(lfw, 4, 6)  # 6 people with >= 4 images: 4 images each as probes
    probe_paths = [lfw / n / f"{n}_{i:04d}.jpg" for n, _ in probes for i in range(1, 5)]
    labels = np.repeat(np.arange(len(probes)), 4)
    (tmp_path / "probes.txt").write_text("".join(f"{p} {lab}\n" for p, lab in zip(probe_paths, labels, strict=True)))
    dist_paths = [lfw / n / f"{n}_0001.jpg" for n, _ in _people(lfw, 1, 60)]  # 60 one-image people
    (tmp_path / "dist.txt").write_text("".join(f"{p}\n" for p in dist_paths))
    assert main(["eval", "megaface", "--model", str(ckpt), "--probes", str(tmp_path / "probes.txt"),
                 "--distractors", str(tmp_path / "dist.txt"), "--device", "cpu", "--num-workers", "0",
                 "--far", "1e-2", "--names", "tiny", "--out", str(tmp_path / "id")]) == 0
    rep = json.loads((tmp_path / "id" / "report.json").read_text())["identification"]["tiny"]
    assert rep["num_probes"] == 24 and rep["num_genuine_ordered"] == 6 * 12
    assert [s["size"] for s in rep["sizes"]] == [10, 60]
    want = _brute_force_rank1(_embed(model, probe_paths), labels, _embed(model, dist_paths))
    assert abs(rep["sizes"][-1]["rank1"] - want) <= 1 / 72 + 1e-12  # one ordered pair of float noise at most
    assert want == pytest.approx(2 / 72, abs=1 / 72)  # measured with the pinned torch/OpenCV
    for name in ("report.md", "cmc.png", "identification_roc.png"):
        assert (tmp_path / "id" / name).is_file()
