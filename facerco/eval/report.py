"""Evaluation reports: ``report.json`` + ``report.md`` + ROC / CMC PNGs, written atomically; several models per report.

Inputs are the dicts returned by :func:`facerco.eval.verification.evaluate_verification` (one per model and set),
:func:`facerco.eval.identification.evaluate_identification` (one per model) and
:func:`facerco.eval.ijb.evaluate_ijb` (one per model).
"""

from __future__ import annotations

import datetime as _dt
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from facerco.utils.io import atomic_path, atomic_write_text, write_json

__all__ = ["write_report", "format_markdown"]

VerificationResults = Mapping[str, Mapping[str, Mapping[str, Any]]]  # model -> set -> result
IdentificationResults = Mapping[str, Mapping[str, Any]]  # model -> result
IJBResults = Mapping[str, Mapping[str, Any]]  # model -> result


def _pct(x: float) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def _verification_md(results: VerificationResults) -> list[str]:
    fars = sorted({f for sets in results.values() for r in sets.values() for f in r["tar_at_far"]}, key=float,
                  reverse=True)
    head = "| model | set | pairs | accuracy % (± std) | best threshold | " + " | ".join(
        f"TAR@FAR={f} %" for f in fars) + " | XNorm |"
    lines = ["## Verification (10-fold, flip-fused, squared-L2 thresholds 0:0.01:4)", "", head,
             "|" + "---|" * (6 + len(fars))]
    for model, sets in results.items():
        for name, r in sets.items():
            tars = " | ".join(_pct(r["tar_at_far"].get(f, {}).get("tar")) for f in fars)
            lines.append(f"| {model} | {name} | {r['num_pairs']} | {_pct(r['accuracy'])} ± {_pct(r['accuracy_std'])}"
                         f" | {r['best_threshold']:.3f} | {tars} | {r['xnorm']:.2f} |")
    norms = [r["features"] for sets in results.values() for r in sets.values() if "features" in r]
    if norms:
        lines += ["", "Embeddings are checked (no NaN/Inf, no zero rows) and L2-normalized by the evaluator; their "
                  f"norms as given were {min(n['min_norm'] for n in norms):.4g} to "
                  f"{max(n['max_norm'] for n in norms):.4g}."]
    return lines + [""]


def _norms_md(features: Mapping[str, Any]) -> str:
    """One sentence on what the evaluator did to the features and how far from unit length they were."""
    parts = []
    for role in ("probes", "distractors"):
        f = features.get(role)
        if f:
            parts.append(f"{role} norms {f['min_norm']:.4g} to {f['max_norm']:.4g} ({f['renormalized_rows']} of "
                         f"{f['rows']} rows not unit length)")
    done = "L2-normalized by the evaluator" if features.get("normalized_by_evaluator") else "used as given"
    return f"Features checked (no NaN/Inf, no zero rows) and {done}: {'; '.join(parts)}."


def _identification_md(results: IdentificationResults) -> list[str]:
    lines = ["## Identification (MegaFace Challenge 1 protocol, exact)", ""]
    for model, r in results.items():
        fars = list(r["sizes"][0]["tar_at_far"]) if r["sizes"] else []
        lines += [f"### {model}", "",
                  f"{r['num_probes']} probes of {r['num_identities']} identities, {r['num_genuine_ordered']} "
                  f"(probe, gallery) pairs, {r['num_distractors']} distractors; noise: {r['num_probe_noise']} "
                  f"probes, {r['num_distractor_noise']} distractors; backend {r['backend']} on {r['device']}.", "",
                  *([_norms_md(r["features"]), ""] if r.get("features") else []),
                  "| distractors | rank-1 % | rank-5 % | rank-10 % | " + " | ".join(
                      f"TAR@FAR={f} %" for f in fars) + " |",
                  "|" + "---|" * (4 + len(fars))]
        for s in r["sizes"]:
            cmc = s["cmc"]
            r5 = _pct(cmc[4]) if len(cmc) >= 5 else "–"
            tars = " | ".join(_pct(s["tar_at_far"][f]) for f in fars)
            lines.append(f"| {s['size']:,} | {_pct(s['rank1'])} | {r5} | {_pct(cmc[-1])} | {tars} |")
        lines.append("")
    lines += ["Ties count against the gallery image: a hit at rank k needs sim(p, g) strictly above the k-th "
              "distractor similarity; TAR uses the smallest threshold with at most floor(FAR·#impostors) impostors "
              "strictly above it.", ""]
    return lines


