"""The GSS probe: a fixed, seeded set of training images on which route points and students are compared.

GSS measures route points (and the initial student) on the probe before training (:class:`ProbeContext`, used by
the ``gss`` planner of :mod:`facerco.distill.strategies`); online GSS measures the training student with
:func:`student_probe_fn` at each slot; `facerco compare` measures each student's congruence to the final teacher on
the same images. Every embedding goes through :func:`facerco.eval.features.embed_batch` in chunks of
:data:`PROBE_CHUNK`, so a probe of any size fits in memory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from facerco.config import Config
from facerco.distill.anchors import LoadPoint, route_loader, teacher_logits
from facerco.eval.features import embed_batch
from facerco.route.anchors import PointInfo, ProbeOutput, probe_indices

__all__ = ["PROBE_CHUNK", "ProbeContext", "probe_images", "make_probe", "probe_output", "route_probe_outputs",
           "student_probe_fn"]

PROBE_CHUNK = 128  # probe images per forward: bounds the memory of a probe set of any size


@dataclass
class ProbeContext:
    """What GSS needs besides the route: probe images, a loader of route points and the initial student."""

    images: torch.Tensor  # (N, C, H, W) eval-transformed probe images
    load_point: LoadPoint
    student: nn.Module | None
    scale: float
    device: torch.device


def probe_images(dataset: Any, count: int, seed: int) -> torch.Tensor:
    """The fixed, seeded probe set of GSS (eval transform, no flip)."""
    idx = probe_indices(len(dataset), count, seed)
    return torch.stack([dataset[int(i)][0] for i in idx])


def make_probe(cfg: Config, dataset: Any, route: Any, student: nn.Module | None,
               device: torch.device | str = "cpu") -> ProbeContext:
    """GSS probe context: the probe images of ``distill.gss``, the route loader and the initial student."""
    gss = cfg.distill.gss
    return ProbeContext(probe_images(dataset, gss.probe_images, gss.seed), route_loader(route, device), student,
                        cfg.loss.s, torch.device(device))


def probe_output(model: nn.Module, classifier: torch.Tensor | None, ctx: ProbeContext) -> ProbeOutput:
    """A model's probe embeddings (and, given its classifier, margin-free logits), in float64 for the divergences."""
    emb = embed_batch(model.to(ctx.device), ctx.images, ctx.device, PROBE_CHUNK).cpu()
    logits = None
    if classifier is not None:
        logits = teacher_logits(emb, classifier.float().cpu(), ctx.scale).double().numpy()
    return ProbeOutput.from_arrays(emb.double().numpy(), logits)


def route_probe_outputs(points: list[PointInfo], probe: ProbeContext, use_logits: bool) -> dict[str, ProbeOutput]:
    """Every route point's probe outputs (GSS; online GSS computes them once at the start of training)."""
    outputs = {}
    for p in points:
        model, classifier = probe.load_point(p.name)
        outputs[p.name] = probe_output(model, classifier if use_logits else None, probe)
    return outputs


def student_probe_fn(backbone: nn.Module, head: nn.Module | None, probe: ProbeContext,
                     use_logits: bool) -> Callable[[], ProbeOutput]:
    """The training student's probe outputs, computed in eval mode without touching its state or any RNG."""

    @torch.no_grad()
    def output() -> ProbeOutput:
        emb = embed_batch(backbone, probe.images, probe.device, PROBE_CHUNK)
        logits = None
        if use_logits and head is not None and hasattr(head, "logits"):
            logits = head.logits(emb).double().cpu().numpy()
        return ProbeOutput.from_arrays(emb.double().cpu().numpy(), logits)

    return output
