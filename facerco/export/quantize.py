"""int8 post-training static quantization of an exported facerco ONNX file (onnxruntime's quantization tools).

Recipe (measured choices; numbers in benchmarks/README.md, ``export.py --int8``):
- QDQ format (QuantizeLinear/DequantizeLinear pairs around float ops), the format onnxruntime's CPU provider fuses
  into integer kernels (QLinearConv, QLinearAdd, QGemm) and that other runtimes read as well;
- weights int8, per output channel (depthwise 3x3 convs have 9 weights per channel: one scale for the whole layer
  loses them); activations uint8 (the x86 u8s8 kernels; ``reduce_range`` stays off: it only matters on CPUs
  without VNNI and costs accuracy);
- activation ranges from ``DEFAULT_CALIBRATION_COUNT`` aligned images of the deployment domain, fed in batches of
  ``DEFAULT_CALIBRATION_BATCH``, with MinMax calibration by default (Entropy and Percentile are offered);
- the float graph is first run through onnxruntime's ``quant_pre_process`` (shape inference + graph optimisation),
  which onnxruntime asks for before static quantization;
- internal tensor and node names are shortened afterwards (the quantizer's long generated names were a fifth of a
  small student's int8 file), and the exporter's per-node debug metadata is dropped as in the float export.

The result keeps the facerco ONNX contract (FORMATS.md §7): input ``data`` (N, 3, H, W) with a symbolic batch
axis, output ``embedding``; the same checks as the float export run on it before it is written, atomically (a
failed quantization leaves nothing behind). Dynamic quantization (weights only, activations quantized at run time)
is not offered: for these conv nets onnxruntime turns it into ConvInteger plus float rescaling, which measured
slower than float32 (``benchmarks/export.py --dynamic``).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from facerco.export import onnx as fx
from facerco.utils.io import atomic_path, sha256_file

__all__ = [
    "CALIBRATION_METHODS",
    "DEFAULT_CALIBRATION_COUNT",
    "DEFAULT_CALIBRATION_BATCH",
    "INT8_MIN_MEAN_COSINE",
    "CalibrationSet",
    "Int8Info",
    "load_calibration_images",
    "quantize_int8",
]

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
DEFAULT_CALIBRATION_COUNT = 300
DEFAULT_CALIBRATION_BATCH = 16
# Parity floor for int8 files: mean cosine to the PyTorch model over the check images. int8 rounding costs ~1e-3 of
# cosine on trained students (the fp32 0.9999 per-image floor is out of reach by design); 0.98 catches a broken
# calibration (measured 0.5-0.9 with ranges from blank images) while passing every sound one.
INT8_MIN_MEAN_COSINE = 0.98


@dataclass
class CalibrationSet:
    """Calibration images: (N, H, W, 3) uint8 RGB, where they came from, and how many were skipped as undecodable."""

    images: np.ndarray
    source: str
    names: list[str]
    available: int
    skipped: int


@dataclass
class Int8Info:
    """What :func:`quantize_int8` wrote, for the model card."""

    path: str
    source_onnx_sha256: str
    method: str
    calibration_source: str
    calibration_images: int
    calibration_skipped: int
    calibration_batch: int
    per_channel: bool
    preprocessed: bool
    compact_names: bool
    activation_type: str
    weight_type: str
    quant_format: str
    num_nodes: int
    file_bytes: int
    sha256: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _calibration_indices(available: int, count: int) -> np.ndarray:
    """``count`` indices spread evenly over the source, so every part of an identity-sorted set is represented."""
    if count >= available:
        return np.arange(available)
    return np.unique(np.linspace(0, available - 1, count).round().astype(np.int64))


class _AsUint8:
    """The extractor's own preparation (decode, resize to the model input) with mean 0 / std 1, back to HWC uint8:
    calibration images are exactly what evaluation feeds the model, normalised later by ``normalize_batch``."""

    def __init__(self, size: tuple[int, int]) -> None:
        from facerco.data.transforms import EvalTransform

        self.prepare = EvalTransform(size, mean=0.0, std=1.0)

    def __call__(self, img: np.ndarray | bytes) -> np.ndarray:
        return np.ascontiguousarray(self.prepare(img).permute(1, 2, 0).numpy().astype(np.uint8))


def load_calibration_images(source: str | os.PathLike[str], size: tuple[int, int],
                            count: int = DEFAULT_CALIBRATION_COUNT, batch: int = DEFAULT_CALIBRATION_BATCH
                            ) -> CalibrationSet:
    """Up to ``count`` images, evenly spaced, from an aligned identity folder, a ``.rec`` folder/file or a ``.bin``.

    Undecodable images are skipped (and counted); no decodable image at all, or fewer images than one calibration
    batch, is a one-line ``ValueError`` naming the source.
    """
    from facerco.eval.features import open_source

    if count < 1 or batch < 1:
        raise ValueError(f"calibration count and batch must be >= 1, got {count} and {batch}")
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{path}: calibration source not found (an aligned folder, a .rec or a .bin)")
    dataset = open_source(path, _AsUint8(size))
    available = len(dataset)
    names_all = getattr(dataset, "paths", None)
    images, names, first_error, skipped = [], [], "", 0
    for i in _calibration_indices(available, count):
        try:
            images.append(dataset[int(i)][0])
        except ValueError as exc:
            skipped += 1
            first_error = first_error or str(exc)
            continue
        names.append(str(names_all[int(i)]) if names_all is not None else f"{path.name}#{int(i)}")
    if not images:
        raise ValueError(f"{path}: no decodable calibration image among {skipped} tried (first: {first_error})")
    if len(images) < batch:
        raise ValueError(f"{path}: {len(images)} calibration images, fewer than one calibration batch of {batch}")
    return CalibrationSet(np.stack(images), str(path), names, available, skipped)


def _reader(images: np.ndarray, batch: int) -> Any:
    """onnxruntime's CalibrationDataReader over normalised full batches of ``images`` (the histogram calibrators,
    Entropy and Percentile, stack the batches and fail on a short last one, so the tail is left out)."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self._it: Iterator[dict[str, np.ndarray]] = (
                {fx.INPUT_NAME: fx.normalize_batch(images[i:i + batch])}
                for i in range(0, len(images) - batch + 1, batch)
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    return _Batches()


