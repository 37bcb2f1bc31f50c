"""Real-face RCO study on LFW: does following the teacher's route beat mimicking the final teacher?

Protocol (issue 8, item 2), all on the seeded LFW split of :mod:`facerco.data.lfw_split` (400 training identities,
4,351 images; 1,280 disjoint test identities; the 4,069 one-image people as distractors; 3,000 held-out pairs):

1. data: ``--data`` (default ``runs/lfw_cpu_data``), prepared from ``--lfw`` when its ``split.json`` is missing;
2. teacher: ``--teacher-run`` (default ``runs/teacher_lfw_cpu``) is reused when its route is complete, else trained
   (or resumed) from ``--teacher-config`` (``configs/teacher/lfw_cpu.yaml``: iresnet_tiny at 48x48, 6 epochs, one
   route point per epoch);
3. anchor cache: every route point's embedding of every training image (plain + flipped, fp16), built once with
   :func:`facerco.route.cache.build_cache`, so students read targets instead of running the teacher (``--online``
   runs the teacher instead);
4. students: the six configs ``configs/student/lfw_cpu_{scratch,mimic_final,mimic_best,rco_eeis_one,
   rco_eeis_multi,rco_gss}.yaml`` (same student, data, optimizer and budget; ``--epochs`` sets it), trained by
   :func:`facerco.train.compare.run_compare` (the library's loop, one run per variant and seed under
   ``OUT/runs/<variant>/seed<k>``; finished runs are reused, so a rerun resumes). ``--jobs 2`` trains two
   variant groups in two processes of ``--threads`` threads each (small nets use two cores better that way);
5. metrics of every student (and of every teacher route point), from one embedding pass over the ``eval/`` folder
   (no flip fusion unless ``--eval-flip``; the same for every model): held-out pair verification accuracy
   (10 folds) and its TAR@FAR=1e-3 (1,500 impostor pairs, so one impostor allowed); MegaFace-style 1:N
   identification (:func:`facerco.eval.identification.evaluate_identification`): the test identities' images are
   probes/gallery, all 4,069 singletons are distractors, rank-1 and TAR@FAR=1e-3 over probes x distractors
   (~19.6M impostor scores);
6. output: ``OUT/rco_lfw.json`` (every run, every metric, the teacher route), ``OUT/rco_lfw.md`` (mean ± std over
   seeds, paired differences to mimic-final, a verdict line per RCO variant) and ``OUT/rco_lfw.png``.

Usage::

    python benchmarks/rco_lfw.py --seeds 0 1 2 --epochs 4 --jobs 2 --out bench_out/rco_lfw
    python benchmarks/rco_lfw.py --aggregate-only --out bench_out/rco_lfw     # table from the finished runs

Smaller runs: ``--seeds 0``, ``--variants scratch mimic_final rco_eeis_one``, ``--epochs 1``, ``--set
train.max_steps=5`` (any dotted student override) and ``--teacher-set`` (teacher overrides when one is trained).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

ROOT = Path(__file__).resolve().parents[1]
VARIANT_NAMES = ("scratch", "mimic_final", "mimic_best", "rco_eeis_one", "rco_eeis_multi", "rco_gss")
RCO_VARIANTS = ("rco_eeis_one", "rco_eeis_multi", "rco_gss")
REFERENCE = "mimic_final"
# (key in the val dict, column title); the first is the compare table's primary metric
METRICS = (
    ("heldout_pairs/accuracy", "held-out pairs acc %"),
    ("megaface/rank1", "rank-1 % (4,069 distractors)"),
    ("megaface/tar_far1e-3", "TAR@FAR=1e-3 % (1:N)"),
    ("heldout_pairs/tar_far1e-3", "TAR@FAR=1e-3 % (pairs)"),
)


# ----------------------------------------------------------------------------------------------------------------
# Data held in memory (decoded once per process; every student run reuses it)
# ----------------------------------------------------------------------------------------------------------------


class MemoryFolder(Dataset):
    """An identity folder decoded once to RGB uint8 at the network size; items ``(normalized CHW, label)``.

    Same items, labels and order as ``FolderDataset(root, TrainTransform(flip=False, size))`` (what the student job
    opens), without decoding JPEGs at every step.
    """

    def __init__(self, root: str | Path, size: int, desc: str = "decode") -> None:
        from tqdm import tqdm

        from facerco.data.datasets import FolderDataset
        from facerco.data.transforms import EvalTransform

        folder = FolderDataset(root, EvalTransform(size, output="uint8"))
        self.root = Path(root)
        self.classes = folder.classes
        self.paths = folder.paths
        self.labels = np.asarray(folder.labels, np.int64)
        self.num_classes = folder.num_classes
        self.images = np.empty((len(folder), size, size, 3), np.uint8)
        for i in tqdm(range(len(folder)), desc=f"{desc} {self.root.name}", unit="img", mininterval=2.0):
            self.images[i] = folder.transform.prepare(folder.read_image(i))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from facerco.data.transforms import normalize

        return normalize(self.images[i]), int(self.labels[i])


class LFWEvaluator:
    """Held-out verification + 1:N identification with every singleton as a distractor, from one embedding pass.

    Args:
        data: the prepared split folder (``eval/``, ``split.json``, ``pairs_heldout.txt``).
        size: network input side.
        fars: FAR targets (the first is the reported one).
        flip: fuse each embedding with its mirror image's (the LFW protocol; doubles the cost, ~1 min per model on
            one busy core, so the study leaves it off by default: every model is scored the same way).
    """

    def __init__(self, data: str | Path, size: int, fars: Sequence[float] = (1e-3, 1e-4), flip: bool = False) -> None:
        from facerco.data.pairs import read_lfw_pairs
        from facerco.utils.io import read_json

        base = Path(data)
        split = read_json(base / "split.json")
        self.fars = tuple(float(f) for f in fars)
        self.flip = flip
        self.images = MemoryFolder(base / "eval", size)
        names = [self.images.classes[int(c)] for c in self.images.labels]
        test, distractors = set(split["test"]), set(split["distractors"])
        self.probe_idx = np.array([i for i, n in enumerate(names) if n in test], np.int64)
        self.distractor_idx = np.array([i for i, n in enumerate(names) if n in distractors], np.int64)
        if not len(self.probe_idx) or not len(self.distractor_idx):
            raise ValueError(f"{base / 'split.json'}: no test or no distractor images under {base / 'eval'}")
        where = {str(p.resolve()): i for i, p in enumerate(self.images.paths)}
        pairs = read_lfw_pairs(base / "pairs_heldout.txt", base / "eval")
        try:
            self.pair_a = np.array([where[str(a.resolve())] for a, _, _ in pairs], np.int64)
            self.pair_b = np.array([where[str(b.resolve())] for _, b, _ in pairs], np.int64)
        except KeyError as exc:
            raise ValueError(f"{base / 'pairs_heldout.txt'}: image {exc} is not under {base / 'eval'}") from None
        self.issame = np.array([s for _, _, s in pairs], bool)
        self.counts = {"eval_images": len(self.images), "probes": len(self.probe_idx),
                       "probe_identities": int(len(np.unique(self.images.labels[self.probe_idx]))),
                       "distractors": len(self.distractor_idx), "heldout_pairs": len(self.issame)}

    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        """Flat metrics of ``model`` (an nn.Module in eval mode, as the engine's validator receives it)."""
        from facerco.eval.features import extract_embeddings
        from facerco.eval.identification import evaluate_identification
        from facerco.eval.verification import evaluate_verification

        emb = extract_embeddings(model, self.images, batch_size=256, device="cpu", flip=self.flip, progress=False)
        ver = evaluate_verification(emb.emb[self.pair_a], emb.emb[self.pair_b], self.issame, 10, fars=self.fars)
        ident = evaluate_identification(emb.emb[self.probe_idx], emb.labels[self.probe_idx],
                                        emb.emb[self.distractor_idx], sizes=[len(self.distractor_idx)], ranks=10,
                                        fars=self.fars, backend="torch", device="cpu", progress=False)
        size = ident["sizes"][-1]
        out = {"heldout_pairs/accuracy": ver["accuracy"], "heldout_pairs/accuracy_std": ver["accuracy_std"],
               "megaface/rank1": size["rank1"], "megaface/rank5": size["cmc"][min(4, len(size["cmc"]) - 1)],
               "megaface/rank10": size["cmc"][-1]}
        for far in self.fars:
            tag = f"{far:.0e}".replace("e-0", "e-")
            out[f"heldout_pairs/tar_far{tag}"] = ver["tar_at_far"][f"{far:g}"]["tar"]
            out[f"megaface/tar_far{tag}"] = size["tar_at_far"][f"{far:g}"]
        return out


# ----------------------------------------------------------------------------------------------------------------
# Preparation: data split, teacher, anchor cache
# ----------------------------------------------------------------------------------------------------------------


def ensure_data(data: Path, lfw: Path) -> None:
    """Prepare the seeded split when ``data/split.json`` is missing (resumable, see facerco.data.lfw_split)."""
    if (data / "split.json").is_file() and (data / "pairs_heldout.txt").is_file():
        return
    if not lfw.is_dir():
        raise FileNotFoundError(f"{data}: no prepared split, and the LFW folder {lfw} to prepare it from is missing")
    from facerco.data.lfw_split import prepare_lfw

    print(f"rco_lfw: preparing the LFW split {lfw} -> {data}", flush=True)
    prepare_lfw(lfw, data)


def teacher_complete(run: Path) -> bool:
    """True when ``run/route.json`` exists and its final point is at the run's last step."""
    from facerco.utils.io import read_json

    path = run / "route.json"
    if not path.is_file():
        return False
    route = read_json(path)
    final = route.get("final")
    points = {p["name"]: p for p in route.get("points", [])}
    return bool(final) and final in points and int(points[final]["step"]) == int(route.get("total_steps", -1))


def ensure_teacher(run: Path, config: Path, data: Path, overrides: Sequence[str]) -> float:
    """Reuse a complete teacher run, else train (or resume) it; returns the seconds spent here."""
    if teacher_complete(run):
        print(f"rco_lfw: reusing the finished teacher {run}", flush=True)
        return 0.0
    from facerco.config import load_config
    from facerco.train.teacher import train_teacher

    cfg = load_config(config, [f"train.output={run}", f"data.train={data / 'train'}",
                               f"data.val_pairs={data / 'pairs_heldout.txt'}", f"data.val_root={data / 'eval'}",
                               "train.resume=true", *overrides])
    print(f"rco_lfw: training the teacher {config} -> {run}", flush=True)
    start = time.time()
    train_teacher(cfg)
    return time.time() - start


def ensure_cache(teacher_run: Path, dataset: Dataset, out: Path, image_size: int) -> Path:
    """Anchor-feature cache of every route point over the training set (resumes; refuses a foreign dataset)."""
    from facerco.route.anchors import route_points
    from facerco.route.cache import build_cache
    from facerco.route.io import load_route

    route = load_route(teacher_run)
    by_name = {p.name: p for p in route.points}

    def loader(name: str) -> Any:
        return lambda: route.load_point(name, verify=True).model

    anchors = {p.name: (loader(p.name), by_name[p.name].sha256) for p in route_points(route)}
    build_cache(out, anchors, dataset, batch_size=256, device="cpu", num_workers=0,
                meta={"teacher_run": str(teacher_run), "dataset": str(getattr(dataset, "root", "")),
                      "image_size": image_size}, progress=True)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Students
# ----------------------------------------------------------------------------------------------------------------


def student_overrides(args: argparse.Namespace, data: Path, cache: Path | None) -> list[str]:
    """Dotted overrides every variant shares: data paths, teacher, budget, cache, no progress bars."""
    out = [f"data.train={data / 'train'}", f"data.val_pairs={data / 'pairs_heldout.txt'}",
           f"data.val_root={data / 'eval'}", f"distill.teacher_run={args.teacher_run}",
           f"data.image_size={args.image_size}", "train.progress=false", "train.resume=true", "train.tensorboard=false"]
    if args.epochs:
        out.append(f"train.epochs={args.epochs}")
    out.append(f"distill.cache={cache}" if cache is not None else "distill.cache=")
    return out + list(args.set)


def make_variants(args: argparse.Namespace, data: Path, cache: Path | None) -> list[Any]:
    """One variant per student config (name = the part after ``lfw_cpu_``), in ``--variants`` order."""
    from facerco.train.compare import file_variants

    configs = [Path(args.config_dir) / f"{args.config_prefix}{name}.yaml" for name in args.variants]
    missing = [str(c) for c in configs if not c.is_file()]
    if missing:
        raise FileNotFoundError(f"student configs not found: {', '.join(missing)}")
    variants = file_variants(configs, student_overrides(args, data, cache))
    for v, name in zip(variants, args.variants, strict=True):
        v.name = name  # file_variants strips the common prefix; with one config it would keep the whole stem
    return variants


def train_group(args: argparse.Namespace, names: Sequence[str]) -> None:
    """Train the runs of ``names`` (all seeds), seed by seed, so an early stop leaves whole seeds behind."""
    from facerco.train.compare import run_compare
    from facerco.train.student import run_distill

    data = Path(args.data)
    train_set = MemoryFolder(data / "train", args.image_size)
    cache = Path(args.out) / "cache" if not args.online else None
    evaluator = LFWEvaluator(data, args.image_size, flip=args.eval_flip)
    variants = [v for v in make_variants(args, data, cache) if v.name in names]
    runner = partial(run_distill, dataset=train_set)
    for seed in args.seeds:
        run_compare(variants, [seed], Path(args.out) / "runs", runner=runner,
                    validator_factory=lambda _cfg: evaluator, metric=METRICS[0][0])


def launch_workers(args: argparse.Namespace, argv: Sequence[str]) -> list[tuple[subprocess.Popen, Any]]:
    """``--jobs`` processes, each training an interleaved share of the variants (logs in OUT/worker<k>.log).

    With one job nothing is launched: the caller trains in-process (:func:`train_group`).
    """
    groups = [g for g in (list(args.variants[k::args.jobs]) for k in range(args.jobs)) if g]
    if len(groups) == 1:
        return []
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    procs = []
    for k, group in enumerate(groups):
        log = open(Path(args.out) / f"worker{k}.log", "a", encoding="utf-8")  # noqa: SIM115 (closed by wait)
        cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--worker-variants", *group]
        print(f"rco_lfw: worker {k}: {', '.join(group)} (log {log.name})", flush=True)
        procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log))
    return procs


