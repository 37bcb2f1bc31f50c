"""The evaluator on a small slice of real LFW photos (pipeline check with a randomly initialised small model)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from facerco.cli import main

pytestmark = pytest.mark.realdata


def _people(root, min_images, limit):
    out = []
    for line in (root / "people_counts.tsv").read_text().splitlines():
        name, count = line.split("\t")
        if int(count) >= min_images if min_images > 1 else int(count) == 1:
            out.append((name, int(count)))
        if len(out) == limit:
            break
    return out


def test_lfw_slice_verify_and_identification(real_data, tmp_path):
    import torch

    from facerco.models import create_model
    from facerco.models.checkpoint import save_model_checkpoint

    lfw = real_data / "lfw_deepfunneled"
    torch.manual_seed(0)
    ckpt = tmp_path / "tiny.safetensors"
    save_model_checkpoint(ckpt, create_model("iresnet_tiny", input_size=48))
    # verification: the first 4 matched and 4 mismatched pairs of the first two official folds
    lines = (lfw / "pairs.txt").read_text().splitlines()[1:]
    keep = lines[0:4] + lines[300:304] + lines[600:604] + lines[900:904]
    (tmp_path / "pairs.txt").write_text("2\t4\n" + "\n".join(keep) + "\n")
    assert main(["eval", "verify", str(ckpt), "--pairs", str(tmp_path / "pairs.txt"), "--root", str(lfw),
                 "--nfolds", "2", "--names", "tiny", "--device", "cpu", "--num-workers", "0",
                 "--out", str(tmp_path / "ver")]) == 0
    ver = json.loads((tmp_path / "ver" / "report.json").read_text())["verification"]["tiny"]["pairs"]
    assert ver["num_pairs"] == 16 and 0 <= ver["accuracy"] <= 1 and np.isfinite(ver["xnorm"])
    # identification: 6 people with >= 4 images as probes, 60 one-image people as distractors
    probes = _people(lfw, 4, 6)
    lines = [f"{lfw / n / f'{n}_{i:04d}.jpg'} {lab}" for lab, (n, c) in enumerate(probes) for i in range(1, 5)]
    (tmp_path / "probes.txt").write_text("\n".join(lines) + "\n")
    dist = _people(lfw, 1, 60)
    (tmp_path / "dist.txt").write_text("\n".join(str(lfw / n / f"{n}_0001.jpg") for n, _ in dist) + "\n")
    assert main(["eval", "megaface", "--model", str(ckpt), "--probes", str(tmp_path / "probes.txt"),
                 "--distractors", str(tmp_path / "dist.txt"), "--device", "cpu", "--num-workers", "0",
                 "--far", "1e-2", "--names", "tiny", "--out", str(tmp_path / "id")]) == 0
    rep = json.loads((tmp_path / "id" / "report.json").read_text())["identification"]["tiny"]
    assert rep["num_probes"] == 24 and rep["num_genuine_ordered"] == 6 * 12
    assert [s["size"] for s in rep["sizes"]] == [10, 60]
    for name in ("report.md", "cmc.png", "identification_roc.png"):
        assert (tmp_path / "id" / name).is_file()
    assert (tmp_path / "id" / "features" / "tiny" / "distractors.npy").is_file()