def _check_float_contract(model: onnx.ModelProto, path: Path) -> None:
    """The float file must have facerco's ``data`` input and ``embedding`` output before it is quantized."""
    inputs = [i.name for i in model.graph.input]
    outputs = [o.name for o in model.graph.output]
    if outputs != [fx.OUTPUT_NAME]:
        raise ValueError(f"{path}: no '{fx.OUTPUT_NAME}' output (outputs {outputs}); export it with facerco export "
                         "onnx first")
    if inputs != [fx.INPUT_NAME]:
        raise ValueError(f"{path}: expected one input '{fx.INPUT_NAME}', got {inputs}")


def _calibration_method(name: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    if name not in methods:
        raise ValueError(f"unknown calibration method {name!r}; choose one of {', '.join(CALIBRATION_METHODS)}")
    return methods[name]


def _run_quantizer(src: Path, dst: Path, calib: CalibrationSet, method: str, batch: int, per_channel: bool) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    # onnxruntime logs a "please pre-process" warning through the root logger even when we did; keep the CLI clean.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_static(
            str(src), str(dst), _reader(calib.images, batch), quant_format=QuantFormat.QDQ, per_channel=per_channel,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=_calibration_method(method),
            extra_options={"CalibMaxIntermediateOutputs": 8},
        )
    finally:
        root.setLevel(level)


def _compact_names(model: onnx.ModelProto) -> bool:
    """Rename internal tensors ``t<i>`` and nodes ``n<i>`` (graph input/output names stay): the quantizer's names
    (``<weight>_quantized_scale``, ``<tensor>_DequantizeLinear_Output``...) are 20-25% of a small int8 student's file.
    Graphs with subgraphs (If/Loop) are left as they are; returns whether names were compacted."""
    graph = model.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        return False
    keep = {v.name for v in (*graph.input, *graph.output)}
    mapping: dict[str, str] = {}

    def rename(name: str) -> str:
        if not name or name in keep:
            return name
        return mapping.setdefault(name, f"t{len(mapping)}")

    for tensor in graph.initializer:
        tensor.name = rename(tensor.name)
    for i, node in enumerate(graph.node):
        node.name = f"n{i}"
        node.input[:] = [rename(x) for x in node.input]
        node.output[:] = [rename(x) for x in node.output]
    for value in graph.value_info:
        value.name = rename(value.name)
    return True


