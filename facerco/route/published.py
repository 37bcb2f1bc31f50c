"""Published teachers as one-point routes: `facerco route import MODEL -o RUN`.

A face-recognition engineer usually starts from a model someone else trained: an arcface_torch ``backbone.pth``, an
insightface ONNX pack (``w600k_r50.onnx``), dlib's ResNet behind ``face_recognition``, or a facerco checkpoint.
Importing writes a run directory that the rest of the chain reads like a trained teacher's route, with one final
point::

    RUN/route.json          "teacher": {kind, source, view, input, embedding_size}, one point "final" with sha256
    RUN/route/final.<ext>   the model: .safetensors (facerco, and insightface .pth converted), .onnx, .dat (dlib)

so ``facerco cache``, ``distill``, ``compare`` and ``route plan`` work with ``strategy: final``. Route strategies
that need a recorded route refuse a one-point route (:func:`facerco.distill.planning.build_plan`).

At run time a point loads as an ``nn.Module`` taking the student's normalized crop, so the online teacher, the
anchor cache and the probes need no special case. For ONNX and dlib teachers the module cuts the teacher's own
view (:mod:`facerco.prep.views`) from the student's crop (its five points are the template); the views cache
(:mod:`facerco.route.views_cache`) cuts it from the source photo instead, through :meth:`PublishedTeacher.embed_crops`.
Nothing is downloaded; nothing is unpickled (``.pth`` loads with ``weights_only=True``).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from facerco.models.meta import ModelMeta
from facerco.prep.views import TeacherView, crop_landmarks, get_view
from facerco.route.teacher_kinds import KINDS
from facerco.utils.io import atomic_path, sha256_file, write_json

__all__ = [
    "KINDS",
    "DLIB_MODEL_FILE",
    "InputContract",
    "PublishedTeacher",
    "OnnxTeacher",
    "DlibTeacher",
    "TorchViewTeacher",
    "view_teacher",
    "detect_kind",
    "import_teacher",
    "load_published",
    "onnx_input_contract",
]

Kind = Literal["facerco", "insightface", "onnx", "dlib"]
DLIB_MODEL_FILE = "dlib_face_recognition_resnet_model_v1.dat"
_SUFFIX = {"facerco": ".safetensors", "insightface": ".safetensors", "onnx": ".onnx", "dlib": ".dat"}


@dataclass(frozen=True)
class InputContract:
    """What a teacher's input is: ``(rgb_or_bgr_uint8 - mean) / std``, NCHW float32, ``size`` x ``size``."""

    size: int
    channel_order: Literal["rgb", "bgr"] = "rgb"
    mean: float = 127.5
    std: float = 127.5

    def to_dict(self) -> dict[str, Any]:
        return {"size": self.size, "channel_order": self.channel_order, "mean": self.mean, "std": self.std}


# ---------------------------------------------------------------------------------------------------------------
# Teachers at run time
# ---------------------------------------------------------------------------------------------------------------


