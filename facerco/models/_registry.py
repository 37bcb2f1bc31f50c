"""Model registry: one decorator to register a variant, one factory to build it by name.

Each variant is a short function returning an ``nn.Module``; :func:`register_model` refuses a name that is
already taken (a silent overwrite would change what a config means), :func:`create_model` drops ``None``
overrides (so unset CLI/config options keep the variant's defaults), checks every remaining override against the
constructor's signature, and attaches :class:`~facerco.models.meta.ModelMeta`.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import re
from collections.abc import Callable
from typing import Any

from torch import nn

from facerco.models.meta import ModelMeta

__all__ = ["register_model", "create_model", "list_models", "is_model", "model_family"]

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_FAMILY: dict[str, str] = {}


def register_model(fn: Callable[..., nn.Module] | str) -> Any:
    """Register a variant under its function name, or under an explicit name: ``@register_model("mbf_0.8m")``.

    Raises ValueError if the name is already registered. The wrapped function drops ``None`` overrides and
    attaches ``model.meta`` so calling a variant directly behaves exactly like ``create_model(name, ...)``.
    """
    if isinstance(fn, str):
        return functools.partial(_register, name=fn)
    return _register(fn, fn.__name__)


def _register(fn: Callable[..., nn.Module], name: str) -> Callable[..., nn.Module]:
    if name in _MODELS:
        raise ValueError(f"model '{name}' is already registered (by {_MODELS[name].__module__}); names must be unique")

    @functools.wraps(fn)
    def build(**overrides: Any) -> nn.Module:
        given = {k: v for k, v in overrides.items() if v is not None}
        model = fn(**given)
        model.meta = ModelMeta(
            name=name,
            input_size=tuple(model.input_size),
            embedding_size=int(model.embedding_size),
            arch_kwargs=dict(given),
        )
        return model

    _MODELS[name] = build
    _FAMILY[name] = fn.__module__.rsplit(".", 1)[-1]
    return build


def list_models(pattern: str = "") -> list[str]:
    """Registered names in natural order (iresnet18 before iresnet100), optionally only those containing ``pattern``."""
    return sorted((n for n in _MODELS if pattern in n), key=_natural_key)


def _natural_key(name: str) -> list[object]:
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name) if part]


def is_model(name: str) -> bool:
    return name in _MODELS


def model_family(name: str) -> str:
    """The module a variant lives in ('iresnet', 'mobilefacenet'), for grouping in listings."""
    _check_name(name)
    return _FAMILY[name]


def _check_name(name: str) -> None:
    if name not in _MODELS:
        close = difflib.get_close_matches(name, list(_MODELS), n=1, cutoff=0.4)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"unknown model '{name}'{hint} valid models: {', '.join(list_models())}")


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build a registered model; ``None`` overrides are dropped, unknown ones raise ValueError naming valid ones."""
    _check_name(name)
    return _MODELS[name](**overrides)


def check_overrides(name: str, cls: type, overrides: dict[str, Any], fixed: dict[str, Any]) -> None:
    """Raise ValueError for an override the constructor does not take or that the variant fixes itself.

    Called by variant helpers so that a misspelt key reports the model and the valid keys instead of a bare
    TypeError from deep inside a constructor.
    """
    params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    allowed = [p for p in params if p not in fixed]
    for key in overrides:
        if key in fixed:
            raise ValueError(f"model '{name}': '{key}' is fixed by this variant ({fixed[key]!r}); "
                             f"choose another variant or one of: {', '.join(allowed)}")
        if key not in params:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ValueError(f"model '{name}' has no argument '{key}'; {hint}valid: {', '.join(allowed)}")
