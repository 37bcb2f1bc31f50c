"""Backbones: registry behaviour, shapes/gradients, published parameter and MAC counts, insightface key names,
and checkpoint round trips (facerco safetensors and insightface-style .pth)."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from torch import nn

from facerco.models import create_model, list_models, register_model
from facerco.models.checkpoint import load_model, read_checkpoint_metadata, save_model_checkpoint
from facerco.models.complexity import count_params, measure_complexity

BIG = {"iresnet100", "iresnet200", "mbf_large"}

# (params, MACs at 112x112) as quoted in FORMATS.md §4; each must round to the quoted digits
PUBLISHED = {
    "iresnet18": ("24.0", "2.61"),
    "iresnet34": ("34.1", "4.46"),
    "iresnet50": ("43.6", "6.31"),
    "iresnet100": ("65.2", "12.09"),
    "mbf": ("2.06", "0.44"),
    "mobilefacenet": ("1.0", "0.221"),
}


def _rounds_to(value: float, quoted: str) -> bool:
    decimals = len(quoted.split(".")[1])
    return f"{value:.{decimals}f}" == quoted


def _meta_model(name: str, **kw) -> nn.Module:
    """Build on the meta device: shapes and counts without allocating or initialising weights."""
    with torch.device("meta"):
        return create_model(name, **kw)


# ------------------------------------------------------------------------------------------------ registry


def test_registry_has_the_families():
    names = list_models()
    for name in ["iresnet18", "iresnet34", "iresnet50", "iresnet100", "iresnet200", "iresnet_tiny", "iresnet_small",
                 "mobilefacenet", "mbf", "mbf_0.8m", "mbf_large"]:
        assert name in names


def test_unknown_name_lists_nearest_and_valid():
    with pytest.raises(ValueError, match=r"unknown model 'iresnet5'.*did you mean 'iresnet50'.*valid models:.*mbf"):
        create_model("iresnet5")


def test_bad_override_names_valid_keys():
    with pytest.raises(ValueError, match=r"no argument 'embeding_size'.*did you mean 'embedding_size'"):
        create_model("mbf", embeding_size=128)
    with pytest.raises(ValueError, match=r"'layers' is fixed"):
        create_model("iresnet18", layers=(1, 1, 1, 1))


def test_none_overrides_are_dropped_and_recorded_kwargs_rebuild():
    m = create_model("iresnet_tiny", embedding_size=None, dropout=None, width_mult=None)
    assert m.meta.arch_kwargs == {} and m.meta.embedding_size == 128
    m = create_model("iresnet_tiny", embedding_size=64, dropout=None)
    assert m.meta.arch_kwargs == {"embedding_size": 64}
    again = create_model(m.meta.name, **m.meta.arch_kwargs)
    assert [v.shape for v in again.state_dict().values()] == [v.shape for v in m.state_dict().values()]


def test_duplicate_registration_fails():
    with pytest.raises(ValueError, match="already registered"):

        @register_model
        def mbf(**overrides):  # noqa: ARG001
            return nn.Identity()


def test_meta_defaults():
    m = create_model("mbf_0.8m")
    assert m.meta.input_size == (112, 112)
    assert (m.meta.mean, m.meta.std) == (127.5, 127.5)
    assert m.meta.embedding_size == 256


# ------------------------------------------------------------------------------------------------ forward/backward


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in BIG else n for n in list_models()]
)
def test_forward_backward(name):
    """32x32 input (not 112): exercises the computed flatten size and keeps big models cheap."""
    torch.manual_seed(0)
    model = create_model(name, input_size=32)
    model.train()
    x = torch.randn(2, 3, 32, 32)
    y = model(x)
    assert y.shape == (2, model.meta.embedding_size)
    assert torch.isfinite(y).all()
    (y * torch.randn_like(y)).sum().backward()
    for pname, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), pname
            assert p.grad.abs().sum() > 0, f"{name}: zero gradient on {pname}"
    with torch.no_grad():  # train mode: batch statistics, so both paths see identical normalisation
        feat = model.forward_features(x)
        assert torch.equal(model.forward_head(feat), model(x))
        assert model.forward_head(feat, pre_logits=True).shape[0] == 2


@pytest.mark.parametrize("name", ["iresnet_tiny", "mbf_0.8m"])
def test_feature_info_names_reach_stages(name):
    model = create_model(name).eval()
    shapes = {}
    hooks = [model.get_submodule(info["module"]).register_forward_hook(
        lambda _m, _i, out, key=info["module"]: shapes.__setitem__(key, out.shape)) for info in model.feature_info]
    model(torch.zeros(1, 3, 112, 112))
    for h in hooks:
        h.remove()
    for info in model.feature_info:
        assert shapes[info["module"]] == (1, info["num_chs"], 112 // info["reduction"], 112 // info["reduction"])


def test_input_size_is_not_hard_coded():
    model = create_model("iresnet_tiny", input_size=128)
    assert model.fc.in_features == 128 * 8 * 8
    assert model.eval()(torch.zeros(1, 3, 128, 128)).shape == (1, 128)
    assert create_model("mbf", input_size=(128, 96)).features.layers[0].layers[0].kernel_size == (8, 6)
    with pytest.raises(ValueError, match="divisible by 16"):
        create_model("mbf", input_size=100)


def test_reset_head_changes_embedding():
    model = create_model("mbf_0.8m")
    model.reset_head(64)
    assert model.eval()(torch.zeros(1, 3, 112, 112)).shape == (1, 64)
    assert model.meta.embedding_size == 64 and model.meta.arch_kwargs["embedding_size"] == 64


# ------------------------------------------------------------------------------------------------ counts


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_params_and_macs(name):
    model = _meta_model(name)
    params, macs = PUBLISHED[name]
    cx = measure_complexity(model)
    assert _rounds_to(cx.params / 1e6, params), cx.params
    assert _rounds_to(cx.macs / 1e9, macs), cx.macs


def test_student_is_0_8m_within_3_percent():
    n = count_params(create_model("mbf_0.8m"))
    assert abs(n - 0.8e6) <= 0.03 * 0.8e6, n


def test_complexity_counts_a_known_small_net():
    """Hand count: conv 3->4 3x3 pad 1 on 8x8 = 64*4*27 MACs; linear 256->5 = 1280."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.PReLU(4), nn.Flatten(),
                        nn.Linear(256, 5))
    cx = measure_complexity(net, input_size=(8, 8))
    assert cx.by_type == {"conv": 64 * 4 * 27, "linear": 1280, "bn": 256, "prelu": 256}
    assert cx.params == 108 + 8 + 4 + 1280 + 5


