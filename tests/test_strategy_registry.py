"""The strategy registry (issue 21, item 2): one name -> planner mapping behind `route plan`, the student job and
`compare`; strategy knobs nested per strategy, the flat keys of earlier versions still read; final by default."""

from __future__ import annotations

import json
import re
import typing
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_distill_support import student_cfg, train_teacher, write_faces

import facerco.config as config_module
from facerco.config import (
    ConfigDeprecationWarning,
    ConfigError,
    DistillConfig,
    StrategyName,
    config_from_dict,
    dump_config,
    load_config,
)
from facerco.distill.strategies import STRATEGIES, PlanRequest, get_strategy, plan_strategy, register_strategy

REPO = Path(__file__).resolve().parents[1]

# the flat distill keys as facerco wrote them before the strategy sections, and where each is read now
OLD_FLAT_KEYS = {
    "num_anchors": ("eeis", "num_anchors"), "eeis_every": ("eeis", "every"), "gss_delta": ("gss", "delta"),
    "gss_delta_mode": ("gss", "delta_mode"), "gss_probe_images": ("gss", "probe_images"), "gss_seed": ("gss", "seed"),
    "gss_divergence": ("gss", "divergence"), "gss_use_logits": ("gss", "use_logits"),
    "gss_max_anchors": ("gss", "max_anchors"), "best_metric": ("best", "metric"), "early_point": ("early", "point"),
    "phase_drop_ratio": ("phase", "drop_ratio"), "anchors": ("manual", "anchors"),
}
OLD_VALUES = {"num_anchors": 3, "eeis_every": 2, "gss_delta": 0.7, "gss_delta_mode": "absolute",
              "gss_probe_images": 64, "gss_seed": 5, "gss_divergence": "kl", "gss_use_logits": False,
              "gss_max_anchors": 3, "best_metric": "acc", "early_point": "epoch_002", "phase_drop_ratio": 0.3,
              "anchors": ["epoch_002"]}


@pytest.fixture
def fresh_notices(monkeypatch):
    """Each deprecated key is announced once per process; a test that counts notices starts from none."""
    monkeypatch.setattr(config_module, "_NOTICED", set())


def _flat_to_nested(flat: dict) -> dict:
    nested: dict = {}
    for old, value in flat.items():
        section, key = OLD_FLAT_KEYS[old]
        nested.setdefault(section, {})[key] = value
    return nested


# ---- the registry and the default ------------------------------------------------------------------------------


def test_the_default_strategy_is_final():
    assert DistillConfig().strategy == "final"
    assert load_config(None).distill.strategy == "final"
    assert config_from_dict({"kind": "student"}).distill.strategy == "final"
    assert "recommended" in get_strategy("final").summary


def test_registry_names_are_the_schema_and_cli_choices():
    """`distill.strategy` accepts exactly the registered names; `route plan --strategy` offers all of them."""
    import argparse

    from facerco.commands.distill import register_route_plan

    assert sorted(STRATEGIES) == sorted(typing.get_args(StrategyName))
    parser = argparse.ArgumentParser()
    register_route_plan(parser.add_subparsers())
    plan = parser._subparsers._group_actions[0].choices["plan"]
    choices = next(a.choices for a in plan._actions if a.dest == "strategy")
    assert sorted(choices) == sorted(STRATEGIES)
    for s in STRATEGIES.values():  # every section a strategy names is a section of the config
        assert all(hasattr(DistillConfig(), sec) for sec in s.sections), s.name


def test_unknown_and_duplicate_names_are_refused():
    with pytest.raises(ValueError, match=r"unknown distill.strategy 'gsss'; did you mean 'gss'\?.*registered: final"):
        get_strategy("gsss")
    with pytest.raises(ValueError, match="'eeis' is already registered"):
        register_strategy("eeis", "again")(lambda req: None)
    with pytest.raises(ConfigError, match="distill.strategy' must be one of"):
        load_config(None, ["distill.strategy=gsss"])


