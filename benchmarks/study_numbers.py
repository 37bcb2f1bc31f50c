"""Every number the READMEs quote about the two RCO studies, recomputed from the committed JSON (issue 22, item 3).

    python benchmarks/study_numbers.py            # prints them
    python benchmarks/study_numbers.py --json     # the same as JSON

Reads ``benchmarks/results/rco_lfw.json``, ``rco_fmnist.json`` and ``rco_fmnist_gate.json`` only (no run, no test
set). What it prints:

* LFW: the endpoint and both pre-registered secondary endpoints (test pairs accuracy, test 1:N TAR@FAR=1e-3) with
  the study's own analysis (paired Δ vs ``mimic_final`` by seed, 95 % CI, seeds ahead, one-sided paired t, Holm over
  the three route strategies per endpoint); the other metrics the runs recorded (exploratory, not pre-registered);
  the smallest effect the endpoint's test detects at 80 % power and the seeds needed for a given effect (one-sided
  paired t at α = 0.05 / 3, Holm's strictest step, noncentral t; per-seed SD = root mean square of the three route
  strategies' paired-difference SDs).
* Fashion-MNIST: KD-final − scratch on test and validation over the counted seeds, the pilot gate's 16 settings
  (passed, ahead but short of +0.5, level, behind), and the anchors ``rco_gss_online`` chose on each seed.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _study import holm, paired  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PRIMARY_LFW = ("rco_eeis_multi", "lockstep", "phase")
SECONDARY_LFW = ("pairs_acc", "tar_far1e-3")  # pre-registered (benchmarks/README: Endpoint)
EXPLORATORY_LFW = ("rank5", "rank10", "tar_far1e-4", "pairs_tar_far1e-3", "pairs_tar_far1e-4")


def _load(name: str) -> dict[str, Any]:
    return json.loads((RESULTS / name).read_text())


def _by_seed(runs: list[dict[str, Any]], seeds: list[int], value: Any) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for r in runs:
        if r["seed"] in seeds:
            out.setdefault(r["variant"], {})[r["seed"]] = 100.0 * value(r)
    return out


def compare(values: dict[str, dict[int, float]], reference: str, family: tuple[str, ...]) -> dict[str, Any]:
    """Paired Δ of every variant against ``reference`` (points), Holm over ``family``."""
    ref = values[reference]
    comps = {}
    for name, vals in values.items():
        if name != reference:
            seeds = sorted(set(vals) & set(ref))
            comps[name] = paired([vals[s] - ref[s] for s in seeds])
    for name, p in holm({n: comps[n]["p_t"] for n in family}).items():
        comps[name]["p_holm"] = p
    return comps


def detectable(sd: float, n: int, family: int = 3, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest true mean Δ that the one-sided paired t-test at ``alpha / family`` finds with ``power``."""
    from scipy import optimize, stats

    crit = stats.t.ppf(1 - alpha / family, n - 1)
    return float(optimize.brentq(lambda d: stats.nct.sf(crit, n - 1, d * math.sqrt(n) / sd) - power, 1e-9, 50 * sd))


def seeds_for(effect: float, sd: float, family: int = 3) -> int:
    """Fewest seeds whose detectable effect is at most ``effect`` (it falls as seeds are added: bisection)."""
    lo, hi = 2, 4
    while detectable(sd, hi, family) > effect:
        lo, hi = hi, 2 * hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if detectable(sd, mid, family) <= effect else (mid, hi)
    return hi if detectable(sd, lo, family) > effect else lo


def lfw() -> dict[str, Any]:
    d = _load("rco_lfw.json")
    seeds = d["counted_seeds"]
    out: dict[str, Any] = {"seeds": seeds, "endpoints": {}}
    for metric in ("rank1", *SECONDARY_LFW, *EXPLORATORY_LFW):
        values = _by_seed(d["runs"], seeds, lambda r, m=metric: r["test"][m])
        out["endpoints"][metric] = {
            "role": "primary" if metric == "rank1" else "secondary" if metric in SECONDARY_LFW else "exploratory",
            "mimic_final": statistics.fmean(values["mimic_final"].values()),
            "vs_mimic_final": compare(values, "mimic_final", PRIMARY_LFW)}
    comps = out["endpoints"]["rank1"]["vs_mimic_final"]
    sd = math.sqrt(statistics.fmean(comps[n]["std"] ** 2 for n in PRIMARY_LFW))
    out["power"] = {"sd": sd, "detectable_80": detectable(sd, len(seeds)),
                    "seeds_for": {str(e): seeds_for(e, sd) for e in (1.0, 0.5, 0.3)}}
    return out


