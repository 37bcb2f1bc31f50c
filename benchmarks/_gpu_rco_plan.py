"""The GPU RCO study's plan: seconds per step from assumed H100 rates and the data sizes, how many counted seeds fit
the budget, and the smallest effect those seeds can detect (from the LFW CPU study's per-seed SD).

Used by ``gpu_rco_study.py plan`` (before a run: the numbers in benchmarks/README.md) and by its report (the plan
beside what the card did). Pure arithmetic: no torch, no data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import _study

__all__ = ["ASSUMED", "CPU_STUDY", "time_plan", "power_plan", "cpu_study_sd", "format_plan"]

CPU_STUDY = Path(__file__).resolve().parent / "results" / "rco_lfw.json"

# H100 throughput assumed by the plan (PyTorch eager, bf16 autocast, batch 128, data on the GPU). Sources and
# reasoning: benchmarks/README.md, "GPU RCO study: throughput assumptions". The report sets the measured rates beside.
ASSUMED = {"teacher_train_img_s": 2000.0, "teacher_embed_img_s": 6000.0, "student_img_s_per_process": 2500.0,
           "student_img_s_total": 20000.0, "student_eval_s": 6.0, "process_start_s": 10.0, "package_check_s": 15.0,
           "checkpoint_s_per_point": 0.5, "report_s": 15.0}


def time_plan(counts: dict[str, int], epochs: int, workers: int, budget_s: float, strategies: int,
              assumed: dict[str, float] | None = None, stop_margin_s: float = 25.0,
              seed_margin: float = 1.15) -> dict[str, Any]:
    """Seconds per step and how many counted seeds fit ``budget_s``, from ``assumed`` rates (default
    :data:`ASSUMED`) and the image counts (``train``, ``val``, ``val_distractors``, ``test``, ``test_distractors``).

    Teacher: ``epochs`` passes over the training images, a flip-fused validation pass per epoch, one checkpoint per
    epoch; anchor cache: every point x training images x 2 views. Students: one run = ``epochs`` passes; the pilot is
    one wave of concurrent processes (each at the per-process rate); a counted seed is its runs' samples at the
    summed rate plus their evaluation spread over the workers. The students step stops launching ``stop_margin_s``
    before its end and launches a seed only when ``seed_margin`` x its time fits (as ``gpu_rco_study.seed_fits``).
    """
    a = dict(ASSUMED if assumed is None else assumed)
    train, val = counts["train"], counts["val"] + counts["val_distractors"]
    run_samples = epochs * train
    variants = 2 + strategies  # reference, control, strategies (scratch is pilot only)
    steps = {
        "packages": a["package_check_s"],
        "data": a["process_start_s"] + 5.0,
        "teacher": (a["process_start_s"] + epochs * train / a["teacher_train_img_s"]
                    + epochs * 2 * val / a["teacher_embed_img_s"] + epochs * a["checkpoint_s_per_point"]),
        "anchor_cache": epochs * 2 * train / a["teacher_embed_img_s"] + epochs * a["checkpoint_s_per_point"],
        "workers_start": 2 * a["process_start_s"],
        "pilot": run_samples / a["student_img_s_per_process"] + a["student_eval_s"],
        "report": a["report_s"],
    }
    seed_s = variants * run_samples / a["student_img_s_total"] + variants * a["student_eval_s"] / workers
    fixed = sum(steps.values())
    room = budget_s - fixed - stop_margin_s
    return {"assumed": a, "budget_s": budget_s, "steps_s": steps, "fixed_s": fixed, "seed_s": seed_s,
            "run_samples": run_samples, "variants_per_seed": variants,
            "counted_seeds_fit": max(0, math.floor(room / (seed_s * seed_margin))) if room > 0 else 0}


def power_plan(sd: float, seeds: Sequence[int], family: int, min_gain: float = 0.002
               ) -> list[dict[str, float]]:
    """Per number of counted seeds: the t-test's detectable effect at 80 % power (Holm's strictest level) and the
    whole rule's (t-test, mean ≥ ``min_gain``, ahead on 80 % of seeds), both in endpoint units."""
    return [{"seeds": n, "sd": sd, "t_test": _study.detectable_effect(sd, n, family=family),
             "t_test_unadjusted": _study.detectable_effect(sd, n),
             "rule": _study.rule_detectable_effect(sd, n, family=family, min_gain=min_gain)} for n in seeds]


def cpu_study_sd(path: Path = CPU_STUDY) -> float:
    """The LFW CPU study's per-seed SD of paired differences (primary family, pooled): what the plan assumes."""
    import json

    return _study.pooled_sd(json.loads(Path(path).read_text(encoding="utf-8"))["summary"]["analysis"])


def format_plan(plan: dict[str, Any]) -> str:
    """The plan as printed by ``gpu_rco_study.py plan``: the steps at the assumed and at half the assumed rates, then
    the detectable effects per number of counted seeds."""
    lines = [f"images: {plan['counts']}"]
    for label, t in (("assumed rates", plan["time"]), ("half the assumed rates", plan["time_at_half_rates"])):
        steps = ", ".join(f"{k} {v:.0f} s" for k, v in t["steps_s"].items())
        lines.append(f"{label}: {steps}; fixed {t['fixed_s']:.0f} s; a counted seed ({t['variants_per_seed']} runs "
                     f"x {t['run_samples']} samples) {t['seed_s']:.1f} s; counted seeds that fit "
                     f"{t['budget_s']:.0f} s: {t['counted_seeds_fit']}")
    lines.append("detectable effect at 80 % power, rank-1 points (per-seed SD "
                 f"{100 * plan['power'][0]['sd']:.2f} from the LFW CPU study): seeds: t-test at Holm's level / "
                 "unadjusted / the whole rule")
    lines += [f"  {p['seeds']:>2}: {100 * p['t_test']:.2f} / {100 * p['t_test_unadjusted']:.2f} / "
              f"{100 * p['rule']:.2f}" for p in plan["power"]]
    return "\n".join(lines) + "\n"
