"""`facerco route import`: published teachers (facerco, insightface .pth, ONNX) as one-point routes, their input
contracts, the errors, and a student trained from an imported ONNX teacher on a flat folder through the CLI."""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch
from test_distill_support import student_cfg
from test_distill_unlabeled import write_flat
from torch import nn

from facerco.cli import main
from facerco.config import config_from_dict, dump_config
from facerco.distill.planning import build_plan
from facerco.models import create_model
from facerco.models.checkpoint import save_model_checkpoint
from facerco.prep.views import crop_landmarks
from facerco.route.anchors import PointInfo
from facerco.route.io import load_route
from facerco.route.published import OnnxTeacher, detect_kind, import_teacher, onnx_input_contract

DIM = 16


class TinyOnnxNet(nn.Module):
    """A 112-px embedding net; ``inside``: the graph starts by normalizing raw 0..255 pixels (Sub, Mul)."""

    def __init__(self, inside: bool, size: int = 112, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.inside = inside
        self.conv = nn.Conv2d(3, 4, 8, 8)
        self.fc = nn.Linear(4 * (size // 8) ** 2, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inside:
            x = (x - 127.5) * 0.0078125
        return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))


def write_tiny_onnx(path, inside: bool = False, size: int = 112, seed: int = 0):
    """Export :class:`TinyOnnxNet` (dynamic batch, fixed side) to ``path``."""
    net = TinyOnnxNet(inside, size, seed).eval()
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notices
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(net, torch.zeros(1, 3, size, size), str(path), dynamo=False, input_names=["data"],
                          output_names=["embedding"], dynamic_axes={"data": {0: "n"}, "embedding": {0: "n"}})
    return path


def _images(n: int, size: int = 112, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def _student_batch(images: np.ndarray) -> torch.Tensor:
    """The student's normalized crop batch of uint8 NHWC images."""
    return (torch.from_numpy(images).permute(0, 3, 1, 2).float() - 127.5) / 127.5


def _manifest(run):
    return json.loads((run / "route.json").read_text())


def _check_one_point(run, suffix: str) -> dict:
    """route.json holds one final point whose file and sha256 are the imported model's; returns the manifest."""
    manifest = _manifest(run)
    (point,) = manifest["points"]
    assert manifest["final"] == "final" and point["name"] == "final" and point["final"] is True
    assert point["file"] == f"route/final{suffix}"
    data = (run / point["file"]).read_bytes()
    assert point["sha256"] == hashlib.sha256(data).hexdigest() and point["bytes"] == len(data)
    assert manifest["embedding_size"] == manifest["teacher"]["embedding_size"]
    assert load_route(run).names() == ["final"]
    return manifest


# ---- facerco and insightface checkpoints ------------------------------------------------------------------------


def test_facerco_checkpoint_imports_as_a_byte_copy(tmp_path):
    model = create_model("iresnet_tiny").eval()
    src = save_model_checkpoint(tmp_path / "teacher.safetensors", model)
    assert detect_kind(src) == "facerco"
    run = tmp_path / "run"
    assert import_teacher(src, run) == run / "route.json"
    manifest = _check_one_point(run, ".safetensors")
    assert (run / "route" / "final.safetensors").read_bytes() == src.read_bytes()
    teacher = manifest["teacher"]
    assert teacher["kind"] == "facerco" and teacher["source"] == str(src.resolve())
    assert teacher["view"]["name"] == "arcface112" and teacher["view"]["size"] == 112
    assert teacher["input"] == {"size": 112, "channel_order": "rgb", "mean": 127.5, "std": 127.5}
    assert teacher["embedding_size"] == 128 and manifest["arch"] == "iresnet_tiny"
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        assert torch.equal(load_route(run).load_point("final").model(x), model(x))


def test_insightface_pth_imports_with_arch_and_gives_the_same_embeddings(tmp_path, capsys):
    torch.manual_seed(1)
    model = create_model("iresnet_tiny", embedding_size=64)
    for module in model.modules():  # non-trivial running statistics, so eval mode matters
        if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    model.eval()
    src = tmp_path / "backbone.pth"
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, src)  # a DDP-saved state_dict
    run = tmp_path / "run"
    assert main(["route", "import", str(src), "-o", str(run), "--arch", "iresnet_tiny"]) == 0
    assert "imported insightface teacher (iresnet_tiny, 64-d, view arcface112" in capsys.readouterr().out
    manifest = _check_one_point(run, ".safetensors")  # converted: loads without unpickling anything
    assert manifest["teacher"]["kind"] == "insightface" and manifest["embedding_size"] == 64  # inferred
    x = torch.randn(3, 3, 112, 112)
    loaded = load_route(run).load_point("final")
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), model(x), rtol=0, atol=1e-6)


