"""The teacher job: margin-softmax training of a backbone that records its route.

``train_teacher(cfg)`` starts as every job does (:mod:`facerco.train.job`: process group, resume check, config.yaml,
the dataset from ``data``, the backbone from ``model``, the validator), adds the Partial-FC margin head from ``loss``,
and runs the shared :class:`~facerco.train.engine.Engine` with a :class:`~facerco.route.record.RouteRecorder`.
The run directory gets ``config.yaml`` (the resolved config), ``route.json`` + ``route/*.safetensors``, ``last.pt``,
``log.jsonl`` and ``tb/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from facerco.config import Config
from facerco.losses.partial_fc import build_head
from facerco.route.record import RouteRecorder
from facerco.train import distributed as fdist
from facerco.train.engine import Engine, FitResult, seed_everything
from facerco.train.job import build_backbone, build_train_dataset, build_validator, prepare_run_dir, start_job
from facerco.train.task import TrainTask

__all__ = ["TeacherTask", "train_teacher"]


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


def train_teacher(cfg: Config) -> FitResult:
    """Run (or resume) a teacher job; collective under torchrun.

    Torch runs with ``train.threads`` threads (0: the cores not busy at start), printed and recorded in the first
    train record of log.jsonl; the caller's count is restored afterwards.
    """
    with start_job(cfg, "teacher") as job:
        return _train(cfg, job.dist)


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

    dataset = build_train_dataset(cfg)  # opened first: a folder the job cannot use leaves no run folder behind
    require_labels(dataset, "the teacher job trains a margin-softmax classifier over identities: give one "
                            "sub-folder per identity (data.format=folder) or a train.rec (data.format=rec)")
    run_dir = prepare_run_dir(cfg, dist, unread=("distill",))  # a teacher never reads the student's section
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    backbone = build_backbone(cfg)
    embedding_size = int(backbone.meta.embedding_size)  # type: ignore[union-attr]
    task = TeacherTask(backbone, build_head(cfg, embedding_size, int(dataset.num_classes)))
    recorder = _recorder(cfg, run_dir, task, int(dataset.num_classes))
    validator = build_validator(cfg, dist.device)
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
