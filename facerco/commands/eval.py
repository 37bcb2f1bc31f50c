"""`facerco eval verify|megaface|ijb`: verification accuracy, MegaFace-style 1:N identification and IJB-B/C template
evaluation, as reports.

Thin CLI over :mod:`facerco.eval.run` (``run_verification``, ``run_megaface``, ``run_ijb``): each handler parses,
calls and prints a summary of the returned report; heavy imports happen inside so ``facerco --help`` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from facerco.commands._common import add_debug_arg


def _verify(args: argparse.Namespace) -> int:
    from facerco.eval.run import run_verification

    report = run_verification(args.model, args.bin or (), args.pairs, args.root, ext=args.ext, names=args.names,
                              nfolds=args.nfolds, fars=args.far, out=args.out, arch=args.arch,
                              batch_size=args.batch_size, device=args.device, num_workers=args.num_workers)
    for name, per_set in report["verification"].items():
        for set_name, r in per_set.items():
            tars = "  ".join(f"TAR@{f}={100 * v['tar']:.2f}%" for f, v in r["tar_at_far"].items())
            print(f"{name:<28} {set_name:<14} acc {100 * r['accuracy']:.2f} ± {100 * r['accuracy_std']:.2f}  "
                  f"thr {r['best_threshold']:.3f}  {tars}  XNorm {r['xnorm']:.2f}")
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0


def _megaface(args: argparse.Namespace) -> int:
    from facerco.eval.run import run_megaface

    report = run_megaface(args.probes, args.distractors, args.model, names=args.names, out=args.out, algo=args.algo,
                          distractor_root=args.distractor_root, sizes=args.sizes, subset_list=args.subset_list,
                          seed=args.seed, probe_noise=args.probe_noise, distractor_noise=args.distractor_noise,
                          fars=args.far, backend=args.backend, chunk_size=args.chunk_size, arch=args.arch,
                          batch_size=args.batch_size, device=args.device, num_workers=args.num_workers)
    for name, res in report["identification"].items():
        for s in res["sizes"]:
            tars = "  ".join(f"TAR@{f}={100 * v:.2f}%" for f, v in s["tar_at_far"].items())
            print(f"{name:<24} {s['size']:>9,} distractors  rank-1 {100 * s['rank1']:.2f}%  "
                  f"rank-10 {100 * s['cmc'][-1]:.2f}%  {tars}")
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0


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
    from facerco.eval.run import run_ijb

    report = run_ijb(args.model, args.root, args.target, names=args.names, out=args.out, norm_score=args.norm_score,
                     detector_score=args.detector_score, block=args.block, workers=args.workers, arch=args.arch,
                     batch_size=args.batch_size, device=args.device, num_workers=args.num_workers)
    for name, res in report["ijb"].items():
        _print_ijb(name, res)
    usage = report["meta"]
    gpu = f", GPU {usage['peak_gpu_gib']:.2f} GiB" if "peak_gpu_gib" in usage else ""
    print(f"peak memory {usage['peak_rss_gib']:.2f} GiB RSS{gpu}; time {usage['time_s']:.1f} s")
    print(f"report: {Path(args.out) / 'report.md'}")
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
    m.add_argument("--backend", choices=["auto", "torch", "faiss", "int8"], default="auto",
                   help="auto: torch (faiss-gpu on GPUs); int8: a low-precision screen with exact rescoring (same "
                        "results; slower than torch at the default FARs, see benchmarks/identification.py)")
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
