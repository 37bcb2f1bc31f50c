"""Moved: `facerco compare` now lives in :mod:`facerco.distill.compare`; this module only re-exports its names.

Kept so that ``facerco.train.compare.builtin_variants``, ``run_compare``, ``VARIANTS`` and the rest still import for
existing scripts. New code imports from :mod:`facerco.distill.compare`.
"""

from __future__ import annotations

from facerco.distill.compare import (
    DEFAULT_VARIANTS,
    VARIANTS,
    RunRecord,
    Variant,
    builtin_variants,
    check_validation_not_test,
    file_variants,
    final_congruence,
    format_table,
    run_compare,
)

__all__ = ["VARIANTS", "DEFAULT_VARIANTS", "Variant", "RunRecord", "builtin_variants", "file_variants",
           "run_compare", "format_table", "check_validation_not_test", "final_congruence"]
