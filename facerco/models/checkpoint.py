"""Model checkpoints: one safetensors file per model, plus strict loading of insightface ``.pth`` state_dicts.

File layout written by :func:`save_model_checkpoint`:
    tensors ``backbone.<state_dict key>`` (parameters and buffers of the unwrapped model) and optionally
    ``classifier.weight`` (num_classes x D, the full class-centre matrix);
    safetensors metadata key ``"facerco"`` = JSON ``{format_version: 1, arch, arch_kwargs, embedding_size,
    input_size, mean, std, ...user metadata}``.

Nothing is unpickled: safetensors carries no code and ``.pth`` files are read with ``torch.load(weights_only=True)``.
Every error names the file.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from facerco.models._registry import create_model, resolve_model_name
from facerco.utils.io import atomic_path

__all__ = [
    "FORMAT_VERSION",
    "LoadedModel",
    "save_model_checkpoint",
    "load_model",
    "read_checkpoint_metadata",
    "unwrap_model",
    "clean_state_dict",
]

FORMAT_VERSION = 1
_RESERVED = ("format_version", "arch", "arch_kwargs", "embedding_size", "input_size", "mean", "std")
_PREFIXES = ("module.", "_orig_mod.")
_TORCH_SUFFIXES = (".pth", ".pt")


class LoadedModel(NamedTuple):
    """What :func:`load_model` returns: the model in eval mode, the classifier matrix or None, the metadata."""

    model: nn.Module
    classifier: torch.Tensor | None
    metadata: dict[str, Any]


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip DistributedDataParallel/DataParallel (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def clean_state_dict(state: Mapping[str, Any]) -> dict[str, Any]:
    """Remove leading ``module.`` / ``_orig_mod.`` (in any order, repeated) from every key."""
    out: dict[str, Any] = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key = key[len(prefix):]
                    changed = True
        out[key] = value
    return out


def _classifier_tensor(classifier: torch.Tensor | nn.Module) -> torch.Tensor:
    if isinstance(classifier, torch.Tensor):
        return classifier.detach()
    full_weight = getattr(classifier, "full_weight", None)
    if callable(full_weight):  # Partial FC: gather the row shards
        return full_weight().detach()
    weight = getattr(classifier, "weight", None)
    if isinstance(weight, torch.Tensor):
        return weight.detach()
    raise TypeError(f"classifier must be a tensor or a module with .weight or .full_weight(), got {type(classifier)}")


def save_model_checkpoint(
    path: str | Path,
    model: nn.Module,
    classifier: torch.Tensor | nn.Module | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` (unwrapped), an optional classifier matrix and metadata to one safetensors file, atomically.

    Args:
        path: destination, conventionally ``*.safetensors``.
        model: a facerco model (needs ``.meta``); DDP/compile wrappers are removed.
        classifier: (num_classes, D) tensor, or a module with ``full_weight()`` (Partial FC) or ``.weight``.
        metadata: JSON-serialisable extras (epoch, step, lr, metrics...); may not reuse the reserved keys.

    Returns:
        The path written.
    """
    path = Path(path)
    model = unwrap_model(model)
    meta = getattr(model, "meta", None)
    if meta is None:
        raise ValueError(f"{path}: model {type(model).__name__} has no .meta; build it with "
                         "facerco.models.create_model")
    extra = dict(metadata or {})
    clash = sorted(set(extra) & set(_RESERVED))
    if clash:
        raise ValueError(f"{path}: metadata keys {clash} are reserved for the checkpoint header")
    header = {
        "format_version": FORMAT_VERSION,
        "arch": meta.name,
        "arch_kwargs": dict(meta.arch_kwargs),
        "embedding_size": int(meta.embedding_size),
        "input_size": list(meta.input_size),
        "mean": meta.mean,
        "std": meta.std,
        **extra,
    }
    try:
        header_json = json.dumps(header)
    except TypeError as exc:
        raise ValueError(f"{path}: metadata is not JSON-serialisable ({exc})") from exc
    tensors = {f"backbone.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if classifier is not None:
        weight = _classifier_tensor(classifier)
        if weight.dim() != 2 or weight.shape[1] != meta.embedding_size:
            raise ValueError(f"{path}: classifier must be (num_classes, {meta.embedding_size}), "
                             f"got {tuple(weight.shape)}")
        tensors["classifier.weight"] = weight.cpu().contiguous()
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"facerco": header_json})
    return path


def read_checkpoint_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON header of a facerco safetensors checkpoint, without reading the tensors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            raw = (handle.metadata() or {}).get("facerco")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable safetensors file ({exc})") from exc
    return _parse_header(path, raw)


