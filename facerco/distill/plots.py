"""Congruence along a student run: read it from ``log.jsonl``, summarise it per stage, and plot it.

Congruence is the mimic loss of the student to the anchor it follows (``cong_anchor``) and to the final teacher
(``cong_final``), logged by :class:`~facerco.distill.task.StudentTask` every ``train.log_every`` steps.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from facerco.route.plan import StagePlan

__all__ = ["read_congruence", "congruence_per_stage", "plot_congruence"]


def read_congruence(log_path: Path) -> dict[str, np.ndarray]:
    """Steps and congruence values from a run's log.jsonl (train events that carry them)."""
    steps, anchor, final, stage = [], [], [], []
    if log_path.is_file():
        for line in log_path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if rec.get("event") == "train" and "cong_final" in rec:
                steps.append(rec["step"])
                anchor.append(rec.get("cong_anchor", np.nan))
                final.append(rec["cong_final"])
                stage.append(rec.get("stage", 0))
    return {"step": np.asarray(steps), "cong_anchor": np.asarray(anchor, dtype=float),
            "cong_final": np.asarray(final, dtype=float), "stage": np.asarray(stage)}


def plot_congruence(log_path: Path, plan: StagePlan, out_png: Path, title: str = "") -> Path | None:
    """PNG of the mimic loss to the current anchor and to the final teacher along training, stages shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from facerco.utils.io import atomic_path

    data = read_congruence(log_path)
    if len(data["step"]) == 0:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for s in plan.stages:
        if s.index % 2:
            ax.axvspan(s.start, s.end, color="0.92", lw=0)
        ax.text((s.start + s.end) / 2, 1.0, s.anchor, transform=ax.get_xaxis_transform(), ha="center", va="bottom",
                fontsize=7, rotation=0)
    ax.plot(data["step"], data["cong_anchor"], marker=".", label="to current anchor")
    ax.plot(data["step"], data["cong_final"], marker=".", label="to final teacher")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("mimic loss (congruence)")
    ax.set_title(title or "RCO congruence", pad=14)
    ax.legend()
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return out_png



def congruence_per_stage(log_path: Path, plan: StagePlan, followed: list[str]) -> dict[str, dict[str, Any]]:
    """summary.json's ``congruence_per_stage``: per stage index, the anchor followed and the last logged values."""
    cong = read_congruence(log_path)
    per_stage = {}
    for s in plan.stages:
        sel = (cong["step"] > s.start) & (cong["step"] <= s.end)
        if sel.any():
            per_stage[str(s.index)] = {"anchor": followed[s.index],
                                       "cong_anchor_last": float(cong["cong_anchor"][sel][-1]),
                                       "cong_final_last": float(cong["cong_final"][sel][-1])}
    return per_stage
