"""Resume checkpoints (``last.pt``): everything needed to continue a run at the exact optimizer step.

One file, written atomically by rank 0, so a kill at any moment leaves either the previous or the new state.
Rank-local state (Partial-FC classifier shards, their optimizer state, each rank's RNG) is gathered into
``shards[rank]``; the rest is stored once. Loading uses ``torch.load(weights_only=True)``: only tensors and
plain containers, never arbitrary pickled objects.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from facerco.utils.io import atomic_path

__all__ = ["FORMAT", "rng_state", "set_rng_state", "split_state", "save_resume", "load_resume", "restore_resume"]

FORMAT = "facerco-resume"
VERSION = 1


def rng_state() -> dict[str, Any]:
    """This process's torch / CUDA / python / numpy RNG states, as weights_only-loadable values."""
    np_state = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = state["numpy"]
    np.random.set_state(
        ("MT19937", npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"], npst["cached_gaussian"])
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _local_names(module: nn.Module, prefixes: tuple[str, ...]) -> set[str]:
    names = {n for n, _ in module.named_parameters()} | {n for n, _ in module.named_buffers()}
    return {n for n in names if prefixes and n.startswith(prefixes)}


def split_state(
    module: nn.Module, prefixes: tuple[str, ...]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(shared, rank-local) halves of ``module.state_dict()``; local = names starting with one of ``prefixes``."""
    full = module.state_dict()
    local_names = _local_names(module, prefixes)
    shared = {k: v.detach().cpu() for k, v in full.items() if k not in local_names}
    local = {k: v.detach().cpu() for k, v in full.items() if k in local_names}
    return shared, local


def _local_param_indices(module: nn.Module, optimizer: torch.optim.Optimizer, prefixes: tuple[str, ...]) -> list[int]:
    local_ids = {id(p) for n, p in module.named_parameters() if prefixes and n.startswith(prefixes)}
    ordered = [p for group in optimizer.param_groups for p in group["params"]]
    return [i for i, p in enumerate(ordered) if id(p) in local_ids]


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def save_resume(
    path: str | Path,
    *,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    step: int,
    meta: dict[str, Any],
    local_prefixes: tuple[str, ...] = (),
    extra: dict[str, Any] | None = None,
) -> None:
    """Collective when distributed: every rank calls it; rank 0 writes ``path`` atomically."""
    shared, local = split_state(module, local_prefixes)
    opt_state = optimizer.state_dict()
    local_idx = _local_param_indices(module, optimizer, local_prefixes)
    shard = {
        "task_local": local,
        "optim_local": {i: _to_cpu(opt_state["state"][i]) for i in local_idx if i in opt_state["state"]},
        "rng": rng_state(),
    }
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if distributed:
        shards: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(shards, shard)
        rank = dist.get_rank()
    else:
        shards, rank = [shard], 0
    if rank == 0:
        payload = {
            "format": FORMAT,
            "version": VERSION,
            "step": int(step),
            "meta": meta,
            "task": shared,
            "optimizer": _to_cpu(opt_state),
            "scaler": scaler.state_dict(),
            "shards": shards,
            "extra": extra or {},
        }
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
    if distributed:
        dist.barrier()


def load_resume(path: str | Path) -> dict[str, Any]:
    """Read a resume checkpoint with weights_only=True; errors name the file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: resume checkpoint not found")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file name and the reason
        raise RuntimeError(
            f"{p}: cannot read resume checkpoint with weights_only=True ({type(exc).__name__}: {exc}); "
            "the file is truncated, corrupt or not a facerco last.pt"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{p}: not a facerco resume checkpoint (format key missing or wrong)")
    if payload.get("version") != VERSION:
        raise ValueError(f"{p}: resume format version {payload.get('version')} is not supported (expected {VERSION})")
    return payload


def restore_resume(
    payload: dict[str, Any],
    *,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    rank: int,
    local_prefixes: tuple[str, ...] = (),
    source: str = "last.pt",
) -> None:
    """Load model, optimizer, scaler and this rank's RNG from a payload of :func:`load_resume`."""
    shards = payload["shards"]
    if rank >= len(shards):
        raise ValueError(f"{source}: written by {len(shards)} rank(s); cannot resume rank {rank}")
    shard = shards[rank]
    state = dict(payload["task"])
    state.update(shard["task_local"])
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{source}: model state does not match the task (missing {missing}, unexpected {unexpected})")
    opt_state = payload["optimizer"]
    if rank != 0:
        opt_state = {"state": dict(opt_state["state"]), "param_groups": opt_state["param_groups"]}
        for i in _local_param_indices(module, optimizer, local_prefixes):
            opt_state["state"].pop(i, None)
        opt_state["state"].update(shard["optim_local"])
    optimizer.load_state_dict(opt_state)
    scaler.load_state_dict(payload["scaler"])
    set_rng_state(shard["rng"])
