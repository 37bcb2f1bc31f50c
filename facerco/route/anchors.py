"""Choosing RCO anchors from a teacher route: EEIS, GSS, a manual list, the final or the best point.

Every strategy returns an :class:`AnchorPlan` whose last anchor is the converged (final) teacher, except
``best``, which is the single best *intermediate* checkpoint by a validation metric.

GSS rule (documented, configurable; the paper's exact rule is not public):
    Probe set: ``probe_images`` training images picked by a seeded permutation, eval transform, no flip.
    Divergence ``D(a, b)`` between a current state ``a`` and a later checkpoint ``b``:

    * ``kl``: ``T^2 * mean_i KL(softmax(z_b,i / T) || softmax(z_a,i / T))`` with ``z = s * cos(e, W)``, the
      checkpoint's own classifier, when both sides have logits over the same classes;
    * ``l2``: ``mean_i ||e_a,i - e_b,i||^2`` of L2-normalized embeddings (``cosine``: ``mean_i 1 - cos``);
    * ``relational`` (used when embedding sizes differ, e.g. a fresh student against the teacher):
      ``mean_ij (S_a,ij - S_b,ij)^2`` with ``S = E E^T`` the probe cosine-similarity matrix.

    ``auto`` takes ``kl`` when both sides have logits, else ``l2`` when sizes match, else ``relational``.
    Greedy walk: the current state starts as the freshly initialised student (seeded), or as the first route
    point when no student is given (that point is then the first anchor). At each step the threshold is ``delta``
    (absolute) or ``delta * D(current, final)`` (relative); the next anchor is the *farthest* later checkpoint with
    ``D(current, c) <= threshold``; when none qualifies, the next checkpoint is taken so the walk always advances.
    The chosen checkpoint then stands in for the student (the student after following an anchor is approximated
    by that anchor), which makes the plan computable, printable and deterministic before training. The walk ends
    at the final teacher, which is always the last anchor; ``max_anchors`` caps the count (the last slot is the
    final teacher).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

__all__ = [
    "PointInfo",
    "AnchorPlan",
    "ProbeOutput",
    "route_points",
    "select_eeis",
    "select_manual",
    "select_final",
    "select_best",
    "best_point",
    "select_gss",
    "gss_step",
    "divergence",
    "probe_indices",
    "format_plan",
    "default_metric",
]


@dataclass(frozen=True)
class PointInfo:
    """What anchor selection needs from one route point."""

    name: str
    epoch: float
    step: int
    val: dict[str, float]
    final: bool
    lr: float = 0.0  # learning rate at the point (0 when the route did not record it): lr phases come from it


@dataclass
class AnchorPlan:
    """Chosen anchors (in training order) and, for GSS, every divergence that decided them."""

    strategy: str
    anchors: list[str]
    steps: list[dict[str, Any]] = field(default_factory=list)  # GSS: one record per greedy step
    notes: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "anchors": list(self.anchors), "steps": self.steps, "notes": self.notes}


def _get(obj: Any, key: str, default: Any = None) -> Any:
    if isinstance(obj, dict):
        return obj.get(key, default)
    return getattr(obj, key, default)


def route_points(route: Any) -> list[PointInfo]:
    """Normalise a route (a ``facerco.route.io.Route``, a route.json mapping or a list of points) to PointInfo.

    The final point is the one marked final (``final: true`` on the point or ``route['final']`` naming it); when
    none is marked, the last point is taken.
    """
    points = _get(route, "points", route)
    if points is None or isinstance(points, str | bytes):
        raise ValueError("route has no list of points")
    final_name = _get(route, "final", None) if not isinstance(route, list) else None
    if final_name is not None and not isinstance(final_name, str):
        final_name = _get(final_name, "name", None)
    out: list[PointInfo] = []
    for i, p in enumerate(points):
        name = _get(p, "name")
        if not name:
            raise ValueError(f"route point {i} has no name")
        val = _get(p, "val", None) or _get(p, "val_metrics", None) or _get(p, "metrics", None) or {}
        val = {str(k): float(v) for k, v in dict(val).items() if isinstance(v, int | float) and not isinstance(v, bool)}
        out.append(PointInfo(
            name=str(name),
            epoch=float(_get(p, "epoch", 0.0) or 0.0),
            step=int(_get(p, "step", 0) or 0),
            val=val,
            final=bool(_get(p, "final", False)) or (final_name is not None and name == final_name),
            lr=float(_get(p, "lr", 0.0) or 0.0),
        ))
    if not out:
        raise ValueError("route is empty: no checkpoints to choose anchors from")
    if not any(p.final for p in out):
        last = out[-1]
        out[-1] = PointInfo(last.name, last.epoch, last.step, last.val, True, last.lr)
    finals = [i for i, p in enumerate(out) if p.final]
    # anchors are chosen among points up to the final one, in route order
    return out[: finals[-1] + 1]


def _final(points: Sequence[PointInfo]) -> PointInfo:
    return points[-1]


def select_final(points: Sequence[PointInfo]) -> AnchorPlan:
    """The converged teacher alone (plain mimic / KD)."""
    return AnchorPlan("final", [_final(points).name])


def select_eeis(points: Sequence[PointInfo], num_anchors: int = 0, every: int = 0) -> AnchorPlan:
    """Equal Epoch Interval Strategy: every ``every``-th point, or ``num_anchors`` evenly spaced; final last.

    ``every=k`` takes points k, 2k, ... (1-based in route order) and then the final point. ``num_anchors=n`` takes
    the points at positions ``round(j * P / n) - 1`` for j = 1..n of the P points, so the last is the final.
    """
    pts = list(points)
    count = len(pts)
    if every > 0:
        chosen = [pts[i].name for i in range(every - 1, count, every)]
    elif num_anchors > 0:
        n = min(num_anchors, count)
        positions = sorted({max(0, math.floor(j * count / n + 0.5) - 1) for j in range(1, n + 1)})
        chosen = [pts[i].name for i in positions]
    else:
        raise ValueError("EEIS needs distill.eeis.num_anchors > 0 or distill.eeis.every > 0")
    final = _final(pts).name
    if not chosen or chosen[-1] != final:
        chosen = [c for c in chosen if c != final] + [final]
    return AnchorPlan("eeis", chosen)


def select_manual(points: Sequence[PointInfo], names: Sequence[str], append_final: bool = True) -> AnchorPlan:
    """A user's list of route point names (``final`` stands for the final point), kept in route order."""
    if not names:
        raise ValueError("manual strategy needs distill.manual.anchors: a list of route point names")
    order = {p.name: i for i, p in enumerate(points)}
    final = _final(points).name
    resolved = []
    for name in names:
        name = final if name == "final" else name
        if name not in order:
            raise ValueError(f"anchor {name!r} is not a route point; valid names: {', '.join(order)}")
        resolved.append(name)
    positions = [order[n] for n in resolved]
    if positions != sorted(positions) or len(set(positions)) != len(positions):
        raise ValueError(f"manual anchors must follow the route order without repeats, got {list(names)}")
    if append_final and resolved[-1] != final:
        resolved.append(final)
    return AnchorPlan("manual", resolved)