def fmnist() -> dict[str, Any]:
    d, gate = _load("rco_fmnist.json"), _load("rco_fmnist_gate.json")
    seeds = d["counted_seeds"]
    kd = {split: compare(_by_seed(d["runs"], seeds, lambda r, k=f"{split}_acc": r[k]), "scratch", ())["kd_final"]
          for split in ("test", "val")}
    pilots = []
    for i, a in enumerate([*gate["attempts"], *gate["attempts_resnet_teacher"]], 1):
        pilots.append({"order": i, "out": a["out"], "kd_minus_scratch": round(100 * a["kd_minus_scratch"], 2),
                       "teacher_minus_scratch": round(100 * a["teacher_minus_scratch"], 2),
                       "passed": a["kd_minus_scratch"] >= gate["required"]["kd_minus_scratch"]
                       and a["teacher_minus_scratch"] >= gate["required"]["teacher_minus_scratch"]})
    failed = [p["kd_minus_scratch"] for p in pilots if not p["passed"]]
    gss = {r["seed"]: " → ".join(f"ep{int(a.split('_')[1])}" for a in r["anchors"])
           for r in d["runs"] if r["variant"] == "rco_gss_online" and r["seed"] in seeds}
    return {"kd_final_minus_scratch": kd, "pilots": pilots,
            "failed_pilots": {"n": len(failed), "ahead": sorted(x for x in failed if x > 0),
                              "level": sum(x == 0 for x in failed), "behind": sum(x < 0 for x in failed)},
            "gss_anchors": gss}


def _fmt(c: dict[str, Any]) -> str:
    holm_p = f", Holm p {c['p_holm']:.3f}" if "p_holm" in c else ""
    return (f"{c['mean']:+.2f} ({c['ci95'][0]:+.2f} … {c['ci95'][1]:+.2f}), ahead {c['wins']}/{c['n']}, "
            f"t p {c['p_t']:.3f}{holm_p}")


def report(res: dict[str, Any]) -> list[str]:
    lines = ["LFW (test, points; Δ vs mimic_final paired by seed; Holm over the three route strategies)"]
    for metric, e in res["lfw"]["endpoints"].items():
        lines.append(f"  {metric} [{e['role']}] mimic_final {e['mimic_final']:.2f}")
        lines += [f"    {n:<15} {_fmt(c)}" for n, c in e["vs_mimic_final"].items()]
    p = res["lfw"]["power"]
    lines.append(f"  rank-1 per-seed SD {p['sd']:.2f}: detectable at 80 % power with {len(res['lfw']['seeds'])} seeds "
                 f"{p['detectable_80']:.2f}; seeds for " + ", ".join(f"{e}: {n}" for e, n in p["seeds_for"].items()))
    f = res["fmnist"]
    lines.append("Fashion-MNIST (points)")
    for split, c in f["kd_final_minus_scratch"].items():
        lines.append(f"  kd_final − scratch, {split}: {_fmt(c)}")
    fp = f["failed_pilots"]
    passed = ", ".join(f"#{p['order']} {p['out']} {p['kd_minus_scratch']:+.2f}" for p in f["pilots"] if p["passed"])
    lines.append(f"  pilots: {len(f['pilots'])}, failed {fp['n']}: KD ahead by {fp['ahead']}, level {fp['level']}, "
                 f"behind {fp['behind']}; passed: {passed}")
    lines.append("  rco_gss_online anchors: " + "; ".join(f"seed {s}: {a}" for s, a in f["gss_anchors"].items()))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = parser.parse_args(argv)
    res = {"lfw": lfw(), "fmnist": fmnist()}
    print(json.dumps(res, indent=2) if args.json else "\n".join(report(res)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
