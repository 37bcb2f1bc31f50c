"""`facerco eval verify|megaface|ijb`: verification accuracy, MegaFace-style 1:N identification and IJB-B/C template
evaluation, as reports.

Thin CLI over :mod:`facerco.eval`; heavy imports happen inside the handlers so ``facerco --help`` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from facerco.commands._common import add_debug_arg


def _model_name(model: str, names: list[str] | None, i: int) -> str:
    if names:
        return names[i]
    p = Path(model)
    return p.parent.name + "/" + p.stem if p.parent.name else p.stem


def _embedder(model: str, args: argparse.Namespace) -> Any:
    """The model loaded once (``--arch`` for insightface .pth state_dicts)."""
    from facerco.eval.features import load_embedder

    return load_embedder(model, args.device, args.arch)


def _verify(args: argparse.Namespace) -> int:
    from facerco.eval.report import write_report
    from facerco.eval.verification import verify_bin, verify_pairs

    if bool(args.bin) == bool(args.pairs):
        raise ValueError("give either --bin FILE [FILE ...] or --pairs pairs.txt --root DIR")
    if args.pairs and not args.root:
        raise ValueError("--pairs needs --root (the folder holding <name>/<name>_NNNN.jpg)")
    if args.names and len(args.names) != len(args.model):
        raise ValueError(f"--names gives {len(args.names)} names for {len(args.model)} models")
    results: dict[str, dict[str, Any]] = {}
    for i, model_path in enumerate(args.model):
        name = _model_name(model_path, args.names, i)
        model = _embedder(model_path, args)
        per_set: dict[str, Any] = {}
        for b in args.bin or []:
            per_set[Path(b).stem] = verify_bin(model, b, args.batch_size, args.device, args.nfolds, args.far,
                                               progress=True)
        if args.pairs:
            per_set[Path(args.pairs).stem] = verify_pairs(
                model, args.pairs, args.root, args.batch_size, args.device, args.nfolds, args.far, ext=args.ext,
                progress=True, num_workers=args.num_workers)
        for set_name, r in per_set.items():
            tars = "  ".join(f"TAR@{f}={100 * v['tar']:.2f}%" for f, v in r["tar_at_far"].items())
            print(f"{name:<28} {set_name:<14} acc {100 * r['accuracy']:.2f} ± {100 * r['accuracy_std']:.2f}  "
                  f"thr {r['best_threshold']:.3f}  {tars}  XNorm {r['xnorm']:.2f}")
        results[name] = per_set
    paths = write_report(args.out, verification=results, meta={"command": "eval verify"})
    print(f"report: {paths['md']}")
    return 0


# ---------------------------------------------------------------------------------------------------------------
# megaface
# ---------------------------------------------------------------------------------------------------------------


def _megaface(args: argparse.Namespace) -> int:
    import numpy as np

    from facerco.eval.checks import UNIT_TOL
    from facerco.eval.feature_cache import FeatureCache, model_key
    from facerco.eval.identification import evaluate_identification
    from facerco.eval.megaface_features import FeatureOptions, noise_mask, role_features, subset_lists
    from facerco.eval.report import write_report

    models: list[str | None] = list(args.model) if args.model else [None]
    if args.names and len(args.names) != len(models):
        raise ValueError(f"--names gives {len(args.names)} names for {len(models)} models")
    out = Path(args.out)
    opts = FeatureOptions(out, args.algo, args.distractor_root, args.arch, args.batch_size, args.device,
                          args.num_workers)
    results = {}
    for i, model in enumerate(models):
        name = args.names[i] if args.names else (_model_name(model, None, 0) if model else "features")
        cache = FeatureCache(out / "features" / name.replace("/", "_"), model_key(model, args.arch)) if model else None
        probes, p_stats = role_features(args.probes, "probes", model, opts, cache)
        dist, d_stats = role_features(args.distractors, "distractors", model, opts, cache)
        if (np.asarray(probes.labels) < 0).any():
            raise ValueError(f"{args.probes}: probes need identity labels (an identity folder, or a .csv index)")
        res = evaluate_identification(
            np.asarray(probes.emb, np.float32), probes.labels, dist.emb, sizes=args.sizes,
            subsets=subset_lists(args.subset_list, dist.paths), seed=args.seed, fars=args.far,
            probe_noise=noise_mask(args.probe_noise, probes.paths, "probes"),
            distractor_noise=noise_mask(args.distractor_noise, dist.paths, "distractors"),
            backend=args.backend, device=args.device, chunk_size=args.chunk_size, normalize=True)
        res["features"] = {"normalized_by_evaluator": True, "unit_tolerance": UNIT_TOL,
                           "probes": p_stats.as_dict(), "distractors": d_stats.as_dict()}
        for s in res["sizes"]:
            tars = "  ".join(f"TAR@{f}={100 * v:.2f}%" for f, v in s["tar_at_far"].items())
            print(f"{name:<24} {s['size']:>9,} distractors  rank-1 {100 * s['rank1']:.2f}%  "
                  f"rank-10 {100 * s['cmc'][-1]:.2f}%  {tars}")
        results[name] = res
    paths = write_report(out, identification=results, meta={"command": "eval megaface", "probes": args.probes,
                                                            "distractors": args.distractors})
    print(f"report: {paths['md']}")
    return 0


# ---------------------------------------------------------------------------------------------------------------
# ijb
# ---------------------------------------------------------------------------------------------------------------


def _print_meta(meta: Any) -> None:
    pairs = meta.pairs
    print(f"{meta.files.target}: {len(meta.templates):,} faces, {len(meta.template_ids):,} templates, "
          f"{len(pairs.t1):,} pairs ({int(pairs.label.sum()):,} genuine; {pairs.repeats} repeated rows, scored as "
          "listed" + (f"; first: {pairs.first_repeat}" if pairs.first_repeat else "") + ")")
    if meta.probes is None:
        print(f"{meta.files.target}: 1:N files absent: identification skipped")
    else:
        sizes = ", ".join(f"{g} {len(t):,}" for g, t, _ in meta.galleries)
        print(f"{meta.files.target} 1:N: gallery templates {sizes}; {len(meta.probes[0]):,} mixed probe templates")


def _print_ijb(name: str, r: dict[str, Any]) -> None:
    v = r["verification"]
    tars = "  ".join(f"{f} {100 * x['tar']:.2f}" for f, x in v["tar_at_far"].items())
    exact = "  ".join(f"{100 * x['tar']:.2f}" for x in v["exact"]["tar_at_far"].values())
    print(f"{name:<24} 1:1 TAR% at FAR (eval_ijbc.py, as papers) {tars}  (exact rule: {exact})")
    ident = r.get("identification")
    if ident:
        head = ident["headline"]
        ranks = "  ".join(f"rank-{k} {100 * x:.2f}" for k, x in head["rank"].items())
        tpir = "  ".join(f"TPIR@FPIR={f} {100 * x['tpir']:.2f}" for f, x in head["tpir_at_fpir"].items())
        print(f"{name:<24} 1:N ({' + '.join(ident['galleries'])}, ijb_evals.py, as papers) {ranks}  {tpir}")


def _ijb(args: argparse.Namespace) -> int:
    import os
    import time

    import numpy as np

    from facerco.eval.feature_cache import model_key
    from facerco.eval.ijb import evaluate_ijb, load_meta
    from facerco.eval.ijb_features import ijb_features, resource_usage
    from facerco.eval.report import write_report
    from facerco.utils.io import atomic_path

    start = time.perf_counter()
    if args.names and len(args.names) != len(args.model):
        raise ValueError(f"--names gives {len(args.names)} names for {len(args.model)} models")
    meta = load_meta(args.root, args.target)
    _print_meta(meta)
    out, results = Path(args.out), {}
    for i, model_path in enumerate(args.model):
        name = _model_name(model_path, args.names, i)
        folder = out / "features" / name.replace("/", "_")
        feats, norms = ijb_features(meta, _embedder(model_path, args), folder, model_key(model_path, args.arch),
                                    args.batch_size, args.device, args.num_workers, args.block)
        res, scores = evaluate_ijb(meta, feats, norms[:, 1], args.norm_score, args.detector_score,
                                   workers=args.workers or os.cpu_count() or 1)
        res["xnorm"] = float(np.mean(norms[:, 0]))
        res["scores_file"] = str(folder / f"{meta.files.target.lower()}_pair_scores.npy")
        with atomic_path(res["scores_file"]) as tmp, open(tmp, "wb") as handle:
            np.save(handle, scores)
        _print_ijb(name, res)
        results[name] = res
    usage = resource_usage(start)
    gpu = f", GPU {usage['peak_gpu_gib']:.2f} GiB" if "peak_gpu_gib" in usage else ""
    print(f"peak memory {usage['peak_rss_gib']:.2f} GiB RSS{gpu}; time {usage['time_s']:.1f} s")
    paths = write_report(out, ijb=results, meta={"command": "eval ijb", "root": args.root,
                                                 "target": meta.files.target, "norm_score": args.norm_score,
                                                 "detector_score": args.detector_score, **usage})
    print(f"report: {paths['md']}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("eval", help="verification accuracy and MegaFace-style identification reports")
    sub = parser.add_subparsers(dest="eval_command", metavar="ACTION", required=True)

    v = sub.add_parser("verify", help="10-fold verification on .bin sets or an LFW pairs.txt")
    v.add_argument("model", nargs="+", help="checkpoint (.safetensors/.pth) or .onnx; several models share a report")
    v.add_argument("--bin", nargs="+", metavar="FILE", help="insightface verification .bin files")
    v.add_argument("--pairs", help="LFW-style pairs.txt")
    v.add_argument("--root", help="image folder for --pairs (<name>/<name>_NNNN.<ext>)")
    v.add_argument("--ext", default="jpg", help="image extension for --pairs (default jpg)")
    v.add_argument("--names", nargs="+", help="display names for the models")
    v.add_argument("--nfolds", type=int, default=10)
    v.add_argument("--far", type=float, nargs="+", default=[1e-3, 1e-4], help="FAR targets (default 1e-3 1e-4)")
    v.add_argument("--out", default="eval_out/verify", help="report folder (default eval_out/verify)")
    _common(v)
    v.set_defaults(func=_verify)

    m = sub.add_parser("megaface", help="1:N identification with distractors (MegaFace Challenge 1 protocol)")
    m.add_argument("--probes", required=True,
                   help="probe features (.npy with .csv labels, devkit folder with --algo) or an identity folder")
    m.add_argument("--distractors", required=True,
                   help="distractor features (.npy, memory-mapped; devkit folder with --algo) or images/list")
    m.add_argument("--distractor-root", help="folder that relative entries of a distractor image list refer to")
    m.add_argument("--model", nargs="+", help="extract features from images with these models")
    m.add_argument("--names", nargs="+", help="display names for the models")
    m.add_argument("--algo", default="facerco", help="devkit feature suffix: <image>_<algo>.bin")
    m.add_argument("--sizes", type=int, nargs="+", help="distractor sizes (default 10, 100, ... and all)")
    m.add_argument("--subset-list", nargs="+", default=[], metavar="SIZE=FILE",
                   help="explicit distractor subsets (text list or devkit JSON with 'path') instead of random ones")
    m.add_argument("--seed", type=int, default=0, help="seed of the nested random subsets")
    m.add_argument("--probe-noise", help="list of mislabeled probe images (replaced by their identity mean)")
    m.add_argument("--distractor-noise", help="list of distractors showing probe identities (never matched)")
    m.add_argument("--far", type=float, nargs="+", default=[1e-6, 1e-5, 1e-4])
    m.add_argument("--backend", choices=["auto", "torch", "faiss"], default="auto")
    m.add_argument("--chunk-size", type=int, default=16384, help="distractors per matmul")
    m.add_argument("--out", default="eval_out/megaface", help="report folder (default eval_out/megaface)")
    _common(m)
    m.set_defaults(func=_megaface)

    j = sub.add_parser("ijb", help="IJB-B/IJB-C template evaluation: 1:1 TAR@FAR and 1:N (G1/G2 or S1/S2)")
    j.add_argument("--model", nargs="+", required=True, help="checkpoint(s) or .onnx; several models share a report")
    j.add_argument("--root", required=True, help="IJB_ROOT holding <TARGET>/meta and <TARGET>/loose_crop")
    j.add_argument("--target", default="IJBC", type=str.upper, choices=["IJBC", "IJBB"], help="IJBC (default) or IJBB")
    j.add_argument("--names", nargs="+", help="display names for the models")
    j.add_argument("--norm-score", action=argparse.BooleanOptionalAction, default=True,
                   help="keep the embedding norm in the pooling (eval_ijbc.py use_norm_score; default on)")
    j.add_argument("--detector-score", action=argparse.BooleanOptionalAction, default=True,
                   help="weight faces by their detector score (eval_ijbc.py use_detector_score; default on)")
    j.add_argument("--block", type=int, default=8192, help="faces per resumable extraction block")
    j.add_argument("--workers", type=int, default=0, help="threads for the pair scores (default: all cores)")
    j.add_argument("--out", default="eval_out/ijb", help="report folder (default eval_out/ijb)")
    _common(j)
    j.set_defaults(func=_ijb)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", help="architecture of an insightface .pth/.pt state_dict (e.g. iresnet100 or r100)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:i]")
    p.add_argument("--num-workers", type=int, default=2, help="image decoding workers")
    add_debug_arg(p)
