"""Recording a teacher's route while it trains: an engine callback.

At every route point (every ``route.every_epochs`` epochs, or every ``route.every_steps`` steps, and always at the
last step) the recorder takes the validation metrics when validation is due there (``train.val_every_epochs``, and
always at the last step; otherwise the point's ``val`` is empty), writes ``route/<name>.safetensors`` (backbone +
optional full classifier + metadata) atomically, and rewrites ``route.json`` atomically with the file's sha256.
The keep policy ``every_k`` writes only every k-th point (the final point is always written). The engine then
writes ``last.pt``, so a resumed run regenerates any point written after the last resume checkpoint, byte for byte.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from facerco.config import RouteConfig
from facerco.route.io import ROUTE_FORMAT, ROUTE_VERSION, RoutePoint, load_route
from facerco.utils.callbacks import Callback
from facerco.utils.io import sha256_file, write_json

__all__ = ["RouteRecorder", "point_interval", "point_name", "estimate_route_bytes", "format_bytes"]


def point_interval(cfg: RouteConfig, steps_per_epoch: int) -> int:
    """Steps between route points."""
    if cfg.every_steps > 0:
        return cfg.every_steps
    if cfg.every_epochs <= 0:
        raise ValueError(f"route.every_epochs must be > 0 (or set route.every_steps), got {cfg.every_epochs}")
    return max(1, round(cfg.every_epochs * steps_per_epoch))


def point_name(cfg: RouteConfig, step: int, steps_per_epoch: int) -> str:
    """``epoch_NNN`` for whole-epoch points, else ``step_NNNNNN``."""
    if cfg.every_steps <= 0 and step % steps_per_epoch == 0 and float(cfg.every_epochs).is_integer():
        return f"epoch_{step // steps_per_epoch:03d}"
    return f"step_{step:06d}"


def planned_points(cfg: RouteConfig, steps_per_epoch: int, total_steps: int) -> list[tuple[int, bool]]:
    """(step, written) for every point of a full run; the last step is always a written point."""
    interval = point_interval(cfg, steps_per_epoch)
    steps = list(range(interval, total_steps + 1, interval))
    if not steps or steps[-1] != total_steps:
        steps.append(total_steps)
    k = cfg.keep_every if cfg.keep == "every_k" else 1
    if k <= 0:
        raise ValueError(f"route.keep_every must be >= 1, got {k}")
    return [(s, (i + 1) % k == 0 or s == total_steps) for i, s in enumerate(steps)]


def estimate_route_bytes(num_points: int, backbone_params: int, classifier_numel: int) -> int:
    """fp32 bytes of ``num_points`` checkpoints (safetensors header ignored)."""
    return num_points * 4 * (backbone_params + classifier_numel)


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


class RouteRecorder(Callback):
    """Engine callback writing route points and ``route.json`` (rank 0 writes; collectives run on all ranks).

    Args:
        run_dir: the teacher run directory.
        cfg: the ``route`` config section.
        classifier_fn: returns the full (num_classes, D) classifier on rank 0 (a collective under Partial FC), or
            None; called only when ``cfg.save_classifier``.
        info: extra manifest keys (arch, embedding_size, num_classes...).
        metadata: extra checkpoint metadata common to all points.
    """

    name = "route"

    def __init__(
        self,
        run_dir: str | Path,
        cfg: RouteConfig,
        *,
        classifier_fn: Callable[[], torch.Tensor | None] | None = None,
        info: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.cfg = cfg
        self.classifier_fn = classifier_fn
        self.info = dict(info or {})
        self.metadata = dict(metadata or {})
        self.loss_sum = 0.0
        self.loss_count = 0
        self.points: list[RoutePoint] = []
        self.final: str | None = None
        self._written: dict[int, bool] = {}

    # --- resume state -------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"loss_sum": self.loss_sum, "loss_count": self.loss_count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loss_sum = float(state.get("loss_sum", 0.0))
        self.loss_count = int(state.get("loss_count", 0))

    # --- hooks --------------------------------------------------------------------------------------------------
    def on_train_start(self, engine: Any) -> None:
        spe, total = engine.steps_per_epoch, engine.total_steps
        plan = planned_points(self.cfg, spe, total)
        self._written = dict(plan)
        self.info.update(
            {"steps_per_epoch": spe, "total_steps": total, "keep": self.cfg.keep, "keep_every": self.cfg.keep_every}
        )
        manifest = self.run_dir / "route.json"
        if manifest.exists():
            # resume: keep points up to the resume step; later ones are regenerated identically
            old = load_route(self.run_dir)
            self.points = [p for p in old.points if p.step <= engine.step]
            self.final = old.final if old.final in {p.name for p in self.points} else None
        if engine.is_main:
            backbone_params = sum(p.numel() for p in engine.task.backbone.parameters())
            cls_numel = int(self.info.get("num_classes", 0)) * int(self.info.get("embedding_size", 0))
            n_written = sum(1 for _, w in plan if w)
            est = estimate_route_bytes(n_written, backbone_params, cls_numel if self.cfg.save_classifier else 0)
            trainable = sum(p.numel() for p in engine.task.parameters() if p.requires_grad)
            print(
                f"route: {len(plan)} point(s), {n_written} written (keep={self.cfg.keep}"
                f"{'' if self.cfg.keep == 'all' else f', every {self.cfg.keep_every}'}), every "
                f"{point_interval(self.cfg, spe)} step(s); estimated disk {format_bytes(est)} for the route "
                f"+ {format_bytes(3 * 4 * trainable)} for last.pt",
                flush=True,
            )

    def on_step_end(self, engine: Any, step: int, parts: dict[str, float]) -> None:
        self.loss_sum += parts["loss"]
        self.loss_count += 1
        if step not in self._written:
            return
        val = engine.validate() if engine.validation_due(step) else {}
        written = self._written[step]
        classifier = None
        if written and self.cfg.save_classifier and self.classifier_fn is not None:
            classifier = self.classifier_fn()
        if engine.is_main:
            self._record(engine, step, val, written, classifier)
        self.loss_sum, self.loss_count = 0.0, 0
        engine.request_checkpoint()

    # --- writing ------------------------------------------------------------------------------------------------
    def _record(
        self, engine: Any, step: int, val: dict[str, float], written: bool, classifier: torch.Tensor | None
    ) -> None:
        from facerco.models.checkpoint import save_model_checkpoint

        spe = engine.steps_per_epoch
        name = point_name(self.cfg, step, spe)
        is_final = step == engine.total_steps
        train_loss = self.loss_sum / self.loss_count if self.loss_count else math.nan
        lr = engine.lr
        epoch = step / spe
        rel = f"route/{name}.safetensors"
        meta = {
            **self.metadata,
            "route_point": name,
            "epoch": epoch,
            "step": step,
            "lr": lr,
            "train_loss": train_loss,
            "val": val,
            "final": is_final,
        }
        print(
            f"route point {name}: epoch {epoch:.2f} step {step} lr {lr:.3g} train_loss {train_loss:.4f}"
            + "".join(f" {k} {v:.4f}" for k, v in val.items())
            + ("" if written else " (not kept: keep policy)"),
            flush=True,
        )
        if not written:
            return
        path = self.run_dir / rel
        save_model_checkpoint(path, engine.task.backbone, classifier=classifier, metadata=meta)  # atomic
        point = RoutePoint(
            name=name,
            file=rel,
            epoch=epoch,
            step=step,
            lr=lr,
            train_loss=train_loss,
            val=dict(val),
            sha256=sha256_file(path),
            bytes=path.stat().st_size,
            final=is_final,
        )
        self.points = [p for p in self.points if p.name != name and p.step < step] + [point]
        if is_final:
            self.final = name
        self.write_manifest()

    def write_manifest(self) -> None:
        data = {
            "format": ROUTE_FORMAT,
            "version": ROUTE_VERSION,
            **self.info,
            "final": self.final,
            "points": [p.to_dict() for p in self.points],
        }
        write_json(self.run_dir / "route.json", data)
