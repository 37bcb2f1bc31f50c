"""Backbones: one registry (``create_model``/``list_models``), iResNet teachers and MobileFaceNet students.

Every model carries ``.meta`` (:class:`ModelMeta`) and exposes ``forward`` (embedding), ``forward_features``
(last feature map), ``forward_head`` and ``reset_head``; ``feature_info`` lists the stage modules by name.
insightface arcface_torch's backbone names ``r18 r34 r50 r100 r200`` are aliases of ``iresnet18`` … ``iresnet200``
(``mbf`` and ``mbf_large`` already match): they are accepted wherever a model name is.

- ``_registry``: the registry and its aliases
- ``iresnet``, ``mobilefacenet``: the two families
- ``meta``: ``ModelMeta`` (``model.meta``)
- ``checkpoint``: safetensors checkpoints and strict loading of insightface ``.pth`` state_dicts
- ``complexity``, ``info``: parameter and MAC counts (``facerco model-info``)
"""

from facerco.models import iresnet, mobilefacenet  # noqa: F401  (registers the variants)
from facerco.models._registry import (
    create_model,
    is_model,
    list_aliases,
    list_models,
    model_family,
    register_alias,
    register_model,
    resolve_model_name,
)
from facerco.models.checkpoint import LoadedModel, load_model, save_model_checkpoint
from facerco.models.meta import ModelMeta

__all__ = [
    "INSIGHTFACE_ALIASES",
    "LoadedModel",
    "ModelMeta",
    "create_model",
    "is_model",
    "list_aliases",
    "list_models",
    "load_model",
    "model_family",
    "register_alias",
    "register_model",
    "resolve_model_name",
    "save_model_checkpoint",
]

# insightface recognition/arcface_torch/backbones/__init__.py get_model() names
INSIGHTFACE_ALIASES = {f"r{depth}": f"iresnet{depth}" for depth in (18, 34, 50, 100, 200)}
for _alias, _name in INSIGHTFACE_ALIASES.items():
    register_alias(_alias, _name)