# ---- every strategy: the registry's plan is the plan `route plan` prints and writes -------------------------------


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A tiny 4-point teacher route with validation metrics (best / early / gate read them)."""
    root = tmp_path_factory.mktemp("registry")
    faces = write_faces(root / "faces")
    run = train_teacher(faces, root / "teacher")
    manifest = json.loads((run / "route.json").read_text())
    for point, acc in zip(manifest["points"], [0.5, 0.8, 0.7, 0.9], strict=True):
        point["val"] = {"acc": acc}
    (run / "route.json").write_text(json.dumps(manifest))
    return faces, run


# the knobs that make each strategy plan something non-trivial on the 4-point route (nested, as configs now are)
KNOBS: dict[str, dict] = {
    "eeis": {"eeis": {"num_anchors": 2}},
    "reverse": {"eeis": {"num_anchors": 3}, "final_share": 0.5},
    "manual": {"manual": {"anchors": ["epoch_002"]}, "final_share": 0.5},
    "ensemble": {"manual": {"anchors": ["epoch_002", "epoch_003"]}},
    "gss": {"gss": {"delta": 0.6, "probe_images": 24}, "schedule": "multi_stage"},
    "gss_online": {"gss": {"max_anchors": 3, "probe_images": 24}, "final_share": 0.5},
    "best": {"best": {"metric": "acc"}},
    "early": {"best": {"metric": "acc"}},
    "phase": {"phase": {"drop_ratio": 0.9}},
}


def _registry_plan(cfg) -> dict:
    """The plan straight from the registry, with the budget and (GSS) probe computed here, not by `route plan`."""
    from facerco.distill.builders import build_student
    from facerco.distill.probe import make_probe
    from facerco.route.anchors import route_points
    from facerco.route.io import load_route
    from facerco.train.job import build_train_dataset

    route = load_route(cfg.distill.teacher_run)
    dataset = build_train_dataset(cfg)
    spe = len(dataset) // cfg.train.batch_size
    probe = None
    if get_strategy(cfg.distill.strategy).needs_probe and not cfg.distill.stages:
        probe = make_probe(cfg, dataset, route, build_student(cfg))
    anchors, stages = plan_strategy(PlanRequest(cfg.distill, route_points(route), round(cfg.train.epochs * spe), spe,
                                                cfg.optim.lr, probe))
    return {"anchors": anchors.to_dict(), "stages": stages.to_dict()}


@pytest.mark.parametrize("strategy", [*STRATEGIES, "stages"])
def test_every_strategy_plans_the_same_through_the_registry_and_route_plan(teacher, tmp_path, capsys, strategy):
    from facerco.cli import main

    faces, run = teacher
    if strategy == "stages":  # explicit stages override any strategy
        knobs = {"strategy": "gss", "stages": [{"anchor": "epoch_002", "epochs": 1.5}, {"anchor": "final"}]}
    else:
        knobs = {"strategy": strategy, **KNOBS.get(strategy, {})}
    cfg = student_cfg(faces, run, tmp_path / "s", **knobs)
    config = tmp_path / "student.yaml"
    config.write_text(dump_config(cfg))
    out = tmp_path / "plan.json"
    assert main(["route", "plan", str(run), "--config", str(config), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(_registry_plan(cfg)))
    assert " -> ".join(written["anchors"]["anchors"]) in printed
    assert written["stages"]["total_steps"] > 0


def test_route_plan_flags_set_the_nested_knobs(teacher, tmp_path, capsys):
    """`route plan --num-anchors/--every/--delta/...` write the strategy sections, not the old flat keys."""
    from facerco.cli import main

    _, run = teacher
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigDeprecationWarning)
        assert main(["route", "plan", str(run), "--strategy", "eeis", "--every", "2"]) == 0
        assert "anchors:  epoch_002 -> epoch_004" in capsys.readouterr().out
        assert main(["route", "plan", str(run), "--strategy", "manual", "--anchors", "epoch_003"]) == 0
        assert "anchors:  epoch_003 -> epoch_004" in capsys.readouterr().out


# ---- the flat keys of earlier versions ---------------------------------------------------------------------------


def test_flat_keys_load_to_the_nested_values_with_one_notice_per_key(tmp_path, fresh_notices):
    flat = tmp_path / "flat.yaml"
    flat.write_text(yaml.safe_dump({"kind": "student", "distill": {"strategy": "eeis", **OLD_VALUES}}))
    nested = tmp_path / "nested.yaml"
    nested.write_text(yaml.safe_dump({"kind": "student",
                                      "distill": {"strategy": "eeis", **_flat_to_nested(OLD_VALUES)}}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        expected = load_config(nested)  # the nested form is read without any notice
    with pytest.warns(ConfigDeprecationWarning) as caught:
        got = load_config(flat)
    assert got == expected
    assert got.distill.gss.delta == 0.7 and got.distill.eeis.every == 2 and got.distill.manual.anchors == ["epoch_002"]
    messages = [str(w.message) for w in caught]
    assert len(messages) == len(OLD_FLAT_KEYS)  # one line per key, naming the new spelling
    for old, (section, key) in OLD_FLAT_KEYS.items():
        assert f"distill.{old} is deprecated; write distill.{section}.{key} (read as that)" in messages
    assert all(str(w.filename) == str(flat.resolve()) and "\n" not in str(w.message) for w in caught)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per key: a second load says nothing more
        assert load_config(flat) == expected
        assert config_from_dict({"distill": {"gss_delta": 0.7}}).distill.gss.delta == 0.7


def test_flat_dotted_overrides_and_precedence(tmp_path, fresh_notices):
    nested_base = tmp_path / "base.yaml"
    nested_base.write_text(yaml.safe_dump({"distill": {"gss": {"delta": 0.5}, "eeis": {"num_anchors": 4}}}))
    with pytest.warns(ConfigDeprecationWarning, match="distill.gss_delta is deprecated") as caught:
        cfg = load_config(nested_base, ["distill.gss_delta=0.9"])  # an old-style override still wins over the file
    assert caught[0].filename == "override 'distill.gss_delta=0.9'"  # the notice names where the key came from
    assert cfg.distill.gss.delta == 0.9
    child = tmp_path / "child.yaml"  # an old-style child over a new-style base: the child wins
    child.write_text(yaml.safe_dump({"_base_": "base.yaml", "distill": {"num_anchors": 2}}))
    with pytest.warns(ConfigDeprecationWarning, match="distill.num_anchors"):
        assert load_config(child).distill.eeis.num_anchors == 2
    flat_base = tmp_path / "old.yaml"  # a new-style override over an old-style file: the override wins
    flat_base.write_text(yaml.safe_dump({"distill": {"gss_delta": 0.3}}))
    assert load_config(flat_base, ["distill.gss.delta=0.4"]).distill.gss.delta == 0.4
    both = tmp_path / "both.yaml"
    both.write_text(yaml.safe_dump({"distill": {"gss_delta": 0.3, "gss": {"delta": 0.4}}}))
    with pytest.raises(ConfigError, match=r"distill.gss_delta=0.3 \(deprecated\) and distill.gss.delta=0.4 disagree"):
        load_config(both)
    with pytest.raises(ConfigError, match="unknown key 'distill.gss_delt'; did you mean 'distill.gss.delta'"):
        load_config(None, ["distill.gss_delt=1"])


def test_shipped_configs_use_the_nested_keys():
    files = sorted((REPO / "configs").rglob("*.yaml")) + sorted((REPO / "facerco" / "configs").rglob("*.yaml"))
    assert len(files) > 10
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigDeprecationWarning)
        for f in files:
            load_config(f)
    for f in files:
        text = f.read_text()
        assert not any(re.search(rf"^  {old}:", text, re.MULTILINE) for old in OLD_FLAT_KEYS), f  # distill level


# ---- a run folder written with flat keys resumes --------------------------------------------------------------


def _old_style(config_yaml: Path) -> None:
    """Rewrite a run folder's config.yaml as facerco wrote it before the strategy sections (flat distill keys)."""
    data = yaml.safe_load(config_yaml.read_text())
    distill = data["distill"]
    for old, (section, key) in OLD_FLAT_KEYS.items():
        distill[old] = distill[section][key]
    for section in {s for s, _ in OLD_FLAT_KEYS.values()}:
        del distill[section]
    config_yaml.write_text(yaml.safe_dump(data, sort_keys=False))


