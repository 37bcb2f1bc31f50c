"""facerco.models.info.model_info at the library level (the `model-info` CLI is tested in test_models.py)."""

from __future__ import annotations

import pytest

from facerco.models import create_model
from facerco.models.complexity import count_params
from facerco.models.info import model_info


def test_model_info_counts_on_meta_and_scales_macs_with_input_size():
    at_112, at_64 = model_info("mbf_0.8m"), model_info("mbf_0.8m", input_size=64)
    assert at_112["params"] == count_params(create_model("mbf_0.8m"))
    assert at_64["params"] == count_params(create_model("mbf_0.8m", input_size=64))  # the GDC kernel follows the size
    assert at_112["input_size"] == [112, 112] and at_64["input_size"] == [64, 64]
    assert 0 < int(at_64["macs"]) < int(at_112["macs"])  # type: ignore[call-overload]
    r50 = model_info("r50", embedding_size=128)
    assert r50["name"] == "iresnet50" and r50["aliases"] == ["r50"] and r50["embedding_size"] == 128
    with pytest.raises(ValueError, match="unknown model"):
        model_info("r101")
