"""Export a facerco backbone to one self-contained ONNX file that deployment runtimes load as-is.

The graph follows FORMATS.md §7, the contract insightface's runtime (``ArcFaceONNX``) and most face pipelines
assume: one input ``data`` of shape (N, 3, H, W) with a symbolic batch axis, RGB, already normalised as
``(pixel - 127.5) / 127.5``; one output, the raw (not L2-normalised) embedding. Normalisation stays outside the
graph on purpose: insightface guesses it from the first node names (a ``Sub`` and a ``Mul`` among the first
eight nodes mean "mean 0 / std 1, the graph normalises"), so :func:`export_onnx` renames any node that could
trip that guess.

Exporter choice: torch 2.13 offers the ``torch.export`` (dynamo) exporter and the legacy TorchScript one. Both
give a clean symbolic batch axis for these backbones; dynamo is the default because it is the supported path
(the legacy one is deprecated) and its optimiser folds BatchNorm into the preceding Conv/Gemm. It is called
with ``external_data=False`` so weights live inside the ``.onnx`` file (no ``.onnx.data`` side file). The
legacy exporter (``exporter="legacy"``) is ~50x faster to run and is kept as an option; it is also the one for
opsets below 17, which dynamo cannot convert down to (it then keeps opset 18 and only logs: we refuse that file).

fp16: the model is cast to half precision *in torch* with a float32 cast at the input and output, so the file
holds fp16 weights and computes in fp16 while callers keep feeding and reading float32 (the exporter types
every intermediate tensor; no hand-written graph surgery). onnxruntime's CPU provider runs such graphs by
inserting casts where it lacks fp16 kernels, so fp16 files are for GPU runtimes; parity is measured anyway.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from facerco.utils.io import atomic_path, sha256_file

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAME",
    "EXPORTERS",
    "OnnxExportInfo",
    "export_onnx",
    "input_spec",
    "is_batch_dynamic",
    "insightface_mean_std",
    "DEFAULT_OPSET",
    "GENERATED",
    "normalize_batch",
    "generated_images",
    "load_check_images",
    "ort_session",
    "check_parity",
    "compare_speed",
    "parity_report_path",
]

INPUT_NAME = "data"
OUTPUT_NAME = "embedding"
EXPORTERS = ("dynamo", "legacy")
DEFAULT_OPSET = 18
_EXPECTED_MEAN_STD = 127.5
# insightface's ArcFaceONNX looks at this many leading nodes for Sub/Mul names (see module docstring).
_INSIGHTFACE_SCANNED_NODES = 8
_INSIGHTFACE_SUB_PREFIXES = ("Sub", "_minus")
_INSIGHTFACE_MUL_PREFIXES = ("Mul", "_mul")


@dataclass
class OnnxExportInfo:
    """What was written, for reports and the CLI."""

    path: str
    arch: str
    embedding_size: int
    input_size: tuple[int, int]
    opset: int
    exporter: str
    fp16: bool
    simplified: bool
    num_nodes: int
    file_bytes: int
    sha256: str
    metadata: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _EmbeddingGraph(nn.Module):
    """The exported callable: normalised RGB batch in, one embedding tensor out (float32 at both ends)."""

    def __init__(self, backbone: nn.Module, fp16: bool) -> None:
        super().__init__()
        self.backbone = backbone
        self.fp16 = fp16

    def forward(self, data: torch.Tensor) -> torch.Tensor:
        if self.fp16:
            return self.backbone(data.to(torch.float16)).to(torch.float32)
        return self.backbone(data)


def _model_meta(model: nn.Module) -> Any:
    meta = getattr(model, "meta", None)
    if meta is None:
        raise ValueError(
            f"{type(model).__name__} has no .meta (facerco.models.ModelMeta); export needs its input size, "
            "mean/std and embedding size and will not guess them"
        )
    if float(meta.mean) != _EXPECTED_MEAN_STD or float(meta.std) != _EXPECTED_MEAN_STD:
        raise ValueError(
            f"model {meta.name} is normalised with mean={meta.mean}, std={meta.std}; the ONNX deployment contract "
            f"(FORMATS.md §7, insightface's runtime) is (pixel - {_EXPECTED_MEAN_STD}) / {_EXPECTED_MEAN_STD}"
        )
    return meta


def _prepare(model: nn.Module, fp16: bool) -> _EmbeddingGraph:
    """A detached CPU copy in eval mode (BatchNorm uses running stats, dropout off)."""
    backbone = copy.deepcopy(model).to("cpu").float().eval()
    for param in backbone.parameters():
        param.requires_grad_(False)
    if fp16:
        backbone = backbone.half()
    return _EmbeddingGraph(backbone, fp16).eval()


def _run_exporter(graph: _EmbeddingGraph, example: torch.Tensor, out: Path, opset: int, exporter: str) -> None:
    common = {"input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME], "opset_version": opset}
    if exporter == "dynamo":
        batch = torch.export.Dim("batch", min=1)
        # The exporter prints progress lines to stdout and torch-internal deprecation noise; keep the CLI output
        # to our own report (errors still raise).
        logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.onnx.export(
                graph, (example,), str(out), dynamo=True, external_data=False,
                dynamic_shapes={"data": {0: batch}}, **common,
            )
    elif exporter == "legacy":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                graph, (example,), str(out), dynamo=False, do_constant_folding=True,
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}, **common,
            )
    else:
        raise ValueError(f"unknown exporter '{exporter}'; choose one of {', '.join(EXPORTERS)}")


def _check_opset(model: onnx.ModelProto, opset: int, exporter: str, path: Path) -> None:
    """The dynamo exporter writes opset 18 and only warns when converting down fails: refuse that file."""
    got = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if got != opset:
        hint = "; the legacy exporter (--exporter legacy) writes opsets below 18 directly" if opset < 18 else ""
        raise RuntimeError(f"{path}: asked for opset {opset} but the {exporter} exporter produced opset {got}{hint}")


def _rename_insightface_decoys(model: onnx.ModelProto) -> None:
    """Prefix leading node names that insightface would read as in-graph normalisation."""
    prefixes = _INSIGHTFACE_SUB_PREFIXES + _INSIGHTFACE_MUL_PREFIXES
    for node in model.graph.node[:_INSIGHTFACE_SCANNED_NODES]:
        if node.name.startswith(prefixes):
            node.name = f"n_{node.name}"


def insightface_mean_std(model: onnx.ModelProto) -> tuple[float, float]:
    """The (mean, std) insightface 2.x's ArcFaceONNX would assume for this graph (its name-based rule)."""
    names = [node.name for node in model.graph.node[:_INSIGHTFACE_SCANNED_NODES]]
    has_sub = any(name.startswith(_INSIGHTFACE_SUB_PREFIXES) for name in names)
    has_mul = any(name.startswith(_INSIGHTFACE_MUL_PREFIXES) for name in names)
    return (0.0, 1.0) if has_sub and has_mul else (127.5, 127.5)