def _ijb_md(results: IJBResults) -> list[str]:
    """1:1 and 1:N tables of IJB-B/C template evaluations: the paper-comparable rows first, each other rule named."""
    first = next(iter(results.values()))
    fars = list(first["verification"]["tar_at_far"])
    lines = [f"## {first['target']} template evaluation (media-then-template pooling)", "",
             "| model | norm-score | detector-score | templates | pairs (genuine) | repeated rows (scored) | rule | "
             + " | ".join(f"TAR@FAR={f} %" for f in fars) + " |", "|" + "---|" * (7 + len(fars))]
    for model, r in results.items():
        v, o = r["verification"], r["options"]
        head = (f"| {model} | {'on' if o['norm_score'] else 'off'} | {'on' if o['detector_score'] else 'off'} | "
                f"{r['num_templates']:,} | {v['num_pairs']:,} ({v['num_genuine']:,}) | {v['repeated_rows']}")
        lines.append(f"{head} | **eval_ijbc.py (papers)** | " + " | ".join(
            f"**{_pct(v['tar_at_far'][f]['tar'])}**" for f in fars) + " |")
        lines.append(f"{head} | exact | " + " | ".join(_pct(v["exact"]["tar_at_far"][f]["tar"]) for f in fars)
                     + " |")
    lines += ["", "eval_ijbc.py (the row to put beside a paper's): the TPR of the sklearn ROC point whose FPR is "
              "nearest to the target, over every pair-file row (the point's FPR is in report.json). exact: τ = the "
              "(m+1)-th highest impostor score, m = ⌊FAR·#impostors⌋, TAR = #{genuine > τ}/#genuine.", ""]
    ident = {m: r["identification"] for m, r in results.items() if r.get("identification")}
    if ident:
        lines += _ijb_1n_md(first["target"], ident)
    return lines


def _ijb_1n_md(target: str, ident: Mapping[str, Mapping[str, Any]]) -> list[str]:
    lines = [f"### {target} 1:N identification (mixed probes)", "",
             "| model | gallery | rule | mated / non-mated probes | rank-1 % | rank-5 % | rank-10 % | TPIR@FPIR=0.01 % "
             "| TPIR@FPIR=0.1 % |", "|" + "---|" * 9]

    def row(model: str, gallery: str, rule: str, probes: str, ranks: Mapping[str, Any], t1: Any, t2: Any) -> str:
        return (f"| {model} | {gallery} | {rule} | {probes} | " + " | ".join(_pct(ranks[k]) for k in ("1", "5", "10"))
                + f" | {_pct(t1)} | {_pct(t2)} |")

    for model, r in ident.items():
        names = " + ".join(r["galleries"])
        h, m = r["headline"], r["mean_of_galleries"]
        lines.append(row(model, f"**{names}**", "**ijb_evals.py (papers)**", f"{r['num_probes']:,} probes",
                         h["rank"], h["tpir_at_fpir"]["0.01"]["tpir"],
                         h["tpir_at_fpir"]["0.1"]["tpir"]))
        for g, x in r["galleries"].items():
            t = x["tpir_at_fpir"]
            lines.append(row(model, g, "ijb_evals.py", f"{x['num_mated']:,} / {x['num_nonmated']:,}", x["rank"],
                             t["0.01"]["tpir"], t["0.1"]["tpir"]))
        lines.append(row(model, names, "mean of galleries, exact τ", "–", m["rank"], m["tpir_at_fpir"]["0.01"]["tpir"],
                         m["tpir_at_fpir"]["0.1"]["tpir"]))
        c = r.get("insightface", {})
        if "rank" in c:
            lines.append(row(model, "G1∪G2", "ijb_1n.py (closed set)", "all mated", c["rank"],
                             c["tpir_at_far"]["0.01"], c["tpir_at_far"]["0.1"]))
    lines += ["", "ijb_evals.py (the row to put beside a paper's): rank-k = rank-k hits in both galleries / #probe "
              "templates; TPIR = mean of the galleries' TPIR, τ = the m-th highest best score of the non-mated probes "
              "(the highest when m = 0), m = ⌊FPIR·#non-mated⌋; a hit needs the mate at rank 1 and above τ. mean of "
              "galleries, exact τ: rank-k = mean of the galleries' rank-k over their mated probes; τ = the (m+1)-th "
              "highest (at most m non-mated probes above it). ijb_1n.py: G1∪G2 as one closed-set gallery.", ""]
    return lines


