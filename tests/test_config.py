"""Config schema: YAML loading, `_base_` inheritance, dotted overrides and error messages."""

from __future__ import annotations

import pytest

from facerco.config import Config, ConfigError, dump_config, load_config


def _write(path, text):
    path.write_text(text)
    return path


def test_defaults_file_then_overrides(tmp_path):
    _write(tmp_path / "base.yaml", "optim:\n  lr: 0.2\ntrain:\n  epochs: 3\n")
    child = _write(tmp_path / "child.yaml", "_base_: base.yaml\ntrain:\n  batch_size: 16\n")
    cfg = load_config(child, ["optim.lr=0.05", "model.name=mbf_0.8m"])
    assert isinstance(cfg, Config)
    assert cfg.optim.lr == 0.05 and cfg.train.epochs == 3.0 and cfg.train.batch_size == 16
    assert cfg.model.name == "mbf_0.8m" and cfg.optim.momentum == 0.9


def test_base_list_later_wins(tmp_path):
    _write(tmp_path / "a.yaml", "train:\n  seed: 1\n  batch_size: 8\n")
    _write(tmp_path / "b.yaml", "train:\n  seed: 2\n")
    child = _write(tmp_path / "c.yaml", "_base_: [a.yaml, b.yaml]\n")
    cfg = load_config(child)
    assert cfg.train.seed == 2 and cfg.train.batch_size == 8


def test_unknown_key_suggests_nearest(tmp_path):
    f = _write(tmp_path / "bad.yaml", "optim:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*optim.lrr.*did you mean 'optim.lr'"):
        load_config(f)


def test_wrong_type_names_key_file_and_type(tmp_path):
    f = _write(tmp_path / "bad.yaml", "train:\n  batch_size: many\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*train.batch_size.*expects int"):
        load_config(f)


def test_literal_and_bool_checked():
    with pytest.raises(ConfigError, match="must be one of"):
        load_config(None, ["optim.name=adam"])
    with pytest.raises(ConfigError, match="expects bool"):
        load_config(None, ["data.flip=maybe"])


def test_int_widens_to_float_but_bool_does_not():
    assert load_config(None, ["optim.lr=1"]).optim.lr == 1.0
    with pytest.raises(ConfigError):
        load_config(None, ["optim.lr=true"])


def test_missing_base_and_cycle(tmp_path):
    f = _write(tmp_path / "x.yaml", "_base_: nope.yaml\n")
    with pytest.raises(ConfigError, match="not found"):
        load_config(f)
    _write(tmp_path / "p.yaml", "_base_: q.yaml\n")
    q = _write(tmp_path / "q.yaml", "_base_: p.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(q)


def test_nested_stage_list_and_dump_roundtrip(tmp_path):
    cfg = load_config(None, ["distill.stages=[{anchor: epoch_002, epochs: 1.5}, {anchor: final}]"])
    assert cfg.distill.stages[0].epochs == 1.5 and cfg.distill.stages[1].anchor == "final"
    again = _write(tmp_path / "dump.yaml", dump_config(cfg))
    assert load_config(again) == cfg


def test_cli_config_show(tmp_path, capsys):
    from facerco.cli import main

    f = _write(tmp_path / "c.yaml", "train:\n  epochs: 7\n")
    assert main(["config", "show", str(f), "optim.lr=0.01"]) == 0
    out = capsys.readouterr().out
    assert "epochs: 7.0" in out and "lr: 0.01" in out
    assert main(["config", "show", str(f), "optim.nope=1"]) == 1
