"""Reading a teacher route: ``route.json`` plus ``route/<name>.safetensors`` checked against their sha256.

A run directory written by ``facerco train teacher`` holds::

    config.yaml      resolved config of the run
    route.json       manifest (this module's format, below)
    route/<name>.safetensors   one checkpoint per route point (facerco.models.checkpoint format)
    last.pt          resume state (not part of the route)

``route.json``::

    {"format": "facerco-route", "version": 1, "arch": "...", "embedding_size": 512, "num_classes": N,
     "steps_per_epoch": S, "total_steps": T, "final": "<name of the final point or null while training>",
     "points": [{"name": "epoch_001", "file": "route/epoch_001.safetensors", "epoch": 1.0, "step": 400,
                 "lr": 0.095, "train_loss": 12.3, "val": {"lfw/acc": 0.91}, "sha256": "...", "bytes": 123,
                 "final": false}, ...]}
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from facerco.utils.io import read_json, sha256_file

__all__ = [
    "ROUTE_FORMAT",
    "ROUTE_VERSION",
    "ChecksumError",
    "RoutePoint",
    "Route",
    "load_route",
    "verify_file",
    "format_route_table",
    "plot_route",
]

ROUTE_FORMAT = "facerco-route"
ROUTE_VERSION = 1


class ChecksumError(ValueError):
    """A route checkpoint's bytes do not match the sha256 recorded in route.json."""


@dataclass
class RoutePoint:
    """One checkpoint along the teacher's training."""

    name: str
    file: str  # relative to the run directory
    epoch: float
    step: int
    lr: float
    train_loss: float
    val: dict[str, float] = field(default_factory=dict)
    sha256: str = ""
    bytes: int = 0
    final: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str) -> RoutePoint:
        names = set(cls.__dataclass_fields__)
        unknown = set(data) - names
        missing = {"name", "file", "epoch", "step"} - set(data)
        if unknown or missing:
            raise ValueError(
                f"{source}: route point {data.get('name', '?')!r} has unknown keys {sorted(unknown)} "
                f"or lacks {sorted(missing)}"
            )
        return cls(**data)