def default_metric(keys: Sequence[str]) -> str:
    """The metric to rank by when none is named: the first accuracy-like key (``*accuracy``, ``*acc``), else the
    first key; empty when there are none."""
    keys = list(dict.fromkeys(keys))
    for k in keys:
        if k.endswith(("accuracy", "acc")):
            return k
    return keys[0] if keys else ""


def best_point(candidates: Sequence[PointInfo], metric: str = "", strategy: str = "best") -> tuple[str, str, float]:
    """(name, metric, value) of the candidate with the highest validation ``metric``; ties go to the earlier one.

    ``metric`` empty takes :func:`default_metric` of the recorded keys.
    """
    keys = [k for p in candidates for k in p.val]
    if not keys:
        raise ValueError(f"strategy {strategy!r} needs validation metrics in route.json; this route records none")
    key = metric or default_metric(keys)
    scored = [(p.val[key], -i, p.name) for i, p in enumerate(candidates) if key in p.val]
    if not scored:
        raise ValueError(f"no route point records metric {key!r}; recorded: {sorted(set(keys))}")
    value, _, name = max(scored)
    return name, key, value


def select_best(points: Sequence[PointInfo], metric: str = "") -> AnchorPlan:
    """The best intermediate checkpoint (final excluded) by a validation metric (higher is better)."""
    name, key, value = best_point(list(points[:-1]) or list(points), metric)
    return AnchorPlan("best", [name], notes=f"best by {key}={value:.4f}")


# ----------------------------------------------------------------------------------------------------------------
# GSS
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class ProbeOutput:
    """A model's outputs on the probe set: L2-normalized embeddings and, when a classifier exists, logits."""

    embeddings: np.ndarray  # (N, D) float64, rows L2-normalized
    logits: np.ndarray | None = None  # (N, C) float64

    @classmethod
    def from_arrays(cls, emb: np.ndarray, logits: np.ndarray | None = None) -> ProbeOutput:
        e = np.asarray(emb, dtype=np.float64)
        e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
        return cls(e, None if logits is None else np.asarray(logits, dtype=np.float64))


