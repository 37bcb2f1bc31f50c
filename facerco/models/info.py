"""``model_info``: the numbers ``facerco model-info`` prints (params, MACs, embedding size) for one registered model.

Models are built on PyTorch's meta device, so even iresnet200 is counted without allocating its weights.
"""

from __future__ import annotations

import torch

from facerco.models._registry import create_model, list_aliases, model_family, resolve_model_name
from facerco.models.complexity import measure_complexity

__all__ = ["model_info"]


def model_info(name: str, embedding_size: int | None = None, width_mult: float | None = None,
               input_size: int = 112) -> dict[str, object]:
    """Params and MACs (conv + linear, per image) of one registered model (or alias) at ``input_size`` squared."""
    name = resolve_model_name(name)
    with torch.device("meta"):
        model = create_model(name, embedding_size=embedding_size, width_mult=width_mult,
                             input_size=None if input_size == 112 else input_size)
    cx = measure_complexity(model)
    return {
        "name": name,
        "family": model_family(name),
        "aliases": list_aliases().get(name, []),
        "params": cx.params,
        "trainable_params": cx.trainable_params,
        "macs": cx.macs,
        "elementwise_macs": cx.elementwise_macs,
        "input_size": list(cx.input_size),
        "embedding_size": model.meta.embedding_size,
        "arch_kwargs": model.meta.arch_kwargs,
    }
