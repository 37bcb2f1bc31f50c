"""data_prep recipes on generated data: folder -> .rec, .rec re-aligned, FaceScrub/MegaFace test-pack layout."""

from __future__ import annotations

import csv
import json
import runpy
from pathlib import Path

import numpy as np
import pytest

from facerco.prep.align import ARCFACE_TEMPLATE_112, read_image, write_image

ROOT = Path(__file__).resolve().parents[1] / "data_prep"
_COLS = ["path"] + [f"{a}{i}" for i in range(1, 6) for a in "xy"]


def _recipe(name: str):
    return runpy.run_path(str(ROOT / f"{name}.py"))["main"]


def _raw_tree(root: Path, ids: int = 2, per_id: int = 2, suffix: str = ".jpg") -> Path:
    """Random 'photos' with the template scaled x1.5 + shifted as landmarks; returns the landmarks CSV."""
    rng = np.random.default_rng(5)
    lm = root.parent / f"{root.name}_landmarks.csv"
    with open(lm, "w", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(_COLS)
        for i in range(ids):
            for j in range(per_id):
                rel = f"person{i}/img{j}{suffix}"
                write_image(root / rel, rng.integers(0, 255, size=(200, 220, 3), dtype=np.uint8))
                w.writerow([rel, *(ARCFACE_TEMPLATE_112 * 1.5 + 20).reshape(-1)])
    return lm


@pytest.mark.parametrize("recipe", ["lfw_to_bin", "folder_to_rec", "msceleb_tsv", "rec_realign", "megaface_align"])
def test_recipes_have_usage_headers(recipe):
    text = (ROOT / f"{recipe}.py").read_text()
    assert '"""' in text.splitlines()[0] and "Usage:" in text
    with pytest.raises(SystemExit) as exc:
        _recipe(recipe)(["--help"])
    assert exc.value.code == 0


def test_folder_to_rec_then_realign(tmp_path):
    from facerco.data.datasets import RecordDataset
    from facerco.prep.realign import rec_items

    lm = _raw_tree(tmp_path / "raw")
    main = _recipe("folder_to_rec")
    assert (
        main(
            [
                str(tmp_path / "raw"),
                str(tmp_path / "aligned"),
                str(tmp_path / "rec"),
                "--detector",
                "landmarks",
                "--landmarks",
                str(lm),
                "--workers",
                "1",
            ]
        )
        == 0
    )
    ds = RecordDataset(tmp_path / "rec")
    assert len(ds) == 4 and ds.num_classes == 2 and sorted(ds.labels.tolist()) == [0, 0, 1, 1]

    # re-align: the records are aligned already, so template landmarks give (nearly) the same pixels back
    keys = [it.key for it in rec_items(tmp_path / "rec")]
    assert keys[0].startswith("person0/") and keys[0].endswith("000000001.jpg")
    lm2 = tmp_path / "rec_landmarks.csv"
    with open(lm2, "w", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(_COLS)
        w.writerows([k, *ARCFACE_TEMPLATE_112.reshape(-1)] for k in keys)
    main = _recipe("rec_realign")
    assert (
        main(
            [
                str(tmp_path / "rec"),
                str(tmp_path / "re"),
                "--detector",
                "landmarks",
                "--landmarks",
                str(lm2),
                "--workers",
                "1",
                "--pack",
                str(tmp_path / "rec2"),
            ]
        )
        == 0
    )
    before = read_image(tmp_path / "aligned" / "person0" / "img0.jpg").astype(int)
    after = read_image(tmp_path / "re" / keys[0]).astype(int)
    assert np.abs(before - after).mean() < 4  # one more JPEG generation
    assert len(RecordDataset(tmp_path / "rec2")) == 4


def test_megaface_pack_layout_with_sidecar_hints(tmp_path):
    lm_fs = _raw_tree(tmp_path / "facescrub", ids=2, per_id=2)
    lm_mf = _raw_tree(tmp_path / "megaface", ids=1, per_id=3)
    (tmp_path / "megaface" / "person0" / "img0.jpg.json").write_text(
        json.dumps({"bounding_box": {"x": 20, "y": 20, "width": 150, "height": 150}})
    )
    # one landmarks file for both trees (keys are relative to each tree)
    rows = [r for f in (lm_fs, lm_mf) for r in list(csv.reader(f.read_text().splitlines()))[1:]]
    lm = tmp_path / "lm.csv"
    with open(lm, "w", newline="") as handle:
        csv.writer(handle).writerows([_COLS, *rows])
    main = _recipe("megaface_align")
    assert (
        main(
            [
                str(tmp_path / "pack"),
                "--facescrub",
                str(tmp_path / "facescrub"),
                "--megaface",
                str(tmp_path / "megaface"),
                "--detector",
                "landmarks",
                "--landmarks",
                str(lm),
                "--workers",
                "1",
            ]
        )
        == 0
    )
    pack = tmp_path / "pack"
    assert read_image(pack / "facescrub_images" / "person1" / "img1.png").shape == (112, 112, 3)
    assert (pack / "megaface_lst").read_text().split() == [f"person0/img{j}.jpg" for j in range(3)]
    report = json.loads((pack / "megaface_pack_report.json").read_text())
    assert report["facescrub"]["aligned"] == 4 and report["megaface"]["listed"] == 3


@pytest.mark.parametrize("recipe", ["lfw_to_bin", "folder_to_rec", "msceleb_tsv", "rec_realign", "megaface_align"])
def test_recipes_document_debug_and_streams_strict(recipe, capsys):
    """Every recipe takes --debug (tracebacks; one-line errors otherwise); the streamed ones take --strict."""
    with pytest.raises(SystemExit):
        _recipe(recipe)(["--help"])
    text = capsys.readouterr().out
    assert "--debug" in text
    assert ("--strict" in text) == (recipe in ("msceleb_tsv", "rec_realign", "megaface_align"))
