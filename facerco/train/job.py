"""The one job setup shared by the teacher job and the student job (`facerco distill` = `facerco train student`).

Every job starts the same way, so a reader learns it once (arcface_torch ``train_v2.py`` order):

1. :func:`start_job`: the process group and the torch threads, torn down on any exit (an error aborts the group
   without a barrier, since the other ranks may be gone);
2. :func:`prepare_run_dir`: a resume under a changed config is refused (:func:`check_resume_config`), and
   ``config.yaml`` is written by the first start only, so a resume never rewrites the record of what was run;
3. the parts from the config: :func:`build_backbone`, :func:`build_train_dataset`, :func:`build_validator` (the
   margin head is :func:`facerco.losses.partial_fc.build_head`).

The jobs then differ only in the task and callbacks they hand :class:`~facerco.train.engine.Engine`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from facerco.config import Config
from facerco.train import distributed as fdist
from facerco.utils.threads import ThreadChoice, job_threads

__all__ = [
    "RESUME_FREE_KEYS",
    "JobContext",
    "build_backbone",
    "build_train_dataset",
    "build_validator",
    "check_resume_config",
    "is_resume",
    "prepare_run_dir",
    "start_job",
]

RESUME_FREE_KEYS = frozenset(
    {
        "train.max_steps",
        "train.progress",
        "train.tensorboard",
        "train.log_every",
        "train.resume",
        "train.device",
        "train.threads",
        "data.num_workers",
        "eval.batch_size",
    }
)
"""Config keys a resumed run may change; any other difference from the run's config.yaml is refused."""


@dataclass(frozen=True)
class JobContext:
    """What :func:`start_job` hands the job: its rank layout (and device) and the torch threads it runs with."""

    dist: fdist.DistInfo
    threads: ThreadChoice


@contextmanager
def start_job(cfg: Config, name: str) -> Iterator[JobContext]:
    """Join the process group (torchrun's env; none on one process) and set ``train.threads`` for the job.

    On a normal exit every rank waits for the others and leaves the group; on any exception (KeyboardInterrupt
    included) the group is left at once, because waiting at a barrier for ranks that died would hang. The caller's
    thread count is restored either way.
    """
    from facerco.utils.device import resolve_device

    dist = fdist.init_distributed(resolve_device(cfg.train.device))
    try:
        with job_threads(cfg.train.threads, name, announce=dist.is_main) as threads:
            yield JobContext(dist, threads)
    except BaseException:
        fdist.abort()
        raise
    fdist.cleanup()


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def is_resume(run_dir: str | Path, cfg: Config) -> bool:
    """Whether this start continues ``run_dir/last.pt`` (it exists and ``train.resume`` is on)."""
    return bool(cfg.train.resume) and (Path(run_dir) / "last.pt").exists()


def check_resume_config(run_dir: str | Path, cfg: Config, unread: tuple[str, ...] = ()) -> None:
    """Refuse to resume ``run_dir/last.pt`` under a config that differs from ``run_dir/config.yaml``.

    Only :data:`RESUME_FREE_KEYS` (progress, logging, workers, max_steps...) and the sections the job never reads
    (``unread``, e.g. ``("distill",)`` for a teacher, whose config still carries that section's defaults of the day it
    was written) may change; anything else would silently change the trajectory a resume is meant to continue. The
    saved file is read through the config schema, so a key added since the run was written counts as the default it
    had then, and an older spelling of a key reads as today's. No-op when there is nothing to resume.
    """
    from facerco.config import config_to_dict, load_config

    run = Path(run_dir)
    saved_path = run / "config.yaml"
    if not is_resume(run, cfg) or not saved_path.is_file():
        return
    try:
        saved = _flatten(config_to_dict(load_config(saved_path, cls=type(cfg))))
    except ValueError as exc:
        raise ValueError(f"{saved_path}: cannot resume {run / 'last.pt'}: the saved config no longer reads "
                         f"({' '.join(str(exc).split())}); choose another train.output") from exc
    now = _flatten(config_to_dict(cfg))
    changed = sorted(k for k in set(saved) | set(now) if k not in RESUME_FREE_KEYS
                     and k.split(".", 1)[0] not in unread and saved.get(k) != now.get(k))
    if changed:
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed[:8])
        raise ValueError(
            f"{saved_path}: cannot resume {run / 'last.pt'} with a different config ({detail}); "
            "restore those values or choose another train.output"
        )


def prepare_run_dir(cfg: Config, dist: fdist.DistInfo, unread: tuple[str, ...] = ()) -> Path:
    """``train.output``, checked and recorded: a resume must match ``config.yaml`` (but for the ``unread`` sections,
    see :func:`check_resume_config`); a first start writes it.

    Every rank checks (each must refuse, or none would start); rank 0 writes. A resume leaves ``config.yaml`` as
    the first start wrote it: it records the run, and what a resume may change (:data:`RESUME_FREE_KEYS`) does not
    change the run's trajectory.
    """
    from facerco.config import dump_config
    from facerco.utils.io import atomic_write_text

    run_dir = Path(cfg.train.output)
    check_resume_config(run_dir, cfg, unread)
    saved = run_dir / "config.yaml"
    if dist.is_main and not ((run_dir / "last.pt").exists() and saved.is_file()):
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(saved, dump_config(cfg))
    return run_dir


def build_backbone(cfg: Config) -> nn.Module:
    """``create_model`` with the config's overrides; a non-112 ``data.image_size`` becomes the model's input size."""
    from facerco.models import create_model

    overrides: dict[str, Any] = {}
    for key in ("embedding_size", "dropout", "width_mult", "activation"):
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


def build_validator(cfg: Config, device: str | torch.device = "cpu") -> Callable[[nn.Module], dict[str, float]] | None:
    """The periodic validation of ``data.val_bins`` / ``data.val_pairs`` (files checked now), or None without sets."""
    from facerco.train.validation import sets_validator

    return sets_validator(cfg.data.val_bins, cfg.data.val_pairs, cfg.data.val_root, cfg.eval.batch_size, str(device))
