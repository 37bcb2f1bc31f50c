"""Baselines and RCO variants under one budget, in one table: `facerco compare`.

Every variant is a student config (same student, data, optimizer and ``train.epochs``); they differ only in the
``distill`` section. Built-in variants (from one base config):

========================  =================================================================================
scratch                   ArcFace only (no teacher loss)
mimic_final               mimic the converged teacher (plain embedding KD)
mimic_best                mimic the best intermediate route point by validation metric
rco_eeis_one              RCO, EEIS anchors, one-stage (anchors switch inside one lr schedule)
rco_eeis_multi            RCO, EEIS anchors, multi-stage (each anchor its own lr schedule)
rco_gss                   RCO, GSS anchors (documented greedy rule), one-stage
lockstep                  student epoch k follows teacher epoch k (PocketNet-style), one schedule
phase                     one anchor per teacher lr phase, switches at the teacher's lr drops
early                     one early-stopped teacher point chosen on validation (control)
ensemble                  snapshot ensemble of the phase anchors (targets averaged)
reverse                   the EEIS anchors in reverse order (control)
rco_gss_online            GSS decided on the training student at each stage boundary
========================  =================================================================================

Each (variant, seed) trains into ``OUT/<variant>/seed<k>`` (skipped when its summary says it finished, so an
interrupted comparison resumes). The table reports, per variant, the validation metrics at the end (mean ± std over
seeds), the paired difference to ``mimic_final`` on the primary metric, and a dimension-free congruence with the
final teacher: the relational divergence ``mean_ij (S_student - S_teacher)^2`` of probe cosine-similarity matrices.
A variant whose validation file (``data.val_pairs`` / ``data.val_bins``) is its declared test set
(``eval.test_pairs`` / ``eval.test_bins``: same path or same sha256) is refused before anything trains.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facerco.config import Config, load_config

if TYPE_CHECKING:  # `facerco --help` reads VARIANTS from here: no torch import for that
    import torch

__all__ = ["VARIANTS", "DEFAULT_VARIANTS", "Variant", "builtin_variants", "file_variants", "run_compare",
           "format_table", "check_validation_not_test"]

VARIANTS: dict[str, tuple[str, list[str]]] = {
    "scratch": ("ArcFace only", ["distill.strategy=final", "distill.mimic_weight=0", "distill.kd_weight=0",
                                 "distill.hint_weight=0", "distill.gate=false"]),
    "mimic_final": ("mimic the final teacher", ["distill.strategy=final"]),
    "mimic_best": ("mimic the best intermediate checkpoint", ["distill.strategy=best"]),
    "rco_eeis_one": ("RCO EEIS, one-stage", ["distill.strategy=eeis", "distill.schedule=one_stage"]),
    "rco_eeis_multi": ("RCO EEIS, multi-stage", ["distill.strategy=eeis", "distill.schedule=multi_stage"]),
    "rco_gss": ("RCO GSS, one-stage", ["distill.strategy=gss", "distill.schedule=one_stage"]),
    "lockstep": ("student epoch k follows teacher epoch k", ["distill.strategy=lockstep",
                                                              "distill.schedule=one_stage"]),
    "phase": ("one anchor per teacher lr phase", ["distill.strategy=phase", "distill.schedule=one_stage"]),
    "early": ("an early-stopped teacher point (validation)", ["distill.strategy=early"]),
    "ensemble": ("snapshot ensemble of the phase anchors", ["distill.strategy=ensemble"]),
    "reverse": ("EEIS anchors in reverse order (control)", ["distill.strategy=reverse",
                                                            "distill.schedule=one_stage"]),
    "rco_gss_online": ("RCO GSS measured on the training student", ["distill.strategy=gss_online",
                                                                     "distill.schedule=one_stage"]),
}


# what `facerco compare CONFIG` runs without --variants (the route strategies are opt-in: they need lr phases)
DEFAULT_VARIANTS = ("scratch", "mimic_final", "mimic_best", "rco_eeis_one", "rco_eeis_multi", "rco_gss")


@dataclass
class Variant:
    """One row of the comparison: a name, what it is, and its config (seed and output set per run)."""

    name: str
    description: str
    cfg: Config


def builtin_variants(config: str | Path, overrides: Sequence[str] = (),
                     names: Sequence[str] = DEFAULT_VARIANTS) -> list[Variant]:
    """The built-in variants from one base student config plus dotted overrides."""
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown compare variants {unknown}; valid: {', '.join(VARIANTS)}")
    out = []
    for name in names:
        description, extra = VARIANTS[name]
        out.append(Variant(name, description, load_config(config, [*overrides, *extra])))
    return out


def file_variants(configs: Sequence[str | Path], overrides: Sequence[str] = ()) -> list[Variant]:
    """One variant per config file; the name is the file stem without the stems' common prefix."""
    from facerco.distill.strategies import get_strategy

    stems = [Path(c).stem for c in configs]
    prefix = _common_prefix(stems) if len(stems) > 1 else ""
    out = []
    for path, stem in zip(configs, stems, strict=True):
        cfg = load_config(path, list(overrides))
        d = cfg.distill
        name = stem[len(prefix):] or stem
        if name in VARIANTS:
            what = VARIANTS[name][0]
        elif d.mimic_weight == 0 and d.kd_weight == 0 and d.hint_weight == 0:
            what = "ArcFace only"
        else:
            what = f"{d.strategy}" + ("" if get_strategy(d.strategy).one_anchor else f", {d.schedule}")
        out.append(Variant(name, what, cfg))
    names = [v.name for v in out]
    if len(set(names)) != len(names):
        raise ValueError(f"compare: two configs give the same variant name: {names}")
    return out


