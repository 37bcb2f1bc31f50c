"""Distil a real published teacher (dlib's ResNet) into a 0.8M student on LFW photos, and measure both on faces
neither has seen (issue 19).

Pre-registered protocol (benchmarks/README.md, "Real-teacher benchmark protocol", written before the counted runs):

* **Data**: ``../shared/data/lfw_deepfunneled`` aligned by ``facerco align --detector dlib --select central``
  (five ArcFace points per photo in ``align_report.csv``). The official ``pairs.txt`` View 2 sets are
  identity-disjoint. **Test**: sets 1-3 (1,800 pairs, threshold cross-validated over those three sets); **validation**:
  set 4 (600 pairs), the only data any choice may read; **training**: every aligned photo of every person in none of
  sets 1-4 (labels unused by mimicking; the scratch ArcFace baseline uses them). 1:N (secondary): test people with
  ≥ 2 images as probes and gallery, the test sets' single-image people as distractors.
* **Teacher**: dlib's ResNet (``facerco route import dlib``), on its own 150 chip cut from the photo.
* **Students** (``mbf_0.8m``, 112x112): ``mimic`` (unlabeled, centred targets), ``mimic_arcface`` (+ ArcFace on the
  training labels), ``scratch`` (ArcFace only). Same budget (``--epochs``) for each.
* **Endpoint**: test pairs accuracy of each student vs dlib on the same pairs; secondary TAR@FAR=1e-3 of the
  pairs, 1:N rank-1, and per-face embedding time on one CPU thread (ONNX fp32 and int8, dlib's descriptor).

Stages (each resumable, each reads what the previous wrote under ``--out``)::

    python benchmarks/real_teacher.py prepare --out bench_out/real_teacher   # split + teacher import
    python benchmarks/real_teacher.py cache   --out bench_out/real_teacher   # views + dlib rows (the long part)
    python benchmarks/real_teacher.py train   --out bench_out/real_teacher --students mimic scratch mimic_arcface
    python benchmarks/real_teacher.py report  --out bench_out/real_teacher   # evaluation, speed, JSON, table
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

ROOT = Path(__file__).resolve().parents[1]
TEST_SETS = (0, 1, 2)
VAL_SETS = (3,)


def _lfw_dir(args: argparse.Namespace) -> Path:
    base = Path(args.data or os.environ.get("FACERCO_REAL_DATA", ROOT.parent / "shared" / "data"))
    lfw = base / "lfw_deepfunneled" if (base / "lfw_deepfunneled").is_dir() else base
    if not (lfw / "pairs.txt").is_file():
        raise SystemExit(f"{lfw}: LFW (lfw_deepfunneled with pairs.txt) not found; pass --data")
    return lfw


def split_people(lfw: Path) -> dict[str, Any]:
    """Test / validation people from the official sets; training people = everyone else."""
    from facerco.data.lfw_split import _read_official_pairs, count_people

    pairs = _read_official_pairs(lfw / "pairs.txt")
    counts = count_people(lfw)
    people_of: dict[int, set[str]] = {}
    for p in pairs:
        people_of.setdefault(p.fold, set()).update({p.name1, p.name2})
    test = sorted(set().union(*(people_of[f] for f in TEST_SETS)))
    val = sorted(set().union(*(people_of[f] for f in VAL_SETS)))
    held = set(test) | set(val)
    train = sorted(n for n in counts if n not in held)
    return {"test": test, "val": val, "train": train, "counts": counts,
            "test_pairs": [p for p in pairs if p.fold in TEST_SETS],
            "val_pairs": [p for p in pairs if p.fold in VAL_SETS]}


def _aligned(out: Path) -> Path:
    return out / "aligned"


def cmd_prepare(args: argparse.Namespace) -> None:
    """Align LFW (resumable) and import dlib's ResNet as a one-point route."""
    from facerco.prep.align import align_tree
    from facerco.prep.detectors import DetectorSpec
    from facerco.route.published import import_teacher

    out = Path(args.out)
    lfw = _lfw_dir(args)
    counts = align_tree(lfw, _aligned(out), DetectorSpec("dlib", {"upsample": 1, "points": "5"}), policy="central",
                        workers=args.workers)
    print(f"align: {counts}")
    if not (out / "teacher" / "route.json").is_file():
        print(f"teacher: {import_teacher('dlib', out / 'teacher')}")


def train_files(out: Path, lfw: Path) -> list[str]:
    """Aligned crops of the training people (relative to the aligned folder)."""
    from facerco.prep.align import list_images

    train = set(split_people(lfw)["train"])
    return [f for f in list_images(_aligned(out)) if f.split("/")[0] in train]