def verify_file(path: Path, expected_sha256: str) -> None:
    """Raise :class:`ChecksumError` naming ``path`` when its sha256 differs from ``expected_sha256``."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: route checkpoint listed in route.json is missing")
    actual = sha256_file(path)
    if actual != expected_sha256:
        raise ChecksumError(
            f"{path}: checksum mismatch (route.json says sha256 {expected_sha256[:16]}..., file has "
            f"{actual[:16]}...); the checkpoint was altered or truncated"
        )


@dataclass
class Route:
    """A loaded ``route.json``; points are in training order."""

    run_dir: Path
    points: list[RoutePoint]
    final: str | None = None
    info: dict[str, Any] = field(default_factory=dict)  # arch, embedding_size, num_classes, steps_per_epoch...

    def names(self) -> list[str]:
        return [p.name for p in self.points]

    def point(self, name: str) -> RoutePoint:
        """The point called ``name``; ``'final'`` means the final point."""
        if name == "final":
            if self.final is None:
                raise KeyError(f"{self.run_dir / 'route.json'}: no final point yet (training not finished)")
            name = self.final
        for p in self.points:
            if p.name == name:
                return p
        raise KeyError(f"{self.run_dir / 'route.json'}: no route point {name!r}; points: {', '.join(self.names())}")

    def path(self, name: str) -> Path:
        return self.run_dir / self.point(name).file

    def verify(self, name: str | None = None) -> None:
        """Check the sha256 of one point, or of every point when ``name`` is None."""
        for p in [self.point(name)] if name else self.points:
            verify_file(self.run_dir / p.file, p.sha256)

    def load_point(self, name: str, verify: bool = True, device: str = "cpu") -> Any:
        """Load a route point as ``facerco.models.checkpoint.LoadedModel`` (model in eval mode, classifier, metadata).

        With ``verify`` (default) the file's sha256 is checked first; a mismatch raises :class:`ChecksumError`.
        """
        from facerco.models.checkpoint import LoadedModel, load_model

        p = self.point(name)
        path = self.run_dir / p.file
        if verify:
            verify_file(path, p.sha256)
        if path.suffix.lower() in (".onnx", ".dat"):  # an imported ONNX or dlib teacher (facerco.route.published)
            from facerco.route.published import load_published

            teacher = self.info.get("teacher") or {}
            model = load_published(path, teacher).to(device)
            return LoadedModel(model, None, {"kind": "teacher", "arch": model.meta.name, **teacher})
        return load_model(str(path), device=device)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": ROUTE_FORMAT,
            "version": ROUTE_VERSION,
            **self.info,
            "final": self.final,
            "points": [p.to_dict() for p in self.points],
        }


def load_route(run_dir: str | Path) -> Route:
    """Read ``<run_dir>/route.json`` (or a path to the file itself); errors name the file and the key."""
    path = Path(run_dir)
    if path.is_file():
        path, run = path, path.parent
    else:
        run, path = path, path / "route.json"
    data = read_json(path)
    if not isinstance(data, dict) or data.get("format") != ROUTE_FORMAT:
        raise ValueError(f"{path}: not a facerco route manifest (format must be {ROUTE_FORMAT!r})")
    if data.get("version") != ROUTE_VERSION:
        raise ValueError(f"{path}: route version {data.get('version')} not supported (expected {ROUTE_VERSION})")
    raw_points = data.get("points")
    if not isinstance(raw_points, list):
        raise ValueError(f"{path}: key 'points' must be a list")
    points = [RoutePoint.from_dict(p, str(path)) for p in raw_points]
    final = data.get("final")
    if final is not None and final not in {p.name for p in points}:
        raise ValueError(f"{path}: final point {final!r} is not among the points")
    info = {k: v for k, v in data.items() if k not in {"format", "version", "final", "points"}}
    return Route(run_dir=run, points=points, final=final, info=info)


def format_route_table(route: Route) -> str:
    """The route as a fixed-width text table: one row per point, one column per val metric."""
    metrics = sorted({k for p in route.points for k in p.val})
    head = ["name", "epoch", "step", "lr", "train_loss", *metrics, "size", "sha256"]
    rows = []
    for p in route.points:
        rows.append(
            [
                p.name + (" *" if p.final else ""),
                f"{p.epoch:.2f}",
                str(p.step),
                f"{p.lr:.4g}",
                f"{p.train_loss:.4f}",
                *(f"{p.val[m]:.4f}" if m in p.val else "-" for m in metrics),
                _human(p.bytes),
                p.sha256[:12],
            ]
        )
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    total = sum(p.bytes for p in route.points)
    lines.append(f"{len(route.points)} point(s), {_human(total)}; final: {route.final or '(not finished)'}")
    return "\n".join(lines)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def plot_route(route: Route, path: str | Path) -> Path:
    """PNG of every val metric (left axis) and the train loss (right axis) against the epoch of each point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from facerco.utils.io import atomic_path

    out = Path(path)
    epochs = [p.epoch for p in route.points]
    fig, ax = plt.subplots(figsize=(7, 4))
    metrics = sorted({k for p in route.points for k in p.val})
    headline = [m for m in metrics if m.endswith("/accuracy") or "/tar@" in m]
    for m in headline or metrics:
        xs = [p.epoch for p in route.points if m in p.val]
        ax.plot(xs, [p.val[m] for p in route.points if m in p.val], marker="o", label=m)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation metric")
    ax2 = ax.twinx()
    ax2.plot(epochs, [p.train_loss for p in route.points], color="gray", linestyle="--", marker=".", label="train loss")
    ax2.set_ylabel("train loss")
    if route.final is not None:
        ax.axvline(route.point("final").epoch, color="black", linewidth=0.5)
    handles = ax.get_legend_handles_labels()
    handles2 = ax2.get_legend_handles_labels()
    ax.legend(handles[0] + handles2[0], handles[1] + handles2[1], loc="best", fontsize=8)
    ax.set_title(f"route of {route.run_dir.name} ({len(route.points)} points)")
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return out
