"""Old import paths still work: facerco.train.student / facerco.train.compare re-export facerco.distill's objects."""

from __future__ import annotations

import importlib

import pytest

OLD_TO_NEW = {
    "facerco.train.student": {
        "AnchorSource": "anchors", "OnlineAnchors": "anchors", "CachedAnchors": "anchors", "LoadPoint": "anchors",
        "teacher_logits": "anchors", "route_loader": "anchors", "StudentTask": "task", "GateCallback": "gate",
        "ProbeContext": "planning", "plan_anchors": "planning", "build_plan": "planning", "prepare_plan": "planning",
        "write_plan": "planning", "probe_images": "planning", "make_probe": "planning",
        "route_probe_outputs": "planning", "student_probe_fn": "planning", "read_congruence": "plots",
        "plot_congruence": "plots", "build_student": "builders", "open_train_dataset": "builders",
        "default_head": "builders", "build_validator": "builders", "run_distill": "job", "DistillResult": "job",
    },
    "facerco.train.compare": {
        name: "compare" for name in ("VARIANTS", "DEFAULT_VARIANTS", "Variant", "RunRecord", "builtin_variants",
                                     "file_variants", "run_compare", "format_table", "check_validation_not_test",
                                     "final_congruence")
    },
}


@pytest.mark.parametrize("old", sorted(OLD_TO_NEW))
def test_old_names_are_the_new_objects(old):
    shim = importlib.import_module(old)
    for name, module in OLD_TO_NEW[old].items():
        new = importlib.import_module(f"facerco.distill.{module}")
        assert getattr(shim, name) is getattr(new, name), f"{old}.{name} is not facerco.distill.{module}.{name}"
    assert set(shim.__all__) == set(OLD_TO_NEW[old])  # every re-export is pinned here, none is missing


def test_cli_and_engine_entry_points_reach_the_new_job():
    """`facerco train student` names the job by string; it must load the same function as `facerco distill`."""
    from facerco.commands.train import JOBS
    from facerco.distill.job import run_distill

    module, func = JOBS["student"][0].split(":")
    assert getattr(importlib.import_module(module), func) is run_distill
