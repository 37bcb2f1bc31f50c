"""The model card written beside every exported ONNX file: ``MODEL.card.json`` and a short ``MODEL.card.md``.

A card answers "what is this file and how good is it" without rerunning anything: architecture, parameters and
MACs (:func:`facerco.models.complexity.measure_complexity`), the input/output contract, file size and sha256, the
source checkpoint's sha256, parity to the PyTorch model (min/mean cosine on the check images), onnxruntime latency
at batch 1 and 64 on the exporting machine (threads stated), and, when pairs are given, verification accuracy and
TAR@FAR of the exported file next to the PyTorch model's on the same pairs, computed by the one verification
protocol (:mod:`facerco.eval.verification`, flip-fused embeddings from :mod:`facerco.eval.features`).
"""

from __future__ import annotations

import datetime
import os
import platform
from functools import partial
from pathlib import Path
from typing import Any

import onnx
from torch import nn

from facerco.export import onnx as fx
from facerco.utils.io import atomic_write_text, sha256_file, write_json

__all__ = ["CARD_VERSION", "card_paths", "architecture_summary", "compare_verification", "build_card",
           "render_markdown", "write_card"]

CARD_VERSION = 1
_FARS = (1e-3, 1e-4)


def card_paths(onnx_path: str | Path) -> tuple[Path, Path]:
    """``model.onnx`` -> (``model.card.json``, ``model.card.md``) beside it."""
    p = Path(onnx_path)
    return p.with_name(f"{p.stem}.card.json"), p.with_name(f"{p.stem}.card.md")


def architecture_summary(model: nn.Module) -> dict[str, Any]:
    """Name, constructor overrides, parameters and MACs per image at the model's input size."""
    from facerco.models.complexity import measure_complexity

    meta = model.meta
    cx = measure_complexity(model)
    return {"arch": str(meta.name), "arch_kwargs": dict(getattr(meta, "arch_kwargs", {}) or {}),
            "params": int(cx.params), "macs": int(cx.macs), "elementwise_macs": int(cx.elementwise_macs),
            "input_size": list(cx.input_size), "embedding_size": int(meta.embedding_size)}


def _verification_row(result: dict[str, Any]) -> dict[str, Any]:
    return {"accuracy": result["accuracy"], "accuracy_std": result["accuracy_std"],
            "best_threshold": result["best_threshold"], "xnorm": result["xnorm"],
            "tar_at_far": {far: row["tar"] for far, row in result["tar_at_far"].items()}}


def compare_verification(model: nn.Module, onnx_path: str | Path, *, pairs: str | os.PathLike[str] | None = None,
                         root: str | os.PathLike[str] | None = None, bin_path: str | os.PathLike[str] | None = None,
                         batch_size: int = 128) -> dict[str, Any]:
    """Verification of the PyTorch model and of the exported file on the same pairs (10 folds, flip fusion).

    ``drop_points`` is PyTorch accuracy minus exported accuracy, in points (percent).
    """
    from facerco.eval.verification import verify_bin, verify_pairs

    if (pairs is None) == (bin_path is None) or (pairs is not None and root is None):
        raise ValueError("verification needs either --eval-pairs with --eval-root, or --eval-bin")
    if bin_path is not None:
        run = partial(verify_bin, bin_path=bin_path, batch_size=batch_size, device="cpu", fars=_FARS)
        where = str(bin_path)
    else:
        run = partial(verify_pairs, pairs_txt=pairs, root=root, batch_size=batch_size, device="cpu", fars=_FARS)
        where = f"{pairs} (images under {root})"
    ref, got = run(model), run(str(onnx_path))
    return {"set": where, "num_pairs": ref["num_pairs"], "protocol": "10-fold, flip-fused, squared L2",
            "pytorch": _verification_row(ref), "exported": _verification_row(got),
            "drop_points": 100.0 * (ref["accuracy"] - got["accuracy"])}


def _file_summary(path: Path, precision: str, name: str | None) -> dict[str, Any]:
    proto = onnx.load(str(path), load_external_data=False)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    return {"file": name or path.name, "format": "onnx", "precision": precision, "file_bytes": path.stat().st_size,
            "sha256": sha256_file(path), "opset": opset, "num_nodes": len(proto.graph.node),
            "metadata": {p.key: p.value for p in proto.metadata_props}}


def _contract(arch: dict[str, Any]) -> dict[str, Any]:
    h, w = arch["input_size"]
    return {"input": {"name": fx.INPUT_NAME, "shape": ["batch", 3, h, w], "dtype": "float32", "color": "RGB",
                      "normalisation": "(pixel - 127.5) / 127.5"},
            "output": {"name": fx.OUTPUT_NAME, "shape": ["batch", arch["embedding_size"]], "dtype": "float32",
                       "l2_normalised": False}}


def _parity_summary(parity: dict[str, Any], check_source: str) -> dict[str, Any]:
    s = parity["summary"]
    return {"images": parity["num_images"], "source": check_source, "min_cosine": s["min_cosine"],
            "mean_cosine": s["mean_cosine"], "max_abs_diff": s["max_abs_diff"]}


def _latency(parity: dict[str, Any]) -> dict[str, Any]:
    rows = {bs: {"onnxruntime_ms": t["onnxruntime_ms"], "onnxruntime_img_s": t["onnxruntime_img_s"],
                 "torch_ms": t["torch_ms"], "torch_img_s": t["torch_img_s"]} for bs, t in parity["latency"].items()}
    return {"runtime": "onnxruntime CPUExecutionProvider", "threads": parity["threads"],
            "statistic": "median of timed runs", "batches": rows}