def wait_workers(procs: Sequence[tuple[subprocess.Popen, Any]], out: Path) -> None:
    failed = []
    for k, (proc, log) in enumerate(procs):
        if proc.wait() != 0:
            failed.append(k)
        log.close()
    if failed:
        raise RuntimeError(f"rco_lfw: worker(s) {failed} failed; see {out}/worker<k>.log")


def finished_seeds(out: Path, names: Sequence[str], seeds: Sequence[int]) -> list[int]:
    """Seeds whose run finished for every variant (summary.json at its last step)."""
    from facerco.utils.io import read_json

    done = []
    for seed in seeds:
        ok = True
        for name in names:
            path = out / "runs" / name / f"seed{seed}" / "summary.json"
            summary = read_json(path) if path.is_file() else {}
            ok &= bool(summary) and summary.get("step") == summary.get("total_steps")
        if ok:
            done.append(seed)
    return done


# ----------------------------------------------------------------------------------------------------------------
# Table, verdict, plot
# ----------------------------------------------------------------------------------------------------------------


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def summarize(runs: Sequence[dict[str, Any]], names: Sequence[str],
              anchors: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
    """Per variant: mean ± std of every metric, paired differences to mimic_final, seeds where it is ahead.

    ``anchors`` (variant -> anchors followed) overrides the runs' plans, e.g. none for the teacher-free scratch.
    """
    keys = [k for k, _ in METRICS]
    ref = {r["seed"]: r["val"] for r in runs if r["variant"] == REFERENCE}
    rows = []
    for name in names:
        mine = [r for r in runs if r["variant"] == name]
        followed = anchors[name] if anchors and name in anchors else (mine[0]["anchors"] if mine else [])
        row: dict[str, Any] = {"variant": name, "n": len(mine), "anchors": followed,
                               "seconds": mean_std([r["seconds"] for r in mine]),
                               "congruence_final": mean_std([r["congruence"] for r in mine])}
        for k in keys:
            row[k] = mean_std([r["val"].get(k, math.nan) for r in mine])
            if ref and name != REFERENCE:
                diffs = [r["val"][k] - ref[r["seed"]][k] for r in mine if r["seed"] in ref and k in r["val"]]
                row[f"delta/{k}"] = mean_std(diffs)
                row[f"wins/{k}"] = [int(sum(d > 0 for d in diffs)), len(diffs)]
                row[f"test/{k}"] = paired_test(diffs)
        rows.append(row)
    return rows


def _pct(ms: Sequence[float], digits: int = 2) -> str:
    mean, std = ms
    return "–" if math.isnan(mean) else f"{100 * mean:.{digits}f} ± {100 * std:.{digits}f}"


def _signed(ms: Sequence[float]) -> str:
    mean, std = ms
    return "–" if math.isnan(mean) else f"{100 * mean:+.2f} ± {100 * std:.2f}"


def paired_test(diffs: Sequence[float]) -> tuple[float, float]:
    """(t, two-sided p) of the one-sample t-test of paired differences against 0; nan when it is undefined."""
    vals = [float(d) for d in diffs if not math.isnan(float(d))]
    if len(vals) < 2 or statistics.stdev(vals) == 0:
        return math.nan, math.nan
    from scipy import stats

    res = stats.ttest_1samp(vals, 0.0)
    return float(res.statistic), float(res.pvalue)


def verdict(rows: Sequence[dict[str, Any]]) -> list[str]:
    """One sentence per RCO variant: ahead of / behind mimic-final on each metric, with paired evidence.

    "ahead"/"behind" needs a paired t-test p < 0.05 (with 3 seeds that is |t| > 4.3); otherwise "no clear
    difference", whatever the sign of the mean.
    """
    lines = []
    for row in rows:
        if row["variant"] not in RCO_VARIANTS or f"delta/{METRICS[0][0]}" not in row:
            continue
        parts = []
        for key, title in METRICS[:3]:
            mean, _ = row[f"delta/{key}"]
            wins, n = row[f"wins/{key}"]
            if math.isnan(mean):
                continue
            t, pval = row.get(f"test/{key}", (math.nan, math.nan))
            clear = not math.isnan(pval) and pval < 0.05
            word = ("ahead" if mean > 0 else "behind") if clear else "no clear difference"
            ptxt = "" if math.isnan(pval) else f", p={pval:.2f}"
            parts.append(f"{title.split(' %')[0]} {100 * mean:+.2f} ({word}{ptxt}; ahead on {wins}/{n} seeds)")
        lines.append(f"- {row['variant']} vs mimic_final: " + "; ".join(parts))
    return lines


def format_markdown(result: dict[str, Any]) -> str:
    rows, teacher = result["rows"], result["teacher"]
    head = ["student", "anchors", *[t for _, t in METRICS], "Δ acc vs mimic_final", "Δ rank-1 vs mimic_final",
            "congruence to final", "s / run"]
    lines = [f"Seeds {result['seeds']} · student {result['student']} · {result['epochs']} epochs at "
             f"{result['image_size']}x{result['image_size']} · teacher {result['teacher_run']} "
             f"(final {teacher.get('final', '?')}) · {result['counts']['probes']} probes of "
             f"{result['counts']['probe_identities']} identities, {result['counts']['distractors']} distractors, "
             f"{result['counts']['heldout_pairs']} held-out pairs.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["variant"], " → ".join(a.replace("epoch_", "ep") for a in row["anchors"]) or "–"]
        cells += [_pct(row[k]) for k, _ in METRICS]
        for k in (METRICS[0][0], METRICS[1][0]):
            d = row.get(f"delta/{k}")
            cells.append(_signed(d) if d else "–")
        cells += [f"{row['congruence_final'][0]:.4f}", f"{row['seconds'][0]:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    for point in teacher.get("points", []):
        cells = [f"teacher {point['name']}" + (" (final)" if point["name"] == teacher.get("final") else ""), "–"]
        cells += [("–" if k not in point["val"] else f"{100 * point['val'][k]:.2f}") for k, _ in METRICS]
        cells += ["", "", "", ""]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Paired Δ = student − mimic_final of the same seed (mean ± std over seeds), in points.",
              "Verdict (ahead/behind = paired t-test over seeds, two-sided p < 0.05):", *verdict(rows)]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> Path:
    """Bars (mean ± std) with per-seed dots per metric; dashed line: the final teacher."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from facerco.utils.io import atomic_path

    rows = result["rows"]
    final = next((p for p in result["teacher"].get("points", []) if p["name"] == result["teacher"].get("final")), None)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    x = np.arange(len(rows))
    for ax, (key, title) in zip(axes, METRICS[:3], strict=True):
        means = [100 * r[key][0] for r in rows]
        stds = [100 * r[key][1] for r in rows]
        colors = ["0.6" if r["variant"] in ("scratch",) else ("C0" if r["variant"] in RCO_VARIANTS else "C1")
                  for r in rows]
        ax.bar(x, means, yerr=stds, color=colors, capsize=3, alpha=0.8)
        for i, r in enumerate(rows):
            vals = [100 * run["val"][key] for run in result["runs"] if run["variant"] == r["variant"]
                    and key in run["val"]]
            ax.scatter([i] * len(vals), vals, color="k", s=8, zorder=3)
        if final is not None and key in final["val"]:
            ax.axhline(100 * final["val"][key], ls="--", color="C3", label="final teacher")
            ax.legend(loc="lower right", fontsize=7)
        finite = [m - s for m, s in zip(means, stds, strict=True) if not math.isnan(m)]
        if finite:
            top = max([m + s for m, s in zip(means, stds, strict=True) if not math.isnan(m)]
                      + ([100 * final["val"][key]] if final is not None and key in final["val"] else []))
            ax.set_ylim(max(0.0, min(finite) - 3), top + 2)
        ax.set_xticks(x, [r["variant"] for r in rows], rotation=35, ha="right", fontsize=8)
        ax.set_title(title, fontsize=9)
    fig.suptitle(f"LFW RCO study: {result['student']}, {result['epochs']} epochs, seeds {result['seeds']}",
                 fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def evaluate_route(teacher_run: Path, evaluator: LFWEvaluator, cache_file: Path, which: str) -> dict[str, Any]:
    """Metrics of the teacher's route points (``which``: all / final / none), cached in ``cache_file``."""
    from facerco.route.anchors import route_points
    from facerco.route.io import load_route
    from facerco.utils.io import read_json, write_json

    route = load_route(teacher_run)
    points = route_points(route)
    final = points[-1].name
    names = [] if which == "none" else ([final] if which == "final" else [p.name for p in points])
    done = read_json(cache_file) if cache_file.is_file() else {}
    out = []
    for name in names:
        sha = route.point(name).sha256
        if done.get(name, {}).get("sha256") != sha:
            start = time.time()
            model = route.load_point(name, verify=True).model.eval()
            with torch.no_grad():
                done[name] = {"sha256": sha, "val": evaluator(model), "seconds": time.time() - start}
            write_json(cache_file, done)
        out.append({"name": name, "val": done[name]["val"]})
    return {"final": final, "points": out}


def aggregate(args: argparse.Namespace, evaluator: LFWEvaluator | None = None) -> dict[str, Any]:
    """Table over the seeds finished by every variant (run_compare reuses the runs and adds the congruence)."""
    from facerco.train.compare import run_compare
    from facerco.utils.io import write_json

    out = Path(args.out)
    seeds = finished_seeds(out, args.variants, args.seeds)
    if not seeds:
        raise RuntimeError(f"{out}/runs: no seed has finished for every variant {list(args.variants)}")
    data = Path(args.data)
    cache = out / "cache" if not args.online else None
    variants = make_variants(args, data, cache)

    def refuse(cfg: Any, **_: Any) -> None:
        raise RuntimeError(f"{cfg.train.output}: unfinished run reached the aggregation step")

    table = run_compare(variants, seeds, out / "runs", runner=refuse, validator_factory=lambda _cfg: None,
                        metric=METRICS[0][0])
    runs = [dict(r) for r in table["runs"]]
    evaluator = evaluator or LFWEvaluator(data, args.image_size, flip=args.eval_flip)
    teacher = evaluate_route(Path(args.teacher_run), evaluator, out / "teacher_eval.json", args.teacher_eval)
    cfg = variants[0].cfg
    result = {
        "benchmark": "rco_lfw", "seeds": seeds, "seeds_requested": list(args.seeds),
        "variants": list(args.variants), "epochs": cfg.train.epochs, "image_size": cfg.data.image_size,
        "student": f"{cfg.model.name} (width {cfg.model.width_mult}, {cfg.model.embedding_size}-d)",
        "batch_size": cfg.train.batch_size, "teacher_run": str(args.teacher_run), "counts": evaluator.counts,
        "anchor_targets": "online teacher" if args.online else "anchor-feature cache",
        "rows": summarize(runs, args.variants, {r["variant"]: list(r["anchors"]) for r in table["rows"]}),
        "runs": runs, "teacher": teacher,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "jobs": args.jobs, "threads_per_job": args.threads},
        "command": "python benchmarks/rco_lfw.py " + " ".join(getattr(args, "argv", [])),
    }
    write_json(out / "rco_lfw.json", result)
    (out / "rco_lfw.md").write_text(format_markdown(result), encoding="utf-8")
    plot(result, out / "rco_lfw.png")
    return result


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="runs/lfw_cpu_data", help="prepared split (facerco.data.lfw_split)")
    parser.add_argument("--lfw", default=os.environ.get("FACERCO_REAL_DATA", str(ROOT.parent / "shared" / "data"))
                        + "/lfw_deepfunneled", help="LFW deep-funneled folder (to prepare --data when missing)")
    parser.add_argument("--teacher-run", default="runs/teacher_lfw_cpu", help="teacher run dir (reused if complete)")
    parser.add_argument("--teacher-config", default="configs/teacher/lfw_cpu.yaml")
    parser.add_argument("--teacher-set", nargs="*", default=[], help="dotted teacher overrides (when trained here)")
    parser.add_argument("--config-dir", default="configs/student")
    parser.add_argument("--config-prefix", default="lfw_cpu_", help="student configs: DIR/PREFIX<variant>.yaml")
    parser.add_argument("--variants", nargs="+", default=list(VARIANT_NAMES), choices=VARIANT_NAMES)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=float, default=4.0, help="student budget in epochs (0: the configs')")
    parser.add_argument("--image-size", type=int, default=48, help="network input side (the teacher's)")
    parser.add_argument("--set", nargs="*", default=[], help="extra dotted student overrides, e.g. train.max_steps=5")
    parser.add_argument("--online", action="store_true", help="run anchors online instead of the feature cache")
    parser.add_argument("--jobs", type=int, default=1, help="training processes (variants split between them)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--teacher-eval", choices=["all", "final", "none"], default="all",
                        help="which teacher route points get the student metrics too")
    parser.add_argument("--eval-flip", action="store_true", help="flip-fused embeddings in evaluation (2x cost)")
    parser.add_argument("--aggregate-only", action="store_true", help="only build the table from finished runs")
    parser.add_argument("--out", default="bench_out/rco_lfw")
    parser.add_argument("--worker-variants", nargs="+", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.threads < 1:
        parser.error("--jobs and --threads must be >= 1")
    if REFERENCE not in args.variants:
        parser.error(f"--variants must include {REFERENCE} (the reference of the paired differences)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    args.argv = [a for a in argv]
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.worker_variants:
        train_group(args, args.worker_variants)
        return 0
    start = time.time()
    data = Path(args.data)
    if not args.aggregate_only:
        ensure_data(data, Path(args.lfw))
        teacher_s = ensure_teacher(Path(args.teacher_run), Path(args.teacher_config), data, args.teacher_set)
        if not args.online:
            ensure_cache(Path(args.teacher_run), MemoryFolder(data / "train", args.image_size), out / "cache",
                         args.image_size)
        procs = launch_workers(args, argv)
        if procs:  # the teacher's route is evaluated while the workers train
            evaluator = LFWEvaluator(data, args.image_size, flip=args.eval_flip)
            evaluate_route(Path(args.teacher_run), evaluator, out / "teacher_eval.json", args.teacher_eval)
            wait_workers(procs, out)
        else:
            train_group(args, args.variants)
        print(f"rco_lfw: students done after {time.time() - start:.0f} s (teacher {teacher_s:.0f} s)", flush=True)
    result = aggregate(args)
    print((out / "rco_lfw.md").read_text(encoding="utf-8"), end="")
    print(f"rco_lfw: {time.time() - start:.0f} s; written {out}/rco_lfw.json, .md, .png", flush=True)
    return 0 if result["rows"] else 1


if __name__ == "__main__":
    sys.exit(main())
