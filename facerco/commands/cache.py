"""`facerco cache RUN DATASET`: precompute anchor embeddings of every training image (plain and flipped).

The student then reads targets from the cache (``distill.cache=DIR``) instead of running the teacher. The cache is
fp16, memory-mapped, sharded, resumable (rerun the same command) and checksummed; its manifest records the teacher
run (absolute path) and each anchor's route sha256, the images' fingerprint, the input size and the transform, and
the student refuses a cache that does not match; see :mod:`facerco.route.cache_format`.
"""

from __future__ import annotations

import argparse

from facerco.commands._common import add_debug_arg


def _view_meta(route: object) -> dict[str, object]:
    """What the manifest records of an imported teacher's view: cut from the aligned crops in this path."""
    teacher = getattr(route, "info", {}).get("teacher")
    if not teacher:
        return {}
    return {"teacher_view": teacher.get("view"), "view_source": "crop"}


def _views(args: argparse.Namespace) -> int:
    from pathlib import Path

    from facerco.route.views_cache import build_views_cache

    if not args.out:
        raise ValueError("--views needs --out DIR (student crops go to DIR/images, the cache to DIR/cache)")
    manifest = build_views_cache(args.run, args.dataset, args.photos or args.dataset, args.out, views=args.views,
                                 seed=args.seed, image_size=args.image_size or 112, workers=args.workers,
                                 progress=not args.no_progress)
    out = Path(args.out)
    print(f"views: {args.views} per image -> {out / 'images'}; teacher rows (plain + flip, fp16) -> {manifest}")
    flat = not any(p.is_dir() for p in (out / "images").iterdir())
    fmt = " data.format=images" if flat else ""
    print(f"train with: data.train={out / 'images'}{fmt} distill.cache={out / 'cache'} distill.strategy=final")
    return 0


def _cache(args: argparse.Namespace) -> int:
    if args.views:
        return _views(args)
    from pathlib import Path

    from facerco.data.datasets import open_dataset
    from facerco.data.transforms import EvalTransform
    from facerco.route.cache_anchors import route_anchors, teacher_input_size
    from facerco.route.cache_writer import build_cache
    from facerco.route.io import load_route
    from facerco.utils.device import resolve_device

    route = load_route(args.run)
    image_size = args.image_size
    if args.config:
        from facerco.config import load_config
        from facerco.distill.planning import plan_points

        cfg = load_config(args.config, args.overrides)
        image_size = cfg.data.image_size if image_size is None else image_size
        names: list[str] | None = plan_points(cfg, route, open_dataset(args.dataset, args.format,
                                                                       EvalTransform(image_size)))
    else:
        image_size = teacher_input_size(route) if image_size is None else image_size
        names = [n.strip() for n in args.anchors.split(",") if n.strip()] if args.anchors else None
    device = resolve_device(args.device)
    anchors = route_anchors(route, names, device)
    dataset = open_dataset(args.dataset, args.format, EvalTransform(image_size))
    out = Path(args.out) if args.out else Path(args.run) / "cache"
    manifest = build_cache(out, anchors, dataset, shard_size=args.shard_size, batch_size=args.batch_size,
                           device=device, num_workers=args.workers,
                           meta={"teacher_run": str(Path(args.run).resolve()),
                                 "dataset": str(Path(args.dataset).resolve()), "image_size": image_size,
                                 **_view_meta(route)},
                           progress=not args.no_progress)
    print(f"cache: {len(anchors)} anchor(s) x {len(dataset)} images (plain + flip, fp16) -> {manifest}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "cache", help="precompute anchor embeddings of a training set (fp16, memory-mapped, resumable)",
        description="Embed every image of DATASET (and its horizontal flip) with route points of the teacher RUN. "
                    "Anchors: --anchors a,b,final; or the plan of a student --config; default every route point.")
    parser.add_argument("run", help="teacher run directory (holds route.json)")
    parser.add_argument("dataset", help="training set: a .rec directory, an identity folder or a flat image folder")
    parser.add_argument("--format", choices=["rec", "folder", "images", "auto"], default="auto",
                        help="dataset reader (auto: rec when train.rec exists, else folder; images: a flat folder "
                        "without identities, for a student that only mimics)")
    parser.add_argument("--out", default="", help="cache directory (default RUN/cache)")
    parser.add_argument("--anchors", default="", help="comma-separated route point names ('final' allowed)")
    parser.add_argument("--config", default="", help="student config whose anchor plan selects the points")
    parser.add_argument("overrides", nargs="*", help="dotted overrides for --config")
    parser.add_argument("--image-size", type=int, default=None,
                        help="network input side (default: the student config's, else the teacher's)")
    parser.add_argument("--shard-size", type=int, default=65536, help="images per shard file")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2, help="data-loader workers")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--views", type=int, default=0,
                        help="K > 0: K seeded views per aligned image (view 0 as aligned, others jittered in "
                             "geometry and colour), the student's crops and the final teacher's rows each cut from "
                             "the source photo in its own view; needs --out (and --photos)")
    parser.add_argument("--photos", default="",
                        help="--views: the folder `facerco align` read (its align_report.csv in DATASET names the "
                             "photos); default DATASET itself (views cut from the aligned crops)")
    parser.add_argument("--seed", type=int, default=0, help="--views: seed of the views")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_debug_arg(parser)
    parser.set_defaults(func=_cache)
