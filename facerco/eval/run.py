"""The evaluations as library calls: :func:`run_verification`, :func:`run_megaface` and :func:`run_ijb`.

Each takes paths and options, evaluates every model, writes ``report.json`` + ``report.md`` + plots into ``out``
and returns the report as written to ``report.json`` (``{"meta", "verification", "identification"[, "ijb"]}``).
``facerco eval verify|megaface|ijb`` parse their options, call these and print a summary of the returned report,
so a notebook gets exactly what the command writes. Status lines (feature-cache reuse, IJB set sizes) and progress
bars are printed as the work goes, as the extractor does.

Heavy modules (torch, faiss) are imported inside the functions: importing :mod:`facerco.eval` stays cheap.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["model_names", "run_verification", "run_megaface", "run_ijb"]

PathLike = str | os.PathLike[str]


def model_names(models: Sequence[PathLike], names: Sequence[str] | None) -> list[str]:
    """Report names of ``models``: ``names`` when given (one per model), else ``<parent folder>/<file stem>``
    (a run's ``route/epoch_006`` and a student's ``seed0/student`` stay apart)."""
    if names:
        if len(names) != len(models):
            raise ValueError(f"--names gives {len(names)} names for {len(models)} models")
        return list(names)
    paths = [Path(m) for m in models]
    return [p.parent.name + "/" + p.stem if p.parent.name else p.stem for p in paths]


def _report(out: Path, **sections: Any) -> dict[str, Any]:
    """Write the report files and return report.json's content (what a caller compares runs by)."""
    from facerco.eval.report import write_report
    from facerco.utils.io import read_json

    paths = write_report(out, **sections)
    return read_json(paths["json"])


# ---------------------------------------------------------------------------------------------------------------
# verification
# ---------------------------------------------------------------------------------------------------------------


def run_verification(models: Sequence[PathLike], bins: Sequence[PathLike] = (), pairs: PathLike | None = None,
                     root: PathLike | None = None, *, ext: str = "jpg", names: Sequence[str] | None = None,
                     nfolds: int = 10, fars: Sequence[float] = (1e-3, 1e-4), out: PathLike = "eval_out/verify",
                     arch: str | None = None, batch_size: int = 256, device: str = "auto", num_workers: int = 2,
                     progress: bool = True) -> dict[str, Any]:
    """10-fold verification of every model on insightface ``.bin`` sets or on an LFW-style ``pairs.txt``.

    Args:
        models: checkpoints (``.safetensors``/``.pth``) or ``.onnx`` files; they share one report.
        bins: verification ``.bin`` files (one result per file, named by its stem).
        pairs, root: an LFW ``pairs.txt`` and the folder holding ``<name>/<name>_NNNN.<ext>`` (instead of bins).
        ext: image extension for ``pairs``.
        names: report names of the models (default: :func:`model_names`).
        nfolds, fars: folds of the protocol and the FAR targets of TAR@FAR.
        out: report folder.
        arch: architecture of an insightface ``.pth`` state_dict.
        batch_size, device, num_workers: extraction settings (workers decode ``pairs`` images).
        progress: show progress bars.

    Returns:
        report.json's content: ``report["verification"][model][set]`` is each result.
    """
    from facerco.eval.features import load_embedder
    from facerco.eval.verification import verify_bin, verify_pairs

    if bool(bins) == bool(pairs):
        raise ValueError("give either --bin FILE [FILE ...] or --pairs pairs.txt --root DIR")
    if pairs and not root:
        raise ValueError("--pairs needs --root (the folder holding <name>/<name>_NNNN.jpg)")
    results: dict[str, dict[str, Any]] = {}
    for name, model_path in zip(model_names(models, names), models, strict=True):
        model = load_embedder(model_path, device, arch)
        per_set: dict[str, Any] = {}
        for b in bins:
            per_set[Path(b).stem] = verify_bin(model, b, batch_size, device, nfolds, list(fars), progress=progress)
        if pairs:
            per_set[Path(pairs).stem] = verify_pairs(model, pairs, root, batch_size, device, nfolds, list(fars),
                                                     ext=ext, progress=progress, num_workers=num_workers)
        results[name] = per_set
    return _report(Path(out), verification=results, meta={"command": "eval verify"})


# ---------------------------------------------------------------------------------------------------------------
# megaface
# ---------------------------------------------------------------------------------------------------------------