def _common_prefix(stems: Sequence[str]) -> str:
    prefix = stems[0]
    for s in stems[1:]:
        while not s.startswith(prefix):
            prefix = prefix[:-1]
    cut = max(prefix.rfind("_"), prefix.rfind("-"))
    return prefix[: cut + 1] if cut >= 0 else ""


def _same_file(a: str, b: str) -> bool:
    """Same resolved path, or two existing files of equal size and sha256 (a copy is still the same set)."""
    from facerco.utils.io import sha256_file

    pa, pb = Path(a).resolve(), Path(b).resolve()
    if pa == pb:
        return True
    if not (pa.is_file() and pb.is_file()) or pa.stat().st_size != pb.stat().st_size:
        return False
    return sha256_file(pa) == sha256_file(pb)


def check_validation_not_test(name: str, cfg: Config) -> None:
    """Refuse a variant that validates on its reported test set (``eval.test_pairs`` / ``eval.test_bins``).

    Why: route metrics, ``strategy: best``, the gate and GSS choose on validation; choosing on the pairs the table
    then reports inflates every row. The test set is what the config declares under ``eval``.
    """
    vals = [("data.val_pairs", cfg.data.val_pairs)] if cfg.data.val_pairs else []
    vals += [("data.val_bins", b) for b in cfg.data.val_bins]
    tests = [("eval.test_pairs", cfg.eval.test_pairs)] if cfg.eval.test_pairs else []
    tests += [("eval.test_bins", b) for b in cfg.eval.test_bins]
    for vkey, val in vals:
        for tkey, test in tests:
            if _same_file(val, test):
                raise ValueError(f"compare: variant {name!r} validates on its reported test set ({vkey}={val} is "
                                 f"{tkey}={test}); validate on a split of its own, e.g. pairs_val.txt of "
                                 "facerco.data.lfw_split")


def _with_run(cfg: Config, out: Path, seed: int) -> Config:
    return replace(cfg, train=replace(cfg.train, output=str(out), seed=seed))


def final_congruence(cfg: Config, student_path: Path, probe: torch.Tensor) -> float:
    """Relational divergence between the student and the final teacher on the probe images."""
    from facerco.distill.probe import PROBE_CHUNK
    from facerco.eval.features import embed_batch
    from facerco.models.checkpoint import load_model
    from facerco.route.anchors import ProbeOutput, divergence, route_points
    from facerco.route.io import load_route

    route = load_route(cfg.distill.teacher_run)
    final = route_points(route)[-1].name
    teacher = route.load_point(final).model
    student = load_model(student_path).model
    a = ProbeOutput.from_arrays(embed_batch(student, probe, chunk_size=PROBE_CHUNK).cpu().double().numpy())
    b = ProbeOutput.from_arrays(embed_batch(teacher, probe, chunk_size=PROBE_CHUNK).cpu().double().numpy())
    return divergence(a, b, "relational")[0]


@dataclass
class RunRecord:
    variant: str
    seed: int
    run_dir: str
    val: dict[str, float]
    congruence: float
    seconds: float
    anchors: list[str] = field(default_factory=list)


