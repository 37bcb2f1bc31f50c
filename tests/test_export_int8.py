"""int8 export and model cards: a tiny model (test_export_onnx's TinyFace) trained here for seconds, quantized,
checked and carded.

The model is trained on generated faces (12 identities) and verified on held-out images of the same identities
(a 60-pair ``.bin``), so its accuracy is well above chance and a broken calibration has something to lose.
"""

from __future__ import annotations

import contextlib
import hashlib
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from test_export_onnx import TinyFace, _cosine, _torch_emb  # tests/ is on sys.path under pytest
from torch import nn

from facerco.export import card as cards
from facerco.export import deploy
from facerco.export import onnx as fx
from facerco.export import quantize as qz

SIZE = 112  # insightface's model router takes a recognition model only at >= 112 px
EMB = 32


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 120) -> nn.Module:
    """Softmax on normalised embeddings with flip augmentation: seconds on one thread, clearly better than chance."""
    torch.manual_seed(0)
    head = nn.Linear(EMB, int(y.max()) + 1, bias=False)
    opt = torch.optim.SGD([*model.parameters(), *head.parameters()], lr=0.1, momentum=0.9)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (32,))
        xb = torch.where(torch.rand(32, 1, 1, 1) < 0.5, x[idx], x[idx].flip(3))
        loss = nn.functional.cross_entropy(head(nn.functional.normalize(model(xb))) * 8.0, y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _pairs_bin(images: np.ndarray, labels: np.ndarray, out: Path, pairs: int = 60) -> Path:
    """Alternating genuine / impostor pairs of held-out images, as a verification .bin."""
    from facerco.data.bins import write_bin
    from facerco.data.transforms import encode_jpeg

    rng = np.random.default_rng(0)
    blobs, same = [], []
    for k in range(pairs):
        a = int(rng.integers(len(images)))
        pool = np.flatnonzero((labels == labels[a]) if k % 2 == 0 else (labels != labels[a]))
        b = int(rng.choice(pool[pool != a]))
        blobs += [encode_jpeg(images[a]), encode_jpeg(images[b])]
        same.append(k % 2 == 0)
    write_bin(out, blobs, same)
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> types.SimpleNamespace:
    """Generated faces (train folder = calibration set), a trained TinyFace and a held-out pairs .bin."""
    from facerco.data.datasets import FolderDataset
    from facerco.data.synthetic import write_identity_folder

    root = tmp_path_factory.mktemp("int8")
    write_identity_folder(root / "all", 12, 10, seed=0, size=SIZE)
    ds = FolderDataset(root / "all", transform=lambda im: im)
    images = np.stack([ds[i][0] for i in range(len(ds))])
    labels = np.asarray(ds.labels)
    held = np.arange(len(ds)) % 10 >= 6
    x = torch.from_numpy(fx.normalize_batch(images))
    with _one_thread():
        model = _train(TinyFace(EMB), x[~held], torch.from_numpy(labels[~held]))
    return types.SimpleNamespace(root=root, calib=root / "all", model=model,
                                 bin=_pairs_bin(images[held], labels[held], root / "heldout.bin"))


def _plan(world: types.SimpleNamespace, **overrides: object) -> deploy.ExportPlan:
    base = {"precision": "int8", "exporter": "legacy", "calibrate": str(world.calib), "calibration_count": 64,
            "check_limit": 8, "repeats": 1, "batch_sizes": (1, 4)}
    plan = {**base, **overrides}
    if plan["precision"] == "int8":
        plan.setdefault("min_speedup", 0.0)  # the speed gate has its own tests (test_export_int8_speed.py)
    return deploy.ExportPlan(**plan)


@pytest.fixture(scope="module")
def int8_export(world: types.SimpleNamespace, tmp_path_factory: pytest.TempPathFactory) -> deploy.ExportResult:
    out = tmp_path_factory.mktemp("int8_out") / "small.onnx"
    with _one_thread():  # module fixtures run before conftest's per-test single-thread fixture
        return deploy.export_model(world.model, out, _plan(world, eval_bin=str(world.bin), max_drop=5.0),
                                   source={"checkpoint": "small.safetensors", "sha256": "ab" * 32})


def test_int8_file_keeps_the_contract_and_dynamic_batch(int8_export: deploy.ExportResult) -> None:
    assert int8_export.passed, int8_export.failures
    model = onnx.load(int8_export.path)
    assert [i.name for i in model.graph.input] == ["data"] and [o.name for o in model.graph.output] == ["embedding"]
    assert fx.is_batch_dynamic(model) and fx.input_spec(model)[1:] == [3, SIZE, SIZE]
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    weights = [t for t in model.graph.initializer if len(t.dims) == 4]
    assert weights and all(t.data_type == onnx.TensorProto.INT8 for t in weights)
    props = {p.key: p.value for p in model.metadata_props}
    assert props["facerco.int8"] == "true" and "minmax" in props["facerco.int8.recipe"]
    assert all(not n.metadata_props for n in model.graph.node)  # no exporter stack traces in a shipped file


@pytest.mark.parametrize("batch", [1, 5, 64])
def test_int8_runs_any_batch_in_onnxruntime_close_to_torch(world: types.SimpleNamespace,
                                                           int8_export: deploy.ExportResult, batch: int) -> None:
    x = fx.normalize_batch(fx.generated_images(batch, (SIZE, SIZE), seed=batch))
    got = fx.ort_session(int8_export.path, threads=1).run(None, {"data": x})[0]
    assert got.shape == (batch, EMB) and got.dtype == np.float32
    assert _cosine(_torch_emb(world.model, x), got).mean() >= qz.INT8_MIN_MEAN_COSINE


def test_int8_loads_in_insightface_runtime(world: types.SimpleNamespace, int8_export: deploy.ExportResult) -> None:
    try:
        from insightface.model_zoo import get_model
    except ImportError:  # pragma: no cover - CI installs insightface
        pytest.skip("insightface is not installed")
    runtime = get_model(str(int8_export.path), providers=["CPUExecutionProvider"])
    assert type(runtime).__name__ == "ArcFaceONNX" and (runtime.input_mean, runtime.input_std) == (127.5, 127.5)
    assert tuple(runtime.input_size) == (SIZE, SIZE)
    rgb = fx.generated_images(4, (SIZE, SIZE), seed=7)
    feats = runtime.get_feat([np.ascontiguousarray(im[:, :, ::-1]) for im in rgb])  # insightface takes BGR
    x = fx.normalize_batch(rgb)
    direct = fx.ort_session(int8_export.path, threads=1).run(None, {"data": x})[0]
    # insightface normalises as (x - 127.5) * (1 / 127.5) in cv2: last-bit differences can flip an int8 rounding
    assert feats.shape == direct.shape and _cosine(feats, direct).min() >= 0.99
    assert _cosine(feats, _torch_emb(world.model, x)).mean() >= qz.INT8_MIN_MEAN_COSINE


def test_card_numbers_match_a_recomputation(world: types.SimpleNamespace, int8_export: deploy.ExportResult) -> None:
    from facerco.eval.verification import verify_bin
    from facerco.utils.io import read_json

    path = Path(int8_export.path)
    json_path, md_path = cards.card_paths(path)
    card = read_json(json_path)
    assert card["passed"] and card["model"]["file"] == "small.onnx" and card["model"]["precision"] == "int8"
    assert card["model"]["file_bytes"] == path.stat().st_size
    assert card["model"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert card["source"]["sha256"] == "ab" * 32
    assert card["architecture"]["params"] == sum(p.numel() for p in world.model.parameters())
    assert card["architecture"]["macs"] == 8 * 56 * 56 * 27 + 16 * 28 * 28 * 72 + EMB * 16 * 7 * 7
    assert card["input"]["shape"] == ["batch", 3, SIZE, SIZE] and card["output"]["shape"] == ["batch", EMB]
    q = card["quantization"]
    assert q["calibration_images"] == 64 and q["method"] == "minmax" and q["per_channel"] and q["preprocessed"]
    assert q["compact_names"] and all(n.name.startswith("n") for n in onnx.load(path).graph.node)
    assert q["size_vs_float32"] == pytest.approx(path.stat().st_size / card["export"]["float32_file_bytes"])
    # parity: the same generated check images through both models
    images, _ = fx.load_check_images(fx.GENERATED, (SIZE, SIZE), limit=8)
    x = fx.normalize_batch(images)
    cos = _cosine(_torch_emb(world.model, x), fx.ort_session(path, threads=1).run(None, {"data": x})[0])
    assert card["parity"]["images"] == 8
    assert card["parity"]["min_cosine"] == pytest.approx(cos.min(), abs=1e-6)
    assert card["parity"]["mean_cosine"] == pytest.approx(cos.mean(), abs=1e-6)
    assert set(card["latency"]["batches"]) == {"1", "4"} and card["latency"]["threads"] == 1
    # verification: the file and the PyTorch model re-scored by the one protocol
    ver = card["verification"]
    got, ref = verify_bin(str(path), world.bin, device="cpu"), verify_bin(world.model, world.bin, device="cpu")
    assert ver["exported"]["accuracy"] == pytest.approx(got["accuracy"])
    assert ver["pytorch"]["accuracy"] == pytest.approx(ref["accuracy"])
    assert ver["exported"]["tar_at_far"]["0.001"] == pytest.approx(got["tar_at_far"]["0.001"]["tar"])
    assert ver["drop_points"] == pytest.approx(100 * (ref["accuracy"] - got["accuracy"]))
    assert ref["accuracy"] >= 0.7, "the trained model must be well above chance for the drop to mean anything"
    text = md_path.read_text()
    assert "small.onnx (int8)" in text and f"{card['parity']['mean_cosine']:.6f}" in text and "passed" in text


def test_max_drop_rejects_a_broken_calibration(world: types.SimpleNamespace, tmp_path: Path) -> None:
    """Ranges from blank images clip every real activation: accuracy falls, the file goes to *.rejected.onnx."""
    import cv2

    blank = tmp_path / "blank"
    for i in range(16):
        (blank / f"id{i}").mkdir(parents=True)
        cv2.imwrite(str(blank / f"id{i}" / "0.png"), np.full((SIZE, SIZE, 3), 128, np.uint8))
    out = tmp_path / "deploy" / "small.onnx"
    result = deploy.export_model(world.model, out, _plan(world, calibrate=str(blank), eval_bin=str(world.bin),
                                                         max_drop=0.3, min_mean_cosine=0.0))
    assert not result.passed and any("accuracy drop" in f for f in result.failures)
    assert result.card["verification"]["drop_points"] > 0.3
    assert not out.exists() and result.path == deploy.rejected_path(out) and result.path.is_file()
    names = sorted(p.name for p in out.parent.iterdir())
    assert names == ["small.rejected.card.json", "small.rejected.card.md", "small.rejected.onnx",
                     "small.rejected.parity.json"]
    # the default mean-cosine floor catches the same calibration without any pairs
    again = deploy.export_model(world.model, out, _plan(world, calibrate=str(blank)))
    assert not again.passed and any("mean cosine" in f for f in again.failures)


def test_cli_int8_and_max_drop(world: types.SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture) -> None:
    """The CLI path (checkpoint loading replaced by the trained TinyFace): exit 0, then exit 1 under --max-drop."""
    from facerco.cli import main
    from facerco.commands import export as cmd

    ckpt = tmp_path / "small.safetensors"
    ckpt.write_bytes(b"stand-in checkpoint bytes")
    monkeypatch.setattr(cmd, "_load_backbone", lambda path, arch: (world.model, {"epoch": 3}))
    out = tmp_path / "cli" / "small_int8.onnx"
    common = ["export", "onnx", str(ckpt), "-o", str(out), "--int8", "--calibrate", str(world.calib),
              "--calib-count", "48", "--exporter", "legacy", "--check-limit", "4", "--repeats", "1",
              "--eval-bin", str(world.bin), "--min-speedup", "0"]
    assert main(common) == 0
    printed = capsys.readouterr().out
    assert "int8" in printed and "verification on 60 pairs" in printed and "card.json" in printed
    card = cards.card_paths(out)[0].read_text()
    assert hashlib.sha256(ckpt.read_bytes()).hexdigest() in card
    assert main([*common, "--max-drop", "-100"]) == 1  # any model "drops" more than -100 points
    assert "export rejected" in capsys.readouterr().out
    assert out.is_file() and deploy.rejected_path(out).is_file()


def test_cli_constants_mirror_library() -> None:
    from facerco.commands import export as cmd

    assert cmd._CALIB_METHODS == qz.CALIBRATION_METHODS
    assert cmd._DEFAULT_CALIB_COUNT == qz.DEFAULT_CALIBRATION_COUNT
    assert cmd._DEFAULT_CALIB_BATCH == qz.DEFAULT_CALIBRATION_BATCH
    assert cmd._INT8_MIN_MEAN_COSINE == qz.INT8_MIN_MEAN_COSINE


# ----------------------------------------------------------------------------------------------------------------
# Bad input: one-line errors naming the file, nothing left behind.


def test_calibration_folder_without_decodable_images(world: types.SimpleNamespace, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    (bad / "person").mkdir(parents=True)
    for i in range(3):
        (bad / "person" / f"{i}.jpg").write_bytes(b"not a jpeg at all")
    out = tmp_path / "out" / "m.onnx"
    with pytest.raises(ValueError, match=r"bad: no decodable calibration image among 3 tried \(first: .*0\.jpg"):
        deploy.export_model(world.model, out, _plan(world, calibrate=str(bad)))
    assert not out.parent.exists() or not list(out.parent.iterdir())


def test_calibration_set_smaller_than_the_batch(world: types.SimpleNamespace, tmp_path: Path) -> None:
    out = tmp_path / "out" / "m.onnx"
    with pytest.raises(ValueError, match="all: 10 calibration images, fewer than one calibration batch of 16"):
        deploy.export_model(world.model, out, _plan(world, calibration_count=10))
    assert not list(out.parent.iterdir())


def test_calibration_from_bin_is_evenly_spaced(world: types.SimpleNamespace) -> None:
    calib = qz.load_calibration_images(world.bin, (SIZE, SIZE), count=20, batch=4)
    assert calib.images.shape == (20, SIZE, SIZE, 3) and calib.images.dtype == np.uint8 and calib.available == 120
    assert calib.names[0] == "heldout.bin#0" and calib.names[-1] == "heldout.bin#119"


def test_model_without_embedding_output(world: types.SimpleNamespace, tmp_path: Path) -> None:
    h = onnx.helper
    graph = h.make_graph([h.make_node("Flatten", ["data"], ["logits"])], "g",
                         [h.make_tensor_value_info("data", onnx.TensorProto.FLOAT, ["n", 3, SIZE, SIZE])],
                         [h.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["n", 3 * SIZE * SIZE])])
    src = tmp_path / "logits.onnx"
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 13)]), src)
    calib = qz.load_calibration_images(world.calib, (SIZE, SIZE), count=16)
    with pytest.raises(ValueError, match=r"logits\.onnx: no 'embedding' output \(outputs \['logits'\]\)"):
        qz.quantize_int8(src, tmp_path / "q.onnx", calib)
    assert not (tmp_path / "q.onnx").exists()


