"""Shared machinery of the method studies (``rco_fmnist.py``, ``rco_lfw.py``): worker processes, the pre-registered
paired analysis, and the verdict rule.

The analysis (written down in ``benchmarks/README.md`` before the runs):

* per variant: mean ± std of the endpoint over the counted seeds (the pilot seed is not counted);
* per comparison ``variant − reference`` paired by seed: mean Δ, its 95 % t confidence interval, wins/seeds, the
  one-sided paired t-test (H1: Δ > 0) and the Wilcoxon signed-rank test (one-sided) as a check;
* Holm's step-down correction over the primary comparisons (one family per study);
* success rule: Holm-adjusted p < 0.05, mean Δ ≥ ``min_gain``, ahead on ≥ 80 % of the seeds, and also ahead (mean Δ
  > 0) of every control (``early`` and ``reverse``) on the same seeds.

Provenance (issue 22): a study run that trains counted seeds is counted (:func:`study_recorder` refuses a dirty tree
unless ``--allow-dirty``); every run records the code it was trained with (:func:`code_stamp`), and the study's
provenance block lists the distinct stamps of the runs in its table (:func:`run_codes`), so runs reused from an
earlier invocation at another commit show.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import _provenance

__all__ = ["mean_std", "paired", "holm", "analyse", "verdict_lines", "run_workers", "split_groups",
           "add_runner_args", "check_runner_args", "study_recorder", "code_stamp", "run_codes", "pooled_sd",
           "detectable_effect", "rule_power", "rule_detectable_effect"]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """(mean, sample std) of the finite values; (nan, nan) when there are none."""
    vals = [float(v) for v in values if not math.isnan(float(v))]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def paired(diffs: Sequence[float]) -> dict[str, Any]:
    """Statistics of paired differences: n, mean, std, 95 % CI, wins, one-sided t and Wilcoxon p-values."""
    from scipy import stats

    d = [float(x) for x in diffs if not math.isnan(float(x))]
    out: dict[str, Any] = {"n": len(d), "mean": math.nan, "std": math.nan, "ci95": [math.nan, math.nan],
                           "wins": sum(x > 0 for x in d), "p_t": math.nan, "p_wilcoxon": math.nan}
    if not d:
        return out
    mean, std = mean_std(d)
    out.update(mean=mean, std=std)
    if len(d) < 2:
        return out
    half = stats.t.ppf(0.975, len(d) - 1) * std / math.sqrt(len(d))
    out["ci95"] = [mean - half, mean + half]
    if std > 0:
        out["p_t"] = float(stats.ttest_1samp(d, 0.0, alternative="greater").pvalue)
    if any(x != 0 for x in d):
        out["p_wilcoxon"] = float(stats.wilcoxon(d, alternative="greater", zero_method="wilcox").pvalue)
    return out


def holm(pvalues: Mapping[str, float]) -> dict[str, float]:
    """Holm step-down adjusted p-values (nan stays nan and is not counted in the family)."""
    finite = sorted((p, k) for k, p in pvalues.items() if not math.isnan(p))
    m = len(finite)
    adjusted: dict[str, float] = {k: math.nan for k in pvalues}
    running = 0.0
    for i, (p, k) in enumerate(finite):
        running = max(running, min(1.0, (m - i) * p))
        adjusted[k] = running
    return adjusted


def analyse(values: Mapping[str, Mapping[int, float]], reference: str, primary: Sequence[str],
            controls: Sequence[str], min_gain: float, min_win_share: float = 0.8,
            alpha: float = 0.05) -> dict[str, Any]:
    """The pre-registered analysis of one endpoint.

    Args:
        values: ``values[variant][seed]`` = endpoint of that run (counted seeds only).
        reference: the baseline every primary comparison is against (mimic / KD from the final teacher).
        primary: the route strategies under test (one Holm family).
        controls: variants a winner must also beat (``early``, ``reverse``).
        min_gain: smallest mean Δ that counts as a gain (endpoint units).
    """
    ref = values.get(reference, {})
    comps: dict[str, dict[str, Any]] = {}
    for name in values:
        if name == reference:
            continue
        seeds = sorted(set(values[name]) & set(ref))
        comps[name] = paired([values[name][s] - ref[s] for s in seeds])
        comps[name]["seeds"] = seeds
    adjusted = holm({n: comps[n]["p_t"] for n in primary if n in comps})
    verdicts: dict[str, dict[str, Any]] = {}
    for name in primary:
        if name not in comps:
            continue
        c = comps[name]
        c["p_holm"] = adjusted.get(name, math.nan)
        vs_controls = {}
        for ctrl in controls:
            if ctrl in values and ctrl != name:
                seeds = sorted(set(values[name]) & set(values[ctrl]))
                vs_controls[ctrl] = paired([values[name][s] - values[ctrl][s] for s in seeds])["mean"]
        checks = {
            "holm_p<alpha": (not math.isnan(c["p_holm"])) and c["p_holm"] < alpha,
            "gain>=min": (not math.isnan(c["mean"])) and c["mean"] >= min_gain,
            "wins>=share": c["n"] > 0 and c["wins"] >= math.ceil(min_win_share * c["n"] - 1e-9),
            "ahead_of_controls": all(v > 0 for v in vs_controls.values()) if vs_controls else True,
        }
        verdicts[name] = {"success": all(checks.values()), "checks": checks, "vs_controls": vs_controls}
    return {"reference": reference, "primary": list(primary), "controls": list(controls), "min_gain": min_gain,
            "min_win_share": min_win_share, "alpha": alpha, "comparisons": comps, "verdicts": verdicts}


def pooled_sd(analysis: Mapping[str, Any], names: Sequence[str] | None = None) -> float:
    """Root mean square of the paired-difference SDs of ``names`` (default: the primary family) in an
    :func:`analyse` result: one per-seed SD for planning the next study."""
    names = list(analysis["primary"]) if names is None else list(names)
    sds = [analysis["comparisons"][n]["std"] for n in names if n in analysis["comparisons"]]
    sds = [s for s in sds if not math.isnan(s)]
    return math.sqrt(statistics.fmean(s * s for s in sds)) if sds else math.nan


def detectable_effect(sd: float, n: int, alpha: float = 0.05, power: float = 0.8, family: int = 1) -> float:
    """Smallest true mean paired Δ that the one-sided paired t-test finds with probability ``power`` at level
    ``alpha / family`` (Holm's first, strictest step), for ``n`` seeds whose differences have SD ``sd`` (noncentral
    t, exact for normal differences); nan below 2 seeds."""
    from scipy import optimize, stats

    if n < 2 or not sd > 0:
        return math.nan
    df = n - 1
    crit = stats.t.ppf(1 - alpha / family, df)
    return float(optimize.brentq(lambda d: stats.nct.sf(crit, df, d * math.sqrt(n) / sd) - power, 0.0, 50 * sd))


def _rule_passes(effect: float, sd: float, z: Any, family: int, min_gain: float, min_win_share: float,
                 alpha: float) -> Any:
    import numpy as np
    from scipy import stats

    n = z.shape[1]
    d = effect + sd * z
    mean, std = d.mean(axis=1), d.std(axis=1, ddof=1)
    p = stats.t.sf(mean / (std / math.sqrt(n)), n - 1)
    wins = (d > 0).sum(axis=1)
    return (p < alpha / family) & (mean >= min_gain) & (wins >= math.ceil(min_win_share * n - 1e-9)) & np.isfinite(p)


def rule_power(effect: float, sd: float, n: int, family: int = 1, min_gain: float = 0.002,
               min_win_share: float = 0.8, alpha: float = 0.05, sims: int = 20000, seed: int = 0) -> float:
    """Probability that the whole success rule of :func:`analyse` passes for one strategy whose true mean paired Δ
    is ``effect`` (normal differences, SD ``sd``, ``n`` seeds): t-test p < ``alpha / family``, mean ≥ ``min_gain``,
    ahead on ≥ ``min_win_share`` of the seeds. Monte Carlo with a fixed seed; the control check is left out (it
    assumes the controls are no better than the reference)."""
    import numpy as np

    if n < 2:
        return math.nan
    z = np.random.default_rng(seed).standard_normal((sims, n))
    return float(_rule_passes(effect, sd, z, family, min_gain, min_win_share, alpha).mean())


def rule_detectable_effect(sd: float, n: int, family: int = 1, power: float = 0.8, min_gain: float = 0.002,
                           min_win_share: float = 0.8, alpha: float = 0.05, sims: int = 20000) -> float:
    """Smallest true mean Δ at which :func:`rule_power` reaches ``power`` (bisection; the same draws for every
    effect, so the power rises monotonically with it)."""
    import numpy as np

    if n < 2 or not sd > 0:
        return math.nan
    z = np.random.default_rng(0).standard_normal((sims, n))
    lo, hi = 0.0, 20 * sd
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if _rule_passes(mid, sd, z, family, min_gain, min_win_share, alpha).mean() >= power \
            else (mid, hi)
    return hi


def verdict_lines(analysis: dict[str, Any], scale: float = 100.0, unit: str = "points") -> list[str]:
    """One Markdown bullet per primary comparison: Δ, CI, wins, p-values, and the rule's verdict."""
    lines = []
    ref = analysis["reference"]
    for name, v in analysis["verdicts"].items():
        c = analysis["comparisons"][name]
        lo, hi = c["ci95"]
        word = "SUCCESS" if v["success"] else "no gain by the rule"
        if not v["success"] and not math.isnan(c["mean"]) and c["mean"] < 0 and c["p_t"] > 0.95:
            word = f"worse than {ref}"
        failed = [k for k, ok in v["checks"].items() if not ok]
        ctrl = ", ".join(f"vs {k} {scale * d:+.2f}" for k, d in v["vs_controls"].items())
        lines.append(f"- {name}: Δ {scale * c['mean']:+.2f} {unit} (95 % CI {scale * lo:+.2f} … {scale * hi:+.2f}), "
                     f"ahead on {c['wins']}/{c['n']} seeds, one-sided t p={c['p_t']:.3g}, Holm p={c['p_holm']:.3g}, "
                     f"Wilcoxon p={c['p_wilcoxon']:.3g}; {ctrl}; **{word}**"
                     + (f" (fails: {', '.join(failed)})" if failed else ""))
    return lines