def cmd_cache(args: argparse.Namespace) -> None:
    """Student crops and dlib's rows for ``--views`` views of every training photo."""
    from facerco.route.views_cache import build_views_cache

    out = Path(args.out)
    lfw = _lfw_dir(args)
    files = train_files(out, lfw)
    print(f"training photos: {len(files)}; views per photo: {args.views}")
    manifest = build_views_cache(out / "teacher", _aligned(out), lfw, out / "views", views=args.views, seed=0,
                                 workers=args.workers, files=files)
    print(f"cache: {manifest}")


STUDENTS = {  # name -> overrides of configs/student/real_teacher_dlib.yaml (same budget for every student)
    "mimic": [],
    "mimic_arcface": ["distill.arcface_weight=1.0"],
    "scratch": ["distill.mimic_weight=0.0", "distill.arcface_weight=1.0", "distill.target_center=false",
                "distill.cache="],  # no teacher: nothing to read
}
CONFIG = ROOT / "configs" / "student" / "real_teacher_dlib.yaml"


def _pairs_text(pairs: list[Any], sets: int) -> str:
    per_set = len(pairs) // (2 * sets)
    lines = [f"{sets}\t{per_set}"]
    for p in pairs:
        second = f"{p.index2}" if p.same else f"{p.name2}\t{p.index2}"
        lines.append(f"{p.name1}\t{p.index1}\t{second}")
    return "\n".join(lines) + "\n"


def write_eval_set(out: Path, lfw: Path) -> dict[str, Any]:
    """``eval_crops/`` (test and validation people's aligned crops, hard links; photos the detector missed are
    warped with the median five points of the detected ones) and the two pairs files."""
    from facerco.prep.align import read_image, read_report, warp_face, write_image
    from facerco.utils.io import atomic_write_text

    split = split_people(lfw)
    report = read_report(_aligned(out) / "align_report.csv")
    found = [np.array(r["landmarks"].split(), np.float32) for r in report.values() if r.get("landmarks")]
    median = np.median(np.stack(found), axis=0).reshape(5, 2)
    fallback = []
    for person in split["test"] + split["val"]:
        for src in sorted((lfw / person).glob("*.jpg")):
            rel = f"{person}/{src.name}"
            dst = out / "eval_crops" / rel
            if dst.is_file():
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            crop = _aligned(out) / rel
            if crop.is_file():
                os.link(crop, dst)
            else:
                write_image(dst, warp_face(read_image(src), median, 112))
                fallback.append(rel)
    atomic_write_text(out / "pairs_test.txt", _pairs_text(split["test_pairs"], len(TEST_SETS)))
    atomic_write_text(out / "pairs_val.txt", _pairs_text(split["val_pairs"], len(VAL_SETS)))
    return {"fallback_crops": fallback}


def cmd_train(args: argparse.Namespace) -> None:
    """Train the students (one `facerco distill` process each, in parallel, ``--threads`` torch threads each)."""
    import subprocess

    out = Path(args.out).resolve()
    write_eval_set(out, _lfw_dir(args))
    procs = []
    for name in args.students:
        overrides = [f"data.train={out / 'views' / 'images'}", f"data.val_pairs={out / 'pairs_val.txt'}",
                     f"data.val_root={out / 'eval_crops'}", f"train.output={out / 'runs' / name}",
                     f"distill.teacher_run={out / 'teacher'}", f"distill.cache={out / 'views' / 'cache'}",
                     *STUDENTS[name], *args.set]
        cmd = [sys.executable, "-m", "facerco.cli", "distill", str(CONFIG), *overrides, "--threads", str(args.threads)]
        log = open(out / f"train_{name}.log", "a")  # noqa: SIM115 - closed when the process ends
        print(f"{name}: {' '.join(cmd)}", flush=True)
        procs.append((name, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log))
    for name, proc, log in procs:
        code = proc.wait()
        log.close()
        print(f"{name}: exit {code}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="stage", required=True)
    for name, fn in (("prepare", cmd_prepare), ("cache", cmd_cache), ("train", cmd_train)):
        p = sub.add_parser(name)
        p.add_argument("--students", nargs="+", choices=list(STUDENTS), default=list(STUDENTS))
        p.add_argument("--threads", type=int, default=1, help="torch threads per student process")
        p.add_argument("--set", nargs="*", default=[], help="extra dotted overrides for every student")
        p.add_argument("--out", default="bench_out/real_teacher")
        p.add_argument("--data", default="", help="folder holding lfw_deepfunneled (default ../shared/data)")
        p.add_argument("--workers", type=int, default=2)
        p.add_argument("--views", type=int, default=2)
        p.set_defaults(func=fn)
    args = parser.parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