def test_a_run_folder_with_flat_keys_resumes_unchanged(teacher, tmp_path, fresh_notices):
    from facerco.distill.job import run_distill

    faces, run = teacher
    knobs = {"strategy": "eeis", "eeis": {"num_anchors": 2}, "schedule": "multi_stage", "final_share": 0.5}
    full = run_distill(student_cfg(faces, run, tmp_path / "full", **knobs))
    cut = student_cfg(faces, run, tmp_path / "cut", **knobs)
    cut.train.max_steps = 9  # stopped (as if killed) inside stage 0
    assert run_distill(cut).step == 9
    saved = tmp_path / "cut" / "config.yaml"
    _old_style(saved)
    assert "num_anchors: 2" in saved.read_text() and "eeis:" not in saved.read_text()
    with pytest.warns(ConfigDeprecationWarning) as caught:
        again = load_config(saved, ["train.max_steps=0"])
    assert "distill.num_anchors is deprecated; write distill.eeis.num_anchors (read as that)" in \
        [str(w.message) for w in caught]
    assert again.distill == cut.distill
    resumed = run_distill(again)
    assert resumed.step == full.step == 24
    log = [json.loads(x) for x in (tmp_path / "cut" / "log.jsonl").read_text().splitlines()]
    assert any(r["event"] == "resume" and r["step"] == 9 for r in log)
    assert (tmp_path / "cut" / "plan.json").read_bytes() == (tmp_path / "full" / "plan.json").read_bytes()
    a, b = load_file(str(full.student_path)), load_file(str(resumed.student_path))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