def run_megaface(probes: PathLike, distractors: PathLike, models: Sequence[PathLike] | None = None, *,
                 names: Sequence[str] | None = None, out: PathLike = "eval_out/megaface", algo: str = "facerco",
                 distractor_root: PathLike | None = None, sizes: Sequence[int] | None = None,
                 subset_list: Sequence[str] = (), seed: int = 0, probe_noise: PathLike | None = None,
                 distractor_noise: PathLike | None = None, fars: Sequence[float] = (1e-6, 1e-5, 1e-4),
                 backend: str = "auto", chunk_size: int = 16384, arch: str | None = None, batch_size: int = 256,
                 device: str = "auto", num_workers: int = 2) -> dict[str, Any]:
    """MegaFace-style 1:N identification (Challenge 1 protocol) of probes against nested distractor sets.

    Features come from ``.npy`` files (``export embeddings``), devkit feature folders (``<image>_<algo>.bin``), or
    images embedded with each of ``models`` through a feature cache under ``out/features/<name>`` (a rerun with
    the same model file and images reuses them). Every row is checked (no NaN/Inf or zero rows) and probes must
    carry identity labels.

    Args:
        probes, distractors: the two roles (see above; a distractor image list may be relative to
            ``distractor_root``).
        models: models that embed image sources; None: the sources are features already (reported as
            ``features``).
        names: report names of the models.
        out: report folder.
        algo: devkit feature suffix.
        sizes: distractor sizes (default 10, 100, ... and all); ``subset_list``: ``SIZE=FILE`` specs of explicit
            subsets instead of the random nested ones drawn with ``seed``.
        probe_noise, distractor_noise: lists of mislabeled probes (replaced by their identity mean) and of
            distractors showing probe identities (never matched).
        fars: FAR targets of TAR@FAR.
        backend, chunk_size: the search (passed to :func:`facerco.eval.identification.evaluate_identification`).
        arch, batch_size, device, num_workers: model loading and extraction settings.

    Returns:
        report.json's content: ``report["identification"][model]`` is each result.
    """
    from facerco.eval.megaface_features import FeatureOptions

    model_list: list[PathLike | None] = list(models) if models else [None]
    if names and len(names) != len(model_list):
        raise ValueError(f"--names gives {len(names)} names for {len(model_list)} models")
    report_names = list(names) if names else (model_names(list(models), None) if models else ["features"])
    opts = FeatureOptions(Path(out), algo, None if distractor_root is None else str(distractor_root), arch,
                          batch_size, device, num_workers)
    search = {"sizes": None if sizes is None else list(sizes), "subset_list": list(subset_list), "seed": seed,
              "fars": list(fars), "probe_noise": probe_noise, "distractor_noise": distractor_noise,
              "backend": backend, "device": device, "chunk_size": chunk_size}
    results = {name: _megaface_model(str(probes), str(distractors), model, name, opts, search)
               for name, model in zip(report_names, model_list, strict=True)}
    return _report(Path(out), identification=results, meta={"command": "eval megaface", "probes": str(probes),
                                                            "distractors": str(distractors)})


def _megaface_model(probes: str, distractors: str, model: PathLike | None, name: str, opts: Any,
                    search: dict[str, Any]) -> dict[str, Any]:
    """One model's identification result: its probe and distractor features (read, or extracted through its
    feature cache), checked, then searched."""
    import numpy as np

    from facerco.eval.checks import UNIT_TOL
    from facerco.eval.feature_cache import FeatureCache, model_key
    from facerco.eval.identification import evaluate_identification
    from facerco.eval.megaface_features import noise_mask, role_features, subset_lists

    model_str = None if model is None else str(model)
    cache = None
    if model_str is not None:
        cache = FeatureCache(opts.out / "features" / name.replace("/", "_"), model_key(model_str, opts.arch))
    probe_set, p_stats = role_features(probes, "probes", model_str, opts, cache)
    dist, d_stats = role_features(distractors, "distractors", model_str, opts, cache)
    if (np.asarray(probe_set.labels) < 0).any():
        raise ValueError(f"{probes}: probes need identity labels (an identity folder, or a .csv index)")
    res = evaluate_identification(
        np.asarray(probe_set.emb, np.float32), probe_set.labels, dist.emb, sizes=search["sizes"],
        subsets=subset_lists(search["subset_list"], dist.paths), seed=search["seed"], fars=search["fars"],
        probe_noise=noise_mask(search["probe_noise"], probe_set.paths, "probes"),
        distractor_noise=noise_mask(search["distractor_noise"], dist.paths, "distractors"),
        backend=search["backend"], device=search["device"], chunk_size=search["chunk_size"], normalize=True)
    res["features"] = {"normalized_by_evaluator": True, "unit_tolerance": UNIT_TOL,
                       "probes": p_stats.as_dict(), "distractors": d_stats.as_dict()}
    return res


# ---------------------------------------------------------------------------------------------------------------
# ijb
# ---------------------------------------------------------------------------------------------------------------