def _parse_header(path: Path, raw: str | None) -> dict[str, Any]:
    if raw is None:
        raise ValueError(f"{path}: no 'facerco' metadata; not a facerco checkpoint")
    try:
        header = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: 'facerco' metadata is not valid JSON ({exc.msg})") from exc
    if not isinstance(header, dict):
        raise ValueError(f"{path}: 'facerco' metadata must be a JSON object")
    version = header.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported format_version {version!r} (this facerco reads {FORMAT_VERSION})")
    for key in ("arch", "arch_kwargs"):
        if key not in header:
            raise ValueError(f"{path}: checkpoint header lacks '{key}'")
    return header


def _read_safetensors(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            raw = (handle.metadata() or {}).get("facerco")
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (safe_open has no iter)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{path}: not a readable safetensors file ({exc})") from exc
    return _parse_header(path, raw), tensors


def _load_strict(model: nn.Module, state: Mapping[str, torch.Tensor], path: Path) -> None:
    """``load_state_dict(strict=True)`` with a message that lists what differs and names the file."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {missing[:5]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:5]})")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches (e.g. {shapes[:3]})")
    if problems:
        raise ValueError(f"{path}: does not match {model.meta.name}: " + "; ".join(problems))
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from exc


def _load_facerco(path: Path, arch: str | None) -> LoadedModel:
    header, tensors = _read_safetensors(path)
    try:
        held = resolve_model_name(header["arch"])
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    if arch is not None and resolve_model_name(arch) != held:
        raise ValueError(f"{path}: checkpoint holds '{header['arch']}', but arch='{arch}' was asked for")
    model = create_model(held, **header["arch_kwargs"])
    state = {k[len("backbone."):]: v for k, v in tensors.items() if k.startswith("backbone.")}
    other = sorted(k for k in tensors if not k.startswith("backbone.") and k != "classifier.weight")
    if other:
        raise ValueError(f"{path}: unexpected tensors {other[:5]}")
    _load_strict(model, state, path)
    classifier = tensors.get("classifier.weight")
    if classifier is not None and (classifier.dim() != 2 or classifier.shape[1] != model.meta.embedding_size):
        raise ValueError(f"{path}: classifier.weight is {tuple(classifier.shape)}, "
                         f"expected (C, {model.meta.embedding_size})")
    return LoadedModel(model, classifier, header)


def _torch_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(f"{path}: refused by torch.load(weights_only=True): it stores Python objects, not only "
                         f"tensors; facerco never unpickles code. Re-save its state_dict. ({exc})") from exc
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable torch file ({exc})") from exc
    for key in ("state_dict", "model", "backbone"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: expected a state_dict (mapping of names to tensors), got {type(obj).__name__}")
    return clean_state_dict(obj)


def _final_bn_key(model: nn.Module) -> str | None:
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.BatchNorm1d):
            last = name
    return None if last is None else f"{last}.running_mean"


def _load_torch(path: Path, arch: str | None, arch_kwargs: Mapping[str, Any] | None) -> LoadedModel:
    if arch is None:
        raise ValueError(f"{path}: a .pth/.pt state_dict carries no architecture; pass arch= (e.g. iresnet100, mbf)")
    state = _torch_state_dict(path)
    kwargs = dict(arch_kwargs or {})
    model = create_model(arch, **kwargs)
    key = _final_bn_key(model)
    if "embedding_size" not in kwargs and key in state and state[key].shape[0] != model.meta.embedding_size:
        kwargs["embedding_size"] = int(state[key].shape[0])  # published weights with another embedding size
        model = create_model(arch, **kwargs)
    _load_strict(model, state, path)
    header = {
        "format_version": None,
        "source": "torch_state_dict",
        "arch": model.meta.name,
        "arch_kwargs": dict(model.meta.arch_kwargs),
        "embedding_size": model.meta.embedding_size,
    }
    return LoadedModel(model, None, header)


def load_model(
    path: str | Path,
    device: str | torch.device = "cpu",
    arch: str | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
) -> LoadedModel:
    """Load a facerco ``.safetensors`` checkpoint, or an insightface-style ``.pth``/``.pt`` state_dict.

    Args:
        path: the file; its suffix selects the reader (``.safetensors``, ``.pth``, ``.pt``).
        device: where the model and classifier go.
        arch: required for ``.pth``/``.pt`` (registered name); for safetensors, a check against the header.
        arch_kwargs: extra ``create_model`` overrides for ``.pth``/``.pt`` (the embedding size is inferred).

    Returns:
        LoadedModel(model in eval mode, classifier tensor or None, metadata dict).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        loaded = _load_facerco(path, arch)
    elif suffix in _TORCH_SUFFIXES:
        loaded = _load_torch(path, arch, arch_kwargs)
    else:
        raise ValueError(f"{path}: unknown checkpoint type '{suffix}'; expected .safetensors, .pth or .pt")
    model = loaded.model.to(device).eval()
    classifier = None if loaded.classifier is None else loaded.classifier.to(device)
    return LoadedModel(model, classifier, loaded.metadata)
