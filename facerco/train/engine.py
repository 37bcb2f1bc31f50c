"""The one training loop shared by teacher and student jobs.

A job builds a :class:`~facerco.train.task.TrainTask` and a dataset of ``(image, label)`` and hands them to
:class:`Engine`. The engine owns: the deterministic batch order (:mod:`facerco.train.sampler`), SGD/AdamW from
``optim``, the per-iteration lr schedule (replaceable), AMP, gradient clipping on ``task.backbone``, DDP when
launched by torchrun, periodic validation, logs, and ``last.pt`` resume checkpoints written atomically so a run
killed at any moment continues at the saved step with the same data order.

Job-specific behaviour (recording a route, switching anchors) lives in :class:`Callback` objects and task hooks.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from facerco.config import Config, OptimConfig
from facerco.train import distributed as fdist
from facerco.train.checkpoint import load_resume, restore_resume, save_resume
from facerco.train.feed import batch_path, build_loader, device_images
from facerco.train.precision import resolve_precision
from facerco.train.runlog import RunLogger
from facerco.train.sampler import GlobalBatchSampler
from facerco.train.schedule import LRSchedule, build_schedule
from facerco.train.task import TrainTask
from facerco.utils.callbacks import Callback

__all__ = [
    "Engine",
    "Callback",
    "FitResult",
    "Validator",
    "build_optimizer",
    "seed_everything",
]

Validator = Callable[[nn.Module], dict[str, float]]
"""Runs on rank 0 with the backbone in eval mode; returns flat metrics, e.g. ``{'lfw_pairs/acc': 0.93}``."""


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed python, numpy and torch; with ``deterministic`` ask torch for deterministic kernels.

    Call before building the task so every rank initialises identical weights.
    """
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def build_optimizer(groups: list[dict[str, Any]], cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov) or AdamW over the task's param groups; ``lr`` is set per step."""
    for g in groups:
        g.setdefault("lr_mult", 1.0)
        g["lr"] = cfg.lr * g["lr_mult"]
    if cfg.name == "sgd":
        return torch.optim.SGD(
            groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.nesterov
        )
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"optim.name must be 'sgd' or 'adamw', got {cfg.name!r}")


@dataclass
class FitResult:
    """What a finished (or stopped at max_steps) run reports."""

    step: int
    total_steps: int
    steps_per_epoch: int
    seconds: float
    resumed_from: int
    last_parts: dict[str, float] = field(default_factory=dict)
    val: dict[str, float] = field(default_factory=dict)