# ------------------------------------------------------------------------------------------------ insightface names


def _bn(prefix: str, c: int, d: int = 2) -> dict[str, tuple]:
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
            f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}


def insightface_iresnet_keys(layers, emb=512) -> dict[str, tuple]:
    """Key -> shape, written from the FORMATS.md §4 description (not from any model code)."""
    keys = {"conv1.weight": (64, 3, 3, 3), **_bn("bn1", 64), "prelu.weight": (64,)}
    inplanes = 64
    for stage, (planes, n) in enumerate(zip((64, 128, 256, 512), layers), start=1):
        for i in range(n):
            p = f"layer{stage}.{i}"
            cin = inplanes if i == 0 else planes
            keys.update(_bn(f"{p}.bn1", cin))
            keys[f"{p}.conv1.weight"] = (planes, cin, 3, 3)
            keys.update(_bn(f"{p}.bn2", planes))
            keys[f"{p}.prelu.weight"] = (planes,)
            keys[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            keys.update(_bn(f"{p}.bn3", planes))
            if i == 0:
                keys[f"{p}.downsample.0.weight"] = (planes, cin, 1, 1)
                keys.update(_bn(f"{p}.downsample.1", planes))
        inplanes = planes
    keys.update(_bn("bn2", 512))
    keys["fc.weight"] = (emb, 512 * 7 * 7)
    keys["fc.bias"] = (emb,)
    keys.update(_bn("features", emb))
    return keys


def insightface_mbf_keys(blocks=(1, 4, 6, 2), scale=2, emb=512) -> dict[str, tuple]:
    """Key -> shape of insightface arcface_torch ``mbf`` (ConvBlock/LinearBlock/DepthWise/Residual/GDC layout)."""
    keys: dict[str, tuple] = {}

    def conv_block(p, cin, cout, k=1, groups=1, act=True):
        keys[f"{p}.layers.0.weight"] = (cout, cin // groups, k, k)
        keys.update(_bn(f"{p}.layers.1", cout))
        if act:
            keys[f"{p}.layers.2.weight"] = (cout,)

    def depthwise(p, cin, cout, hidden):
        conv_block(f"{p}.layers.0", cin, hidden)
        conv_block(f"{p}.layers.1", hidden, hidden, 3, groups=hidden)
        conv_block(f"{p}.layers.2", hidden, cout, act=False)

    c1, c2 = 64 * scale, 128 * scale
    conv_block("layers.0", 3, c1, 3)
    assert blocks[0] == 1
    conv_block("layers.1", c1, c1, 3, groups=64)
    depthwise("layers.2", c1, c1, 128)
    for i in range(blocks[1]):
        depthwise(f"layers.3.layers.{i}", c1, c1, 128)
    depthwise("layers.4", c1, c2, 256)
    for i in range(blocks[2]):
        depthwise(f"layers.5.layers.{i}", c2, c2, 256)
    depthwise("layers.6", c2, c2, 512)
    for i in range(blocks[3]):
        depthwise(f"layers.7.layers.{i}", c2, c2, 256)
    conv_block("conv_sep", c2, 512)
    keys["features.layers.0.layers.0.weight"] = (512, 1, 7, 7)
    keys.update(_bn("features.layers.0.layers.1", 512))
    keys["features.layers.2.weight"] = (emb, 512)
    keys.update(_bn("features.layers.3", emb))
    return keys


@pytest.mark.parametrize("name,layers", [("iresnet18", (2, 2, 2, 2)), ("iresnet50", (3, 4, 14, 3)),
                                         ("iresnet100", (3, 13, 30, 3)), ("iresnet200", (6, 26, 60, 6))])
def test_iresnet_state_dict_names_match_insightface(name, layers):
    got = {k: tuple(v.shape) for k, v in _meta_model(name).state_dict().items()}
    assert got == insightface_iresnet_keys(layers)


@pytest.mark.parametrize("name,scale,emb", [("mbf", 2, 512), ("mobilefacenet", 1, 128)])
def test_mbf_state_dict_names_match_insightface(name, scale, emb):
    got = {k: tuple(v.shape) for k, v in _meta_model(name).state_dict().items()}
    assert got == insightface_mbf_keys(scale=scale, emb=emb)


def _random_state(keys: dict[str, tuple], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, shape in keys.items():
        if k.endswith("num_batches_tracked"):
            state[k] = torch.tensor(7)
        elif k.endswith("running_var"):
            state[k] = torch.rand(shape, generator=g) + 0.5
        else:
            state[k] = torch.randn(shape, generator=g) * 0.05
    return state


def test_insightface_pth_with_module_prefix_loads_strict(tmp_path):
    """A hand-built insightface-named r18 state_dict (DDP 'module.' prefix) loads and drives the forward pass."""
    state = _random_state(insightface_iresnet_keys((2, 2, 2, 2)))
    state["features.weight"] = torch.ones(512)  # frozen at 1 in insightface
    path = tmp_path / "backbone.pth"
    torch.save({f"module.{k}": v for k, v in state.items()}, path)
    loaded = load_model(path, arch="iresnet18")
    assert loaded.classifier is None and not loaded.model.training
    assert loaded.metadata["arch"] == "iresnet18"
    ref = create_model("iresnet18")
    ref.load_state_dict(state, strict=True)
    x = torch.randn(1, 3, 112, 112)
    assert torch.equal(loaded.model(x), ref.eval()(x))


def test_insightface_mbf_pth_infers_embedding_size(tmp_path):
    state = _random_state(insightface_mbf_keys(emb=256))
    path = tmp_path / "mbf.pt"
    torch.save(state, path)
    loaded = load_model(path, arch="mbf")
    assert loaded.model.meta.embedding_size == 256
    assert loaded.metadata["arch_kwargs"] == {"embedding_size": 256}


def test_pth_needs_arch_and_reports_mismatch(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(_random_state(insightface_iresnet_keys((2, 2, 2, 2))), path)
    with pytest.raises(ValueError, match=r"r18\.pth.*pass arch="):
        load_model(path)
    with pytest.raises(ValueError, match=r"r18\.pth: does not match iresnet34.*missing keys"):
        load_model(path, arch="iresnet34")


def test_pth_with_python_objects_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"a": torch.zeros(1)}, "cfg": argparse_namespace()}, path)
    with pytest.raises(ValueError, match=r"evil\.pth: refused by torch.load\(weights_only=True\)"):
        load_model(path, arch="iresnet_tiny")


def argparse_namespace():
    import argparse

    return argparse.Namespace(lr=0.1)


def test_features_bn_scale_fixed_at_one():
    model = create_model("iresnet_tiny")
    assert not model.features.weight.requires_grad
    model.features.weight.requires_grad_(True)  # even if re-enabled, forward never reads it
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0, weight_decay=0.5)
    model.train()
    model(torch.randn(4, 3, 112, 112)).pow(2).sum().backward()
    opt.step()
    assert torch.equal(model.features.weight.detach(), torch.ones(128))
    state = model.state_dict()
    state["features.weight"] = torch.full((128,), 2.0)
    with pytest.raises(ValueError, match="features.weight' must be all ones"):
        create_model("iresnet_tiny").load_state_dict(state)


