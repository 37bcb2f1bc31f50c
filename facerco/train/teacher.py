"""The teacher job: margin-softmax training of a backbone that records its route.

``train_teacher(cfg)`` builds the dataset from ``data``, the backbone from ``model``, the Partial-FC margin head
from ``loss``, and runs the shared :class:`~facerco.train.engine.Engine` with a
:class:`~facerco.route.record.RouteRecorder`. The run directory gets ``config.yaml`` (the resolved config),
``route.json`` + ``route/*.safetensors``, ``last.pt``, ``log.jsonl`` and ``tb/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from facerco.config import Config, dump_config
from facerco.losses.partial_fc import build_head
from facerco.route.record import RouteRecorder
from facerco.train import distributed as fdist
from facerco.train.engine import Engine, FitResult, check_resume_config, seed_everything
from facerco.train.task import TrainTask
from facerco.train.validation import build_validator
from facerco.utils.device import resolve_device
from facerco.utils.io import atomic_write_text
from facerco.utils.threads import job_threads

__all__ = ["TeacherTask", "build_backbone", "build_margin_head", "build_train_dataset", "train_teacher"]


class TeacherTask(TrainTask):
    """Backbone + margin head: ``loss = head(backbone(images), labels)``, the head run in fp32.

    The head is a Partial-FC module holding this rank's rows of the class-centre matrix, so it is rank-local.
    """

    rank_local_prefixes = ("head.",)

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def training_step(
        self, images: torch.Tensor, labels: torch.Tensor, step: int, **kwargs: Any
    ) -> dict[str, torch.Tensor]:
        emb = self.backbone(images)
        with self.full_precision(images.device.type):
            loss = self.head(emb.float(), labels)
        return {"loss": loss}

    def param_groups(self, weight_decay: float, classifier_lr_mult: float = 1.0) -> list[dict[str, Any]]:
        return [
            {
                "params": [p for p in self.backbone.parameters() if p.requires_grad],
                "weight_decay": weight_decay,
                "lr_mult": 1.0,
            },
            {
                "params": [p for p in self.head.parameters() if p.requires_grad],
                "weight_decay": weight_decay,
                "lr_mult": classifier_lr_mult,
            },
        ]

    def full_classifier(self) -> torch.Tensor | None:
        """The whole (num_classes, D) class-centre matrix on rank 0 (a collective across ranks)."""
        full_weight = getattr(self.head, "full_weight", None)
        if callable(full_weight):
            return full_weight().detach().cpu()
        weight = getattr(self.head, "weight", None)
        return weight.detach().cpu() if isinstance(weight, torch.Tensor) else None


build_margin_head = build_head
"""Alias of :func:`facerco.losses.partial_fc.build_head`, the one margin-head builder."""


def build_backbone(cfg: Config) -> nn.Module:
    """``create_model`` with the config's overrides; a non-112 ``data.image_size`` becomes the model's input size."""
    from facerco.models import create_model

    overrides: dict[str, Any] = {}
    for key in ("embedding_size", "dropout", "width_mult"):
        value = getattr(cfg.model, key)
        if value is not None:
            overrides[key] = value
    if cfg.data.image_size != 112:
        overrides["input_size"] = cfg.data.image_size
    return create_model(cfg.model.name, **overrides)


def build_train_dataset(cfg: Config) -> Any:
    """The training set without random flip: the engine flips from its seeded sampler (``data.flip``)."""
    from facerco.data.datasets import open_dataset
    from facerco.data.transforms import TrainTransform

    if not cfg.data.train:
        raise ValueError("data.train is empty: set it to a train.rec folder or an aligned identity folder")
    return open_dataset(cfg.data.train, cfg.data.format, TrainTransform(flip=False, size=cfg.data.image_size))


def train_teacher(cfg: Config) -> FitResult:
    """Run (or resume) a teacher job; collective under torchrun.

    Torch runs with ``train.threads`` threads (0: the cores not busy at start), printed and recorded in the first
    train record of log.jsonl; the caller's count is restored afterwards.
    """
    dist = fdist.init_distributed(resolve_device(cfg.train.device))
    try:
        with job_threads(cfg.train.threads, "teacher", announce=dist.is_main):
            result = _train(cfg, dist)
    except BaseException:
        fdist.abort()  # no barrier: the other ranks may be gone
        raise
    fdist.cleanup()
    return result


def _recorder(cfg: Config, run_dir: Path, task: TeacherTask, num_classes: int) -> RouteRecorder:
    """The route recorder, with what route.json says about the teacher (arch, sizes, classes, dataset)."""
    meta = task.backbone.meta  # type: ignore[union-attr]
    info = {"arch": meta.name, "arch_kwargs": dict(meta.arch_kwargs), "embedding_size": int(meta.embedding_size),
            "num_classes": num_classes, "dataset": cfg.data.train}
    return RouteRecorder(run_dir, cfg.route, classifier_fn=task.full_classifier, info=info,
                         metadata={"job": "teacher"})


def _train(cfg: Config, dist: fdist.DistInfo) -> FitResult:
    """The teacher job once the process group is up: config.yaml, data, backbone, head, route recorder, engine."""
    from facerco.data.datasets import require_labels

    run_dir = Path(cfg.train.output)
    check_resume_config(run_dir, cfg)
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    dataset = build_train_dataset(cfg)
    require_labels(dataset, "the teacher job trains a margin-softmax classifier over identities: give one "
                            "sub-folder per identity (data.format=folder) or a train.rec (data.format=rec)")
    backbone = build_backbone(cfg)
    embedding_size = int(backbone.meta.embedding_size)  # type: ignore[union-attr]
    task = TeacherTask(backbone, build_head(cfg, embedding_size, int(dataset.num_classes)))
    recorder = _recorder(cfg, run_dir, task, int(dataset.num_classes))
    validator = build_validator(
        cfg.data.val_bins, cfg.data.val_pairs, cfg.data.val_root, cfg.eval.batch_size, str(dist.device)
    )
    engine = Engine(task, dataset, cfg, run_dir=run_dir, callbacks=[recorder], validator=validator, dist_info=dist)
    if dist.is_main:
        print(
            f"teacher: {backbone.meta.name} ({sum(p.numel() for p in backbone.parameters()) / 1e6:.2f}M params) on "
            f"{len(dataset)} images / {dataset.num_classes} classes; {dist.world_size} rank(s) x "
            f"{cfg.train.batch_size} = {engine.global_batch} per step, {engine.steps_per_epoch} steps/epoch, "
            f"{engine.total_steps} steps; device {dist.device}, {engine.precision.describe()}",
            flush=True,
        )
    return engine.fit()
