"""One deployable file per call: export (fp32, fp16 or int8), check, measure, write the card, then place the file.

Everything is built in a staging folder beside the destination; the model is moved into place last, after its
parity report and card, and only when it passed its gates (per-image min cosine for float files, mean cosine for
int8, and ``max_drop`` points of verification accuracy when pairs are given). A file that fails a gate is kept for
inspection as ``MODEL.rejected.onnx`` with its own card, so nothing named ``MODEL.onnx`` looks finished unless it
is; an exception leaves no new ``.onnx`` at all.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from facerco.export import card as cards
from facerco.export import onnx as fx
from facerco.export import quantize as qz
from facerco.utils.io import write_json

__all__ = ["PRECISIONS", "FLOAT_MIN_COSINE", "INT8_MIN_SPEEDUP", "ExportPlan", "ExportResult", "export_model",
           "rejected_path"]

PRECISIONS = ("fp32", "fp16", "int8")
FLOAT_MIN_COSINE = 0.9999
# An int8 file exists to be faster than its float32 source. onnxruntime runs PReLU in float between a dequantize and
# a requantize, so a PReLU network's int8 file is about as fast as float32 (0.9-1.2x measured) and is refused by
# default; a model.activation=relu student folds its activations into the integer convolutions (benchmarks/export.py).
INT8_MIN_SPEEDUP = 1.0


@dataclass
class ExportPlan:
    """How to export and what the file must achieve; defaults are the CLI's."""

    precision: str = "fp32"
    opset: int = fx.DEFAULT_OPSET
    exporter: str = "dynamo"
    simplify: bool = False
    calibrate: str | None = None
    calibration_count: int = qz.DEFAULT_CALIBRATION_COUNT
    calibration_batch: int = qz.DEFAULT_CALIBRATION_BATCH
    calibration_method: str = "minmax"
    per_channel: bool = True
    preprocess: bool = True
    check: str | None = fx.GENERATED
    check_limit: int = 64
    repeats: int = 5
    batch_sizes: tuple[int, ...] = (1, 64)
    eval_pairs: str | None = None
    eval_root: str | None = None
    eval_bin: str | None = None
    min_cosine: float | None = None
    min_mean_cosine: float | None = None
    max_drop: float | None = None
    min_speedup: float | None = None

    def validate(self) -> None:
        """Refuse contradictory settings before any slow work."""
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if self.precision == "int8" and not self.calibrate:
            raise ValueError("--int8 needs --calibrate ALIGNED_DIR|.rec|.bin (images to measure activation ranges)")
        if self.precision != "int8" and self.calibrate:
            raise ValueError("--calibrate is only used with --int8")
        if self.calibration_method not in qz.CALIBRATION_METHODS:
            raise ValueError(f"unknown calibration method {self.calibration_method!r}; choose one of "
                             f"{', '.join(qz.CALIBRATION_METHODS)}")
        if self.eval_pairs and not self.eval_root:
            raise ValueError("--eval-pairs needs --eval-root (the folder its image paths are relative to)")
        if self.eval_pairs and self.eval_bin:
            raise ValueError("give either --eval-pairs/--eval-root or --eval-bin, not both")
        if self.min_speedup is not None and self.precision != "int8":
            raise ValueError("--min-speedup is only used with --int8 (the int8 file against its float32 source)")
        if self.max_drop is not None and not self.has_eval:
            raise ValueError("--max-drop needs verification pairs: --eval-pairs with --eval-root, or --eval-bin")

    @property
    def has_eval(self) -> bool:
        return bool(self.eval_pairs or self.eval_bin)

    def gates(self) -> dict[str, float | None]:
        """The thresholds in force: float files keep the 0.9999 per-image floor, int8 files a mean-cosine floor and
        a speed-up over their float32 source (measured only when the check runs)."""
        int8 = self.precision == "int8"
        min_cos = self.min_cosine if self.min_cosine is not None or int8 else FLOAT_MIN_COSINE
        mean_cos = self.min_mean_cosine if self.min_mean_cosine is not None or not int8 else qz.INT8_MIN_MEAN_COSINE
        speedup = (self.min_speedup if self.min_speedup is not None else INT8_MIN_SPEEDUP) if int8 else None
        return {"min_cosine": min_cos, "min_mean_cosine": mean_cos, "max_drop_points": self.max_drop,
                "min_speedup": speedup}


@dataclass
class ExportResult:
    """Where the file ended and why."""

    path: Path
    passed: bool
    card: dict[str, Any]
    parity: dict[str, Any] | None
    failures: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)


def rejected_path(out: str | Path) -> Path:
    """``model.onnx`` -> ``model.rejected.onnx``: where a file that failed its gates is kept."""
    p = Path(out)
    return p.with_name(f"{p.stem}.rejected{p.suffix}")


def _failures(plan: ExportPlan, parity: dict[str, Any] | None, verification: dict[str, Any] | None,
              speed: dict[str, Any] | None = None) -> list[str]:
    gates, out = plan.gates(), []
    if parity is not None:
        s = parity["summary"]
        if gates["min_cosine"] is not None and s["min_cosine"] < gates["min_cosine"]:
            out.append(f"min cosine {s['min_cosine']:.6f} < {gates['min_cosine']}")
        if gates["min_mean_cosine"] is not None and s["mean_cosine"] < gates["min_mean_cosine"]:
            out.append(f"mean cosine {s['mean_cosine']:.6f} < {gates['min_mean_cosine']}")
    if verification is not None and plan.max_drop is not None and verification["drop_points"] > plan.max_drop:
        out.append(f"verification accuracy drop {verification['drop_points']:.2f} points > {plan.max_drop}")
    if speed is not None and gates["min_speedup"] is not None and speed["min_speedup"] < gates["min_speedup"]:
        slow = min(speed["batches"].items(), key=lambda kv: kv[1]["speedup"])
        out.append(f"int8 runs at {slow[1]['speedup']:.2f}x the float32 file at batch {slow[0]} (< "
                   f"{gates['min_speedup']}x; a PReLU network's activations run in float in onnxruntime: train with "
                   "model.activation=relu, or ship the float32 file)")
    return out