# ------------------------------------------------------------------------------------------------ checkpoints


def test_checkpoint_round_trip_with_classifier_and_metadata(tmp_path):
    torch.manual_seed(1)
    model = create_model("mbf_0.8m", embedding_size=64)
    model.train()
    model(torch.randn(4, 3, 112, 112))  # move BN running stats away from defaults
    classifier = torch.randn(10, 64)
    path = save_model_checkpoint(tmp_path / "ck.safetensors", nn.parallel.DataParallel(model), classifier,
                                 {"epoch": 3, "val": {"lfw": 0.9}})
    header = read_checkpoint_metadata(path)
    assert header["format_version"] == 1 and header["arch"] == "mbf_0.8m"
    assert header["arch_kwargs"] == {"embedding_size": 64} and header["embedding_size"] == 64
    assert header["epoch"] == 3 and header["val"] == {"lfw": 0.9}
    loaded = load_model(path)
    assert torch.equal(loaded.classifier, classifier)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v), k
    x = torch.randn(2, 3, 112, 112)
    assert torch.equal(loaded.model(x), model.eval()(x))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left behind


def test_checkpoint_rejects_reserved_metadata_and_bad_classifier(tmp_path):
    model = create_model("iresnet_tiny")
    with pytest.raises(ValueError, match="reserved"):
        save_model_checkpoint(tmp_path / "a.safetensors", model, metadata={"arch": "x"})
    with pytest.raises(ValueError, match=r"classifier must be \(num_classes, 128\)"):
        save_model_checkpoint(tmp_path / "a.safetensors", model, torch.zeros(5, 7))