DivergenceKind = Literal["auto", "kl", "l2", "cosine", "relational"]


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def divergence(current: ProbeOutput, later: ProbeOutput, kind: DivergenceKind = "auto",
               temperature: float = 4.0) -> tuple[float, str]:
    """``D(current, later)`` on the probe set and the kind actually used (see the module docstring)."""
    if current.embeddings.shape[0] != later.embeddings.shape[0]:
        raise ValueError("divergence: the two probe outputs cover different numbers of images")
    same_dim = current.embeddings.shape[1] == later.embeddings.shape[1]
    has_logits = (current.logits is not None and later.logits is not None
                  and current.logits.shape == later.logits.shape)
    if kind == "auto":
        kind = "kl" if has_logits else ("l2" if same_dim else "relational")
    if kind == "kl":
        if not has_logits:
            raise ValueError("divergence 'kl' needs logits over the same classes on both sides")
        t = temperature
        lp_b = _log_softmax(later.logits / t)  # type: ignore[operator]
        lp_a = _log_softmax(current.logits / t)  # type: ignore[operator]
        return float((np.exp(lp_b) * (lp_b - lp_a)).sum(axis=1).mean() * t * t), kind
    if kind in ("l2", "cosine"):
        if not same_dim:
            raise ValueError(f"divergence {kind!r} needs equal embedding sizes, got "
                             f"{current.embeddings.shape[1]} and {later.embeddings.shape[1]}; use 'relational'")
        cos = (current.embeddings * later.embeddings).sum(axis=1)
        return (float((2.0 - 2.0 * cos).mean()) if kind == "l2" else float((1.0 - cos).mean())), kind
    if kind == "relational":
        sa = current.embeddings @ current.embeddings.T
        sb = later.embeddings @ later.embeddings.T
        return float(((sa - sb) ** 2).mean()), kind
    raise ValueError(f"unknown divergence kind {kind!r}; valid: auto, kl, l2, cosine, relational")


def probe_indices(num_items: int, count: int, seed: int) -> np.ndarray:
    """The fixed probe set: ``count`` sorted dataset indices from a seeded permutation."""
    if num_items <= 0:
        raise ValueError("probe set: the dataset is empty")
    rng = np.random.default_rng(seed)
    return np.sort(rng.permutation(num_items)[: min(count, num_items)])


def gss_step(current: ProbeOutput, later: dict[str, ProbeOutput], delta: float,
             mode: Literal["absolute", "relative"] = "relative", kind: DivergenceKind = "auto",
             temperature: float = 4.0) -> dict[str, Any]:
    """One greedy GSS decision from ``current`` over the ``later`` checkpoints (route order, final last).

    Returns the record logged in plans: ``kind``, ``threshold``, ``divergences``, ``chosen`` (the farthest later
    checkpoint with ``D <= threshold``; the next one when none qualifies) and ``forced``. Shared by the planned walk
    (:func:`select_gss`) and the online walk measured on the training student (:mod:`facerco.route.strategies`).
    """
    if not later:
        raise ValueError("GSS step: no later checkpoint to choose from")
    names = list(later)
    divs: dict[str, float] = {}
    used = ""
    for name in names:
        divs[name], used = divergence(current, later[name], kind, temperature)
    threshold = delta if mode == "absolute" else delta * divs[names[-1]]
    under = [n for n in names if divs[n] <= threshold]
    chosen = under[-1] if under else names[0]  # farthest in route order under the threshold, else advance
    return {"kind": used, "threshold": threshold, "divergences": divs, "chosen": chosen, "forced": not under}


def select_gss(points: Sequence[PointInfo], outputs: dict[str, ProbeOutput], start: ProbeOutput | None,
               delta: float, mode: Literal["absolute", "relative"] = "relative", kind: DivergenceKind = "auto",
               temperature: float = 4.0, max_anchors: int = 0) -> AnchorPlan:
    """Greedy Search Strategy over precomputed probe outputs (rule in the module docstring)."""
    if delta <= 0:
        raise ValueError(f"GSS: delta must be > 0, got {delta}")
    if mode not in ("absolute", "relative"):
        raise ValueError(f"GSS: delta mode must be 'absolute' or 'relative', got {mode!r}")
    names = [p.name for p in points]
    missing = [n for n in names if n not in outputs]
    if missing:
        raise ValueError(f"GSS: no probe outputs for route points {missing}")
    final = names[-1]
    anchors: list[str] = []
    steps: list[dict[str, Any]] = []
    if start is None:
        anchors.append(names[0])
        pos, current, current_name = 0, outputs[names[0]], names[0]
    else:
        pos, current, current_name = -1, start, "student@init"
    while not (pos >= 0 and names[pos] == final):
        if max_anchors and len(anchors) >= max_anchors - 1:
            break
        record = gss_step(current, {n: outputs[n] for n in names[pos + 1:]}, delta, mode, kind, temperature)
        record["from"] = current_name
        steps.append(record)
        chosen = record["chosen"]
        anchors.append(chosen)
        pos = names.index(chosen)
        current, current_name = outputs[chosen], chosen
        if chosen == final:
            break
    if anchors[-1] != final:
        anchors.append(final)
    return AnchorPlan("gss", anchors, steps, notes=f"delta={delta} ({mode})")


def format_plan(plan: AnchorPlan) -> str:
    """Human-readable plan: the anchors, then GSS's divergence table per greedy step."""
    lines = [f"strategy: {plan.strategy}" + (f"  ({plan.notes})" if plan.notes else ""),
             f"anchors:  {' -> '.join(plan.anchors)}"]
    for i, step in enumerate(plan.steps):
        lines.append(f"step {i + 1}: from {step['from']}  [{step['kind']}]  threshold {step['threshold']:.5g}"
                     + ("  (none under threshold: advanced one point)" if step.get("forced") else ""))
        for name, d in step["divergences"].items():
            mark = "  <- chosen" if name == step["chosen"] else ""
            lines.append(f"    {name:<20} D={d:.5g}{mark}")
    return "\n".join(lines)
