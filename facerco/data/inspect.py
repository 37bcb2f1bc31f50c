"""Look at a dataset before training on it: counts, images-per-identity histogram, a contact sheet of faces.

Works on anything :func:`facerco.data.datasets.open_dataset` opens (a RecordIO folder or an identity folder). Writes
``inspect.json``, ``histogram.png`` and ``contact_sheet.png`` to the output folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np

from facerco.data.datasets import open_dataset
from facerco.data.transforms import resize_square
from facerco.utils.io import atomic_path, write_json

__all__ = ["BUCKETS", "images_per_identity_histogram", "inspect_dataset", "format_report"]

# (low, high) inclusive bucket edges for the images-per-identity histogram
BUCKETS: tuple[tuple[int, int], ...] = (
    (0, 0),
    (1, 1),
    (2, 2),
    (3, 5),
    (6, 10),
    (11, 20),
    (21, 50),
    (51, 100),
    (101, 200),
    (201, 500),
    (501, 10**12),
)


def _bucket_name(low: int, high: int) -> str:
    if low == high:
        return str(low)
    return f"{low}+" if high >= 10**12 else f"{low}-{high}"


def images_per_identity_histogram(counts: np.ndarray) -> list[tuple[str, int]]:
    """Number of identities whose image count falls in each bucket (empty 0-bucket and buckets past the max dropped)."""
    top = int(counts.max()) if len(counts) else 0
    rows = [(_bucket_name(lo, hi), int(((counts >= lo) & (counts <= hi)).sum())) for lo, hi in BUCKETS if lo <= top]
    return rows if rows[0][1] else rows[1:]


def _sample_identities(counts: np.ndarray, n: int) -> list[int]:
    """``n`` identities spread evenly from the largest to the smallest (deterministic), shown in label order."""
    present = np.flatnonzero(counts)
    if len(present) <= n:
        return present.tolist()
    by_size = present[np.lexsort((present, -counts[present]))]
    return sorted(by_size[np.linspace(0, len(by_size) - 1, n).round().astype(int)].tolist())


def _save_png(fig, path: Path) -> None:  # noqa: ANN001 - a matplotlib Figure
    """Lay out, write atomically and free the figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def _contact_sheet(ds, counts: np.ndarray, identities: int, per_identity: int, tile: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = _sample_identities(counts, identities)
    order = np.argsort(ds.labels, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)])
    grid = np.full((len(chosen) * tile, per_identity * tile, 3), 255, dtype=np.uint8)
    names = []
    for row, label in enumerate(chosen):
        members = order[starts[label] : starts[label + 1]][:per_identity]
        for col, i in enumerate(members):
            grid[row * tile : (row + 1) * tile, col * tile : (col + 1) * tile] = resize_square(
                ds.read_image(int(i)), tile
            )
        name = ds.classes[label] if ds.classes is not None else str(label)
        names.append(f"{name} ({int(counts[label])})")
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * per_identity + 2.2, 0.6 + 0.9 * max(1, len(chosen))), dpi=100)
    ax.imshow(grid)
    ax.set_yticks([(r + 0.5) * tile for r in range(len(chosen))], names, fontsize=7)
    ax.set_xticks([])
    ax.set_title(f"{len(chosen)} identities x up to {per_identity} images (identity, image count)", fontsize=8)
    _save_png(fig, path)


