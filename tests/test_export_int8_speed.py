"""int8 files that are actually faster (issue 20): the ReLU student quantizes end to end in onnxruntime, the
PReLU one keeps float activations; the export measures the int8 file against its float32 source and refuses a
file slower than ``min_speedup`` (the timing itself is replaced here: speed belongs in benchmarks/export.py)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch

from facerco.export import card as cards
from facerco.export import deploy
from facerco.export import onnx as fx
from facerco.export import quantize as qz
from facerco.models import create_model

SIZE = 32


def _student(activation: str, size: int = SIZE) -> torch.nn.Module:
    """A small mbf_0.8m (32 px) with BN statistics from random images, so the calibration ranges are not degenerate."""
    torch.manual_seed(0)
    model = create_model("mbf_0.8m", embedding_size=32, input_size=size, activation=activation)
    with torch.no_grad():
        model.train()
        model(torch.randn(16, 3, size, size))
    return model.eval()


def _int8(tmp_path: Path, activation: str, size: int = SIZE) -> Path:
    model = _student(activation, size)
    src = tmp_path / f"{activation}.onnx"
    fx.export_onnx(model, src, exporter="legacy")
    images = fx.generated_images(32, (size, size))
    calib = qz.CalibrationSet(images, "generated", [str(i) for i in range(len(images))], len(images), 0)
    out = tmp_path / f"{activation}.int8.onnx"
    qz.quantize_int8(src, out, calib, batch=16)
    return out


def _runtime_ops(path: Path, tmp_path: Path) -> Counter[str]:
    """Operator types of the graph onnxruntime actually runs (after its QDQ fusions), read from its optimized file."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / f"{path.stem}.ort.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)


def test_relu_student_runs_every_convolution_in_int8(tmp_path: Path) -> None:
    ops = _runtime_ops(_int8(tmp_path, "relu"), tmp_path)
    assert ops["QLinearConv"] == 37 and ops["Conv"] == 0 and ops["Relu"] == 0, ops
    assert ops["DequantizeLinear"] <= 2, ops  # only at the output end (the embedding head), not between blocks


def test_prelu_student_leaves_float_activations_between_integer_convolutions(tmp_path: Path) -> None:
    """What made int8 no faster: each PReLU runs in float between a dequantize and a requantize."""
    ops = _runtime_ops(_int8(tmp_path, "prelu"), tmp_path)
    assert ops["PRelu"] == 25 and ops["DequantizeLinear"] >= 25 and ops["QuantizeLinear"] >= 25, ops


def test_relu_variant_keeps_the_layout_and_loads_by_name() -> None:
    relu, prelu = _student("relu"), _student("prelu")
    assert relu.meta.arch_kwargs["activation"] == "relu"
    slopes = {f"{name}.weight" for name, m in prelu.named_modules() if isinstance(m, torch.nn.PReLU)}
    assert len(slopes) == 25 and set(prelu.state_dict()) - set(relu.state_dict()) == slopes  # names otherwise equal
    with pytest.raises(ValueError, match="activation must be one of prelu, relu"):
        create_model("mbf_0.8m", activation="gelu")


def test_compare_speed_reports_reference_over_candidate(tmp_path: Path) -> None:
    model = _student("relu")
    src = tmp_path / "f.onnx"
    fx.export_onnx(model, src, exporter="legacy")
    images = fx.generated_images(4, (SIZE, SIZE))
    speed = fx.compare_speed(src, src, images, batch_sizes=(1, 3), repeats=1, rounds=2, threads=1)
    assert set(speed["batches"]) == {"1", "3"} and speed["threads"] == 1
    for row in speed["batches"].values():
        assert row["speedup"] == pytest.approx(row["reference_ms"] / row["candidate_ms"])
    assert speed["min_speedup"] == min(r["speedup"] for r in speed["batches"].values())


def _fake_speed(value: float) -> Any:
    def compare(reference: Path, candidate: Path, images: np.ndarray, **kw: Any) -> dict[str, Any]:
        assert Path(reference).name.endswith(".float.onnx") and Path(reference).is_file()
        batches = {str(b): {"reference_ms": value, "candidate_ms": 1.0, "speedup": value} for b in kw["batch_sizes"]}
        return {"threads": 1, "rounds": 1, "repeats": 1, "statistic": "fake", "batches": batches,
                "min_speedup": value}
    return compare


@pytest.mark.parametrize(("speedup", "passes"), [(0.9, False), (1.3, True)])
def test_int8_slower_than_float32_is_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, speedup: float,
                                              passes: bool) -> None:
    calib = tmp_path / "calib"
    from facerco.data.synthetic import write_identity_folder

    write_identity_folder(calib, 4, 5, seed=0, size=SIZE)
    monkeypatch.setattr(fx, "compare_speed", _fake_speed(speedup))
    plan = deploy.ExportPlan(precision="int8", exporter="legacy", calibrate=str(calib), calibration_count=16,
                             check_limit=4, repeats=1, batch_sizes=(1, 4))
    result = deploy.export_model(_student("prelu"), tmp_path / "m.onnx", plan)
    assert result.passed is passes
    assert result.card["quantization"]["speedup_vs_float32"]["min_speedup"] == speedup
    assert f"batch 1 {speedup:.2f}x" in cards.card_paths(result.path)[1].read_text()
    if not passes:
        assert result.path == deploy.rejected_path(tmp_path / "m.onnx")
        assert any("0.90x the float32 file" in f and "model.activation=relu" in f for f in result.failures)


def test_config_key_builds_the_relu_student() -> None:
    from facerco.config import config_from_dict
    from facerco.train.job import build_backbone

    cfg = config_from_dict({"model": {"name": "mbf_0.8m", "activation": "relu"}, "data": {"image_size": 32}})
    model = build_backbone(cfg)
    assert model.meta.arch_kwargs["activation"] == "relu"
    assert not any(isinstance(m, torch.nn.PReLU) for m in model.modules())


def test_relu_int8_file_loads_in_insightface_runtime(tmp_path: Path) -> None:
    try:
        from insightface.model_zoo import get_model
    except ImportError:  # pragma: no cover - CI installs insightface
        pytest.skip("insightface is not installed")
    path = _int8(tmp_path, "relu", size=112)  # insightface's router takes square inputs of 112 px and more
    runtime = get_model(str(path), providers=["CPUExecutionProvider"])
    assert type(runtime).__name__ == "ArcFaceONNX" and tuple(runtime.input_size) == (112, 112)
    rgb = fx.generated_images(3, (112, 112), seed=5)
    feats = runtime.get_feat([np.ascontiguousarray(im[:, :, ::-1]) for im in rgb])  # insightface takes BGR
    direct = fx.ort_session(path, threads=1).run(None, {"data": fx.normalize_batch(rgb)})[0]
    cos = (feats * direct).sum(1) / (np.linalg.norm(feats, axis=1) * np.linalg.norm(direct, axis=1))
    assert feats.shape == direct.shape == (3, 32) and cos.min() >= 0.99