def _rewrite_header(path, mutate):
    """Edit a safetensors file's JSON header in place (what a tampered or mis-assembled file looks like)."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    mutate(header)
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + raw[8 + n:])


def test_mismatched_and_tampered_files_name_the_file(tmp_path):
    path = save_model_checkpoint(tmp_path / "tiny.safetensors", create_model("iresnet_tiny"))
    # header says another embedding size than the tensors hold -> strict load reports shapes
    bad = tmp_path / "mismatch.safetensors"
    bad.write_bytes(path.read_bytes())

    def set_emb(h):
        meta = json.loads(h["__metadata__"]["facerco"])
        meta["arch_kwargs"] = {"embedding_size": 64}
        h["__metadata__"]["facerco"] = json.dumps(meta)

    _rewrite_header(bad, set_emb)
    with pytest.raises(ValueError, match=r"mismatch\.safetensors: does not match iresnet_tiny.*shape mismatches"):
        load_model(bad)
    # truncated file
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"cut\.safetensors: not a readable safetensors file"):
        load_model(cut)
    # not a facerco file
    plain = tmp_path / "plain.safetensors"
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(plain))
    with pytest.raises(ValueError, match=r"plain\.safetensors: no 'facerco' metadata"):
        load_model(plain)
    with pytest.raises(ValueError, match=r"tiny\.safetensors: checkpoint holds 'iresnet_tiny'"):
        load_model(path, arch="mbf")
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_model(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match=r"x\.onnx: unknown checkpoint type"):
        (tmp_path / "x.onnx").write_bytes(b"0")
        load_model(tmp_path / "x.onnx")


def test_model_info_command(capsys):
    from facerco.cli import main

    assert main(["model-info", "mbf_0.8m", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params"] == count_params(create_model("mbf_0.8m"))
    assert info["embedding_size"] == 256 and info["input_size"] == [112, 112]
    assert main(["model-info", "mobilefacenet", "--embedding-size", "256"]) == 0
    out = capsys.readouterr().out
    assert "mobilefacenet" in out and "221M" in out and " 256" in out
    assert main(["model-info", "mbf_0.8"]) == 1
    assert "did you mean 'mbf_0.8m'" in capsys.readouterr().err


def test_clean_state_dict_strips_wrapper_prefixes():
    from facerco.models.checkpoint import clean_state_dict

    t = torch.zeros(1)
    assert list(clean_state_dict({"module._orig_mod.fc.weight": t, "_orig_mod.module.a": t, "b.module.c": t})) == [
        "fc.weight", "a", "b.module.c"]


def test_checkpoint_takes_the_partial_fc_head_as_classifier(tmp_path):
    from facerco.losses.margin import CombinedMarginLoss
    from facerco.losses.partial_fc import PartialFC

    model = create_model("iresnet_tiny")
    head = PartialFC(CombinedMarginLoss.arcface(), embedding_size=128, num_classes=7)
    path = save_model_checkpoint(tmp_path / "t.safetensors", model, head, {"step": 5})
    loaded = load_model(path)
    assert torch.equal(loaded.classifier, head.weight.detach())
    fresh = PartialFC(CombinedMarginLoss.arcface(), embedding_size=128, num_classes=7, seed=9)
    fresh.load_full_weight(loaded.classifier)
    assert torch.equal(fresh.weight, head.weight)


def test_model_meta_dict_round_trip():
    from facerco.models import ModelMeta

    meta = create_model("mbf_0.8m", embedding_size=128).meta
    data = json.loads(json.dumps(meta.to_dict()))
    assert ModelMeta.from_dict(data) == meta
    with pytest.raises(ValueError, match="unknown keys"):
        ModelMeta.from_dict({**data, "colour": "bgr"})


# ------------------------------------------------------------------------------------------------ insightface aliases

ALIASES = {"r18": "iresnet18", "r34": "iresnet34", "r50": "iresnet50", "r100": "iresnet100", "r200": "iresnet200"}


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_insightface_alias_builds_the_registered_model(alias):
    from facerco.models import is_model, model_family, resolve_model_name

    model = _meta_model(alias)
    assert model.meta.name == ALIASES[alias] == resolve_model_name(alias)  # checkpoints/exports carry the real name
    assert count_params(model) == count_params(_meta_model(ALIASES[alias]))
    assert is_model(alias) and model_family(alias) == "iresnet"
    assert alias not in list_models()  # the listing stays one row per model


def test_alias_registration_refuses_clashes_and_unknown_targets():
    from facerco.models import list_aliases, register_alias

    with pytest.raises(ValueError, match="'r50' is already an alias of 'iresnet50'"):
        register_alias("r50", "iresnet100")
    with pytest.raises(ValueError, match="'mbf' is already a registered model"):
        register_alias("mbf", "iresnet18")
    with pytest.raises(ValueError, match="target model 'r999' is not registered"):
        register_alias("x", "r999")
    with pytest.raises(ValueError, match="already an alias of 'iresnet18'"):

        @register_model
        def r18(**overrides):  # noqa: ARG001
            return nn.Identity()

    register_alias("r18", "iresnet18")  # re-registering the same alias is harmless (module reloads)
    assert list_aliases()["iresnet100"] == ["r100"]
    with pytest.raises(ValueError, match=r"unknown model 'r101'; did you mean 'r100'.*aliases: r18=iresnet18"):
        create_model("r101")


def test_model_info_accepts_and_lists_aliases(capsys):
    from facerco.cli import main

    assert main(["model-info", "r100", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["name"] == "iresnet100" and info["aliases"] == ["r100"]
    assert info["params"] == count_params(_meta_model("iresnet100"))
    assert main(["model-info", "--list"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows["iresnet50"][-1] == "r50" and rows["iresnet200"][-1] == "r200" and rows["mbf"][-1] == "-"


def test_config_model_name_alias(tmp_path):
    from facerco.config import load_config
    from facerco.train.job import build_backbone

    (tmp_path / "t.yaml").write_text("kind: teacher\nmodel:\n  name: r50\n")
    cfg = load_config(tmp_path / "t.yaml")
    with torch.device("meta"):
        assert build_backbone(cfg).meta.name == "iresnet50"
        assert build_backbone(load_config(tmp_path / "t.yaml", ["model.name=r18"])).meta.name == "iresnet18"


def _small_r18(**kw):
    torch.manual_seed(0)
    return create_model("r18", width_mult=0.125, input_size=32, **kw)


def test_checkpoints_read_and_check_aliases(tmp_path):
    model = _small_r18()
    path = save_model_checkpoint(tmp_path / "m.safetensors", model)
    assert read_checkpoint_metadata(path)["arch"] == "iresnet18"
    assert load_model(path, arch="r18").model.meta.name == "iresnet18"  # alias as a check of the header
    with pytest.raises(ValueError, match=r"m\.safetensors: checkpoint holds 'iresnet18', but arch='r50'"):
        load_model(path, arch="r50")
    # a header written by hand (or by another tool) with the insightface name loads too
    from safetensors.torch import load_file, save_file

    header = read_checkpoint_metadata(path)
    save_file(load_file(str(path)), str(tmp_path / "h.safetensors"), metadata={"facerco": json.dumps(
        {**header, "arch": "r18"})})
    loaded = load_model(tmp_path / "h.safetensors", arch="iresnet18")
    assert loaded.model.meta.name == "iresnet18"
    assert all(torch.equal(a, b) for a, b in zip(loaded.model.state_dict().values(), model.state_dict().values(),
                                                 strict=True))
    torch.save(model.state_dict(), tmp_path / "m.pth")
    pth = load_model(tmp_path / "m.pth", arch="r18", arch_kwargs={"width_mult": 0.125, "input_size": 32})
    assert pth.metadata["arch"] == "iresnet18" and pth.model.meta.name == "iresnet18"


def _write_images(root, names):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(root / name)


def test_arch_alias_on_the_command_line(tmp_path, capsys):
    """`--arch r18` in eval megaface, export embeddings and export onnx (insightface .pth and facerco checkpoints)."""
    from facerco.cli import main

    torch.manual_seed(0)
    torch.save(create_model("iresnet18").state_dict(), tmp_path / "r18.pth")  # a published-size insightface file
    _write_images(tmp_path / "probes", [f"id{i}/{j}.png" for i in range(2) for j in range(2)])
    _write_images(tmp_path / "dist", ["d0.png", "d1.png", "d2.png"])
    (tmp_path / "dist.txt").write_text("".join(f"{tmp_path / 'dist' / f'd{i}.png'}\n" for i in range(3)))
    assert main(["export", "embeddings", str(tmp_path / "r18.pth"), str(tmp_path / "dist.txt"), "-o",
                 str(tmp_path / "emb"), "--arch", "r18", "--device", "cpu"]) == 0
    assert "wrote 3 embeddings (dim 512" in capsys.readouterr().out
    assert main(["eval", "megaface", "--model", str(tmp_path / "r18.pth"), "--arch", "r18", "--probes",
                 str(tmp_path / "probes"), "--distractors", str(tmp_path / "dist.txt"), "--sizes", "3", "--device",
                 "cpu", "--num-workers", "0", "--far", "0.5", "--out", str(tmp_path / "rep")]) == 0
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())["identification"]
    assert next(iter(rep.values()))["num_probes"] == 4
    save_model_checkpoint(tmp_path / "s.safetensors", _small_r18())
    assert main(["export", "onnx", str(tmp_path / "s.safetensors"), "-o", str(tmp_path / "s.onnx"), "--arch", "r18",
                 "--no-check", "--exporter", "legacy"]) == 0
    import onnx

    props = {p.key: p.value for p in onnx.load(str(tmp_path / "s.onnx")).metadata_props}
    assert props["facerco.arch"] == "iresnet18"
    assert main(["export", "onnx", str(tmp_path / "s.safetensors"), "-o", str(tmp_path / "t.onnx"), "--arch", "r50",
                 "--no-check"]) == 1
    assert "holds 'iresnet18', but arch='r50'" in capsys.readouterr().err