def _histogram_png(hist: list[tuple[str, int]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    ax.bar([name for name, _ in hist], [count for _, count in hist], color="#4477aa")
    ax.set_xlabel("images per identity")
    ax.set_ylabel("identities")
    ax.set_title(title, fontsize=9)
    for x, (_, count) in enumerate(hist):
        ax.annotate(str(count), (x, count), ha="center", va="bottom", fontsize=7)
    _save_png(fig, path)


def _unlabeled_sheet(ds, rows: int, cols: int, tile: int, path: Path) -> None:
    """A contact sheet of an unlabeled folder: ``rows x cols`` images spread evenly over it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    picks = np.unique(np.linspace(0, len(ds) - 1, min(len(ds), rows * cols)).round().astype(int))
    grid = np.full((rows * tile, cols * tile, 3), 255, dtype=np.uint8)
    for k, i in enumerate(picks):
        r, c = divmod(k, cols)
        grid[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile] = resize_square(ds.read_image(int(i)), tile)
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * cols, 0.6 + 0.9 * rows), dpi=100)
    ax.imshow(grid)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"{len(picks)} of {len(ds)} images, spread evenly (no identities)", fontsize=8)
    _save_png(fig, path)


def _inspect_unlabeled(ds, path: str | os.PathLike[str], out: Path, rows: int, cols: int, tile: int) -> dict:
    """Counts and a contact sheet of a folder without identities (``data.format: images``): no histogram to draw."""
    stats = {"dataset": str(path), "format": "images", "images": int(len(ds)), "identities": 0,
             "identities_with_images": 0, "unlabeled": True, "images_per_identity": None, "histogram": [],
             "histogram_png": None, "contact_sheet_png": str(out / "contact_sheet.png")}
    _unlabeled_sheet(ds, rows, cols, tile, out / "contact_sheet.png")
    write_json(out / "inspect.json", stats)
    return stats


def inspect_dataset(
    path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    fmt: Literal["rec", "folder", "images", "auto"] = "auto",
    identities: int = 12,
    per_identity: int = 8,
    tile: int = 112,
) -> dict:
    """Compute the statistics, write ``inspect.json``, ``histogram.png`` and ``contact_sheet.png``; return the stats.

    An unlabeled flat folder (``fmt="images"``) gets its image count and a contact sheet only.
    """
    ds = open_dataset(path, fmt)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if len(ds.labels) and int(np.max(ds.labels)) < 0:
        return _inspect_unlabeled(ds, path, out, identities, per_identity, tile)
    counts = np.bincount(ds.labels, minlength=ds.num_classes)
    hist = images_per_identity_histogram(counts)
    with_images = counts[counts > 0]
    stats = {
        "dataset": str(path),
        "format": "rec" if type(ds).__name__ == "RecordDataset" else "folder",
        "images": int(len(ds)),
        "identities": int(ds.num_classes),
        "identities_with_images": int(len(with_images)),
        "images_per_identity": {
            "min": int(with_images.min()) if len(with_images) else 0,
            "median": float(np.median(with_images)) if len(with_images) else 0.0,
            "mean": float(with_images.mean()) if len(with_images) else 0.0,
            "max": int(with_images.max()) if len(with_images) else 0,
        },
        "histogram": hist,
        "histogram_png": str(out / "histogram.png"),
        "contact_sheet_png": str(out / "contact_sheet.png"),
    }
    _histogram_png(hist, f"{path}: {stats['images']} images, {stats['identities']} identities", out / "histogram.png")
    _contact_sheet(ds, counts, identities, per_identity, tile, out / "contact_sheet.png")
    write_json(out / "inspect.json", stats)
    return stats


def format_report(stats: dict) -> str:
    """A plain-text summary with the histogram as a bar table."""
    if stats.get("unlabeled"):
        return "\n".join([f"dataset     {stats['dataset']} (images: no identities)", f"images      {stats['images']}",
                          "", f"contact sheet: {stats['contact_sheet_png']}"])
    ipi = stats["images_per_identity"]
    lines = [
        f"dataset     {stats['dataset']} ({stats['format']})",
        f"images      {stats['images']}",
        f"identities  {stats['identities']} ({stats['identities_with_images']} with images)",
        f"per identity min {ipi['min']}  median {ipi['median']:g}  mean {ipi['mean']:.2f}  max {ipi['max']}",
        "",
        f"{'images/identity':>15}  {'identities':>10}",
    ]
    peak = max((c for _, c in stats["histogram"]), default=0) or 1
    for name, count in stats["histogram"]:
        lines.append(f"{name:>15}  {count:>10}  {'#' * round(40 * count / peak)}")
    lines += ["", f"histogram:     {stats['histogram_png']}", f"contact sheet: {stats['contact_sheet_png']}"]
    return "\n".join(lines)
