"""`facerco cache` and `facerco distill` through the CLI on a tiny teacher route."""

from __future__ import annotations

import json
import shutil

import pytest
from test_distill_support import IMAGE, base_cfg, student_cfg, train_teacher, write_faces

from facerco.cli import main
from facerco.config import dump_config
from facerco.route.cache_reader import AnchorCache


@pytest.fixture(scope="module")
def route(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    faces = write_faces(root / "faces")
    return root, faces, train_teacher(faces, root / "teacher")


def test_cache_then_distill_from_cache(route, capsys):
    root, faces, run = route
    cfg = student_cfg(faces, run, root / "student", strategy="manual", manual={"anchors": ["epoch_003"]},
                      final_share=0.5)
    cfg.train.epochs = 1.0
    cfg_path = root / "student.yaml"
    cfg_path.write_text(dump_config(cfg))
    out = root / "cache"
    argv = ["cache", str(run), str(faces), "--format", "folder", "--out", str(out), "--config", str(cfg_path),
            "--shard-size", "16", "--workers", "0", "--no-progress", "--device", "cpu"]
    assert main(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest["anchors"]) == ["epoch_003", "epoch_004"]  # the plan's anchors (final included)
    assert manifest["meta"]["image_size"] == IMAGE and all(a["complete"] for a in manifest["anchors"].values())
    assert main(argv) == 0  # rerun: everything cached, nothing recomputed
    assert AnchorCache(out).embedding_size("epoch_004") == 128
    assert main(["distill", str(cfg_path), f"distill.cache={out}"]) == 0
    printed = capsys.readouterr().out
    assert "anchors:  epoch_003 -> epoch_004" in printed and "student:" in printed
    assert (root / "student" / "student.safetensors").is_file()
    assert main(["distill", str(cfg_path), "kind=teacher"]) == 1  # wrong kind: one-line error, exit 1


def test_route_plan_cli_without_config(route, capsys):
    root, faces, run = route
    assert main(["route", "plan", str(run), "--strategy", "eeis", "--every", "2"]) == 0
    out = capsys.readouterr().out
    assert "anchors:  epoch_002 -> epoch_004" in out and "stage 1: epoch_004" in out
    assert main(["route", "plan", str(run), "--strategy", "manual", "--anchors", "epoch_009"]) == 1


def test_route_plan_gss_without_config_starts_at_first_point(route, capsys):
    root, faces, run = route
    assert main(["route", "plan", str(run), "--strategy", "gss", "--probe-images", "16", "--delta", "0.9"]) == 0
    out = capsys.readouterr().out
    anchors = next(line for line in out.splitlines() if line.startswith("anchors:")).split(":", 1)[1].split(" -> ")
    assert anchors[0].strip() == "epoch_001" and anchors[-1].strip() == "epoch_004"
    assert "from epoch_001" in out and "student@init" not in out


def _cache_cli(run, faces, out, *extra):
    return main(["cache", str(run), str(faces), "--format", "folder", "--out", str(out), "--anchors", "epoch_003,final",
                 "--workers", "0", "--no-progress", "--device", "cpu", *extra])


def _student_yaml(faces, run, out, path):
    cfg = student_cfg(faces, run, out, strategy="manual", manual={"anchors": ["epoch_003"]}, final_share=0.5)
    cfg.train.epochs = 1.0
    path.write_text(dump_config(cfg))
    return path


def test_distill_refuses_the_cache_of_a_retrained_teacher(route, tmp_path, capsys):
    """Same run directory, same point names, other weights: the cached targets are the old teacher's."""
    from facerco.train.teacher import train_teacher as run_teacher

    root, faces, run = route
    same = tmp_path / "teacher"
    shutil.copytree(run, same)
    assert _cache_cli(same, faces, tmp_path / "cache") == 0
    cfg_path = _student_yaml(faces, same, tmp_path / "student", tmp_path / "student.yaml")
    shutil.rmtree(same)
    retrain = base_cfg(faces, same, kind="teacher", train={"seed": 1})
    run_teacher(retrain)
    capsys.readouterr()
    assert main(["distill", str(cfg_path), f"distill.cache={tmp_path / 'cache'}"]) == 1
    err = capsys.readouterr().err
    assert "manifest.json: anchor epoch_003: route sha256 differs (cache " in err
    assert f"rebuild with `facerco cache {same.resolve()} {faces.resolve()} --out NEW_DIR`" in err
    assert not (tmp_path / "student" / "student.safetensors").exists()


def test_distill_and_cache_refuse_another_image_size(route, tmp_path, capsys):
    root, faces, run = route
    out = tmp_path / "cache"
    assert _cache_cli(run, faces, out) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["version"] == 2 and manifest["dataset"]["input_size"] == [IMAGE, IMAGE]
    assert manifest["meta"]["teacher_run"] == str(run.resolve())
    assert manifest["anchors"]["epoch_003"]["point_sha256"] == json.loads((run / "route.json").read_text())[
        "points"][2]["sha256"]
    cfg_path = _student_yaml(faces, run, tmp_path / "student", tmp_path / "student.yaml")
    capsys.readouterr()
    assert main(["distill", str(cfg_path), f"distill.cache={out}", "data.image_size=16"]) == 1
    assert f"input size differs (cache {IMAGE}x{IMAGE}, dataset 16x16)" in capsys.readouterr().err
    assert _cache_cli(run, faces, out, "--image-size", "16") == 1  # resuming into it at another size
    assert "built for another dataset or input: input size differs" in capsys.readouterr().err


def test_cache_anchor_resolution_and_input_size(route, tmp_path, capsys):
    """What `facerco cache` embeds without --config: named points ('final' included), else every point."""
    import torch

    from facerco.route.cache_anchors import resolve_anchors, route_anchors, teacher_input_size
    from facerco.route.io import load_route

    root, faces, run = route
    loaded = load_route(run)
    assert resolve_anchors(loaded) == ["epoch_001", "epoch_002", "epoch_003", "epoch_004"]
    assert resolve_anchors(loaded, ["epoch_002", "final"]) == ["epoch_002", "epoch_004"]
    with pytest.raises(ValueError, match=r"no route points \['epoch_009'\]; points: epoch_001, "):
        resolve_anchors(loaded, ["epoch_009"])
    assert teacher_input_size(loaded) == IMAGE
    anchors = route_anchors(loaded, ["final"])
    load, sha = anchors["epoch_004"]
    assert list(anchors) == ["epoch_004"] and sha == loaded.point("epoch_004").sha256
    assert load()(torch.zeros(1, 3, IMAGE, IMAGE)).shape == (1, 128)
    argv = ["cache", str(run), str(faces), "--format", "folder", "--out", str(tmp_path / "c"), "--workers", "0",
            "--no-progress", "--device", "cpu"]
    assert main([*argv, "--anchors", "epoch_009"]) == 1
    assert "no route points ['epoch_009']" in capsys.readouterr().err
    assert not (tmp_path / "c" / "manifest.json").exists()
