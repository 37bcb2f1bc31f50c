"""facerco.eval: features, verification, MegaFace-style identification, IJB-B/C and reports.

The entry points, one per evaluation (what ``facerco eval verify|megaface|ijb`` call; each writes the report files
and returns report.json's content): :func:`run_verification`, :func:`run_megaface`, :func:`run_ijb`
(:mod:`facerco.eval.run`).

- :mod:`facerco.eval.features`: the one flip-fused, L2-normalized extractor (models, checkpoints, ONNX; folders,
  ``.rec``, lists, ``.bin``), ``.npy`` + index files and MegaFace devkit feature files.
- :mod:`facerco.eval.verification`: the exact 10-fold protocol (numpy); ``verify_bin`` / ``verify_pairs``.
- :mod:`facerco.eval.identification`: exact streaming 1:N identification (rank-1, CMC, TAR@FAR) with torch or
  faiss backends (numpy at import time; torch/faiss loaded when searching).
- :mod:`facerco.eval.report`: report.json + report.md + ROC/CMC plots.
- :mod:`facerco.eval.checks`: the feature check of every entry point (no NaN/Inf or zero rows; L2 normalization
  with the norms on record).
- :mod:`facerco.eval.feature_cache`: ``eval megaface``'s feature cache, keyed on the model's sha256 and the sources.
- :mod:`facerco.eval.megaface_features`: ``eval megaface``'s probes and distractors (``.npy``, devkit folders with
  FaceScrub labels from paths, or images through the feature cache), checked.

Submodules are imported explicitly (``from facerco.eval.verification import ...``) so that importing the numeric
protocol does not import torch; the entry points import what they need when called.
"""

from facerco.eval.run import run_ijb, run_megaface, run_verification

__all__ = ["run_ijb", "run_megaface", "run_verification"]
