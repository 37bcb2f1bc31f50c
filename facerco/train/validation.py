"""Periodic verification during training: ``.bin`` sets and LFW-style pairs files, through facerco.eval.

Built once per job by :func:`sets_validator` (from a config: :func:`facerco.train.job.build_validator`); the engine
calls the result on rank 0 with the backbone in eval mode. Metric keys are ``<set name>/<metric>`` with the scalar
metrics of ``facerco.eval.verification.verify_bin`` / ``verify_pairs`` (flip-fused embeddings, FORMATS §2), e.g.
``lfw/accuracy``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

__all__ = ["bin_validator", "flatten_metrics", "pairs_validator", "sets_validator"]


def flatten_metrics(prefix: str, result: Mapping[str, Any]) -> dict[str, float]:
    """The headline numbers of a verification result, prefixed by the set name.

    Keeps ``accuracy``, ``accuracy_std``, ``best_threshold``, ``xnorm`` and ``tar@far=<far>`` (from
    ``tar_at_far``); counts, ROC arrays and per-fold lists are left to the eval reports.
    """
    out: dict[str, float] = {}
    for key in ("accuracy", "accuracy_std", "best_threshold", "xnorm"):
        value = result.get(key)
        numeric = isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)
        if numeric and math.isfinite(float(value)):  # xnorm is NaN when norms are unknown
            out[f"{prefix}/{key}"] = float(value)
    tar = result.get("tar_at_far")
    if isinstance(tar, Mapping):
        for far, entry in tar.items():
            value = entry.get("tar") if isinstance(entry, Mapping) else entry
            if isinstance(value, int | float | np.integer | np.floating):
                out[f"{prefix}/tar@far={far}"] = float(value)
    return out


def pairs_validator(pairs_txt: str, root: str, batch_size: int, device: str) -> Callable[[nn.Module], dict[str, float]]:
    """Verification on an LFW pairs file (``read_lfw_pairs`` format) with images under ``root``."""
    from facerco.eval.verification import verify_pairs

    name = Path(pairs_txt).stem

    def run(model: nn.Module) -> dict[str, float]:
        return flatten_metrics(name, verify_pairs(model, pairs_txt, root, batch_size=batch_size, device=device))

    return run


def bin_validator(bin_path: str, batch_size: int, device: str) -> Callable[[nn.Module], dict[str, float]]:
    from facerco.eval.verification import verify_bin

    name = Path(bin_path).stem

    def run(model: nn.Module) -> dict[str, float]:
        return flatten_metrics(name, verify_bin(model, bin_path, batch_size=batch_size, device=device))

    return run


def sets_validator(
    val_bins: list[str], val_pairs: str, val_root: str, batch_size: int, device: str
) -> Callable[[nn.Module], dict[str, float]] | None:
    """One callable running every configured set, or None when nothing is configured.

    Files are checked now (a typo fails before training, not at the first validation). When facerco.eval is
    not installed in this build the sets are skipped with a warning.
    """
    for b in val_bins:
        if not Path(b).is_file():
            raise FileNotFoundError(f"{b}: data.val_bins entry not found")
    if val_pairs and not Path(val_pairs).is_file():
        from facerco.data.lfw_split import prepare_hint  # says "re-run the split" for an outdated LFW folder

        raise FileNotFoundError(f"{val_pairs}: data.val_pairs not found{prepare_hint(val_pairs)}")
    if val_pairs and not Path(val_root).is_dir():
        raise FileNotFoundError(f"{val_root}: data.val_root (images of data.val_pairs) not found")
    if not val_bins and not val_pairs:
        return None
    try:
        runs = [bin_validator(b, batch_size, device) for b in val_bins]
        if val_pairs:
            runs.append(pairs_validator(val_pairs, val_root, batch_size, device))
    except ImportError as exc:
        warnings.warn(f"validation sets configured but facerco.eval is unavailable ({exc}); skipping", stacklevel=2)
        return None

    def validate(model: nn.Module) -> dict[str, float]:
        out: dict[str, float] = {}
        for run in runs:
            out.update(run(model))
        return out

    return validate
