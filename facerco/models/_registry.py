"""Model registry: one decorator to register a variant, one factory to build it by name.

Each variant is a short function returning an ``nn.Module``; :func:`register_model` refuses a name that is
already taken (a silent overwrite would change what a config means), :func:`create_model` drops ``None``
overrides (so unset CLI/config options keep the variant's defaults), checks every remaining override against the
constructor's signature, and attaches :class:`~facerco.models.meta.ModelMeta`.

Aliases (:func:`register_alias`) are other spellings users already type, e.g. insightface arcface_torch's ``r100``
for ``iresnet100``. Every lookup resolves them first (:func:`resolve_model_name`), so ``model.meta.name``, checkpoint
headers and exports always carry the registered name.
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

__all__ = ["register_model", "register_alias", "resolve_model_name", "create_model", "list_models", "list_aliases",
           "is_model", "model_family"]

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_FAMILY: dict[str, str] = {}
_ALIASES: dict[str, str] = {}


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
    if name in _ALIASES:
        raise ValueError(f"model name '{name}' is already an alias of '{_ALIASES[name]}'; names must be unique")

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


def register_alias(alias: str, name: str) -> None:
    """Let ``alias`` stand for the registered ``name`` everywhere a model name is accepted.

    Raises ValueError when ``name`` is not registered or ``alias`` is already a model or another alias: an alias
    that silently shadowed a model would change what existing configs mean.
    """
    if name not in _MODELS:
        raise ValueError(f"alias '{alias}': target model '{name}' is not registered")
    if alias in _MODELS or _ALIASES.get(alias, name) != name:
        taken = "a registered model" if alias in _MODELS else f"an alias of '{_ALIASES[alias]}'"
        raise ValueError(f"alias '{alias}' is already {taken}; names must be unique")
    _ALIASES[alias] = name


def list_aliases() -> dict[str, list[str]]:
    """Registered name -> its aliases (natural order), for names that have any."""
    out: dict[str, list[str]] = {}
    for alias in sorted(_ALIASES, key=_natural_key):
        out.setdefault(_ALIASES[alias], []).append(alias)
    return out


def resolve_model_name(name: str) -> str:
    """The registered name for ``name`` (itself or the model an alias stands for); unknown names raise ValueError."""
    resolved = _ALIASES.get(name, name)
    _check_name(resolved, name)
    return resolved


def list_models(pattern: str = "") -> list[str]:
    """Registered names in natural order (iresnet18 before iresnet100), optionally only those containing ``pattern``."""
    return sorted((n for n in _MODELS if pattern in n), key=_natural_key)


def _natural_key(name: str) -> list[object]:
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name) if part]


def is_model(name: str) -> bool:
    """True for a registered name or an alias of one."""
    return _ALIASES.get(name, name) in _MODELS


def model_family(name: str) -> str:
    """The module a variant lives in ('iresnet', 'mobilefacenet'), for grouping in listings."""
    return _FAMILY[resolve_model_name(name)]


def _check_name(name: str, given: str | None = None) -> None:
    if name not in _MODELS:
        given = name if given is None else given
        close = difflib.get_close_matches(given, list(_MODELS) + list(_ALIASES), n=1, cutoff=0.4)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        aliases = ", ".join(f"{a}={n}" for n, names in list_aliases().items() for a in names)
        raise ValueError(f"unknown model '{given}'{hint} valid models: {', '.join(list_models())}"
                         + (f" (aliases: {aliases})" if aliases else ""))


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build a registered model (or an alias's); ``None`` overrides are dropped, unknown ones raise ValueError."""
    return _MODELS[resolve_model_name(name)](**overrides)


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