class PublishedTeacher(nn.Module):
    """A frozen foreign model behind facerco's backbone interface.

    ``forward(x)``: ``x`` is the student's normalized crop batch (N, 3, S, S), ``(rgb - 127.5) / 127.5``; the
    teacher's view is cut from it (the crop's five points are the template) and embedded. ``embed_crops``: the
    teacher's own view crops (uint8 RGB, (N, size, size, 3)), as the views cache makes them from photos.
    Outputs are raw float32 embeddings (callers normalize).
    """

    def __init__(self, view: TeacherView, embedding_size: int, name: str) -> None:
        super().__init__()
        self.view = view
        self.meta = ModelMeta(name=name, input_size=(112, 112), embedding_size=embedding_size)
        self._dummy = nn.Parameter(torch.zeros(()), requires_grad=False)  # gives the module a device

    def embed_crops(self, crops: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        images = (x.detach().float().cpu() * 127.5 + 127.5).clamp(0, 255).round().to(torch.uint8)
        images = images.permute(0, 2, 3, 1).numpy()
        points = crop_landmarks(images.shape[1])
        crops = np.stack([self.view.crop(np.ascontiguousarray(img), points) for img in images])
        return torch.from_numpy(self.embed_crops(crops)).to(x.device)


class OnnxTeacher(PublishedTeacher):
    """Any ONNX embedding model run by onnxruntime (CPU; CUDA when the device is CUDA and ORT has it)."""

    def __init__(self, path: str | Path, contract: InputContract, view: str = "arcface112", threads: int = 0) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads > 0:
            opts.intra_op_num_threads = threads
        try:
            session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ValueError(f"{path}: cannot open ONNX model: {' '.join(str(exc).split())}") from exc
        dim = session.get_outputs()[0].shape[-1]
        base = get_view(view)
        if base.name == "arcface112" and contract.size % 112:
            raise ValueError(f"{path}: input side {contract.size}: the arcface112 view (ArcFace template) needs a "
                             "multiple of 112; pass --input-size when the graph's side is not fixed")
        super().__init__(TeacherView(base.name, contract.size, base.make, base.description),
                         int(dim) if isinstance(dim, int) else 0, f"onnx:{Path(path).name}")
        self.session, self.input_name, self.contract = session, session.get_inputs()[0].name, contract
        if not self.meta.embedding_size:
            probe = np.zeros((1, contract.size, contract.size, 3), np.uint8)
            self.meta.embedding_size = int(self.embed_crops(probe).shape[1])

    def embed_crops(self, crops: np.ndarray) -> np.ndarray:
        x = np.asarray(crops, np.float32)
        if self.contract.channel_order == "bgr":
            x = x[..., ::-1]
        x = (x - self.contract.mean) / self.contract.std
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)
        return np.asarray(self.session.run(None, {self.input_name: x})[0], np.float32)


class DlibTeacher(PublishedTeacher):
    """dlib's 128-d ResNet face descriptor (``dlib_face_recognition_resnet_model_v1.dat``) on dlib's 150 chip."""

    def __init__(self, path: str | Path) -> None:
        try:
            import dlib
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise RuntimeError("a dlib teacher needs dlib: pip install 'facerco[align]'") from exc
        try:
            net = dlib.face_recognition_model_v1(str(path))
        except RuntimeError as exc:
            raise ValueError(f"{path}: not a dlib face recognition model: {' '.join(str(exc).split())}") from exc
        super().__init__(get_view("dlib150"), 128, "dlib_resnet_v1")
        self.net = net

    def embed_crops(self, crops: np.ndarray) -> np.ndarray:
        chips = [np.ascontiguousarray(c, dtype=np.uint8) for c in crops]
        return np.asarray(self.net.compute_face_descriptor(chips), np.float32).reshape(len(chips), -1)


class TorchViewTeacher:
    """A facerco backbone (trained here, or an imported ``.pth``/``.safetensors``) behind ``embed_crops``: the
    ArcFace template at the model's input size, normalized by the model's own mean/std."""

    def __init__(self, model: nn.Module) -> None:
        meta = model.meta
        base = get_view("arcface112")
        self.model = model.eval()
        self.view = TeacherView(base.name, int(meta.input_size[0]), base.make, base.description)
        self.mean, self.std = float(meta.mean), float(meta.std)

    def embed_crops(self, crops: np.ndarray) -> np.ndarray:
        from facerco.eval.features import embed_batch

        x = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float().sub(self.mean).div(self.std)
        return embed_batch(self.model, x).cpu().numpy()


def view_teacher(model: nn.Module) -> Any:
    """The object the views cache embeds teacher crops with: published teachers as they are, facerco backbones
    through :class:`TorchViewTeacher`."""
    return model if isinstance(model, PublishedTeacher) else TorchViewTeacher(model)


# ---------------------------------------------------------------------------------------------------------------
# Import
# ---------------------------------------------------------------------------------------------------------------