def input_spec(model: onnx.ModelProto) -> list[int | str]:
    """Shape of the first graph input: ints for fixed axes, the symbol name (or '?') for dynamic ones."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]


def is_batch_dynamic(model: onnx.ModelProto) -> bool:
    """True when axis 0 of every graph input and output is symbolic rather than a fixed size."""
    values = list(model.graph.input) + list(model.graph.output)
    for value in values:
        dims = value.type.tensor_type.shape.dim
        if not dims or dims[0].HasField("dim_value"):
            return False
    return True


def _simplify(model: onnx.ModelProto, path: Path) -> onnx.ModelProto:
    import onnxsim

    simplified, ok = onnxsim.simplify(model)
    if not ok:
        raise RuntimeError(f"{path}: onnxsim could not validate the simplified graph against the original")
    return simplified


def _validate(model: onnx.ModelProto, path: Path, input_size: tuple[int, int], embedding_size: int) -> None:
    onnx.checker.check_model(model, full_check=True)
    if len(model.graph.input) != 1 or len(model.graph.output) != 1:
        raise RuntimeError(f"{path}: expected one input and one output, got {len(model.graph.input)} and "
                           f"{len(model.graph.output)}")
    spec = input_spec(model)
    if spec[1:] != [3, *input_size] or not is_batch_dynamic(model):
        raise RuntimeError(f"{path}: input shape {spec} is not (batch, 3, {input_size[0]}, {input_size[1]}) with a "
                           "symbolic batch axis")
    out_dims = model.graph.output[0].type.tensor_type.shape.dim
    if len(out_dims) != 2 or out_dims[1].dim_value != embedding_size:
        raise RuntimeError(f"{path}: output is not (batch, {embedding_size})")
    if insightface_mean_std(model) != (127.5, 127.5):
        raise RuntimeError(f"{path}: leading node names would make insightface assume in-graph normalisation")


def _strip_node_metadata(model: onnx.ModelProto) -> None:
    """Drop per-node debug metadata: the dynamo exporter stores each node's Python stack trace (with local paths)
    and module hierarchy there, ~6% of an mbf_0.8m file and ~15% of its int8 file, useless to a runtime."""
    for node in model.graph.node:
        del node.metadata_props[:]


def _set_metadata(model: onnx.ModelProto, values: dict[str, str]) -> None:
    del model.metadata_props[:]
    for key, value in values.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name = "facerco"


def export_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    fp16: bool = False,
    simplify: bool = False,
    exporter: str = "dynamo",
    metadata: dict[str, Any] | None = None,
) -> OnnxExportInfo:
    """Write ``model`` (a facerco backbone with ``.meta``) as one self-contained ONNX file, atomically.

    Args:
        model: backbone returning the embedding (N, D); classifier/projector heads are never part of it.
        path: destination ``.onnx``; replaced only once the new file passed ``onnx.checker`` and the contract checks.
        opset: ONNX opset (>= 11; 18 is the dynamo exporter's native one).
        fp16: fp16 weights and compute with float32 input/output.
        simplify: run onnxsim after export (its own numerical check must pass).
        exporter: "dynamo" (default) or "legacy" (TorchScript).
        metadata: extra string key/values stored in the file's metadata_props (e.g. the checkpoint sha256).

    Returns:
        An :class:`OnnxExportInfo` describing the written file.
    """
    if opset < 11:
        raise ValueError(f"opset {opset} is too old; the deployment contract needs opset >= 11")
    meta = _model_meta(model)
    input_size = (int(meta.input_size[0]), int(meta.input_size[1]))
    path = Path(path)
    graph = _prepare(model, fp16)
    example = torch.zeros(2, 3, *input_size)
    with atomic_path(path) as tmp:
        _run_exporter(graph, example, tmp, opset, exporter)
        proto = onnx.load(str(tmp))
        _check_opset(proto, opset, exporter, path)
        if simplify:
            proto = _simplify(proto, path)
        _rename_insightface_decoys(proto)
        _strip_node_metadata(proto)
        props = {
            "facerco.arch": str(meta.name),
            "facerco.arch_kwargs": json.dumps(dict(getattr(meta, "arch_kwargs", {}) or {}), sort_keys=True),
            "facerco.embedding_size": str(int(meta.embedding_size)),
            "facerco.input": f"{INPUT_NAME}: N x 3 x {input_size[0]} x {input_size[1]}, RGB, (pixel - 127.5) / 127.5",
            "facerco.output": f"{OUTPUT_NAME}: N x {int(meta.embedding_size)}, not L2-normalised",
            "facerco.fp16": str(fp16).lower(),
            **{f"facerco.{k}": str(v) for k, v in (metadata or {}).items()},
        }
        _set_metadata(proto, props)
        _validate(proto, path, input_size, int(meta.embedding_size))
        onnx.save_model(proto, str(tmp), save_as_external_data=False)
    return OnnxExportInfo(
        path=str(path), arch=str(meta.name), embedding_size=int(meta.embedding_size), input_size=input_size,
        opset=opset, exporter=exporter, fp16=fp16, simplified=simplify, num_nodes=len(proto.graph.node),
        file_bytes=path.stat().st_size, sha256=sha256_file(path), metadata=props,
    )


# ----------------------------------------------------------------------------------------------------------------
# Parity and latency: onnxruntime against the PyTorch model it came from.

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
GENERATED = "generated"


def normalize_batch(images: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB -> (N, 3, H, W) float32 ``(x - 127.5) / 127.5``, the graph's input."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected (N, H, W, 3) uint8 RGB images, got {images.shape} {images.dtype}")
    x = (images.astype(np.float32) - _EXPECTED_MEAN_STD) / _EXPECTED_MEAN_STD
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def generated_images(count: int, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Deterministic smooth-plus-noise RGB images: structured enough to exercise every channel and scale."""
    import cv2

    rng = np.random.default_rng(seed)
    out = np.empty((count, size[0], size[1], 3), np.uint8)
    for i in range(count):
        coarse = rng.uniform(0, 255, (7, 7, 3)).astype(np.float32)
        smooth = cv2.resize(coarse, (size[1], size[0]), interpolation=cv2.INTER_CUBIC)
        noisy = smooth + rng.normal(0, 12, smooth.shape)
        out[i] = np.clip(noisy, 0, 255).astype(np.uint8)
    return out


def load_check_images(source: str | Path, size: tuple[int, int], limit: int = 64) -> tuple[np.ndarray, list[str]]:
    """Images for a parity check: ``"generated"`` or a folder (searched recursively, sorted, first ``limit``).

    Images that are not ``size`` are resized whole: parity does not need aligned faces, only identical inputs.
    """
    if str(source) == GENERATED:
        return generated_images(limit, size), [f"{GENERATED}/{i:04d}" for i in range(limit)]
    import cv2

    root = Path(source)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: --check expects an image folder or '{GENERATED}'")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file())[:limit]
    if not files:
        raise ValueError(f"{root}: no images ({', '.join(_IMAGE_SUFFIXES)}) found")
    images = np.empty((len(files), size[0], size[1], 3), np.uint8)
    for i, file in enumerate(files):
        bgr = cv2.imdecode(np.fromfile(file, np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"{file}: not a decodable image")
        if bgr.shape[:2] != size:
            bgr = cv2.resize(bgr, (size[1], size[0]), interpolation=cv2.INTER_AREA)
        images[i] = bgr[:, :, ::-1]
    return images, [str(f.relative_to(root)) for f in files]


def ort_session(path: str | Path, threads: int | None = None) -> Any:
    """A CPU onnxruntime session; ``threads`` defaults to torch's intra-op count so timings compare like for like."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _in_batches(fn: Any, x: np.ndarray, batch_size: int) -> np.ndarray:
    return np.concatenate([fn(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def _median_ms(fn: Any, x: np.ndarray, repeats: int) -> float:
    import time

    fn(x)  # warm-up: allocations, oneDNN/ORT kernel selection
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(x)
        times.append((time.perf_counter() - start) * 1000.0)
    return float(np.median(times))


def _tile(x: np.ndarray, n: int) -> np.ndarray:
    reps = -(-n // len(x))
    return np.ascontiguousarray(np.concatenate([x] * reps)[:n])


def check_parity(
    model: nn.Module,
    onnx_path: str | Path,
    images: np.ndarray,
    names: list[str],
    *,
    batch_sizes: tuple[int, ...] = (1, 64),
    repeats: int = 5,
) -> dict[str, Any]:
    """Run PyTorch and onnxruntime on the same normalised images; per-image cosine, max |diff|, latency.

    Args:
        model: the PyTorch backbone the file was exported from (run on CPU, float32, eval mode).
        onnx_path: the exported file.
        images: (N, H, W, 3) uint8 RGB.
        names: one label per image for the report.
        batch_sizes: latency is measured for each (inputs tiled from ``images``).
        repeats: timed runs per batch size (median reported).

    Returns:
        A JSON-ready dict: per-image rows, summary (min/mean cosine, max abs diff), latency per batch size.
    """
    x = normalize_batch(images)
    backbone = copy.deepcopy(model).to("cpu").float().eval()
    session = ort_session(onnx_path)

    def run_torch(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return backbone(torch.from_numpy(batch)).numpy()

    def run_ort(batch: np.ndarray) -> np.ndarray:
        return session.run(None, {INPUT_NAME: batch})[0]

    ref = _in_batches(run_torch, x, 64).astype(np.float64)
    got = _in_batches(run_ort, x, 64).astype(np.float64)
    cosine = (ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1) + 1e-12)
    abs_diff = np.abs(ref - got).max(axis=1)
    latency = {}
    for bs in batch_sizes:
        batch = _tile(x, bs)
        torch_ms = _median_ms(run_torch, batch, repeats)
        ort_ms = _median_ms(run_ort, batch, repeats)
        latency[str(bs)] = {
            "torch_ms": torch_ms, "onnxruntime_ms": ort_ms,
            "torch_img_s": bs * 1000.0 / torch_ms, "onnxruntime_img_s": bs * 1000.0 / ort_ms,
        }
    return {
        "onnx": str(onnx_path),
        "onnx_sha256": sha256_file(onnx_path),
        "num_images": len(x),
        "threads": torch.get_num_threads(),
        "summary": {
            "min_cosine": float(cosine.min()), "mean_cosine": float(cosine.mean()),
            "max_abs_diff": float(abs_diff.max()), "ref_max_abs": float(np.abs(ref).max()),
        },
        "per_image": [
            {"image": n, "cosine": float(c), "max_abs_diff": float(d)} for n, c, d in zip(names, cosine, abs_diff)
        ],
        "latency": latency,
    }


def compare_speed(reference: str | Path, candidate: str | Path, images: np.ndarray, *,
                  batch_sizes: tuple[int, ...] = (1, 64), repeats: int = 5, rounds: int = 3,
                  threads: int | None = None) -> dict[str, Any]:
    """onnxruntime time of ``candidate`` against ``reference`` (e.g. an int8 file against its float32 source).

    The two sessions run in alternating rounds of ``repeats`` timed calls each, so a load change on a shared
    machine hits both; per file the best round's median is kept (the least disturbed). ``speedup`` > 1 means the
    candidate is faster.

    Returns:
        ``{"threads", "rounds", "repeats", "batches": {bs: {reference_ms, candidate_ms, speedup}}, "min_speedup"}``.
    """
    x = normalize_batch(images)
    sessions = [ort_session(reference, threads), ort_session(candidate, threads)]
    batches: dict[str, dict[str, float]] = {}
    for bs in batch_sizes:
        batch = _tile(x, bs)
        best = [math.inf, math.inf]
        for _ in range(rounds):
            for i, session in enumerate(sessions):
                ms = _median_ms(lambda b, s=session: s.run(None, {INPUT_NAME: b}), batch, repeats)
                best[i] = min(best[i], ms)
        batches[str(bs)] = {"reference_ms": best[0], "candidate_ms": best[1], "speedup": best[0] / best[1]}
    return {"threads": int(threads or torch.get_num_threads()), "rounds": rounds, "repeats": repeats,
            "statistic": "best round's median", "batches": batches,
            "min_speedup": min(b["speedup"] for b in batches.values())}


def parity_report_path(onnx_path: str | Path) -> Path:
    """``model.onnx`` -> ``model.parity.json`` beside it."""
    p = Path(onnx_path)
    return p.with_name(f"{p.stem}.parity.json")