def _plot_ijb_roc(results: IJBResults, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for model, r in results.items():
        roc = r["verification"]["roc"]
        ax.plot(roc["far"], [100 * t for t in roc["tar"]], label=model)
    target = next(iter(results.values()))["target"]
    ax.set(xscale="log", xlabel="false accept rate", ylabel="true accept rate %",
           title=f"ROC: {target} 1:1 template pairs (exact TAR at each FAR)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, path)
    plt.close(fig)


def format_markdown(verification: VerificationResults | None, identification: IdentificationResults | None,
                    meta: Mapping[str, Any] | None = None, plots: list[str] | None = None,
                    ijb: IJBResults | None = None) -> str:
    """The Markdown body of ``report.md``."""
    lines = ["# facerco evaluation report", ""]
    for key, value in (meta or {}).items():
        lines.append(f"- {key}: {value}")
    if meta:
        lines.append("")
    if verification:
        lines += _verification_md(verification)
    if identification:
        lines += _identification_md(identification)
    if ijb:
        lines += _ijb_md(ijb)
    for p in plots or []:
        lines += [f"![{Path(p).stem}]({Path(p).name})", ""]
    return "\n".join(lines)


def _save(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def _plot_verification_roc(results: VerificationResults, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = sorted({s for v in results.values() for s in v})
    fig, axes = plt.subplots(1, len(sets), figsize=(5 * len(sets), 4), squeeze=False)
    for ax, name in zip(axes[0], sets):
        for model, per_set in results.items():
            if name in per_set:
                roc = per_set[name]["roc"]
                ax.plot(roc["fpr"], roc["tpr"], label=f"{model} ({100 * per_set[name]['accuracy']:.2f}%)")
        ax.set_xscale("symlog", linthresh=1e-3)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_title(f"ROC: {name}")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    _save(fig, path)
    plt.close(fig)


def _plot_cmc(results: IdentificationResults, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for model, r in results.items():
        big = r["sizes"][-1]
        ax1.plot(range(1, len(big["cmc"]) + 1), [100 * c for c in big["cmc"]], marker="o",
                 label=f"{model} ({big['size']:,} distractors)")
        ax2.plot([s["size"] for s in r["sizes"]], [100 * s["rank1"] for s in r["sizes"]], marker="o", label=model)
    ax1.set_xlabel("rank")
    ax1.set_ylabel("identification rate %")
    ax1.set_title("CMC")
    ax2.set_xscale("log")
    ax2.set_xlabel("number of distractors")
    ax2.set_ylabel("rank-1 %")
    ax2.set_title("rank-1 vs distractors")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)


def _plot_identification_roc(results: IdentificationResults, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for model, r in results.items():
        big = r["sizes"][-1]
        if big["roc"]["far"]:
            ax.plot(big["roc"]["far"], [100 * t for t in big["roc"]["tar"]], marker=".",
                    label=f"{model} ({big['size']:,} distractors)")
    ax.set_xscale("log")
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate %")
    ax.set_title("1:N verification ROC (probes × distractors)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)


def write_report(
    out_dir: str | os.PathLike[str],
    verification: VerificationResults | None = None,
    identification: IdentificationResults | None = None,
    meta: Mapping[str, Any] | None = None,
    ijb: IJBResults | None = None,
) -> dict[str, Path]:
    """Write report.json, report.md and the plots into ``out_dir``; returns the paths written by name."""
    if not verification and not identification and not ijb:
        raise ValueError("nothing to report: give verification, identification and/or ijb results")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    if verification:
        paths["roc"] = out / "roc.png"
        _plot_verification_roc(verification, paths["roc"])
    if identification:
        paths["cmc"] = out / "cmc.png"
        _plot_cmc(identification, paths["cmc"])
        paths["identification_roc"] = out / "identification_roc.png"
        _plot_identification_roc(identification, paths["identification_roc"])
    if ijb:
        paths["ijb_roc"] = out / "ijb_roc.png"
        _plot_ijb_roc(ijb, paths["ijb_roc"])
    from facerco import __version__

    meta = {"facerco": __version__, "created": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            **(meta or {})}
    paths["json"] = out / "report.json"
    write_json(paths["json"], {"meta": meta, "verification": verification or {},
                               "identification": identification or {}, **({"ijb": ijb} if ijb else {})})
    paths["md"] = out / "report.md"
    plots = [str(p) for k, p in paths.items() if k not in ("json", "md")]
    atomic_write_text(paths["md"], format_markdown(verification, identification, meta, plots, ijb))
    return paths
