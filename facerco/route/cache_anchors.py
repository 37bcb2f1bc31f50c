"""Which anchors a cache holds, at which input size: what ``facerco cache RUN DATASET`` embeds.

Route point names (``final`` for the final point, or every point) become the ``anchors`` of
:func:`facerco.route.cache_writer.build_cache`: a loader that verifies the checkpoint's sha256, and that sha256,
which the manifest records so a student can check it follows the same teacher.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["teacher_input_size", "resolve_anchors", "route_anchors"]


def teacher_input_size(route: Any) -> int:
    """Input side of the route's final point, from its checkpoint metadata (112 when it records none, and for an
    imported ONNX or dlib teacher, which cuts its own view from the student's crop)."""
    from facerco.models.checkpoint import read_checkpoint_metadata
    from facerco.route.anchors import route_points

    final = route_points(route)[-1].name
    if route.path(final).suffix.lower() != ".safetensors":  # an imported ONNX/dlib teacher cuts its own view
        return 112
    return int(read_checkpoint_metadata(route.path(final)).get("input_size", [112])[0])


def resolve_anchors(route: Any, names: Sequence[str] | None = None) -> list[str]:
    """Route point names to cache: ``names`` (``final`` is the final point), or every point when None.

    Raises ValueError naming the run and its points when a name is not a point of the route.
    """
    from facerco.route.anchors import route_points

    points = route_points(route)
    if names is None:
        chosen = [p.name for p in points]
    else:
        chosen = [points[-1].name if n == "final" else n for n in names]
    known = [p.name for p in route.points]
    unknown = [n for n in chosen if n not in known]
    if unknown:
        raise ValueError(f"{route.run_dir}: no route points {unknown}; points: {', '.join(known)}")
    return chosen


def route_anchors(route: Any, names: Sequence[str] | None,
                  device: str | torch.device = "cpu") -> dict[str, tuple[Callable[[], nn.Module], str]]:
    """:func:`~facerco.route.cache_writer.build_cache`'s ``anchors`` for route points (see
    :func:`resolve_anchors`; None: every point): a loader (sha256 verified) and the recorded sha256 of each."""
    chosen = resolve_anchors(route, names)

    def loader(name: str) -> Callable[[], nn.Module]:
        return lambda: route.load_point(name, verify=True, device=str(device)).model

    return {n: (loader(n), route.point(n).sha256) for n in chosen}
