"""Backbones: one registry (``create_model``/``list_models``), iResNet teachers and MobileFaceNet students.

Every model carries ``.meta`` (:class:`ModelMeta`) and exposes ``forward`` (embedding), ``forward_features``
(last feature map), ``forward_head`` and ``reset_head``; ``feature_info`` lists the stage modules by name.
"""

from facerco.models import iresnet, mobilefacenet  # noqa: F401  (registers the variants)
from facerco.models._registry import create_model, is_model, list_models, model_family, register_model
from facerco.models.checkpoint import LoadedModel, load_model, save_model_checkpoint
from facerco.models.meta import ModelMeta

__all__ = [
    "LoadedModel",
    "ModelMeta",
    "create_model",
    "is_model",
    "list_models",
    "load_model",
    "model_family",
    "register_model",
    "save_model_checkpoint",
]