def test_failed_quantization_leaves_no_onnx(world: types.SimpleNamespace, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("quantizer crashed")

    monkeypatch.setattr(qz, "_run_quantizer", boom)
    out = tmp_path / "out" / "m.onnx"
    with pytest.raises(RuntimeError, match="quantizer crashed"):
        deploy.export_model(world.model, out, _plan(world))
    assert not list(out.parent.iterdir()), "no staging folder, no half-written .onnx"


def test_plan_refuses_contradictions() -> None:
    with pytest.raises(ValueError, match="--int8 needs --calibrate"):
        deploy.ExportPlan(precision="int8").validate()
    with pytest.raises(ValueError, match="--max-drop needs verification pairs"):
        deploy.ExportPlan(max_drop=0.3).validate()
    with pytest.raises(ValueError, match="unknown calibration method 'kl'"):
        deploy.ExportPlan(precision="int8", calibrate="x", calibration_method="kl").validate()
    assert deploy.ExportPlan().gates() == {"min_cosine": 0.9999, "min_mean_cosine": None, "max_drop_points": None,
                                           "min_speedup": None}
    assert deploy.ExportPlan(precision="int8", calibrate="x").gates()["min_speedup"] == deploy.INT8_MIN_SPEEDUP
    with pytest.raises(ValueError, match="--min-speedup is only used with --int8"):
        deploy.ExportPlan(min_speedup=1.5).validate()
    assert deploy.ExportPlan(precision="int8", calibrate="x").gates()["min_mean_cosine"] == 0.98


def test_fp32_export_writes_a_card_too(world: types.SimpleNamespace, tmp_path: Path) -> None:
    result = deploy.export_model(world.model, tmp_path / "f.onnx", _plan(world, precision="fp32", calibrate=None))
    card = result.card
    assert result.passed and card["model"]["precision"] == "fp32" and card["quantization"] is None
    assert card["parity"]["min_cosine"] >= 0.9999 and card["verification"] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.card.json", "f.card.md", "f.onnx", "f.parity.json"]


def test_benchmark_int8_rows_smoke(world: types.SimpleNamespace, tmp_path: Path) -> None:
    """benchmarks/export.py at a tiny size: int8 rows carry file sizes, ratios to fp32 and an op-time profile."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import export as bench

    with _one_thread():
        rows = bench.bench_arch("tiny", [2], 1, 0.05, 1, tmp_path, backends=["onnxruntime", "onnxruntime_int8"],
                                model=world.model, profile=True)
    assert [(r["backend"], r["batch"]) for r in rows] == [("onnxruntime", 2), ("onnxruntime_int8", 2)]
    assert all(r["images_per_cpu_s"] > 0 and r["threads"] == 1 for r in rows)
    int8_ops = rows[1]["op_time_share"]
    assert "QLinearConv" in int8_ops and sum(int8_ops.values()) == pytest.approx(1.0)
    (ratio,) = bench._ratios(rows)
    assert ratio["backend"] == "onnxruntime_int8" and ratio["size_vs_fp32"] < 0.5
    assert "| tiny | 2 |" in bench._table(rows)


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_histogram_calibrators_with_a_short_last_batch(world: types.SimpleNamespace, tmp_path: Path,
                                                       method: str) -> None:
    """40 images in batches of 16: the histogram calibrators get full batches only (they stack them)."""
    float_path = fx.export_onnx(world.model, tmp_path / "f.onnx", exporter="legacy").path
    calib = qz.load_calibration_images(world.calib, (SIZE, SIZE), count=40)
    info = qz.quantize_int8(float_path, tmp_path / "q.onnx", calib, method=method)
    assert info.calibration_images == 32 and info.method == method
    x = fx.normalize_batch(fx.generated_images(4, (SIZE, SIZE), seed=5))
    got = fx.ort_session(info.path, threads=1).run(None, {"data": x})[0]
    assert _cosine(_torch_emb(world.model, x), got).mean() >= qz.INT8_MIN_MEAN_COSINE
