"""benchmarks/study_numbers.py (issue 22, item 3): the numbers the READMEs quote about the RCO studies, recomputed
from the committed JSON."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import study_numbers  # noqa: E402


@pytest.fixture(scope="module")
def numbers() -> dict:
    return {"lfw": study_numbers.lfw(), "fmnist": study_numbers.fmnist()}


def test_lfw_secondary_endpoints_and_power(numbers):
    res = numbers["lfw"]
    ends = res["endpoints"]
    assert [m for m, e in ends.items() if e["role"] == "secondary"] == ["pairs_acc", "tar_far1e-3"]
    phase = ends["tar_far1e-3"]["vs_mimic_final"]["phase"]
    assert (round(phase["mean"], 2), phase["wins"], phase["n"], round(phase["p_holm"], 3)) == (1.51, 5, 5, 0.077)
    eeis = ends["tar_far1e-3"]["vs_mimic_final"]["rco_eeis_multi"]
    assert round(eeis["mean"], 2) == -2.13 and eeis["ci95"][1] < 0 and eeis["wins"] == 0
    rank1 = ends["rank1"]["vs_mimic_final"]  # the tables' numbers
    assert [round(rank1[n]["mean"], 2) for n in ("rco_eeis_multi", "lockstep", "phase")] == [-0.55, 0.0, 0.43]
    assert round(rank1["phase"]["p_holm"], 2) == 0.58
    power = res["power"]
    assert round(power["detectable_80"], 1) == 1.4 and power["seeds_for"]["0.5"] == 22


def test_fmnist_kd_effect_pilots_and_gss_anchors(numbers):
    res = numbers["fmnist"]
    kd = res["kd_final_minus_scratch"]
    assert round(kd["test"]["mean"], 2) == 0.07 and kd["test"]["ci95"][0] < 0 < kd["test"]["ci95"][1]
    assert round(kd["val"]["mean"], 2) == 0.11
    assert res["failed_pilots"] == {"n": 15, "ahead": [0.12, 0.28, 0.3, 0.38], "level": 1, "behind": 10}
    assert [p["order"] for p in res["pilots"] if p["passed"]] == [14]
    anchors = res["gss_anchors"]
    assert sorted(anchors) == list(range(1, 11))
    assert {s for s, a in anchors.items() if a != "ep1 → ep4 → ep5 → ep16"} == {5, 9}
    assert anchors[5] == "ep1 → ep2 → ep4 → ep16" and anchors[9] == "ep1 → ep3 → ep4 → ep16"


def test_report_lines(numbers):
    out = "\n".join(study_numbers.report(numbers))
    assert "tar_far1e-3 [secondary]" in out and "detectable at 80 % power with 5 seeds 1.38" in out