def run_compare(variants: Sequence[Variant], seeds: Sequence[int], out_dir: str | Path,
                runner: Callable[..., Any] | None = None,
                validator_factory: Callable[[Config], Any] | None = None,
                metric: str = "", train: bool = True) -> dict[str, Any]:
    """Train every (variant, seed), evaluate, and return the table data (also written as JSON + Markdown).

    With ``train=False`` nothing is trained: the table covers the runs already finished under ``out_dir``.
    """
    from facerco.distill.job import run_distill
    from facerco.distill.probe import probe_images
    from facerco.route.anchors import route_points
    from facerco.route.io import load_route
    from facerco.train.job import build_train_dataset, build_validator
    from facerco.utils.io import read_json, write_json

    if not variants:
        raise ValueError("compare: no variants")
    if not seeds:
        raise ValueError("compare: no seeds")
    runner = runner or run_distill
    validator_factory = validator_factory or build_validator
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = variants[0].cfg
    teacher_run = base.distill.teacher_run
    for v in variants:
        if v.cfg.distill.teacher_run != teacher_run or v.cfg.train.epochs != base.train.epochs \
                or v.cfg.model != base.model or v.cfg.data.train != base.data.train:
            raise ValueError(f"compare: variant {v.name!r} differs from {variants[0].name!r} in teacher run, "
                             "student model, data or train.epochs; the comparison needs the same budget")
        check_validation_not_test(v.name, v.cfg)
    probe = probe_images(build_train_dataset(base), base.distill.gss.probe_images, base.distill.gss.seed)
    records: list[RunRecord] = []
    for v in variants:
        for seed in seeds:
            run_dir = out / v.name / f"seed{seed}"
            cfg = _with_run(v.cfg, run_dir, seed)
            summary_path = run_dir / "summary.json"
            summary = read_json(summary_path) if summary_path.is_file() else None
            if summary is None or summary.get("step") != summary.get("total_steps"):
                if not train:
                    continue
                print(f"compare: {v.name} seed {seed} -> {run_dir}", flush=True)
                runner(cfg, validator=validator_factory(cfg))
                summary = read_json(summary_path)
            cong = final_congruence(cfg, run_dir / "student.safetensors", probe)
            records.append(RunRecord(v.name, seed, str(run_dir), dict(summary.get("val", {})), cong,
                                     float(summary.get("seconds", 0.0)), list(summary.get("anchors", []))))
    final = route_points(load_route(teacher_run))[-1]
    table = _aggregate(variants, records, metric)
    table.update({"seeds": list(seeds), "teacher_run": str(teacher_run), "final_teacher": final.name,
                  "final_teacher_val": final.val, "epochs": base.train.epochs,
                  "runs": [r.__dict__ for r in records]})
    write_json(out / "compare.json", table)
    (out / "compare.md").write_text(format_table(table), encoding="utf-8")
    return table


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def _aggregate(variants: Sequence[Variant], records: Sequence[RunRecord], metric: str) -> dict[str, Any]:
    from facerco.route.anchors import default_metric

    keys = sorted({k for r in records for k in r.val})
    primary = metric or default_metric(keys)
    ref = {r.seed: r.val.get(primary, math.nan) for r in records if r.variant == "mimic_final"}
    rows = []
    for v in variants:
        mine = [r for r in records if r.variant == v.name]
        d = v.cfg.distill
        teacher_free = d.mimic_weight == 0 and d.kd_weight == 0 and d.hint_weight == 0
        row: dict[str, Any] = {"variant": v.name, "description": v.description, "n": len(mine),
                               "anchors": [] if teacher_free or not mine else mine[0].anchors}
        for k in keys:
            row[k] = _mean_std([r.val.get(k, math.nan) for r in mine])
        row["congruence_final"] = _mean_std([r.congruence for r in mine])
        row["seconds"] = _mean_std([r.seconds for r in mine])
        if ref and primary:
            diffs = [r.val.get(primary, math.nan) - ref[r.seed] for r in mine if r.seed in ref]
            row["delta_vs_mimic_final"] = _mean_std(diffs)
        rows.append(row)
    return {"primary_metric": primary, "metrics": keys, "rows": rows}


def _fmt(ms: tuple[float, float], scale: float = 1.0, digits: int = 2) -> str:
    mean, std = ms
    if math.isnan(mean):
        return "–"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def format_table(table: dict[str, Any]) -> str:
    """Markdown table of :func:`run_compare`'s result (accuracy-like metrics in %, mean ± std over seeds)."""
    metrics = table["metrics"]
    primary = table["primary_metric"]
    shown = [primary] + [m for m in metrics if m != primary and m.endswith(("acc", "tar_at_far/0.001/tar"))]
    shown = [m for m in shown if m] or metrics[:3]
    has_delta = any("delta_vs_mimic_final" in r for r in table["rows"])
    head = ["variant", "anchors", *[f"{m} %" for m in shown]]
    head += (["Δ vs mimic_final (paired)"] if has_delta else []) + ["congruence to final", "time s"]
    lines = [f"Seeds {table['seeds']}; teacher {table['teacher_run']} (final {table['final_teacher']}); "
             f"{table['epochs']} epochs per student.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table["rows"]:
        cells = [f"{r['variant']} ({r['description']})", " → ".join(r["anchors"]) or "–"]
        cells += [_fmt(r[m], 100.0) for m in shown]
        if has_delta:
            cells.append(_fmt(r.get("delta_vs_mimic_final", (math.nan, math.nan)), 100.0))
        cells += [_fmt(r["congruence_final"], 1.0, 4), _fmt(r["seconds"], 1.0, 0)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
