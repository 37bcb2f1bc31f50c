"""Real-face RCO study on LFW: do route strategies beat mimicking the final teacher?

The pre-registered protocol (issue 11; ``benchmarks/README.md``, "RCO study protocol", written before the runs):

* **Data**: the seeded LFW split of :mod:`facerco.data.lfw_split` (``--data``, format version 2): ``train/`` (400
  identities), ``val/`` (170 validation people + 600 single-image validation distractors, ``pairs_val.txt``) and
  ``eval/`` (the other people with ≥ 2 images + every other singleton, ``pairs_heldout.txt``). Every choice (the
  teacher's route metrics, ``early``'s point, GSS, the pilot gate) reads validation or training data; the test part
  is read once per finished counted model (and the final teacher, once counted seeds ran): the pilot seed's runs and
  a study stopped by the gate compute no test number (issue 22, item 2).
* **Teacher**: ``--teacher-run`` (``runs/teacher_lfw_study``), reused when its route is complete, else trained from
  ``--teacher-config`` (``configs/teacher/lfw_cpu_study.yaml``: iresnet_small at 32 px, 3.06M parameters, 16 epochs,
  lr ×0.1 after epochs 8 and 12, a route point per epoch). A teacher that validated on the test pairs is refused.
* **Anchor cache**: every route point's embedding of every training image (plain + flipped), built once with
  :func:`facerco.route.cache_writer.build_cache` (lockstep reads every point); ``--online`` runs the teacher instead.
* **Students**: ``configs/student/_lfw_study_base.yaml`` (mobilefacenet width 0.25, 64-d, 77k parameters, ~40×
  smaller; the teacher's schedule: 16 epochs, lr drops after 8 and 12; mimic l2 ×10 + ArcFace) through
  :func:`facerco.distill.compare.builtin_variants` and :func:`~facerco.distill.compare.run_compare` (the library's loop;
  one run per variant and seed under ``OUT/runs/<variant>/seed<k>``, finished runs reused). Variants: ``scratch``,
  ``mimic_final`` (the reference), the control ``early`` (and ``reverse`` when given) and the primary family
  ``rco_eeis_multi``, ``lockstep``, ``phase`` (any other route strategy of ``compare`` given in ``--variants`` joins
  it). A multi-stage variant restarts the lr schedule at every anchor; its warm-up and lr drops are scaled to the
  stage (each stage runs the teacher's schedule in miniature) instead of lying past the stage's end.
* **Pilot gate** (seed 0, validation only): teacher − scratch ≥ 4 points and mimic_final − scratch ≥ +0.5 point of
  validation 1:N rank-1, else the study stops before the counted seeds (``--ignore-gate`` overrides) and the table
  says so. Seed 0 is not counted.
* **Metrics** of every run, once at the end, from one embedding pass per split (no flip fusion unless
  ``--eval-flip``): validation 1:N rank-1 (validation people as probes/gallery, validation distractors) and pairs
  accuracy (``pairs_val.txt``); test (the **primary endpoint**) 1:N rank-1 with the test people as probes/gallery and
  all test singletons as distractors (:func:`facerco.eval.identification.evaluate_identification`), held-out pairs
  accuracy and 1:N TAR@FAR=1e-3; the congruence to the final teacher (``compare``'s relational divergence).
* **Analysis** (:mod:`_study`): per variant mean ± std over the counted seeds; test rank-1 paired by seed against
  mimic_final: Δ with its 95 % CI, wins, one-sided paired t-test with Holm over the primary family, Wilcoxon as a
  check; success: adjusted p < 0.05, mean Δ ≥ +0.2 point, ahead on ≥ 80 % of seeds, ahead of every control.

Writes ``OUT/rco_lfw.json`` (every run with every metric, so anyone can recompute), ``OUT/rco_lfw.md`` and
``OUT/rco_lfw.png``.

    python benchmarks/rco_lfw.py --jobs 2 --threads 1 --out bench_out/rco_lfw     # pilot + 5 counted seeds
    python benchmarks/rco_lfw.py --aggregate-only --out bench_out/rco_lfw        # table from the finished runs

Smaller runs: ``--seeds 0``, ``--variants scratch mimic_final phase``, ``--epochs 2``, ``--set train.max_steps=20``
(any dotted student override) and ``--teacher-set`` (teacher overrides when one is trained here).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _study  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# the pre-registered roles (benchmarks/README.md, "RCO study protocol")
REFERENCE = "mimic_final"
CONTROLS = ("early", "reverse")
ROUTE_STRATEGIES = ("rco_eeis_one", "rco_eeis_multi", "rco_gss", "lockstep", "phase", "ensemble", "rco_gss_online")
DEFAULT_VARIANTS = ("scratch", REFERENCE, "early", "rco_eeis_multi", "lockstep", "phase")
ENDPOINT = "rank1"  # of the test split
MIN_GAIN = 0.002  # +0.2 point of rank-1
SPLITS = ("val", "test")
# (metric key, column title) of each split, in table order
METRICS = (("rank1", "rank-1"), ("pairs_acc", "pairs acc"), ("tar_far1e-3", "TAR@FAR=1e-3 (1:N)"))


# ----------------------------------------------------------------------------------------------------------------
# Data held in memory (decoded once per process; every student run reuses it)
# ----------------------------------------------------------------------------------------------------------------


class MemoryFolder(Dataset):
    """An identity folder decoded once to RGB uint8 at the network size; items ``(normalized CHW, label)``.

    Same items, labels and order as ``FolderDataset(root, ...)`` at that size (what the student job would open),
    without decoding JPEGs at every step; ``get_batch`` serves the engine's batch path in one indexing operation.
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

    def get_batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalized (B, 3, H, W) images and labels of ``indices`` (same values as ``__getitem__``)."""
        from facerco.data.transforms import normalize_batch

        idx = indices.cpu().numpy()
        images = normalize_batch(torch.from_numpy(self.images[idx])).contiguous()
        return images, torch.from_numpy(self.labels[idx])


class SplitEvaluator:
    """Pair verification + 1:N identification of one split part, from one embedding pass over its folder.

    Args:
        folder: the part's image folder (``val/`` or ``eval/``), one sub-folder per person.
        pairs_file: its pairs (LFW format) with images under ``folder``.
        probes: people whose images are probes/gallery (≥ 2 images each).
        distractors: single-image people used as distractors.
        size: network input side.
        fars: FAR targets (the first is the reported one).
        flip: fuse each embedding with its mirror image's (doubles the cost; off by default, every model is scored
            the same way).
    """

    def __init__(self, folder: str | Path, pairs_file: str | Path, probes: Sequence[str],
                 distractors: Sequence[str], size: int, fars: Sequence[float] = (1e-3, 1e-4),
                 flip: bool = False) -> None:
        from facerco.data.pairs import read_lfw_pairs

        base = Path(folder)
        self.fars = tuple(float(f) for f in fars)
        self.flip = flip
        self.images = MemoryFolder(base, size)
        names = [self.images.classes[int(c)] for c in self.images.labels]
        probe_set, distractor_set = set(probes), set(distractors)
        if probe_set & distractor_set:
            raise ValueError(f"{base}: {len(probe_set & distractor_set)} people are both probes and distractors")
        self.probe_idx = np.array([i for i, n in enumerate(names) if n in probe_set], np.int64)
        self.distractor_idx = np.array([i for i, n in enumerate(names) if n in distractor_set], np.int64)
        if not len(self.probe_idx) or not len(self.distractor_idx):
            raise ValueError(f"{base}: none of the listed probe or distractor people have images here")
        where = {str(p.resolve()): i for i, p in enumerate(self.images.paths)}
        pairs = read_lfw_pairs(pairs_file, base)
        try:
            self.pair_a = np.array([where[str(a.resolve())] for a, _, _ in pairs], np.int64)
            self.pair_b = np.array([where[str(b.resolve())] for _, b, _ in pairs], np.int64)
        except KeyError as exc:
            raise ValueError(f"{pairs_file}: image {exc} is not under {base}") from None
        self.issame = np.array([s for _, _, s in pairs], bool)
        self.counts = {"images": len(self.images), "probes": len(self.probe_idx),
                       "probe_identities": int(len(np.unique(self.images.labels[self.probe_idx]))),
                       "distractors": len(self.distractor_idx), "pairs": len(self.issame)}

    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        """Flat metrics of ``model`` (in eval mode, as the engine's validator receives it)."""
        from facerco.eval.features import extract_embeddings
        from facerco.eval.identification import evaluate_identification
        from facerco.eval.verification import evaluate_verification

        emb = extract_embeddings(model, self.images, batch_size=256, device="cpu", flip=self.flip, progress=False)
        ver = evaluate_verification(emb.emb[self.pair_a], emb.emb[self.pair_b], self.issame, 10, fars=self.fars)
        ident = evaluate_identification(emb.emb[self.probe_idx], emb.labels[self.probe_idx],
                                        emb.emb[self.distractor_idx], sizes=[len(self.distractor_idx)], ranks=10,
                                        fars=self.fars, backend="torch", device="cpu", progress=False)
        size = ident["sizes"][-1]
        out = {"rank1": size["rank1"], "rank5": size["cmc"][min(4, len(size["cmc"]) - 1)],
               "rank10": size["cmc"][-1], "pairs_acc": ver["accuracy"], "pairs_acc_std": ver["accuracy_std"]}
        for far in self.fars:
            tag = f"{far:.0e}".replace("e-0", "e-")
            out[f"tar_far{tag}"] = size["tar_at_far"][f"{far:g}"]
            out[f"pairs_tar_far{tag}"] = ver["tar_at_far"][f"{far:g}"]["tar"]
        return {k: float(v) for k, v in out.items()}


def open_evaluators(data: Path, size: int, flip: bool) -> dict[str, SplitEvaluator]:
    """The validation and test evaluators of a prepared split (format version 2, see facerco.data.lfw_split)."""
    from facerco.data.lfw_split import read_split

    split = read_split(data)
    return {"val": SplitEvaluator(data / "val", data / "pairs_val.txt", split["val"], split["val_distractors"],
                                  size, flip=flip),
            "test": SplitEvaluator(data / "eval", data / "pairs_heldout.txt", split["test"],
                                   split["test_distractors"], size, flip=flip)}


# ----------------------------------------------------------------------------------------------------------------
# Preparation: data split, teacher, anchor cache
# ----------------------------------------------------------------------------------------------------------------


def ensure_data(data: Path, lfw: Path) -> None:
    """Prepare the seeded split when ``data`` has none; refuse a folder prepared before the validation split."""
    from facerco.data.lfw_split import is_prepared, prepare_lfw, read_split

    if is_prepared(data):
        return
    if (data / "split.json").is_file():
        read_split(data)  # raises with the re-run hint
    if not lfw.is_dir():
        raise FileNotFoundError(f"{data}: no prepared split, and the LFW folder {lfw} to prepare it from is missing")
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


def check_teacher_validation(run: Path, data: Path) -> None:
    """Refuse a teacher whose route metrics were measured on the reported test pairs (issue 11, item 1)."""
    from facerco.config import load_config
    from facerco.distill.compare import check_validation_not_test

    config = run / "config.yaml"
    if not config.is_file():
        raise FileNotFoundError(f"{config}: missing; the study needs to know what the teacher validated on")
    cfg = load_config(config)
    check_validation_not_test(f"teacher {run}", replace(cfg, eval=replace(
        cfg.eval, test_pairs=str(data / "pairs_heldout.txt"))))


def ensure_teacher(run: Path, config: Path, data: Path, overrides: Sequence[str]) -> float:
    """Reuse a complete teacher run, else train (or resume) it; returns the seconds spent here."""
    if teacher_complete(run):
        check_teacher_validation(run, data)
        print(f"rco_lfw: reusing the finished teacher {run}", flush=True)
        return 0.0
    from facerco.config import load_config
    from facerco.distill.compare import check_validation_not_test
    from facerco.train.teacher import train_teacher

    cfg = load_config(config, [f"train.output={run}", f"data.train={data / 'train'}",
                               f"data.val_pairs={data / 'pairs_val.txt'}", f"data.val_root={data / 'val'}",
                               f"eval.test_pairs={data / 'pairs_heldout.txt'}", "train.resume=true", *overrides])
    check_validation_not_test("teacher", cfg)
    print(f"rco_lfw: training the teacher {config} -> {run}", flush=True)
    start = time.time()
    train_teacher(cfg)
    return time.time() - start


def ensure_cache(teacher_run: Path, dataset: Dataset, out: Path, image_size: int) -> Path:
    """Anchor-feature cache of every route point over the training set (resumes; refuses a foreign dataset)."""
    from facerco.route.anchors import route_points
    from facerco.route.cache_writer import build_cache
    from facerco.route.io import load_route

    route = load_route(teacher_run)

    def loader(name: str) -> Any:
        return lambda: route.load_point(name, verify=True).model

    anchors = {p.name: (loader(p.name), route.point(p.name).sha256) for p in route_points(route)}
    build_cache(out, anchors, dataset, batch_size=256, device="cpu", num_workers=0,
                meta={"teacher_run": str(teacher_run), "dataset": str(getattr(dataset, "root", "")),
                      "image_size": image_size}, progress=True)
    return out


def evaluate_route(args: argparse.Namespace, evaluators: dict[str, SplitEvaluator], with_test: bool = True
                   ) -> dict[str, Any]:
    """The teacher's route points on validation (``--teacher-eval``: all / final), the final one on test too when
    ``with_test`` (only once counted seeds ran).

    Cached in ``OUT/teacher_eval.json`` by point sha256 and evaluation settings.
    """
    from facerco.route.anchors import route_points
    from facerco.route.io import load_route
    from facerco.utils.io import read_json, write_json

    route = load_route(args.teacher_run)
    points = route_points(route)
    final = points[-1].name
    cache_file = Path(args.out) / "teacher_eval.json"
    done = read_json(cache_file) if cache_file.is_file() else {}
    setting = eval_setting(args)
    out = []
    for p in points:
        if args.teacher_eval == "final" and p.name != final:
            continue
        sha = route.point(p.name).sha256
        entry = done.get(p.name, {})
        need = ["val"] + (["test"] if p.name == final and with_test else [])
        if entry.get("sha256") != sha or entry.get("setting") != setting or any(s not in entry for s in need):
            model = route.load_point(p.name, verify=True).model.eval()
            entry = {"sha256": sha, "setting": setting}
            with torch.no_grad():
                entry.update({s: evaluators[s](model) for s in need})
            entry["params"] = int(sum(t.numel() for t in model.parameters()))
            done[p.name] = entry
            write_json(cache_file, done)
        out.append({"name": p.name, "epoch": p.epoch, "lr": p.lr, "route_val": p.val, "val": entry["val"],
                    **({"test": entry["test"]} if "test" in need else {})})
    return {"final": final, "points": out, "params": done[final]["params"], "arch": route.info.get("arch", "?")}


# ----------------------------------------------------------------------------------------------------------------
# Students
# ----------------------------------------------------------------------------------------------------------------


def student_overrides(args: argparse.Namespace) -> list[str]:
    """Dotted overrides every variant shares: data paths, teacher, budget, cache, no progress bars."""
    data = Path(args.data)
    out = [f"data.train={data / 'train'}", f"data.val_pairs={data / 'pairs_val.txt'}", f"data.val_root={data / 'val'}",
           f"eval.test_pairs={data / 'pairs_heldout.txt'}", f"distill.teacher_run={args.teacher_run}",
           f"data.image_size={args.image_size}", "train.progress=false", "train.resume=true",
           "train.tensorboard=false", "distill.cache=" + ("" if args.online else str(Path(args.out) / "cache"))]
    if args.epochs:
        out.append(f"train.epochs={args.epochs}")
    return out + list(args.set)


def stage_scaled_schedule(cfg: Any) -> Any:
    """A multi-stage student's warm-up scaled to one stage (warm-up × the stage's share).

    Why: each restarting stage runs the schedule over its own length. The library scales a step schedule's lr drops
    to the stage (:func:`facerco.train.schedule.stage_schedule_factory`: drops at epochs 8 and 12 of 16 fall at 2 and
    3 of a 4-epoch stage); the study also shortens each stage's warm-up in the same proportion, so the four stages
    together warm up as long as the one-stage students. The scale is ``final_share``, exact when every stage has the
    same length (``final_share = 1 / distill.eeis.num_anchors``).
    """
    d, s = cfg.distill, cfg.schedule
    if d.schedule != "multi_stage" or not d.restart_lr or s.decay != "step":
        return cfg
    share, count = d.final_share, d.eeis.num_anchors
    if count > 1 and not math.isclose((1 - share) / (count - 1), share, rel_tol=1e-6):
        raise ValueError(f"multi-stage students here need equal stages (distill.final_share = "
                         f"1/distill.eeis.num_anchors), got final_share={share}, num_anchors={count}")
    return replace(cfg, schedule=replace(s, warmup_epochs=s.warmup_epochs * share))


def make_variants(args: argparse.Namespace) -> list[Any]:
    """The ``--variants`` from the base student config (``compare``'s built-in distill overrides)."""
    from facerco.distill.compare import builtin_variants

    variants = builtin_variants(args.config, student_overrides(args), args.variants)
    for v in variants:
        v.cfg = stage_scaled_schedule(v.cfg)
    return variants


def teacher_free(cfg: Any) -> bool:
    d = cfg.distill
    return d.mimic_weight == 0 and d.kd_weight == 0 and d.hint_weight == 0


def run_finished(run_dir: Path, cfg: Any) -> bool:
    """Whether the run stopped where its config says (``train.max_steps`` counts) and saved its student."""
    from facerco.utils.io import read_json

    path = run_dir / "summary.json"
    if not path.is_file() or not (run_dir / "student.safetensors").is_file():
        return False
    summary = read_json(path)
    stop = int(summary.get("total_steps", -1))
    if cfg.train.max_steps > 0:
        stop = min(stop, cfg.train.max_steps)
    return int(summary.get("step", -2)) >= stop


def test_metrics(run_dir: Path, evaluator: SplitEvaluator, setting: dict[str, Any]) -> dict[str, float]:
    """The student's test metrics, computed once (``run_dir/test_metrics.json``, keyed by the student's sha256)."""
    from facerco.models.checkpoint import load_model
    from facerco.utils.io import read_json, sha256_file, write_json

    path = run_dir / "test_metrics.json"
    sha = sha256_file(run_dir / "student.safetensors")
    if path.is_file():
        saved = read_json(path)
        if saved.get("student_sha256") == sha and saved.get("setting") == setting:
            return saved["metrics"]
    start = time.time()
    with torch.no_grad():
        metrics = evaluator(load_model(run_dir / "student.safetensors").model.eval())
    write_json(path, {"student_sha256": sha, "setting": setting, "metrics": metrics, "seconds": time.time() - start})
    return metrics


def train_group(args: argparse.Namespace, names: Sequence[str], seeds: Sequence[int]) -> None:
    """Train the runs of ``names``, seed by seed (a stopped study leaves whole seeds), and their test metrics."""
    from facerco.distill.compare import run_compare
    from facerco.distill.job import run_distill
    from facerco.utils.io import write_json

    train_set = MemoryFolder(Path(args.data) / "train", args.image_size)
    evaluators = open_evaluators(Path(args.data), args.image_size, args.eval_flip)
    variants = [v for v in make_variants(args) if v.name in set(names)]
    runner = partial(run_distill, dataset=train_set)
    code = _study.code_stamp()  # the code this process trains with
    for seed in seeds:
        done = {v.name for v in variants if run_finished(Path(args.out) / "runs" / v.name / f"seed{seed}", v.cfg)}
        table = run_compare(variants, [seed], Path(args.out) / "runs", runner=runner,
                            validator_factory=lambda _cfg: evaluators["val"], metric=ENDPOINT)
        for rec in table["runs"]:
            if rec["variant"] not in done:  # trained here (a reused run keeps the stamp it was trained with)
                write_json(Path(rec["run_dir"]) / "code.json", code)
            if seed != args.pilot_seed:  # test is read by counted runs only
                test_metrics(Path(rec["run_dir"]), evaluators["test"], eval_setting(args))


def eval_setting(args: argparse.Namespace) -> dict[str, Any]:
    return {"image_size": args.image_size, "flip": args.eval_flip, "data": str(Path(args.data).resolve())}


def train_seeds(args: argparse.Namespace, argv: Sequence[str], seeds: Sequence[int]) -> None:
    """``--jobs`` worker processes (variants split between them), or in-process with one job."""
    if not seeds:
        return
    groups = _study.split_groups(args.variants, args.jobs)
    if len(groups) > 1:
        print(f"rco_lfw: seeds {list(seeds)} in {len(groups)} workers (logs {args.out}/worker<k>.log)", flush=True)
        _study.run_workers(Path(__file__).resolve(), [*argv, "--worker-seeds", *map(str, seeds)], groups,
                           Path(args.out), args.threads)
    else:
        train_group(args, args.variants, seeds)


def finished_seeds(args: argparse.Namespace, variants: Sequence[Any], seeds: Sequence[int]) -> list[int]:
    """Seeds whose run finished for every variant."""
    runs = Path(args.out) / "runs"
    return [s for s in seeds if all(run_finished(runs / v.name / f"seed{s}", v.cfg) for v in variants)]


def collect(args: argparse.Namespace, variants: Sequence[Any], seeds: Sequence[int],
            evaluators: dict[str, SplitEvaluator]) -> list[dict[str, Any]]:
    """One record per finished (variant, seed): anchors, steps, seconds, val and test metrics (None for the pilot
    seed), congruence."""
    from facerco.distill.compare import run_compare
    from facerco.utils.io import read_json

    if not seeds:
        return []
    by_name = {v.name: v for v in variants}

    def reuse(cfg: Any, **_: Any) -> None:  # run_compare calls it for runs stopped at train.max_steps
        if not run_finished(Path(cfg.train.output), cfg):
            raise RuntimeError(f"{cfg.train.output}: unfinished run reached the table")

    table = run_compare(variants, seeds, Path(args.out) / "runs", runner=reuse, validator_factory=lambda _cfg: None,
                        metric=ENDPOINT)
    runs = []
    for rec in table["runs"]:
        run_dir = Path(rec["run_dir"])
        summary = read_json(run_dir / "summary.json")
        free = teacher_free(by_name[rec["variant"]].cfg)
        code = run_dir / "code.json"
        runs.append({"variant": rec["variant"], "seed": rec["seed"], "anchors": [] if free else rec["anchors"],
                     "steps": summary["step"], "total_steps": summary["total_steps"], "seconds": rec["seconds"],
                     "congruence_final": rec["congruence"], "val": rec["val"],
                     "test": (None if rec["seed"] == args.pilot_seed
                              else test_metrics(run_dir, evaluators["test"], eval_setting(args))),
                     "code": read_json(code) if code.is_file() else None})
    return runs


# ----------------------------------------------------------------------------------------------------------------
# Gate, analysis, table and plot
# ----------------------------------------------------------------------------------------------------------------


def role(variant: str) -> str:
    if variant == REFERENCE:
        return "reference"
    if variant in CONTROLS:
        return "control"
    return "primary" if variant in ROUTE_STRATEGIES else "baseline"


def pilot_gate(runs: Sequence[dict[str, Any]], teacher_val: dict[str, float], pilot_seed: int, need_gap: float,
               need_mimic: float) -> dict[str, Any]:
    """The pre-registered gate on the pilot seed: validation rank-1 only (pairs accuracy recorded beside it)."""
    pilot = {r["variant"]: r["val"] for r in runs if r["seed"] == pilot_seed}
    scratch, mimic = pilot.get("scratch", {}), pilot.get(REFERENCE, {})
    gap = teacher_val.get(ENDPOINT, math.nan) - scratch.get(ENDPOINT, math.nan)
    gain = mimic.get(ENDPOINT, math.nan) - scratch.get(ENDPOINT, math.nan)
    passed = gap >= need_gap / 100 and gain >= need_mimic / 100
    return {"seed": pilot_seed, "metric": f"validation {ENDPOINT}",
            "teacher_val": teacher_val.get(ENDPOINT), "scratch_val": scratch.get(ENDPOINT),
            "mimic_final_val": mimic.get(ENDPOINT), "teacher_minus_scratch": gap, "mimic_minus_scratch": gain,
            "pairs_acc": {"teacher": teacher_val.get("pairs_acc"), "scratch": scratch.get("pairs_acc"),
                          REFERENCE: mimic.get("pairs_acc")},
            "required": {"teacher_minus_scratch": need_gap / 100, "mimic_minus_scratch": need_mimic / 100},
            "passed": bool(passed)}


def _row(variant: str, runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± std of every reported number of one variant's runs."""
    row: dict[str, Any] = {"variant": variant, "role": role(variant), "n": len(runs),
                           "anchors": runs[0]["anchors"] if runs else [],
                           "congruence_final": _study.mean_std([r["congruence_final"] for r in runs]),
                           "seconds": _study.mean_std([r["seconds"] for r in runs])}
    for split in SPLITS:
        unread = any(r[split] is None for r in runs)  # the pilot's test
        for key, _ in METRICS:
            row[f"{split}/{key}"] = None if unread else _study.mean_std([r[split].get(key, math.nan) for r in runs])
    return row


def summarize(runs: Sequence[dict[str, Any]], variants: Sequence[str], counted: Sequence[int],
              split: str = "test") -> dict[str, Any]:
    """Rows (mean ± std per variant over ``counted``) and the pre-registered analysis of ``split`` rank-1 (test;
    ``val`` for a pilot-only table, which holds no test number)."""
    mine = [r for r in runs if r["seed"] in set(counted)]
    rows = [_row(v, [r for r in mine if r["variant"] == v]) for v in variants]
    values = {v: {r["seed"]: r[split][ENDPOINT] for r in mine if r["variant"] == v} for v in variants}
    analysis = _study.analyse(values, REFERENCE, [v for v in variants if role(v) == "primary"],
                              [v for v in variants if role(v) == "control"], min_gain=MIN_GAIN)
    return {"endpoint": f"{split} {ENDPOINT}", "rows": rows, "analysis": analysis}


def _anchors_text(anchors: Sequence[str]) -> str:
    short = [re.sub(r"epoch_0*(\d)", r"ep\1", a) for a in anchors]
    if len(short) > 6:
        short = [*short[:2], "…", *short[-2:]]
    return " → ".join(short) or "–"


def _pct(ms: Sequence[float] | None) -> str:
    return "–" if ms is None or math.isnan(ms[0]) else f"{100 * ms[0]:.2f} ± {100 * ms[1]:.2f}"


def _route_lines(route: dict[str, Any]) -> list[str]:
    lines = ["| teacher point | lr | val rank-1 % | val pairs acc % | route's own val |", "|---|---|---|---|---|"]
    for p in route["points"]:
        own = ", ".join(f"{k} {100 * v:.2f}" for k, v in p["route_val"].items() if k.endswith("accuracy")) or "–"
        lines.append(f"| {p['name']}{' (final)' if p['name'] == route['final'] else ''} | {p['lr']:.4g} | "
                     f"{100 * p['val']['rank1']:.2f} | {100 * p['val']['pairs_acc']:.2f} | {own} |")
    return lines


def format_markdown(result: dict[str, Any]) -> str:
    route, gate, summary, counts = result["route"], result["gate"], result["summary"], result["counts"]
    comps = summary["analysis"]["comparisons"]
    final_test = next(p.get("test") for p in route["points"] if p["name"] == route["final"])
    teacher_test = "not read" if final_test is None else f"{100 * final_test['rank1']:.2f} %"
    lines = [f"LFW split: {counts['train']['identities']} train identities ({counts['train']['images']} images) · "
             f"validation {counts['val']['probe_identities']} people ({counts['val']['probes']} probes), "
             f"{counts['val']['distractors']} distractors, {counts['val']['pairs']} pairs · test "
             f"{counts['test']['probe_identities']} people ({counts['test']['probes']} probes), "
             f"{counts['test']['distractors']} distractors, {counts['test']['pairs']} pairs · teacher "
             f"{route['arch']} ({route['params']} params, test rank-1 {teacher_test}) · student "
             f"{result['student']} ({result['student_params']} params, {result['epochs']:g} epochs at "
             f"{result['image_size']} px, the teacher's lr drops{result['multi_stage_note']}) · "
             + (f"counted seeds {result['counted_seeds']}" if result["counted_seeds"]
                else f"PILOT SEED {result['table_seeds']} ONLY (no counted seeds)"), "",
             *_route_lines(route), "",
             f"Pilot gate (seed {gate['seed']}, validation rank-1): teacher − scratch "
             f"{100 * gate['teacher_minus_scratch']:+.2f} (need ≥ "
             f"{100 * gate['required']['teacher_minus_scratch']:.1f}), mimic_final − scratch "
             f"{100 * gate['mimic_minus_scratch']:+.2f} (need ≥ {100 * gate['required']['mimic_minus_scratch']:.1f})"
             f": **{'passed' if gate['passed'] else 'FAILED'}**"
             + ("" if gate["passed"] or result["counted_seeds"] else " — the counted seeds were not run"), "",
             "| student | role | anchors | test rank-1 % | Δ vs mimic_final (95 % CI) | seeds ahead | "
             "test pairs acc % | test TAR@FAR=1e-3 % (1:N) | val rank-1 % | val pairs acc % | congruence to final "
             "| s / run |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary["rows"]:
        c = comps.get(r["variant"])
        delta = (f"{100 * c['mean']:+.2f} ({100 * c['ci95'][0]:+.2f} … {100 * c['ci95'][1]:+.2f})"
                 if c and not math.isnan(c["mean"]) else "–")
        ahead = f"{c['wins']}/{c['n']}" if c else "–"
        cong = "–" if math.isnan(r["congruence_final"][0]) else f"{r['congruence_final'][0]:.4f}"
        secs = "–" if math.isnan(r["seconds"][0]) else f"{r['seconds'][0]:.0f}"
        lines.append(f"| {r['variant']} | {r['role']} | {_anchors_text(r['anchors'])} | {_pct(r['test/rank1'])} | "
                     f"{delta} | {ahead} | {_pct(r['test/pairs_acc'])} | {_pct(r['test/tar_far1e-3'])} | "
                     f"{_pct(r['val/rank1'])} | {_pct(r['val/pairs_acc'])} | {cong} | {secs} |")
    which = "test" if summary["endpoint"].startswith("test") else "validation (pilot only: test not read)"
    lines += ["", f"Δ = {which} rank-1 − mimic_final's of the same seed. Verdicts by the pre-registered rule (primary "
              "family, Holm-adjusted one-sided paired t-test; gain ≥ +0.2 point; ahead on ≥ 80 % of seeds and of "
              "every control):"]
    lines += _study.verdict_lines(summary["analysis"]) or ["- (no primary variant)"]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> Path:
    """Left: the teacher's route on validation rank-1 with the students'; right: paired test Δ per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from facerco.utils.io import atomic_path

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(13, 4))
    route = result["route"]["points"]
    ax0.plot([p["epoch"] for p in route], [100 * p["val"]["rank1"] for p in route], marker="o",
             label="teacher route (validation)")
    for i, r in enumerate(x for x in result["summary"]["rows"] if x["variant"] in ("scratch", REFERENCE)):
        if not math.isnan(r["val/rank1"][0]):
            ax0.axhline(100 * r["val/rank1"][0], ls="--", color=f"C{i + 1}", label=f"{r['variant']} (validation)")
    ax0.set_xlabel("teacher epoch")
    ax0.set_ylabel("1:N rank-1 %")
    ax0.legend(fontsize=7)
    counted = set(result["counted_seeds"])  # the pilot's test is not read
    ref = {r["seed"]: r["test"][ENDPOINT] for r in result["runs"] if r["variant"] == REFERENCE and r["seed"] in counted}
    names = [v for v in result["variants"] if v not in ("scratch", REFERENCE)]
    for i, v in enumerate(names):
        diffs = [100 * (r["test"][ENDPOINT] - ref[r["seed"]]) for r in result["runs"]
                 if r["variant"] == v and r["seed"] in ref and r["seed"] in counted]
        ax1.scatter([i] * len(diffs), diffs, s=10, color="C0" if role(v) == "primary" else "C1")
        if diffs:
            ax1.errorbar([i], [np.mean(diffs)], yerr=[np.std(diffs, ddof=1) if len(diffs) > 1 else 0], fmt="_",
                         color="k", capsize=4)
    ax1.axhline(0, color="0.5", lw=0.8)
    ax1.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax1.set_ylabel(f"test rank-1 − {REFERENCE} (points, paired by seed)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def build_result(args: argparse.Namespace, variants: Sequence[Any], route: dict[str, Any], gate: dict[str, Any],
                 runs: list[dict[str, Any]], counted: list[int], pilot: list[int],
                 evaluators: dict[str, SplitEvaluator], seconds: float) -> dict[str, Any]:
    """Everything the table and a recomputation need (JSON-ready)."""
    from facerco.data.lfw_split import read_split
    from facerco.distill.builders import build_student

    cfg = variants[0].cfg
    ref = next((v for v in variants if v.name == REFERENCE), variants[0])  # the distillation config, not scratch's
    split = read_split(args.data)
    multi = [v.name for v in variants if v.cfg.distill.schedule == "multi_stage"]
    multi_cfg = next((v.cfg for v in variants if v.name in multi), None)
    scaled = None
    if multi_cfg is not None:  # what each stage runs: the stage's warm-up, the drops scaled by the library
        share = multi_cfg.distill.final_share
        scaled = replace(multi_cfg.schedule, milestones=[m * share for m in multi_cfg.schedule.milestones])
    return {
        "benchmark": "rco_lfw", "seeds": list(args.seeds), "pilot_seed": args.pilot_seed, "counted_seeds": counted,
        "table_seeds": counted or pilot, "variants": list(args.variants), "gate": gate,
        "roles": {v: role(v) for v in args.variants}, "endpoint": f"test {ENDPOINT}", "min_gain": MIN_GAIN,
        "counts": {"train": {"identities": len(split["train"]), "images": split["counts"]["train_images"]},
                   **{s: e.counts for s, e in evaluators.items()}},
        "student": f"{cfg.model.name} (width {cfg.model.width_mult}, {cfg.model.embedding_size}-d)",
        "student_params": int(sum(p.numel() for p in build_student(cfg).parameters())),
        "epochs": cfg.train.epochs, "image_size": cfg.data.image_size, "batch_size": cfg.train.batch_size,
        "schedule": {"warmup_epochs": cfg.schedule.warmup_epochs, "decay": cfg.schedule.decay,
                     "milestones": list(cfg.schedule.milestones)},
        "multi_stage_schedule": ({"variants": multi, "warmup_epochs": scaled.warmup_epochs,
                                  "milestones": list(scaled.milestones)} if scaled else None),
        "multi_stage_note": (f"; multi-stage stages restart it scaled: warm-up {scaled.warmup_epochs:g}, drops "
                             f"after {list(scaled.milestones)} epochs of each stage") if scaled else "",
        "distill": {"variant": ref.name, "mimic_weight": ref.cfg.distill.mimic_weight,
                    "mimic_type": ref.cfg.distill.mimic_type, "arcface_weight": ref.cfg.distill.arcface_weight,
                    "num_anchors": ref.cfg.distill.eeis.num_anchors, "final_share": ref.cfg.distill.final_share},
        "teacher_run": str(args.teacher_run), "anchor_targets": "online teacher" if args.online else "anchor cache",
        "eval_flip": args.eval_flip, "route": route,
        "summary": summarize(runs, args.variants, counted or pilot, "test" if counted else "val"),
        "runs": runs, "seconds_total": seconds,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "jobs": args.jobs, "threads_per_job": args.threads},
        "command": "python benchmarks/rco_lfw.py " + " ".join(args.argv),
    }


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    from facerco.distill.compare import VARIANTS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="runs/lfw_cpu_data", help="prepared split (facerco.data.lfw_split)")
    parser.add_argument("--lfw", default=os.environ.get("FACERCO_REAL_DATA", str(ROOT.parent / "shared" / "data"))
                        + "/lfw_deepfunneled", help="LFW deep-funneled folder (to prepare --data when missing)")
    parser.add_argument("--teacher-run", default="runs/teacher_lfw_study", help="teacher run (reused if complete)")
    parser.add_argument("--teacher-config", default="configs/teacher/lfw_cpu_study.yaml")
    parser.add_argument("--teacher-set", nargs="*", default=[], help="dotted teacher overrides (when trained here)")
    parser.add_argument("--config", default="configs/student/_lfw_study_base.yaml", help="base student config")
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(6)),
                        help="student seeds; the --pilot-seed among them is the gate's and is not counted")
    parser.add_argument("--pilot-seed", type=int, default=0)
    parser.add_argument("--gate-gap", type=float, default=4.0,
                        help="points: teacher − scratch needed (validation rank-1)")
    parser.add_argument("--gate-mimic", type=float, default=0.5,
                        help="points: mimic_final − scratch needed (validation rank-1)")
    parser.add_argument("--ignore-gate", action="store_true", help="run the counted seeds even if the gate fails")
    parser.add_argument("--epochs", type=float, default=0.0, help="student budget in epochs (0: the config's)")
    parser.add_argument("--image-size", type=int, default=32, help="network input side (the teacher's)")
    parser.add_argument("--set", nargs="*", default=[], help="extra dotted student overrides, e.g. train.max_steps=5")
    parser.add_argument("--online", action="store_true", help="run anchors online instead of the feature cache")
    parser.add_argument("--teacher-eval", choices=["all", "final"], default="all",
                        help="teacher route points evaluated on validation (the final one is always, test too)")
    parser.add_argument("--eval-flip", action="store_true", help="flip-fused embeddings in evaluation (2x cost)")
    parser.add_argument("--aggregate-only", action="store_true", help="only build the table from finished runs")
    _study.add_runner_args(parser, "bench_out/rco_lfw")
    args = parser.parse_args(argv)
    _study.check_runner_args(parser, args, REFERENCE)
    return args


def run_study(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    """Prepare, train the pilot, gate, train the counted seeds (or only tabulate), write JSON/Markdown/PNG."""
    from facerco.utils.io import write_json

    recorder = _study.study_recorder(__file__, argv, args)
    start = time.time()
    data, out = Path(args.data), Path(args.out)
    if not args.aggregate_only:
        ensure_data(data, Path(args.lfw))
        teacher_s = ensure_teacher(Path(args.teacher_run), Path(args.teacher_config), data, args.teacher_set)
        if not args.online:
            ensure_cache(Path(args.teacher_run), MemoryFolder(data / "train", args.image_size), out / "cache",
                         args.image_size)
        print(f"rco_lfw: data, teacher ({teacher_s:.0f} s here) and anchor cache ready", flush=True)
    variants = make_variants(args)
    evaluators = open_evaluators(data, args.image_size, args.eval_flip)
    route = evaluate_route(args, evaluators, with_test=False)  # the gate reads validation only
    pilot = [s for s in args.seeds if s == args.pilot_seed]
    counted = [s for s in args.seeds if s != args.pilot_seed]
    if not args.aggregate_only:
        train_seeds(args, argv, pilot)
    pilot_done = finished_seeds(args, variants, pilot)
    final_val = next(p["val"] for p in route["points"] if p["name"] == route["final"])
    gate = pilot_gate(collect(args, variants, pilot_done, evaluators), final_val, args.pilot_seed, args.gate_gap,
                      args.gate_mimic)
    print(f"rco_lfw: pilot gate (validation rank-1): teacher − scratch {100 * gate['teacher_minus_scratch']:+.2f}, "
          f"mimic_final − scratch {100 * gate['mimic_minus_scratch']:+.2f} points: "
          f"{'passed' if gate['passed'] else 'FAILED'}", flush=True)
    go = bool(counted) and (gate["passed"] or args.ignore_gate)
    if go and not args.aggregate_only:
        train_seeds(args, argv, counted)
    counted_done = finished_seeds(args, variants, counted) if go else []
    if counted_done:
        route = evaluate_route(args, evaluators)  # validation cached; the final teacher's test read now
    if not pilot_done and not counted_done:
        raise RuntimeError(f"{out}/runs: no seed of {list(args.seeds)} has finished for every variant "
                           f"{list(args.variants)}")
    runs = collect(args, variants, [*pilot_done, *counted_done], evaluators)
    result = build_result(args, variants, route, gate, runs, counted_done, pilot_done, evaluators, time.time() - start)
    result["provenance"] = recorder.finish(run_codes=_study.run_codes(runs))
    write_json(out / "rco_lfw.json", result)
    (out / "rco_lfw.md").write_text(format_markdown(result), encoding="utf-8")
    plot(result, out / "rco_lfw.png")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    args.argv = list(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.worker_variants:
        train_group(args, args.worker_variants, args.worker_seeds or args.seeds)
        return 0
    start = time.time()
    run_study(args, argv)
    print((out / "rco_lfw.md").read_text(encoding="utf-8"), end="")
    print(f"rco_lfw: {time.time() - start:.0f} s; written {out}/rco_lfw.json, .md, .png", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