def _build(model: nn.Module, out: Path, staging: Path, plan: ExportPlan,
           metadata: dict[str, Any]) -> tuple[Path, dict[str, Any], dict[str, Any] | None]:
    """Export (and quantize) into ``staging``; returns the deliverable, its export summary and the int8 summary."""
    calib = None
    if plan.precision == "int8":  # read the calibration set first: a bad folder fails before the slow export
        size = (int(model.meta.input_size[0]), int(model.meta.input_size[1]))
        calib = qz.load_calibration_images(plan.calibrate, size, plan.calibration_count, plan.calibration_batch)
    info = fx.export_onnx(model, staging / f"{out.stem}.float.onnx", opset=plan.opset,
                          fp16=plan.precision == "fp16", simplify=plan.simplify, exporter=plan.exporter,
                          metadata=metadata)
    export = {**info.to_dict(), "path": str(out)}
    if calib is None:
        return Path(info.path), export, None
    q = qz.quantize_int8(info.path, staging / f"{out.stem}.int8.onnx", calib, method=plan.calibration_method,
                         batch=plan.calibration_batch, per_channel=plan.per_channel, preprocess=plan.preprocess,
                         metadata=metadata)
    export.update({"float32_file_bytes": info.file_bytes, "float32_sha256": info.sha256,
                   "file_bytes": q.file_bytes, "sha256": q.sha256, "num_nodes": q.num_nodes})
    return Path(q.path), export, {**q.to_dict(), "path": str(out),
                                  "size_vs_float32": q.file_bytes / info.file_bytes}


def _measure(model: nn.Module, path: Path, plan: ExportPlan, size: tuple[int, int], float_path: Path
             ) -> tuple[dict[str, Any] | None, dict[str, Any] | None, dict[str, Any] | None]:
    """Parity (and, for int8, the speed-up over the float32 file) on the check images; verification on pairs."""
    parity, speed = None, None
    if plan.check:
        images, names = fx.load_check_images(plan.check, size, limit=plan.check_limit)
        parity = fx.check_parity(model, path, images, names, batch_sizes=plan.batch_sizes, repeats=plan.repeats)
        if plan.precision == "int8":
            speed = fx.compare_speed(float_path, path, images, batch_sizes=plan.batch_sizes, repeats=plan.repeats)
    verification = None
    if plan.has_eval:
        verification = cards.compare_verification(model, path, pairs=plan.eval_pairs, root=plan.eval_root,
                                                  bin_path=plan.eval_bin)
    return parity, verification, speed


def _place(built: Path, final: Path, out: Path, parity: dict[str, Any] | None, card: dict[str, Any]
           ) -> list[Path]:
    """Sidecars first, the model last; a passing export clears stale rejected files of the same name."""
    files = []
    if parity is not None:
        files.append(fx.parity_report_path(final))
        write_json(files[-1], parity)
    files += list(cards.write_card(card, final))
    os.replace(built, final)
    if final == out:
        stale = rejected_path(out)
        for p in (stale, fx.parity_report_path(stale), *cards.card_paths(stale)):
            p.unlink(missing_ok=True)
    return [final, *files]


def export_model(model: nn.Module, out: str | Path, plan: ExportPlan, *, source: dict[str, Any] | None = None,
                 metadata: dict[str, Any] | None = None, report_extra: dict[str, Any] | None = None
                 ) -> ExportResult:
    """Export ``model`` as ``plan.precision`` to ``out`` with its parity report and card (see module docstring).

    Args:
        model: a facerco backbone (with ``.meta``), on any device; it is not modified.
        out: destination ``.onnx``.
        plan: settings and gates.
        source: the source checkpoint (``{"checkpoint": name, "sha256": ...}``) for the card.
        metadata: extra ``facerco.*`` metadata_props stored in the file.
        report_extra: extra keys for the parity report (e.g. the checkpoint's metadata).

    Returns:
        An :class:`ExportResult`; ``passed`` False means the file went to :func:`rejected_path`.
    """
    plan.validate()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    try:
        built, export, quant = _build(model, out, staging, plan, dict(metadata or {}))
        parity, verification, speed = _measure(model, built, plan, tuple(export["input_size"]),
                                               staging / f"{out.stem}.float.onnx")
        if quant is not None:
            quant["speedup_vs_float32"] = speed
        failures = _failures(plan, parity, verification, speed)
        final = out if not failures else rejected_path(out)
        if parity is not None:
            parity.update({"onnx": str(final), "export": {**export, "path": str(final)},
                           "check_source": str(plan.check), "goal_min_cosine": plan.gates()["min_cosine"],
                           "gates": plan.gates(), **(report_extra or {}), "passed": not failures})
        card = cards.build_card(model, built, precision=plan.precision, name=final.name, source=source,
                                export={**export, "path": str(final)}, quantization=quant, parity=parity,
                                check_source=str(plan.check), verification=verification, gates=plan.gates(),
                                failures=failures)
        files = _place(built, final, out, parity, card)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(final, not failures, card, parity, failures, files)
