"""`facerco compare`: every built-in variant runs on a tiny route and lands in one table (markdown + JSON)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from test_distill_support import student_cfg, train_teacher, write_faces

from facerco.config import dump_config
from facerco.distill.compare import VARIANTS, builtin_variants, file_variants, format_table, run_compare
from facerco.train.job import build_train_dataset


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cmp")
    faces = write_faces(root / "faces")
    run = train_teacher(faces, root / "teacher")
    manifest = json.loads((run / "route.json").read_text())  # val metrics as a validator would record them
    for point, acc in zip(manifest["points"], [0.5, 0.8, 0.7, 0.9], strict=True):
        point["val"] = {"acc": acc}
    (run / "route.json").write_text(json.dumps(manifest))
    cfg = student_cfg(faces, run, root / "unused", eeis={"num_anchors": 2}, gss={"probe_images": 24})
    cfg.train.epochs = 1.0
    path = root / "student.yaml"
    path.write_text(dump_config(cfg))
    return root, path


def _nn_validator(cfg):
    """Leave-one-out nearest-neighbour identity accuracy on 24 training images: a cheap, real metric."""
    ds = build_train_dataset(cfg)
    idx = list(range(0, len(ds), 2))
    images = torch.stack([ds[i][0] for i in idx])
    labels = torch.tensor([ds[i][1] for i in idx])

    def run(backbone):
        emb = F.normalize(backbone(images), dim=1)
        sim = emb @ emb.T - 2 * torch.eye(len(idx))
        return {"nn/acc": (labels[sim.argmax(1)] == labels).float().mean().item()}

    return run


def test_cli_variant_names_match_library():
    import argparse

    from facerco.commands.compare import register
    from facerco.distill.compare import DEFAULT_VARIANTS

    assert set(DEFAULT_VARIANTS) <= set(VARIANTS)
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    helptext = parser._subparsers._group_actions[0].choices["compare"].format_help()  # every variant is listed
    assert all(name in helptext.replace("\n", " ") for name in VARIANTS)


def test_compare_all_variants_table(setup):
    root, path = setup
    from facerco.distill.compare import DEFAULT_VARIANTS

    variants = builtin_variants(path)
    assert [v.name for v in variants] == list(DEFAULT_VARIANTS)
    assert variants[0].cfg.distill.mimic_weight == 0 and variants[4].cfg.distill.schedule == "multi_stage"
    table = run_compare(variants, [0], root / "out", validator_factory=_nn_validator)
    rows = {r["variant"]: r for r in table["rows"]}
    assert set(rows) == set(DEFAULT_VARIANTS) and table["primary_metric"] == "nn/acc"
    assert rows["scratch"]["anchors"] == [] and rows["mimic_final"]["anchors"] == ["epoch_004"]
    assert rows["mimic_best"]["anchors"] == ["epoch_002"]  # best intermediate by the route's val metric
    assert rows["rco_eeis_one"]["anchors"] == ["epoch_002", "epoch_004"]
    assert rows["mimic_final"]["delta_vs_mimic_final"] == (0.0, 0.0)
    for r in rows.values():
        assert 0.0 <= r["nn/acc"][0] <= 1.0 and r["congruence_final"][0] >= 0.0
    md = (root / "out" / "compare.md").read_text()
    assert md == format_table(table) and md.count("\n| ") == len(DEFAULT_VARIANTS) + 1
    data = json.loads((root / "out" / "compare.json").read_text())
    assert len(data["runs"]) == len(DEFAULT_VARIANTS)


def test_compare_seeds_mean_std_and_reuse(setup):
    root, path = setup
    variants = builtin_variants(path, names=["scratch", "mimic_final"])
    calls = []

    def counting(cfg, validator=None):
        from facerco.distill.job import run_distill

        calls.append((cfg.train.output, cfg.train.seed))
        return run_distill(cfg, validator=validator)

    run_compare(variants, [0], root / "seeds", runner=counting, validator_factory=_nn_validator)
    table = run_compare(variants, [0, 1], root / "seeds", runner=counting, validator_factory=_nn_validator)
    assert sorted(s for _, s in calls) == [0, 0, 1, 1]  # seed 0 runs are reused by the second call
    row = next(r for r in table["rows"] if r["variant"] == "scratch")
    accs = [r["val"]["nn/acc"] for r in table["runs"] if r["variant"] == "scratch"]
    assert row["n"] == 2 and row["nn/acc"][0] == pytest.approx(sum(accs) / 2)


def test_file_variants_and_budget_check(setup, tmp_path):
    root, path = setup
    text = path.read_text()
    a = tmp_path / "lfw_cpu_scratch.yaml"
    b = tmp_path / "lfw_cpu_rco_eeis.yaml"
    a.write_text(text)
    b.write_text(text)
    names = [v.name for v in file_variants([a, b])]
    assert names == ["scratch", "rco_eeis"]
    bad = builtin_variants(path, names=["scratch"]) + builtin_variants(path, ["train.epochs=2"], ["mimic_final"])
    with pytest.raises(ValueError, match="same budget"):
        run_compare(bad, [0], tmp_path / "x", validator_factory=_nn_validator)


def test_shipped_student_configs_load():
    from pathlib import Path

    from facerco.config import load_config

    root = Path(__file__).resolve().parents[1] / "configs" / "student"
    files = sorted(root.glob("*.yaml"))
    names = {f.stem for f in files}
    for needed in ("ms1mv2_mbf0.8m_rco_eeis", "ms1mv2_mbf0.8m_rco_gss", "ms1mv2_mbf0.8m_mimic_final",
                   "ms1mv2_mbf0.8m_scratch", "lfw_cpu_scratch", "lfw_cpu_rco_gss"):
        assert needed in names
    for f in files:
        cfg = load_config(f)
        assert cfg.kind == "student" and cfg.distill.teacher_run, f
    lfw = file_variants(sorted(root.glob("lfw_cpu_*.yaml")))
    assert {v.name for v in lfw} <= set(VARIANTS)  # every CPU file is a built-in variant


def test_report_only_tabulates_finished_runs(setup):
    root, path = setup
    variants = builtin_variants(path, names=["scratch", "mimic_final"])
    run_compare(variants[:1], [0], root / "partial", validator_factory=_nn_validator)
    table = run_compare(variants, [0], root / "partial", validator_factory=_nn_validator, train=False)
    assert [r["n"] for r in table["rows"]] == [1, 0]


# ---- validation must not be the reported test set (issue 11, item 1) -------------------------------------------

def _guard_cfg(tmp_path, **data):
    from facerco.config import config_from_dict

    contents = {"val.txt": "val pairs", "heldout.txt": "test pairs", "copy.txt": "test pairs", "val.bin": "val",
                "test.bin": "test"}
    for name, text in contents.items():
        (tmp_path / name).write_text(text)
    return config_from_dict({"kind": "student", "data": {"format": "folder", "train": str(tmp_path), **data},
                             "distill": {"teacher_run": str(tmp_path / "teacher")},
                             "eval": {"test_pairs": str(tmp_path / "heldout.txt"),
                                      "test_bins": [str(tmp_path / "test.bin")]}})


def test_compare_refuses_validation_on_the_test_set(tmp_path):
    from facerco.distill.compare import Variant, check_validation_not_test

    fine = _guard_cfg(tmp_path, val_pairs=str(tmp_path / "val.txt"), val_bins=[str(tmp_path / "val.bin")])
    check_validation_not_test("ok", fine)  # separate files: accepted
    cases = {
        "data.val_pairs=.*eval.test_pairs=": {"val_pairs": str(tmp_path / "heldout.txt")},  # the same path
        "data.val_pairs=.*copy.txt is eval.test_pairs=": {"val_pairs": str(tmp_path / "copy.txt")},  # same sha256
        "data.val_pairs=.*eval.test_pairs=.*heldout": {"val_pairs": f"{tmp_path}/../{tmp_path.name}/heldout.txt"},
        "data.val_bins=.*eval.test_bins=": {"val_bins": [str(tmp_path / "val.bin"), str(tmp_path / "test.bin")]},
    }
    for message, data in cases.items():
        cfg = _guard_cfg(tmp_path, **data)
        with pytest.raises(ValueError, match=f"variant 'bad' validates on its reported test set .*{message}"):
            run_compare([Variant("bad", "x", cfg)], [0], tmp_path / "out")  # refused before any training


def test_shipped_lfw_configs_validate_on_their_own_split(tmp_path, capsys, monkeypatch):
    from pathlib import Path

    from facerco.cli import main
    from facerco.config import load_config
    from facerco.distill.compare import check_validation_not_test

    repo = Path(__file__).resolve().parents[1]
    files = [repo / "configs" / "teacher" / "lfw_cpu.yaml", *sorted((repo / "configs" / "student").glob("lfw_cpu_*"))]
    for f in files:
        cfg = load_config(f)
        assert cfg.data.val_pairs.endswith("/pairs_val.txt") and cfg.data.val_root.endswith("/val"), f
        assert cfg.eval.test_pairs.endswith("/pairs_heldout.txt"), f
        check_validation_not_test(f.stem, cfg)
    monkeypatch.chdir(tmp_path)  # the configs' runs/ paths need not exist: the same path is refused by name
    student = repo / "configs" / "student" / "lfw_cpu_mimic_best.yaml"
    code = main(["compare", str(student), "--set", "data.val_pairs=runs/lfw_cpu_data/pairs_heldout.txt",
                 "--out", str(tmp_path / "cmp")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1
    assert "validates on its reported test set (data.val_pairs=runs/lfw_cpu_data/pairs_heldout.txt" in err