def _machine() -> dict[str, Any]:
    import onnxruntime
    import torch

    return {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__}


def build_card(
    model: nn.Module,
    onnx_path: str | Path,
    *,
    precision: str,
    name: str | None = None,
    source: dict[str, Any] | None = None,
    export: dict[str, Any] | None = None,
    quantization: dict[str, Any] | None = None,
    parity: dict[str, Any] | None = None,
    check_source: str = "",
    verification: dict[str, Any] | None = None,
    gates: dict[str, Any] | None = None,
    failures: list[str] | None = None,
) -> dict[str, Any]:
    """The card as a JSON-ready dict (see the module docstring for what each part holds).

    Args:
        model: the PyTorch backbone the file came from.
        onnx_path: the exported file (its bytes are hashed here).
        precision: ``fp32``, ``fp16`` or ``int8``.
        name: the file name the card reports (default: ``onnx_path``'s; the file may be staged elsewhere).
        source: the checkpoint's name and sha256.
        export: exporter settings (:class:`facerco.export.onnx.OnnxExportInfo` as a dict).
        quantization: :class:`facerco.export.quantize.Int8Info` as a dict, for int8 files.
        parity: a :func:`facerco.export.onnx.check_parity` report (None when the check was skipped).
        check_source: where the parity images came from.
        verification: a :func:`compare_verification` result.
        gates: the thresholds the export was held to.
        failures: gate failures, one line each (empty: the export passed).
    """
    arch = architecture_summary(model)
    return {
        "card_version": CARD_VERSION,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "model": _file_summary(Path(onnx_path), precision, name),
        "architecture": arch,
        **_contract(arch),
        "source": source or {},
        "export": export or {},
        "quantization": quantization,
        "parity": None if parity is None else _parity_summary(parity, check_source),
        "latency": None if parity is None else _latency(parity),
        "verification": verification,
        "gates": gates or {},
        "failures": list(failures or []),
        "passed": not failures,
        "machine": _machine(),
    }


def _fmt(value: float | None, spec: str, scale: float = 1.0) -> str:
    return "–" if value is None else format(value * scale, spec)


def _short_hash(value: str | None) -> str:
    return f"`{value[:16]}…`" if value else "–"


def render_markdown(card: dict[str, Any]) -> str:
    """A short human-readable card: one table of the numbers that decide whether to ship the file."""
    m, a = card["model"], card["architecture"]
    h, w = a["input_size"]
    lines = [f"# {m['file']} ({m['precision']})", "",
             f"{a['arch']}: {a['params'] / 1e6:.3f}M parameters, {a['macs'] / 1e6:.1f}M MACs per image; input "
             f"`{fx.INPUT_NAME}` (batch, 3, {h}, {w}) RGB (pixel - 127.5) / 127.5, output `{fx.OUTPUT_NAME}` "
             f"(batch, {a['embedding_size']}), not L2-normalised.", "",
             "| | value |", "|---|---|",
             f"| file size | {m['file_bytes'] / 1e6:.3f} MB |", f"| sha256 | {_short_hash(m['sha256'])} |",
             f"| source checkpoint sha256 | {_short_hash(card['source'].get('sha256'))} |"]
    if card["quantization"]:
        q = card["quantization"]
        lines.append(f"| int8 recipe | QDQ, {'per-channel' if q['per_channel'] else 'per-tensor'} int8 weights, "
                     f"uint8 activations, {q['method']} on {q['calibration_images']} images |")
        speed = q.get("speedup_vs_float32")
        if speed:
            rows = ", ".join(f"batch {bs} {r['speedup']:.2f}x" for bs, r in speed["batches"].items())
            lines.append(f"| int8 speed-up over the float32 file (onnxruntime, threads={speed['threads']}) | {rows} |")
    if card["parity"]:
        p = card["parity"]
        lines.append(f"| parity to PyTorch ({p['images']} images) | min cosine {p['min_cosine']:.6f}, "
                     f"mean {p['mean_cosine']:.6f} |")
    if card["latency"]:
        lat = card["latency"]
        for bs, row in lat["batches"].items():
            lines.append(f"| onnxruntime batch {bs}, threads={lat['threads']} | {row['onnxruntime_ms']:.2f} ms, "
                         f"{row['onnxruntime_img_s']:.1f} img/s |")
    if card["verification"]:
        v = card["verification"]
        for who in ("pytorch", "exported"):
            r = v[who]
            tar = r["tar_at_far"].get("0.001")
            lines.append(f"| verification, {who} ({v['num_pairs']} pairs) | {_fmt(r['accuracy'], '.2f', 100)} ± "
                         f"{_fmt(r['accuracy_std'], '.2f', 100)} %, TAR@FAR=1e-3 {_fmt(tar, '.2f', 100)} % |")
        lines.append(f"| accuracy drop | {v['drop_points']:+.2f} points |")
    verdict = "passed" if card["passed"] else "REJECTED: " + "; ".join(card["failures"])
    lines += ["", f"Export {verdict}. Machine: {card['machine']['processor']}, onnxruntime "
              f"{card['machine']['onnxruntime']}. Full numbers: the .card.json beside this file."]
    return "\n".join(lines) + "\n"


def write_card(card: dict[str, Any], onnx_path: str | Path) -> tuple[Path, Path]:
    """Write ``MODEL.card.json`` and ``MODEL.card.md`` beside ``onnx_path`` (atomically); returns both paths."""
    json_path, md_path = card_paths(onnx_path)
    write_json(json_path, card)
    atomic_write_text(md_path, render_markdown(card))
    return json_path, md_path