def _say_meta(meta: Any) -> None:
    """The IJB set's sizes before the (long) extraction starts, so a wrong root or target shows at once."""
    pairs = meta.pairs
    print(f"{meta.files.target}: {len(meta.templates):,} faces, {len(meta.template_ids):,} templates, "
          f"{len(pairs.t1):,} pairs ({int(pairs.label.sum()):,} genuine; {pairs.repeats} repeated rows, scored as "
          "listed" + (f"; first: {pairs.first_repeat}" if pairs.first_repeat else "") + ")")
    if meta.probes is None:
        print(f"{meta.files.target}: 1:N files absent: identification skipped")
    else:
        sizes = ", ".join(f"{g} {len(t):,}" for g, t, _ in meta.galleries)
        print(f"{meta.files.target} 1:N: gallery templates {sizes}; {len(meta.probes[0]):,} mixed probe templates")


def run_ijb(models: Sequence[PathLike], root: PathLike, target: str = "IJBC", *,
            names: Sequence[str] | None = None, out: PathLike = "eval_out/ijb", norm_score: bool = True,
            detector_score: bool = True, block: int = 8192, workers: int = 0, arch: str | None = None,
            batch_size: int = 256, device: str = "auto", num_workers: int = 2) -> dict[str, Any]:
    """IJB-B/IJB-C template evaluation of every model: 1:1 TAR@FAR and, when the 1:N files are there, open-set
    identification (G1/G2 or S1/S2), with the rules of insightface's eval_ijbc.py / ijb_evals.py beside the exact
    ones.

    Features are extracted resumably (``block`` faces at a time) into ``out/features/<name>`` and reused by a rerun
    with the same model; each model's pair scores are saved there too (``report["ijb"][name]["scores_file"]``).

    Args:
        models: checkpoints or ``.onnx`` files; they share one report.
        root: IJB_ROOT holding ``<target>/meta`` and ``<target>/loose_crop``.
        target: ``IJBC`` or ``IJBB`` (any case).
        names: report names of the models.
        out: report folder.
        norm_score, detector_score: keep the embedding norm in the pooling and weight faces by their detector
            score (eval_ijbc.py's use_norm_score / use_detector_score).
        block: faces per resumable extraction block; workers: threads for the pair scores (0: every core).
        arch, batch_size, device, num_workers: model loading and extraction settings.

    Returns:
        report.json's content: ``report["ijb"][model]`` is each result; ``report["meta"]`` holds the peak memory
        and the time taken.
    """
    import time

    from facerco.eval.ijb import load_meta
    from facerco.eval.ijb_features import resource_usage

    start = time.perf_counter()
    report_names = model_names(models, names)
    meta = load_meta(root, target.upper())
    _say_meta(meta)
    extract = {"arch": arch, "batch_size": batch_size, "device": device, "num_workers": num_workers,
               "block": block}
    score = {"norm_score": norm_score, "detector_score": detector_score, "workers": workers or os.cpu_count() or 1}
    results = {name: _ijb_model(meta, model, Path(out) / "features" / name.replace("/", "_"), extract, score)
               for name, model in zip(report_names, models, strict=True)}
    usage = resource_usage(start)
    return _report(Path(out), ijb=results, meta={"command": "eval ijb", "root": str(root),
                                                 "target": meta.files.target, "norm_score": norm_score,
                                                 "detector_score": detector_score, **usage})


def _ijb_model(meta: Any, model: PathLike, folder: Path, extract: dict[str, Any],
               score: dict[str, Any]) -> dict[str, Any]:
    """One model's IJB result: its features (extracted or resumed), the evaluation, and its saved pair scores."""
    import numpy as np

    from facerco.eval.feature_cache import model_key
    from facerco.eval.features import load_embedder
    from facerco.eval.ijb import evaluate_ijb
    from facerco.eval.ijb_features import ijb_features
    from facerco.utils.io import atomic_path

    embedder = load_embedder(model, extract["device"], extract["arch"])
    feats, norms = ijb_features(meta, embedder, folder, model_key(str(model), extract["arch"]), extract["batch_size"],
                                extract["device"], extract["num_workers"], extract["block"])
    res, scores = evaluate_ijb(meta, feats, norms[:, 1], score["norm_score"], score["detector_score"],
                               workers=score["workers"])
    res["xnorm"] = float(np.mean(norms[:, 0]))
    res["scores_file"] = str(folder / f"{meta.files.target.lower()}_pair_scores.npy")
    with atomic_path(res["scores_file"]) as tmp, open(tmp, "wb") as handle:
        np.save(handle, scores)
    return res