# ---- ONNX -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("inside", "mean", "std"), [(True, 0.0, 1.0), (False, 127.5, 127.5)])
def test_onnx_contract_is_read_from_the_graph(tmp_path, inside, mean, std):
    src = write_tiny_onnx(tmp_path / "tiny.onnx", inside=inside)
    contract = onnx_input_contract(src)
    assert (contract.size, contract.channel_order, contract.mean, contract.std) == (112, "rgb", mean, std)
    assert onnx_input_contract(src, mean=1.0, std=2.0, channel_order="bgr").to_dict() == {
        "size": 112, "channel_order": "bgr", "mean": 1.0, "std": 2.0}  # given values win
    run = tmp_path / "run"
    import_teacher(src, run)
    manifest = _check_one_point(run, ".onnx")
    assert (run / "route" / "final.onnx").read_bytes() == src.read_bytes()
    teacher = manifest["teacher"]
    assert teacher["kind"] == "onnx" and teacher["embedding_size"] == DIM
    assert teacher["input"] == {"size": 112, "channel_order": "rgb", "mean": mean, "std": std}
    assert teacher["view"]["name"] == "arcface112" and teacher["view"]["size"] == 112


@pytest.mark.parametrize("inside", [True, False])
@pytest.mark.parametrize("order", ["rgb", "bgr"])
def test_onnx_teacher_equals_the_session_on_the_normalized_crop(tmp_path, inside, order):
    src = write_tiny_onnx(tmp_path / "tiny.onnx", inside=inside, seed=3)
    run = tmp_path / "run"
    import_teacher(src, run, channel_order=None if order == "rgb" else "bgr")
    teacher = load_route(run).load_point("final").model
    assert isinstance(teacher, OnnxTeacher) and teacher.meta.embedding_size == DIM
    images = _images(3, seed=4)
    with torch.no_grad():
        got = teacher(_student_batch(images)).numpy()
    pixels = images[..., ::-1] if order == "bgr" else images
    x = pixels.astype(np.float32) if inside else (pixels.astype(np.float32) - 127.5) / 127.5
    session = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    want = session.run(None, {"data": np.ascontiguousarray(x.transpose(0, 3, 1, 2))})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.abs(want).max() > 1e-3


def test_onnx_teacher_cuts_its_112_view_from_a_small_student_crop(tmp_path):
    run = tmp_path / "run"
    import_teacher(write_tiny_onnx(tmp_path / "tiny.onnx"), run)
    teacher = load_route(run).load_point("final").model
    small = _images(2, size=32, seed=5)
    with torch.no_grad():
        out = teacher(_student_batch(small))
    assert out.shape == (2, DIM) and torch.isfinite(out).all()
    # the view of a 32 px crop is that crop scaled 3.5x (the template scaled; black past its last pixel)
    view = teacher.view.crop(np.full((32, 32, 3), 90, np.uint8), crop_landmarks(32))
    assert view.shape == (112, 112, 3) and (view[:108, :108] == 90).all()


def test_onnx_side_that_the_arcface_view_cannot_make_is_refused_at_import(tmp_path):
    src = write_tiny_onnx(tmp_path / "t64.onnx", size=64)
    with pytest.raises(ValueError, match=r"input side 64: the arcface112 view .* needs a multiple of 112"):
        import_teacher(src, tmp_path / "run")
    assert not (tmp_path / "run" / "route.json").exists()


# ---- errors -----------------------------------------------------------------------------------------------------