def detect_kind(model: str | Path) -> Kind:
    """The kind of ``model`` from its name: ``dlib``, ``.onnx``, ``.safetensors``, ``.pth``/``.pt``."""
    text = str(model)
    suffix = Path(text).suffix.lower()
    if text == "dlib" or Path(text).name == DLIB_MODEL_FILE or suffix == ".dat":
        return "dlib"
    kinds: dict[str, Kind] = {".onnx": "onnx", ".safetensors": "facerco", ".pth": "insightface", ".pt": "insightface"}
    if suffix not in kinds:
        raise ValueError(f"{model}: cannot tell the teacher kind from the name; pass --kind "
                         "facerco|insightface|onnx|dlib")
    return kinds[suffix]


def _normalizes_inside(graph: Any, input_name: str) -> bool:
    """Whether the graph's first ops subtract and scale its input (insightface's check on its own ONNX packs:
    such graphs take raw 0..255 pixels)."""
    ops = [n.op_type for n in graph.node[:8]]
    return "Sub" in ops and ("Mul" in ops or "Div" in ops) and any(input_name in n.input for n in graph.node[:8])


def onnx_input_contract(path: str | Path, size: int | None = None, channel_order: str | None = None,
                        mean: float | None = None, std: float | None = None) -> InputContract:
    """The input contract of an ONNX embedding model: size from the graph's input shape, mean/std 0/1 when the graph
    normalizes its input itself, else insightface's 127.5/127.5; RGB (insightface feeds RGB). Given values win."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and others
        raise ValueError(f"{path}: not a readable ONNX file ({' '.join(str(exc).split())})") from exc
    inp = model.graph.input[0]
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]
    if len(dims) != 4 or (dims[1] not in (None, 3)):
        raise ValueError(f"{path}: input {inp.name!r} has shape {dims}; expected (N, 3, H, W)")
    graph_size = dims[2] if dims[2] and dims[2] == dims[3] else None
    side = size or graph_size
    if side is None:
        raise ValueError(f"{path}: the input size is not fixed in the graph ({dims}); pass --input-size")
    inside = _normalizes_inside(model.graph, inp.name)
    return InputContract(int(side), "rgb" if channel_order is None else channel_order,  # type: ignore[arg-type]
                         float(mean if mean is not None else (0.0 if inside else 127.5)),
                         float(std if std is not None else (1.0 if inside else 127.5)))


@dataclass
class _Imported:
    """What an import learnt about the model: written to route.json."""

    kind: Kind
    file: Path
    embedding_size: int
    view: dict[str, Any]
    input: dict[str, Any]
    arch: str
    extra: dict[str, Any] = field(default_factory=dict)


def _find_dlib_model(model: str) -> Path:
    from facerco.prep.detectors._dlib import find_dlib_model

    return find_dlib_model(DLIB_MODEL_FILE, None if model == "dlib" else model)


def _import_torch(src: Path, kind: Kind, dest: Path, arch: str | None) -> _Imported:
    from facerco.models.checkpoint import load_model, save_model_checkpoint

    loaded = load_model(src, arch=arch)
    meta = loaded.model.meta
    if kind == "facerco":
        with atomic_path(dest) as tmp:
            shutil.copyfile(src, tmp)
    else:
        save_model_checkpoint(dest, loaded.model, metadata={"kind": "teacher", "imported_from": str(src)})
    contract = InputContract(int(meta.input_size[0]), "rgb", float(meta.mean), float(meta.std))
    return _Imported(kind, dest, int(meta.embedding_size), get_view("arcface112").to_dict() | {"size": contract.size},
                     contract.to_dict(), meta.name)


def _import_file(src: Path, kind: Kind, dest: Path, arch: str | None, contract_args: dict[str, Any]) -> _Imported:
    if kind in ("facerco", "insightface"):
        return _import_torch(src, kind, dest, arch)
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)
    if kind == "dlib":
        teacher = DlibTeacher(dest)
        contract = InputContract(150, "rgb", 0.0, 1.0)
        return _Imported(kind, dest, teacher.meta.embedding_size, teacher.view.to_dict(), contract.to_dict(),
                         teacher.meta.name)
    contract = onnx_input_contract(dest, **contract_args)
    onnx_teacher = OnnxTeacher(dest, contract)
    return _Imported(kind, dest, onnx_teacher.meta.embedding_size, onnx_teacher.view.to_dict(), contract.to_dict(),
                     onnx_teacher.meta.name)


def import_teacher(model: str | Path, out: str | Path, kind: str = "auto", arch: str | None = None,
                   input_size: int | None = None, channel_order: str | None = None, mean: float | None = None,
                   std: float | None = None) -> Path:
    """Write ``out/route.json`` and ``out/route/final.<ext>`` for a published model; returns the route.json path.

    Args:
        model: the model file, or ``dlib`` for dlib's ResNet from ``face_recognition_models`` (found by path).
        out: run directory to create (refused when it already holds a route).
        kind: ``auto`` (from the name), ``facerco``, ``insightface`` (a ``.pth`` state_dict, needs ``arch``),
            ``onnx`` or ``dlib``.
        arch: registered architecture of an insightface ``.pth`` (``r50``, ``r100``, ``mbf`` ...).
        input_size, channel_order, mean, std: ONNX input contract overrides (read from the graph otherwise).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown teacher kind {kind!r}; choose one of {', '.join(KINDS)}")
    chosen: Kind = detect_kind(model) if kind == "auto" else kind  # type: ignore[assignment]
    src = _find_dlib_model(str(model)) if chosen == "dlib" else Path(model)
    if not src.is_file():
        raise FileNotFoundError(f"{src}: model file not found")
    if chosen == "insightface" and not arch:
        raise ValueError(f"{src}: an insightface .pth holds no architecture; pass --arch (e.g. r50, r100, mbf)")
    run = Path(out)
    if (run / "route.json").exists():
        raise ValueError(f"{run / 'route.json'}: already exists; import into a new directory")
    (run / "route").mkdir(parents=True, exist_ok=True)
    dest = run / "route" / f"final{_SUFFIX[chosen]}"
    contract_args = {"size": input_size, "channel_order": channel_order, "mean": mean, "std": std}
    info = _import_file(src, chosen, dest, arch, contract_args)
    point = {"name": "final", "file": f"route/{dest.name}", "epoch": 0.0, "step": 0, "lr": 0.0, "train_loss": 0.0,
             "val": {}, "sha256": sha256_file(dest), "bytes": dest.stat().st_size, "final": True}
    manifest = {"format": "facerco-route", "version": 1, "arch": info.arch, "embedding_size": info.embedding_size,
                "num_classes": 0, "steps_per_epoch": 0, "total_steps": 0,
                "teacher": {"kind": info.kind, "source": str(src.resolve()), "view": info.view, "input": info.input,
                            "embedding_size": info.embedding_size},
                "final": "final", "points": [point]}
    write_json(run / "route.json", manifest)
    return run / "route.json"


def load_published(path: Path, teacher: dict[str, Any], threads: int = 0) -> nn.Module:
    """The run-time module of an imported ONNX or dlib point (``teacher`` is route.json's ``teacher`` block);
    ``threads`` > 0 caps onnxruntime's intra-op threads (one per worker process when several run)."""
    kind = teacher.get("kind")
    if kind == "dlib":
        return DlibTeacher(path).eval()
    if kind == "onnx":
        c = teacher.get("input") or {}
        contract = InputContract(int(c["size"]), c.get("channel_order", "rgb"), float(c.get("mean", 127.5)),
                                 float(c.get("std", 127.5)))
        return OnnxTeacher(path, contract, (teacher.get("view") or {}).get("name", "arcface112"), threads).eval()
    raise ValueError(f"{path}: route.json's teacher kind {kind!r} does not load through load_published")