def add_runner_args(parser: argparse.ArgumentParser, out: str) -> None:
    """The options every study runner shares: processes, threads, output folder, and the hidden worker flags."""
    parser.add_argument("--jobs", type=int, default=1, help="training processes (variants split between them)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--out", default=out)
    parser.add_argument("--worker-variants", nargs="+", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-seeds", type=int, nargs="+", default=None, help=argparse.SUPPRESS)
    _provenance.add_provenance_args(parser)


def check_runner_args(parser: argparse.ArgumentParser, args: argparse.Namespace, reference: str) -> None:
    """Refuse a run the analysis could not use: no scratch or reference variant, a variant twice, no process."""
    for needed in ("scratch", reference):
        if needed not in args.variants:
            parser.error(f"--variants must include {needed} (the gate and the reference need it)")
    if len(set(args.variants)) != len(args.variants):
        parser.error("--variants lists a variant twice")
    if args.jobs < 1 or args.threads < 1:
        parser.error("--jobs and --threads must be >= 1")


def split_groups(items: Sequence[str], jobs: int) -> list[list[str]]:
    """Round-robin split of variants over ``jobs`` worker processes (empty groups dropped)."""
    return [g for g in (list(items[k::jobs]) for k in range(max(1, jobs))) if g]


def run_workers(script: Path, argv: Sequence[str], groups: Sequence[Sequence[str]], out: Path, threads: int,
                flag: str = "--worker-variants") -> None:
    """Run ``script argv flag <group>`` once per group in parallel processes; logs in ``out/worker<k>.log``."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    procs = []
    for k, group in enumerate(groups):
        log = open(out / f"worker{k}.log", "a", encoding="utf-8")  # noqa: SIM115 (closed below)
        cmd = [sys.executable, str(script), *argv, flag, *group]
        procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log))
    codes = [proc.wait() for proc, _ in procs]
    for _, log in procs:
        log.close()
    if any(codes):
        raise RuntimeError(f"{script.name}: a worker failed (exit codes {codes}); see {out}/worker<k>.log")


def study_recorder(script: str | Path, argv: Sequence[str] | None, args: argparse.Namespace) -> _provenance.Recorder:
    """The provenance recorder of a study's main process: counted when it would train a seed other than the pilot
    (refuses a dirty tree unless ``--allow-dirty``); a pilot-only run is recorded but not counted."""
    counted = any(s != args.pilot_seed for s in args.seeds)
    return _provenance.Recorder(counted=counted, allow_dirty=args.allow_dirty, threads=args.threads,
                                argv=_provenance.command_line(script, argv))


def code_stamp() -> dict[str, Any]:
    """The code a run is trained with: ``{"commit", "dirty", "diff_sha256"}`` of the checkout (None outside one)."""
    state = _provenance.git_state()
    return {k: state[k] for k in ("commit", "dirty", "diff_sha256")}


def run_codes(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The distinct code stamps of ``runs`` (their ``"code"`` entries) with how many runs each; runs trained before
    stamps existed are one ``{"commit": "unrecorded"}`` entry."""
    counts: dict[tuple, int] = {}
    for run in runs:
        code = run.get("code") or {"commit": "unrecorded", "dirty": None, "diff_sha256": None}
        key = (code.get("commit"), code.get("dirty"), code.get("diff_sha256"))
        counts[key] = counts.get(key, 0) + 1
    return [{"commit": c, "dirty": d, "diff_sha256": h, "runs": n} for (c, d, h), n in counts.items()]