def test_import_errors(tmp_path, capsys):
    weights = tmp_path / "model.bin"
    weights.write_bytes(b"\0" * 16)
    with pytest.raises(ValueError, match=r"cannot tell the teacher kind from the name; pass --kind"):
        import_teacher(weights, tmp_path / "a")
    assert main(["route", "import", str(weights), "-o", str(tmp_path / "a")]) == 1
    assert "cannot tell the teacher kind" in capsys.readouterr().err
    pth = tmp_path / "backbone.pth"
    torch.save(create_model("iresnet_tiny").state_dict(), pth)
    with pytest.raises(ValueError, match=r"backbone.pth: an insightface .pth holds no architecture; pass --arch"):
        import_teacher(pth, tmp_path / "b")
    assert not (tmp_path / "b").exists()
    with pytest.raises(ValueError, match="unknown teacher kind 'tflite'"):
        import_teacher(pth, tmp_path / "b", kind="tflite")
    with pytest.raises(FileNotFoundError, match="model file not found"):
        import_teacher(tmp_path / "missing.onnx", tmp_path / "b")
    onnx_file = write_tiny_onnx(tmp_path / "tiny.onnx")
    run = tmp_path / "run"
    import_teacher(onnx_file, run)
    before = (run / "route.json").read_bytes()
    with pytest.raises(ValueError, match=r"route.json: already exists; import into a new directory"):
        import_teacher(onnx_file, run)
    assert main(["route", "import", str(onnx_file), "-o", str(run)]) == 1
    assert (run / "route.json").read_bytes() == before
    with pytest.raises(ValueError, match="not a readable ONNX file"):
        import_teacher(weights, tmp_path / "c", kind="onnx")


def _student_config(**distill):
    return config_from_dict({"kind": "student", "data": {"train": "unused"},
                             "distill": {"teacher_run": "unused", **distill}})


@pytest.mark.parametrize("strategy", ["eeis", "gss", "best", "lockstep", "phase", "ensemble"])
def test_route_strategies_refuse_a_one_point_route(strategy):
    point = PointInfo("final", 0.0, 0, {}, True)
    with pytest.raises(ValueError, match=rf"strategy={strategy} follows a recorded route, but this route has one "
                                         r"point \(final: .*use distill.strategy=final"):
        build_plan(_student_config(strategy=strategy), [point], steps_per_epoch=3, total_steps=3)
    anchors, _ = build_plan(_student_config(strategy="final"), [point], steps_per_epoch=3, total_steps=3)
    assert anchors.anchors == ["final"]


# ---- a student from an imported ONNX teacher, through the CLI --------------------------------------------------


def test_student_mimics_an_imported_onnx_teacher_on_a_flat_folder(tmp_path, capsys):
    flat = write_flat(tmp_path / "flat", count=16)
    run = tmp_path / "teacher"
    assert main(["route", "import", str(write_tiny_onnx(tmp_path / "tiny.onnx")), "-o", str(run)]) == 0
    cfg = student_cfg(flat, run, tmp_path / "student", strategy="final", arcface_weight=0.0, kd_weight=0.0)
    cfg.data.format = "images"
    cfg.train.epochs = 1.0
    cfg_path = tmp_path / "student.yaml"
    cfg_path.write_text(dump_config(cfg))
    plan = ["route", "plan", str(run), "--config", str(cfg_path)]
    assert main([*plan, "--strategy", "eeis"]) == 1
    assert "this route has one point (final: an imported or unfinished teacher)" in capsys.readouterr().err
    assert main([*plan, "--strategy", "final"]) == 0
    cache = tmp_path / "cache"
    assert main(["cache", str(run), str(flat), "--format", "images", "--out", str(cache), "--image-size", "32",
                 "--workers", "0", "--no-progress", "--device", "cpu"]) == 0
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["anchors"]["final"]["embedding_size"] == DIM and manifest["anchors"]["final"]["complete"]
    capsys.readouterr()
    assert main(["distill", str(cfg_path), "distill.target_center=true", "--threads", "1"]) == 1
    assert "distill.target_center=true needs distill.cache" in capsys.readouterr().err
    for name, extra in (("student", []), ("centred", ["distill.target_center=true"])):
        out = tmp_path / name
        assert main(["distill", str(cfg_path), f"distill.cache={cache}", f"train.output={out}", *extra,
                     "--threads", "1"]) == 0
        summary = json.loads((out / "summary.json").read_text())
        assert summary["step"] == 2 and "mimic" in summary["last_parts"]  # 16 images / batch 8
        assert np.isfinite(summary["last_parts"]["mimic"]) and (out / "student.safetensors").is_file()
    shutil.rmtree(cache)  # the teacher online: it cuts its 112 view from the student's 32 px crops
    out = tmp_path / "online"
    assert main(["distill", str(cfg_path), f"train.output={out}", "--threads", "1"]) == 0
    assert (out / "student.safetensors").is_file()
