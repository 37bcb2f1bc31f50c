"""Where a student's anchor targets come from: the route point run on the batch, or the anchor-feature cache.

An :class:`AnchorSource` answers two questions for an anchor name: its embeddings of the current batch, and its
classifier weight (the KD target's logits are ``s * cos(e, W)``, :func:`teacher_logits`). :class:`OnlineAnchors`
runs the route point (no grad, eval mode); :class:`CachedAnchors` reads :class:`~facerco.route.cache_reader.AnchorCache`
rows by the sampler's ``[index, flip]`` keys.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from facerco.losses.distill import FeatureHooks
from facerco.route.cache_reader import AnchorCache

__all__ = ["AnchorSource", "LoadPoint", "OnlineAnchors", "CachedAnchors", "teacher_logits", "route_loader"]


class AnchorSource(Protocol):
    """Where anchor targets come from."""

    def embeddings(self, anchor: str, images: torch.Tensor, keys: torch.Tensor | None) -> torch.Tensor: ...

    def classifier(self, anchor: str) -> torch.Tensor | None: ...


def teacher_logits(embeddings: torch.Tensor, weight: torch.Tensor, scale: float) -> torch.Tensor:
    """``s * cos(e, W)``: the anchor classifier's logits without margin (the KD target)."""
    return scale * F.linear(F.normalize(embeddings.float(), dim=1), F.normalize(weight.float(), dim=1))


LoadPoint = Callable[[str], tuple[nn.Module, "torch.Tensor | None"]]
"""Loads a route point by name: (backbone in eval mode, classifier weight (C, D) or None)."""


def route_loader(route: Any, device: torch.device | str = "cpu") -> LoadPoint:
    """A LoadPoint over a :class:`facerco.route.io.Route` (sha256 checked on every load)."""

    def load(name: str) -> tuple[nn.Module, torch.Tensor | None]:
        loaded = route.load_point(name, verify=True, device=str(device))
        return loaded.model, loaded.classifier

    return load


class OnlineAnchors:
    """Runs anchors on the batch (no grad, eval mode); keeps the last ``keep`` loaded anchors in memory.

    Anchor models are held in a plain dict, not registered as sub-modules: they are never trained, never in
    ``state_dict()`` (so not in resume checkpoints) and never wrapped by DDP.
    """

    def __init__(self, load: LoadPoint, device: torch.device | str = "cpu", hint_layer: str = "",
                 keep: int = 2) -> None:
        self._load = load
        self.device = torch.device(device)
        self.hint_layer = hint_layer
        self.keep = max(1, keep)
        self._models: OrderedDict[str, tuple[nn.Module, torch.Tensor | None, FeatureHooks | None]] = OrderedDict()
        self.last_features: torch.Tensor | None = None

    def _get(self, anchor: str) -> tuple[nn.Module, torch.Tensor | None, FeatureHooks | None]:
        if anchor in self._models:
            self._models.move_to_end(anchor)
            return self._models[anchor]
        model, classifier = self._load(anchor)
        model = model.to(self.device).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        hooks = FeatureHooks(model, [self.hint_layer]) if self.hint_layer else None
        cls = classifier.to(self.device) if classifier is not None else None
        self._models[anchor] = (model, cls, hooks)
        while len(self._models) > self.keep:
            _, (_, _, old_hooks) = self._models.popitem(last=False)
            if old_hooks is not None:
                old_hooks.remove()
        return self._models[anchor]

    @torch.no_grad()
    def embeddings(self, anchor: str, images: torch.Tensor, keys: torch.Tensor | None = None) -> torch.Tensor:
        model, _, hooks = self._get(anchor)
        out = model(images).float()
        self.last_features = hooks.features.get(self.hint_layer) if hooks is not None else None
        return out

    def classifier(self, anchor: str) -> torch.Tensor | None:
        return self._get(anchor)[1]


class CachedAnchors:
    """Reads anchor embeddings from an :class:`~facerco.route.cache_reader.AnchorCache` by ``keys = [index, flip]``;
    with ``center``, each row minus the anchor's mean row over the cache (plain and flipped), renormalized."""

    def __init__(self, cache: AnchorCache, load_classifier: Callable[[str], torch.Tensor | None] | None = None,
                 device: torch.device | str = "cpu", center: bool = False) -> None:
        self.cache = cache
        self.center = center
        self._means: dict[str, torch.Tensor] = {}
        self.device = torch.device(device)
        self._load_classifier = load_classifier
        self._classifiers: dict[str, torch.Tensor | None] = {}
        self.last_features = None

    def embeddings(self, anchor: str, images: torch.Tensor, keys: torch.Tensor | None) -> torch.Tensor:
        if keys is None:
            raise ValueError("cached anchor targets need the dataset keys [index, flip] (task.wants_keys)")
        keys = keys.cpu()
        rows = self.cache.targets(anchor, keys[:, 0], keys[:, 1])
        if self.center:
            if anchor not in self._means:
                self._means[anchor] = torch.from_numpy(self.cache.mean(anchor))
            rows = torch.nn.functional.normalize(rows - self._means[anchor], dim=1)
        return rows.to(self.device)

    def classifier(self, anchor: str) -> torch.Tensor | None:
        if anchor not in self._classifiers:
            w = self._load_classifier(anchor) if self._load_classifier is not None else None
            self._classifiers[anchor] = w.to(self.device) if w is not None else None
        return self._classifiers[anchor]
