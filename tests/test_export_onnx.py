"""ONNX export: contract (input/output, dynamic batch, one file), parity with PyTorch, fp16, insightface runtime."""

from __future__ import annotations

import types
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch
from torch import nn

from facerco.export import onnx as fx


class TinyFace(nn.Module):
    """Conv-BN-PReLU stem, a strided block and a Linear+BatchNorm1d head: the op mix of the real backbones."""

    def __init__(self, emb: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.prelu = nn.PReLU(8)
        self.conv2 = nn.Conv2d(8, 16, 3, 2, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.prelu2 = nn.PReLU(16)
        self.pool = nn.AdaptiveAvgPool2d(7)
        self.fc = nn.Linear(16 * 7 * 7, emb)
        self.features = nn.BatchNorm1d(emb)
        self.meta = types.SimpleNamespace(name="tiny_face", input_size=(112, 112), embedding_size=emb, mean=127.5,
                                          std=127.5, arch_kwargs={})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.prelu2(self.bn2(self.conv2(x)))
        return self.features(self.fc(torch.flatten(self.pool(x), 1)))


def _trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN running stats and PReLU slopes, so folding and PReLU export are really exercised."""
    torch.manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 3, 112, 112) * 1.5 + 0.2)
        for module in model.modules():
            if isinstance(module, nn.PReLU):
                module.weight.uniform_(-0.3, 0.6)
    return model.eval()


def _torch_emb(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(x)).numpy()


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def tiny() -> nn.Module:
    return _trained_like(TinyFace())


@pytest.fixture(scope="module")
def tiny_onnx(tiny: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> fx.OnnxExportInfo:
    out = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    return fx.export_onnx(tiny, out)


def test_contract_single_input_output_and_dynamic_batch(tiny_onnx: fx.OnnxExportInfo) -> None:
    model = onnx.load(tiny_onnx.path)
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["data"]
    assert [o.name for o in model.graph.output] == ["embedding"]
    spec = fx.input_spec(model)
    assert isinstance(spec[0], str) and spec[0], spec
    assert spec[1:] == [3, 112, 112]
    out_dims = model.graph.output[0].type.tensor_type.shape.dim
    assert not out_dims[0].HasField("dim_value") and out_dims[1].dim_value == 32
    assert fx.is_batch_dynamic(model)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert "PRelu" in {n.op_type for n in model.graph.node}
    props = {p.key: p.value for p in model.metadata_props}
    assert props["facerco.arch"] == "tiny_face" and props["facerco.embedding_size"] == "32"


def test_one_self_contained_file(tiny_onnx: fx.OnnxExportInfo) -> None:
    folder = Path(tiny_onnx.path).parent
    assert sorted(p.name for p in folder.iterdir()) == ["tiny.onnx"]
    model = onnx.load(tiny_onnx.path, load_external_data=False)
    assert model.graph.initializer, "weights must be stored inside the graph"
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_batch_sizes_match_torch(tiny: nn.Module, tiny_onnx: fx.OnnxExportInfo, batch: int) -> None:
    x = fx.normalize_batch(fx.generated_images(batch, (112, 112), seed=batch))
    got = fx.ort_session(tiny_onnx.path, threads=1).run(None, {"data": x})[0]
    ref = _torch_emb(tiny, x)
    assert got.shape == (batch, 32)
    assert _cosine(ref, got).min() >= 0.9999
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_legacy_exporter_also_dynamic(tiny: nn.Module, tmp_path: Path) -> None:
    info = fx.export_onnx(tiny, tmp_path / "legacy.onnx", exporter="legacy", opset=13)
    model = onnx.load(info.path)
    assert fx.is_batch_dynamic(model) and model.opset_import[0].version == 13
    x = fx.normalize_batch(fx.generated_images(3, (112, 112)))
    got = fx.ort_session(info.path, threads=1).run(None, {"data": x})[0]
    assert _cosine(_torch_emb(tiny, x), got).min() >= 0.9999


def test_train_mode_model_exported_in_eval_mode_and_left_untouched(tmp_path: Path) -> None:
    model = _trained_like(TinyFace(), seed=2).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    info = fx.export_onnx(model, tmp_path / "m.onnx", exporter="legacy")
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    x = fx.normalize_batch(fx.generated_images(4, (112, 112)))
    got = fx.ort_session(info.path, threads=1).run(None, {"data": x})[0]
    assert _cosine(_torch_emb(model.eval(), x), got).min() >= 0.9999  # running stats, not batch stats


def test_simplify_keeps_dynamic_batch(tiny: nn.Module, tmp_path: Path) -> None:
    """onnxsim on the legacy exporter's graph (the CLI test covers dynamo + simplify)."""
    info = fx.export_onnx(tiny, tmp_path / "simp.onnx", simplify=True, exporter="legacy")
    model = onnx.load(info.path)
    assert fx.is_batch_dynamic(model) and info.simplified
    x = fx.normalize_batch(fx.generated_images(5, (112, 112)))
    got = fx.ort_session(info.path, threads=1).run(None, {"data": x})[0]
    assert _cosine(_torch_emb(tiny, x), got).min() >= 0.9999


def test_fp16_weights_float32_io_and_parity(tiny: nn.Module, tiny_onnx: fx.OnnxExportInfo, tmp_path: Path) -> None:
    info = fx.export_onnx(tiny, tmp_path / "half.onnx", fp16=True)
    model = onnx.load(info.path)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    big = [t for t in model.graph.initializer if np.prod(t.dims) >= 64]
    assert big and all(t.data_type == onnx.TensorProto.FLOAT16 for t in big)
    assert info.file_bytes < 0.6 * tiny_onnx.file_bytes
    x = fx.normalize_batch(fx.generated_images(7, (112, 112)))
    got = fx.ort_session(info.path, threads=1).run(None, {"data": x})[0]
    assert got.dtype == np.float32
    assert _cosine(_torch_emb(tiny, x), got).min() >= 0.9999  # measured 0.99999+ on real checkpoints too
    _insightface_matches(tiny, info.path)  # float32 I/O: insightface feeds float32 blobs unchanged


def test_check_parity_report_and_its_power(tiny: nn.Module, tiny_onnx: fx.OnnxExportInfo) -> None:
    images = fx.generated_images(6, (112, 112))
    names = [f"g{i}" for i in range(6)]
    report = fx.check_parity(tiny, tiny_onnx.path, images, names, batch_sizes=(1, 4), repeats=1)
    assert report["summary"]["min_cosine"] >= 0.9999 and len(report["per_image"]) == 6
    assert set(report["latency"]) == {"1", "4"} and report["latency"]["4"]["onnxruntime_img_s"] > 0
    other = _trained_like(TinyFace(), seed=1)  # different weights: the check must notice
    bad = fx.check_parity(other, tiny_onnx.path, images, names, batch_sizes=(1,), repeats=1)
    assert bad["summary"]["min_cosine"] < 0.99


def test_load_check_images_from_folder_is_rgb_and_resized(tmp_path: Path) -> None:
    red_bgr = np.zeros((250, 200, 3), np.uint8)
    red_bgr[:, :, 2] = 255
    (tmp_path / "a").mkdir()
    cv2.imwrite(str(tmp_path / "a" / "red.png"), red_bgr)
    cv2.imwrite(str(tmp_path / "b.png"), np.full((112, 112, 3), 40, np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    images, names = fx.load_check_images(tmp_path, (112, 112))
    assert names == ["a/red.png", "b.png"]
    assert images.shape == (2, 112, 112, 3)
    assert tuple(images[0, 50, 50]) == (255, 0, 0)
    with pytest.raises(ValueError, match="no images"):
        fx.load_check_images(tmp_path / "a" / "..", (112, 112), limit=0)
    with pytest.raises(FileNotFoundError, match="missing"):
        fx.load_check_images(tmp_path / "missing", (112, 112))


def test_normalize_batch_known_values() -> None:
    img = np.zeros((1, 2, 2, 3), np.uint8)
    img[0, 0, 0] = (0, 255, 128)
    x = fx.normalize_batch(img)
    assert x.shape == (1, 3, 2, 2)
    assert x[0, :, 0, 0].tolist() == pytest.approx([-1.0, 1.0, 0.5 / 127.5])


def test_bad_inputs_raise(tiny: nn.Module, tmp_path: Path) -> None:
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())
    with pytest.raises(ValueError, match="no .meta"):
        fx.export_onnx(plain, tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="opset"):
        fx.export_onnx(tiny, tmp_path / "x.onnx", opset=9)
    with pytest.raises(RuntimeError, match="exporter legacy"):
        fx.export_onnx(tiny, tmp_path / "x.onnx", opset=13)  # dynamo cannot convert down: no silent opset 18
    with pytest.raises(ValueError, match="unknown exporter"):
        fx.export_onnx(tiny, tmp_path / "x.onnx", exporter="tf")
    odd = _trained_like(TinyFace())
    odd.meta = types.SimpleNamespace(**{**vars(odd.meta), "mean": 0.5, "std": 0.5})
    with pytest.raises(ValueError, match="mean=0.5"):
        fx.export_onnx(odd, tmp_path / "x.onnx")
    assert not list(tmp_path.iterdir()), "failed exports must leave nothing behind"


def test_failed_export_keeps_previous_file(tiny: nn.Module, tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    out.write_bytes(b"previous")
    with pytest.raises(ValueError):
        fx.export_onnx(tiny, out, exporter="nope")
    assert out.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def _graph_with_names(names: list[str]) -> onnx.ModelProto:
    """x -> Sub -> Mul -> Identity..., node names chosen by the test."""
    h = onnx.helper
    ops = ["Sub", "Mul"] + ["Identity"] * (len(names) - 2)
    nodes, prev = [], "data"
    for i, (op, name) in enumerate(zip(ops, names)):
        inputs = [prev, "c"] if op in ("Sub", "Mul") else [prev]
        nodes.append(h.make_node(op, inputs, [f"t{i}"], name=name))
        prev = f"t{i}"
    nodes.append(h.make_node("Flatten", [prev], ["embedding"], name="flat"))
    graph = h.make_graph(
        nodes, "g", [h.make_tensor_value_info("data", onnx.TensorProto.FLOAT, ["batch", 3, 112, 112])],
        [h.make_tensor_value_info("embedding", onnx.TensorProto.FLOAT, ["batch", 3 * 112 * 112])],
        [h.make_tensor("c", onnx.TensorProto.FLOAT, [], [1.0])],
    )
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 13)])


def test_insightface_normalisation_guess_matches_its_runtime(tmp_path: Path) -> None:
    """Our reading of ArcFaceONNX's name rule agrees with the real class, and renaming defuses it."""
    arcface = pytest.importorskip("insightface.model_zoo.arcface_onnx")
    decoy = _graph_with_names(["Sub_0", "Mul_1", "x2"])
    onnx.save(decoy, tmp_path / "decoy.onnx")
    real = arcface.ArcFaceONNX(str(tmp_path / "decoy.onnx"))
    assert (real.input_mean, real.input_std) == fx.insightface_mean_std(decoy) == (0.0, 1.0)
    fx._rename_insightface_decoys(decoy)
    onnx.save(decoy, tmp_path / "fixed.onnx")
    fixed = arcface.ArcFaceONNX(str(tmp_path / "fixed.onnx"))
    assert (fixed.input_mean, fixed.input_std) == fx.insightface_mean_std(decoy) == (127.5, 127.5)


def test_insightface_runtime_loads_and_matches(tiny: nn.Module, tiny_onnx: fx.OnnxExportInfo) -> None:
    _insightface_matches(tiny, tiny_onnx.path)


def _insightface_matches(model: nn.Module, path: str) -> None:
    try:
        from insightface.model_zoo import get_model
    except ImportError:  # pragma: no cover - CI installs insightface
        pytest.skip("insightface is not installed")
    runtime = get_model(path, providers=["CPUExecutionProvider"])
    assert type(runtime).__name__ == "ArcFaceONNX" and runtime.taskname == "recognition"
    assert (runtime.input_mean, runtime.input_std) == (127.5, 127.5)
    rgb = fx.generated_images(5, (112, 112), seed=3)
    feats = runtime.get_feat([np.ascontiguousarray(im[:, :, ::-1]) for im in rgb])  # insightface takes BGR
    ref = _torch_emb(model, fx.normalize_batch(rgb))
    assert feats.shape == ref.shape
    assert _cosine(ref, feats).min() >= 0.9999


def test_cli_constants_mirror_library() -> None:
    from facerco.commands import export as cmd

    assert cmd._EXPORTERS == fx.EXPORTERS
    assert cmd._DEFAULT_OPSET == fx.DEFAULT_OPSET
    assert cmd._GENERATED == fx.GENERATED


# ----------------------------------------------------------------------------------------------------------------
# The registered backbones: the 0.8M student that gets deployed and a small iResNet.

REAL_ARCHS = ["mbf_0.8m", "iresnet_tiny"]


@pytest.fixture(scope="module", params=REAL_ARCHS)
def real_export(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    from facerco.models import create_model

    model = _trained_like(create_model(request.param))
    info = fx.export_onnx(model, tmp_path_factory.mktemp(request.param) / f"{request.param}.onnx")
    return model, info, fx.ort_session(info.path, threads=1)


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_registered_backbones_batches_and_parity(real_export, batch: int) -> None:
    model, info, session = real_export
    x = fx.normalize_batch(fx.generated_images(batch, (112, 112), seed=batch))
    got = session.run(None, {"data": x})[0]
    assert got.shape == (batch, model.meta.embedding_size)
    assert _cosine(_torch_emb(model, x), got).min() >= 0.9999
    assert fx.is_batch_dynamic(onnx.load(info.path, load_external_data=False))


def test_registered_backbone_in_insightface_runtime(real_export) -> None:
    model, info, _ = real_export
    _insightface_matches(model, info.path)


@pytest.mark.realdata
def test_parity_on_real_photos(real_export, real_data: Path) -> None:
    model, info, _ = real_export
    images, names = fx.load_check_images(real_data / "lfw_deepfunneled", (112, 112), limit=8)
    report = fx.check_parity(model, info.path, images, names, batch_sizes=(1,), repeats=1)
    assert report["num_images"] == 8 and report["summary"]["min_cosine"] >= 0.9999


def test_cli_export_onnx_from_checkpoint_with_classifier(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Checkpoint (backbone + classifier) -> ONNX with only the embedding, parity report beside the model."""
    from facerco.cli import main
    from facerco.models import create_model
    from facerco.models.checkpoint import save_model_checkpoint
    from facerco.utils.io import read_json, sha256_file

    model = _trained_like(create_model("iresnet_tiny"))
    ckpt = save_model_checkpoint(tmp_path / "student.safetensors", model, classifier=torch.randn(10, 128))
    out = tmp_path / "deploy" / "student.onnx"
    rc = main(["export", "onnx", str(ckpt), "-o", str(out), "--check", "generated", "--check-limit", "3",
               "--repeats", "1", "--simplify"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "generated/0002" in printed and "min cosine" in printed
    graph = onnx.load(out)
    assert len(graph.graph.output) == 1 and graph.graph.output[0].type.tensor_type.shape.dim[1].dim_value == 128
    report = read_json(tmp_path / "deploy" / "student.parity.json")
    assert report["passed"] and report["num_images"] == 3 and set(report["latency"]) == {"1", "64"}
    assert report["export"]["sha256"] == report["onnx_sha256"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["student.card.json", "student.card.md", "student.onnx",
                                                            "student.parity.json"]
    card = read_json(tmp_path / "deploy" / "student.card.json")
    assert card["passed"] and card["model"]["precision"] == "fp32" and card["model"]["sha256"] == report["onnx_sha256"]
    assert card["source"]["sha256"] == sha256_file(ckpt) and card["architecture"]["arch"] == "iresnet_tiny"


def test_cli_export_insightface_pth_with_arch(tmp_path: Path) -> None:
    from facerco.cli import main
    from facerco.models import create_model

    model = _trained_like(create_model("iresnet_tiny"))
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, tmp_path / "backbone.pth")
    out = tmp_path / "r.onnx"
    assert main(["export", "onnx", str(tmp_path / "backbone.pth"), "--arch", "iresnet_tiny", "-o", str(out),
                 "--no-check", "--exporter", "legacy"]) == 0
    x = fx.normalize_batch(fx.generated_images(2, (112, 112)))
    got = fx.ort_session(out, threads=1).run(None, {"data": x})[0]
    assert _cosine(_torch_emb(model, x), got).min() >= 0.9999
    assert main(["export", "onnx", str(tmp_path / "missing.safetensors"), "-o", str(out)]) == 1