class Engine:
    """Train ``task`` on ``dataset`` as the config's optim/schedule/train sections say.

    Args:
        task: the trainable module (moved to the device here).
        dataset: items ``(image CHW float tensor, label int)``, without random flip (the engine flips from the
            seeded sampler when ``data.flip``). A RecordDataset/FolderDataset is read batch-wise as uint8 and
            normalized on the device; a dataset with ``get_batch`` in one indexing per batch (:mod:`.feed`).
        cfg: the whole config; reads ``optim``, ``schedule``, ``train`` and ``data.flip``/``data.num_workers``.
        run_dir: where ``last.pt``, ``log.jsonl`` and ``tb/`` go; defaults to ``train.output``.
        schedule: an lr schedule object; default :func:`~facerco.train.schedule.build_schedule` of ``schedule``.
        total_steps: the run length in optimizer steps; default ``round(train.epochs * steps_per_epoch)``.
        callbacks: route recorders, anchor switchers...
        validator: periodic validation (every ``train.val_every_epochs`` and at the end).
        dist_info: from :func:`facerco.train.distributed.init_distributed`; default: initialise from the env.
    """

    def __init__(
        self,
        task: TrainTask,
        dataset: Dataset,
        cfg: Config,
        *,
        run_dir: str | Path | None = None,
        schedule: LRSchedule | None = None,
        total_steps: int | None = None,
        callbacks: Sequence[Callback] = (),
        validator: Validator | None = None,
        dist_info: fdist.DistInfo | None = None,
    ) -> None:
        from facerco.utils.device import resolve_device

        self.cfg = cfg
        tc = cfg.train
        self.dist = dist_info or fdist.init_distributed(resolve_device(tc.device))
        self.device = self.dist.device
        self.run_dir = Path(run_dir or tc.output)
        self.task = task.to(self.device)
        if tc.channels_last:  # before DDP and the optimizer see the parameters
            self.task.to(memory_format=torch.channels_last)
        self.dataset = dataset
        self.batch_path = batch_path(dataset)
        self.sampler = GlobalBatchSampler(
            len(dataset),  # type: ignore[arg-type]
            tc.batch_size,
            world_size=self.dist.world_size,
            rank=self.dist.rank,
            seed=tc.seed,
            shuffle=True,
            flip=cfg.data.flip,
        )
        self.steps_per_epoch = self.sampler.steps_per_epoch
        self.global_batch = self.sampler.global_batch
        self.total_steps = total_steps if total_steps is not None else max(1, round(tc.epochs * self.steps_per_epoch))
        self.stop_step = min(self.total_steps, tc.max_steps) if tc.max_steps > 0 else self.total_steps
        self.schedule: LRSchedule = schedule or build_schedule(
            cfg.schedule, self.steps_per_epoch, self.total_steps, cfg.optim.lr
        )
        self.precision = resolve_precision(tc.amp, self.device)
        self.scaler = self.precision.make_scaler()
        self.optimizer = build_optimizer(
            task.param_groups(cfg.optim.weight_decay, cfg.optim.classifier_lr_mult), cfg.optim
        )
        self.base_lr = cfg.optim.lr
        self.callbacks = list(callbacks)
        self.validator = validator
        self.step = 0
        self.lr = 0.0
        self.last_val: dict[str, float] = {}
        self._val_step = -1
        self._ckpt_requested = False
        val_every = round(tc.val_every_epochs * self.steps_per_epoch) if tc.val_every_epochs > 0 else 0
        self.val_every_steps = max(1, val_every) if tc.val_every_epochs > 0 else 0
        self.model = self._wrap_ddp(task)

    # -------------------------------------------------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        """0-based epoch of the next step."""
        return self.step // self.steps_per_epoch

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "last.pt"

    def request_checkpoint(self) -> None:
        """Ask for a resume checkpoint at the end of the current step (route points do)."""
        self._ckpt_requested = True

    def _wrap_ddp(self, task: TrainTask) -> nn.Module:
        if not self.dist.enabled:
            return task
        if self.cfg.train.sync_bn:
            if self.device.type != "cuda":
                raise ValueError("train.sync_bn=true needs CUDA (torch's SyncBatchNorm has no CPU kernel)")
            task.backbone = nn.SyncBatchNorm.convert_sync_batchnorm(task.backbone)
        prefixes = tuple(task.rank_local_prefixes)
        if prefixes:
            ignore = [n for n, _ in task.named_parameters() if n.startswith(prefixes)]
            ignore += [n for n, _ in task.named_buffers() if n.startswith(prefixes)]
            nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(task, ignore)
        return nn.parallel.DistributedDataParallel(
            task,
            device_ids=[self.device.index] if self.device.type == "cuda" else None,
            broadcast_buffers=False,
            find_unused_parameters=task.find_unused_parameters,
        )

    # -------------------------------------------------------------------------------------------------------------
    def _resume_meta(self) -> dict[str, Any]:
        return {
            "world_size": self.dist.world_size,
            "global_batch": self.global_batch,
            "steps_per_epoch": self.steps_per_epoch,
            "total_steps": self.total_steps,
            "seed": self.cfg.train.seed,
            "dataset_len": len(self.dataset),  # type: ignore[arg-type]
        }

    def save_checkpoint(self) -> None:
        """Collective: every rank calls it; rank 0 writes ``last.pt`` atomically."""
        extra = {
            "task": self.task.extra_state(),
            "callbacks": {cb.name: cb.state_dict() for cb in self.callbacks},
            "last_val": dict(self.last_val),
        }
        save_resume(
            self.checkpoint_path,
            module=self.task,
            optimizer=self.optimizer,
            scaler=self.scaler,
            step=self.step,
            meta=self._resume_meta(),
            local_prefixes=tuple(self.task.rank_local_prefixes),
            extra=extra,
        )

    def _maybe_resume(self) -> int:
        path = self.checkpoint_path
        if not path.exists():
            return 0
        if not self.cfg.train.resume:
            raise FileExistsError(
                f"{path}: a resume checkpoint exists; pass train.resume=true to continue it, or choose another "
                "train.output"
            )
        payload = load_resume(path)
        want = self._resume_meta()
        for key, value in want.items():
            if payload["meta"].get(key) != value:
                raise ValueError(
                    f"{path}: cannot resume, {key} was {payload['meta'].get(key)} and is now {value}; "
                    "resume with the same world size, batch size, seed, dataset and schedule length"
                )
        restore_resume(
            payload,
            module=self.task,
            optimizer=self.optimizer,
            scaler=self.scaler,
            rank=self.dist.rank,
            local_prefixes=tuple(self.task.rank_local_prefixes),
            source=str(path),
        )
        extra = payload.get("extra", {})
        self.task.load_extra_state(extra.get("task", {}))
        for cb in self.callbacks:
            cb.load_state_dict(extra.get("callbacks", {}).get(cb.name, {}))
        self.last_val = dict(extra.get("last_val", {}))
        self.step = int(payload["step"])
        return self.step

    # -------------------------------------------------------------------------------------------------------------
    def validate(self) -> dict[str, float]:
        """Run the validator on rank 0 at the current step (cached per step) and share the metrics with all ranks.

        RNG states are saved and restored around it so validation never changes the training trajectory.
        """
        if self.validator is None:
            return {}
        if self._val_step == self.step:
            return self.last_val
        metrics: dict[str, float] = {}
        if self.is_main:
            cpu_state = torch.get_rng_state()
            cuda_state = torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None
            backbone = self.task.backbone
            was_training = backbone.training
            backbone.eval()
            try:
                with torch.no_grad():
                    metrics = {k: float(v) for k, v in self.validator(backbone).items()}
            finally:
                backbone.train(was_training)
                torch.set_rng_state(cpu_state)
                if cuda_state is not None:
                    torch.cuda.set_rng_state_all(cuda_state)
        metrics = fdist.broadcast_object(metrics)
        self.last_val = metrics
        self._val_step = self.step
        return metrics

    def validation_due(self, step: int) -> bool:
        """Whether the periodic validation runs after ``step`` completed steps (and always at the last step)."""
        if self.validator is None:
            return False
        return (self.val_every_steps > 0 and step % self.val_every_steps == 0) or step in (
            self.stop_step,
            self.total_steps,
        )

    def _loader(self, epoch: int, start_batch: int) -> DataLoader:
        self.sampler.set_epoch(epoch, start_batch)
        return build_loader(self.dataset, self.sampler, workers=self.cfg.data.num_workers, seed=self.cfg.train.seed,
                            epoch=epoch, device=self.device)

    def _set_lr(self, step: int) -> None:
        factor = float(self.schedule.lr_factor(step))
        for g in self.optimizer.param_groups:
            g["lr"] = self.base_lr * g.get("lr_mult", 1.0) * factor
        self.lr = self.base_lr * factor

    def _train_step(self, images: torch.Tensor, labels: torch.Tensor, keys: torch.Tensor) -> dict[str, float]:
        step = self.step
        self.task.on_step_start(step)
        self._set_lr(step)
        images = device_images(images, self.device, self.cfg.train.channels_last)
        labels = labels.to(self.device, non_blocking=True)
        kwargs = {"keys": keys.to(self.device)} if self.task.wants_keys else {}
        with self.precision.autocast():
            out = self.model(images, labels, step, **kwargs)
        if "loss" not in out:
            raise KeyError(f"{type(self.task).__name__}.training_step must return a dict with 'loss'")
        loss = out["loss"]
        self.scaler.scale(loss).backward()
        parts = {k: v.detach().float() for k, v in out.items()}
        clip = self.cfg.train.grad_clip
        if clip > 0:
            self.scaler.unscale_(self.optimizer)
            parts["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.task.backbone.parameters(), clip).detach()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        names = sorted(parts)
        stacked = fdist.all_reduce_mean(torch.stack([parts[n].reshape(()) for n in names]))
        values = dict(zip(names, stacked.cpu().tolist(), strict=True))
        if not math.isfinite(values["loss"]):
            raise RuntimeError(
                f"loss became {values['loss']} at step {step} (epoch {self.epoch}); lower optim.lr or check the data"
            )
        return values

    # -------------------------------------------------------------------------------------------------------------
    def fit(self) -> FitResult:
        """Train from scratch or from ``last.pt`` until ``stop_step``; returns what happened."""
        tc = self.cfg.train
        start = self._maybe_resume()
        resumed_from = start
        logger = RunLogger(self.run_dir, enabled=self.is_main, tensorboard=tc.tensorboard, start_step=start)
        if start and self.is_main:  # say so: the progress bar alone just starts part-way
            written = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(self.checkpoint_path.stat().st_mtime))
            note = f"resuming from step {start} of {self.total_steps} (last.pt written at {written})"
            print(f"{self.run_dir.name}: {note}", flush=True)
            logger.log("resume", start, {"epoch": self.epoch, "total_steps": self.total_steps, "message": note})
        for cb in self.callbacks:
            cb.on_train_start(self)
        self.task.train()
        t0 = time.time()
        bar = tqdm(
            total=self.stop_step,
            initial=start,
            unit="step",
            dynamic_ncols=True,
            disable=not (self.is_main and tc.progress),
            desc=f"train {self.run_dir.name}",
        )
        window_t, window_n = time.time(), 0
        parts: dict[str, float] = {}
        first_record = {"torch_threads": torch.get_num_threads()}  # in the first train record of this start/resume
        try:
            while self.step < self.stop_step:
                epoch = self.epoch
                start_batch = self.step - epoch * self.steps_per_epoch
                for images, labels, keys in self._loader(epoch, start_batch):
                    parts = self._train_step(images, labels, keys)
                    self.step += 1
                    window_n += 1
                    bar.update(1)
                    if self.step % max(tc.log_every, 1) == 0 or self.step == self.stop_step:
                        dt = max(time.time() - window_t, 1e-9)
                        rate = window_n * self.global_batch / dt
                        bar.set_postfix(loss=f"{parts['loss']:.4f}", lr=f"{self.lr:.2e}", img_s=f"{rate:.0f}")
                        logger.log(
                            "train",
                            self.step,
                            {"epoch": self.step / self.steps_per_epoch, "lr": self.lr, "samples_per_s": rate, **parts,
                             **first_record},
                        )
                        window_t, window_n, first_record = time.time(), 0, {}
                    if self.validation_due(self.step):
                        logger.log("val", self.step, self.validate())
                    for cb in self.callbacks:
                        cb.on_step_end(self, self.step, parts)
                    epoch_done = self.step % self.steps_per_epoch == 0
                    if epoch_done:
                        for cb in self.callbacks:
                            cb.on_epoch_end(self, self.step // self.steps_per_epoch - 1)
                    every = tc.checkpoint_every_steps
                    if (
                        self._ckpt_requested
                        or epoch_done
                        or self.step == self.stop_step
                        or (every > 0 and self.step % every == 0)
                    ):
                        self.save_checkpoint()
                        self._ckpt_requested = False
                    if self.step >= self.stop_step:
                        break
            for cb in self.callbacks:
                cb.on_train_end(self)
        finally:
            bar.close()
            logger.close()
        return FitResult(
            step=self.step,
            total_steps=self.total_steps,
            steps_per_epoch=self.steps_per_epoch,
            seconds=time.time() - t0,
            resumed_from=resumed_from,
            last_parts=parts,
            val=dict(self.last_val),
        )