def quantize_int8(
    float_onnx: str | Path,
    out: str | Path,
    calibration: CalibrationSet,
    *,
    method: str = "minmax",
    batch: int = DEFAULT_CALIBRATION_BATCH,
    per_channel: bool = True,
    preprocess: bool = True,
    compact_names: bool = True,
    metadata: dict[str, Any] | None = None,
) -> Int8Info:
    """Quantize a facerco float32 ONNX file to int8 (QDQ) and write it to ``out`` atomically.

    Args:
        float_onnx: a float32 file from :func:`facerco.export.onnx.export_onnx` (not fp16).
        out: destination ``.onnx``; replaced only once the int8 graph passed the contract checks.
        calibration: images from :func:`load_calibration_images`.
        method: ``minmax`` (default), ``entropy`` or ``percentile``.
        batch: calibration images per onnxruntime run.
        per_channel: one weight scale per output channel (default) instead of one per tensor.
        preprocess: run ``quant_pre_process`` first (shape inference and graph optimisation).
        compact_names: short internal tensor and node names (see :func:`_compact_names`).
        metadata: extra ``facerco.*`` metadata_props.

    Returns:
        An :class:`Int8Info`.
    """
    src_path, out = Path(float_onnx), Path(out)
    _calibration_method(method)
    source = onnx.load(str(src_path))
    _check_float_contract(source, src_path)
    props = {p.key: p.value for p in source.metadata_props}
    if props.get("facerco.fp16") == "true":
        raise ValueError(f"{src_path}: an fp16 file cannot be quantized; quantize the float32 export")
    if len(calibration.images) < batch:
        raise ValueError(f"{calibration.source}: {len(calibration.images)} calibration images, fewer than one "
                         f"calibration batch of {batch}")
    size = tuple(int(d) for d in fx.input_spec(source)[2:])
    used = len(calibration.images) // batch * batch
    start = time.perf_counter()
    with atomic_path(out) as tmp, tempfile.TemporaryDirectory(prefix=".int8-", dir=out.parent) as work:
        quant_input = src_path
        if preprocess:
            from onnxruntime.quantization.shape_inference import quant_pre_process

            quant_input = Path(work) / "pre.onnx"
            quant_pre_process(str(src_path), str(quant_input))
        _run_quantizer(quant_input, Path(work) / "int8.onnx", calibration, method, batch, per_channel)
        proto = onnx.load(str(Path(work) / "int8.onnx"))
        compacted = _compact_names(proto) if compact_names else False
        fx._rename_insightface_decoys(proto)
        fx._strip_node_metadata(proto)
        props.update({
            "facerco.int8": "true",
            "facerco.int8.recipe": f"QDQ, weights int8 {'per-channel' if per_channel else 'per-tensor'}, "
                                   f"activations uint8, {method} calibration on {used} images",
            **{f"facerco.{k}": str(v) for k, v in (metadata or {}).items()},
        })
        fx._set_metadata(proto, props)
        embedding_size = int(source.graph.output[0].type.tensor_type.shape.dim[1].dim_value)
        fx._validate(proto, out, (int(size[0]), int(size[1])), embedding_size)
        onnx.save_model(proto, str(tmp), save_as_external_data=False)
    return Int8Info(
        path=str(out), source_onnx_sha256=sha256_file(src_path), method=method,
        calibration_source=calibration.source, calibration_images=used,
        calibration_skipped=calibration.skipped, calibration_batch=batch, per_channel=per_channel,
        preprocessed=preprocess, compact_names=compacted, activation_type="uint8", weight_type="int8",
        quant_format="QDQ",
        num_nodes=len(proto.graph.node), file_bytes=out.stat().st_size, sha256=sha256_file(out),
        seconds=time.perf_counter() - start,
    )
