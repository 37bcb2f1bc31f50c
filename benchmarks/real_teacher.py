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
    "mimic_relu": ["model.activation=relu"],  # issue 20: the activation onnxruntime runs in int8
    "mimic_s1": ["train.seed=1"],  # issue 20, second amendment: a second seed of the PReLU/ReLU pair
    "mimic_relu_s1": ["model.activation=relu", "train.seed=1"],
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
            crop = _aligned(out) / rel
            if not crop.is_file():
                fallback.append(rel)
            if dst.is_file():
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            if crop.is_file():
                os.link(crop, dst)
            else:
                write_image(dst, warp_face(read_image(src), median, 112))
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


# ---- report ------------------------------------------------------------------------------------------------------
_DLIB: dict[str, Any] = {}


def _dlib_init(median: np.ndarray) -> None:
    import dlib

    from facerco.prep.detectors._dlib import find_dlib_model
    from facerco.route.published import DLIB_MODEL_FILE

    _DLIB["det"] = dlib.get_frontal_face_detector()
    _DLIB["sp"] = dlib.shape_predictor(str(find_dlib_model("shape_predictor_5_face_landmarks.dat")))
    _DLIB["net"] = dlib.face_recognition_model_v1(str(find_dlib_model(DLIB_MODEL_FILE)))
    _DLIB["median"] = median


def _dlib_own(path: str) -> tuple[np.ndarray, bool]:
    """dlib's own pipeline, as face_recognition runs it: HOG (1 upsample), the 5-point shape of the largest face,
    compute_face_descriptor. A photo without a detection gets the median five points (as every model does)."""
    from facerco.prep.align import read_image
    from facerco.prep.views import dlib_shape

    image = read_image(path)
    rects = _DLIB["det"](image, 1)
    if rects:
        shape = _DLIB["sp"](image, max(rects, key=lambda r: r.area()))
    else:
        shape = dlib_shape(_DLIB["median"])
    return np.asarray(_DLIB["net"].compute_face_descriptor(image, shape), np.float32), bool(rects)


def dlib_embeddings(paths: list[Path], median: np.ndarray, workers: int) -> tuple[np.ndarray, int]:
    """dlib's own descriptors of ``paths`` (in order) and how many photos it detected nothing in."""
    from tqdm import tqdm

    from facerco.utils.workers import process_context

    with process_context().Pool(workers, initializer=_dlib_init, initargs=(median,)) as pool:
        rows = list(tqdm(pool.imap(_dlib_own, [str(p) for p in paths], chunksize=8), total=len(paths),
                         desc="dlib (own pipeline)", unit="img"))
    return np.stack([r[0] for r in rows]), sum(1 for r in rows if not r[1])


def _median_ms(fn: Any, repeats: int) -> float:
    import time

    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def _trials(fn: Any, repeats: int, trials: int = 5) -> dict[str, Any]:
    """``trials`` medians of ``repeats`` timed calls each: the headline is their median, the spread their range."""
    medians = [_median_ms(fn, repeats) for _ in range(trials)]
    return {"ms": float(np.median(medians)), "trials_ms": medians, "spread_ms": [min(medians), max(medians)],
            "repeats_per_trial": repeats}


def onnx_ms_per_face(path: Path, crop: np.ndarray, repeats: int = 200) -> dict[str, Any]:
    """ms of one face (batch 1, one intra-op thread) in onnxruntime: five trials of ``repeats`` runs."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    x = ((crop.astype(np.float32) - 127.5) / 127.5).transpose(2, 0, 1)[None].copy()
    name = sess.get_inputs()[0].name
    return _trials(lambda: sess.run(None, {name: x}), repeats)


def dlib_ms_per_face(photo: Path, landmarks: np.ndarray, repeats: int = 30) -> dict[str, Any]:
    """ms of dlib's descriptor of one 150 chip (detection and chip cutting excluded): five trials."""
    from facerco.prep.align import read_image
    from facerco.route.published import DlibTeacher, _find_dlib_model

    teacher = DlibTeacher(_find_dlib_model("dlib"))
    chip = teacher.view.crop(read_image(photo), landmarks)
    return _trials(lambda: teacher.net.compute_face_descriptor(chip), repeats)


def _pair_indices(pairs_file: Path, root: Path, where: dict[str, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from facerco.data.pairs import read_lfw_pairs

    pairs = read_lfw_pairs(pairs_file, root)
    return (np.array([where[str(a)] for a, _, _ in pairs]), np.array([where[str(b)] for _, b, _ in pairs]),
            np.array([s for _, _, s in pairs], bool))


class Evaluator:
    """Test and validation pairs plus test 1:N (people with >= 2 images as probes, singletons as distractors) over
    one embedding pass of ``eval_crops`` (no flip fusion, for every model)."""

    def __init__(self, out: Path, split: dict[str, Any]) -> None:
        root = out / "eval_crops"
        self.root = root
        self.paths = sorted(root.glob("*/*.jpg"))
        where = {str(p): i for i, p in enumerate(self.paths)}
        self.test = _pair_indices(out / "pairs_test.txt", root, where)
        self.val = _pair_indices(out / "pairs_val.txt", root, where)
        test_people = set(split["test"])
        names = [p.parent.name for p in self.paths]
        counts = split["counts"]
        self.probe_idx = np.array([i for i, n in enumerate(names) if n in test_people and counts[n] >= 2])
        self.distractor_idx = np.array([i for i, n in enumerate(names) if n in test_people and counts[n] == 1])
        label_of = {n: k for k, n in enumerate(sorted(test_people))}
        self.labels = np.array([label_of[names[i]] for i in self.probe_idx])

    def metrics(self, emb: np.ndarray) -> dict[str, Any]:
        from facerco.eval.identification import evaluate_identification
        from facerco.eval.verification import evaluate_verification

        a, b, same = self.test
        test = evaluate_verification(emb[a], emb[b], same, nfolds=len(TEST_SETS), fars=(1e-3,))
        a, b, same = self.val
        val = evaluate_verification(emb[a], emb[b], same, nfolds=10, fars=(1e-3,))
        unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
        ident = evaluate_identification(unit[self.probe_idx].astype(np.float32), self.labels,
                                        unit[self.distractor_idx].astype(np.float32),
                                        sizes=[len(self.distractor_idx)], fars=(1e-3,), backend="torch",
                                        device="cpu", progress=False)["sizes"][-1]
        return {"pairs_acc": test["accuracy"], "pairs_acc_std": test["accuracy_std"],
                "pairs_fold_acc": test["fold_accuracies"], "tar_far1e-3": test["tar_at_far"]["0.001"]["tar"],
                "val_pairs_acc": val["accuracy"], "rank1": ident["rank1"],
                "rank1_tar_far1e-3": ident["tar_at_far"]["0.001"]}


def _student_embeddings(model: Path | str, paths: list[Path]) -> np.ndarray:
    from facerco.eval.features import extract_embeddings

    return extract_embeddings(str(model), [str(p) for p in paths], batch_size=128, device="cpu", flip=False,
                              progress=False).emb


def _export(ckpt: Path, dest: Path, out: Path, int8: bool) -> dict[str, Any]:
    """`facerco export onnx` (int8: calibrated on training views, gated on validation pairs); returns its card."""
    import json
    import subprocess

    cmd = [sys.executable, "-m", "facerco.cli", "export", "onnx", str(ckpt), "-o", str(dest),
           "--check", str(out / "views" / "images"), "--eval-pairs", str(out / "pairs_val.txt"),
           "--eval-root", str(out / "eval_crops")]
    if int8:
        cmd += ["--int8", "--calibrate", str(out / "views" / "images"), "--max-drop", "1.0"]
    from facerco.export.deploy import rejected_path

    if not dest.is_file() and not rejected_path(dest).is_file():
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=False)
    from facerco.export.card import card_paths

    built = dest if dest.is_file() else rejected_path(dest)  # a rejected file is timed too, and says so
    card_json = card_paths(built)[0]
    card = json.loads(card_json.read_text()) if card_json.is_file() else {}
    return {"file": str(built), "rejected": built != dest, "verification": card.get("verification"),
            "gates": card.get("gates"), "failures": card.get("failures"),
            "int8_speedup_vs_float32": (card.get("quantization") or {}).get("speedup_vs_float32")}


def _timing(t: dict[str, Any]) -> dict[str, Any]:
    return {"ms_per_face": t["ms"], "ms_per_face_trials": t["trials_ms"], "ms_per_face_spread": t["spread_ms"],
            "timing_repeats_per_trial": t["repeats_per_trial"]}


def _model_facts(ckpt: Path) -> dict[str, Any]:
    from facerco.models.checkpoint import load_model
    from facerco.models.complexity import measure_complexity

    model = load_model(ckpt).model
    c = measure_complexity(model, (112, 112))
    return {"arch": model.meta.name, "params": int(c.params), "macs": int(c.macs),
            "embedding_size": int(model.meta.embedding_size)}


def cmd_report(args: argparse.Namespace) -> None:
    """Evaluate dlib and every finished student on the same crops and pairs, time them, write the JSON and table."""
    import json

    from _provenance import Recorder

    from facerco.prep.align import read_image, read_report
    from facerco.utils.io import write_json

    recorder = Recorder(counted=True, allow_dirty=args.allow_dirty, threads=1)
    out = Path(args.out).resolve()
    lfw = _lfw_dir(args)
    split = split_people(lfw)
    fallback = write_eval_set(out, lfw)["fallback_crops"]
    ev = Evaluator(out, split)
    report = read_report(_aligned(out) / "align_report.csv")
    median = np.median(np.stack([np.array(r["landmarks"].split(), np.float32) for r in report.values()
                                 if r.get("landmarks")]), axis=0).reshape(5, 2)
    dlib_file = out / "dlib_embeddings.npy"
    if not dlib_file.is_file():
        emb, missed = dlib_embeddings([lfw / p.relative_to(ev.root) for p in ev.paths], median, args.workers)
        np.save(dlib_file, emb)
        (out / "dlib_missed.txt").write_text(str(missed))
    sample = ev.paths[ev.test[0][0]]
    rel = sample.relative_to(ev.root).as_posix()
    lm = np.array(report[rel]["landmarks"].split(), np.float32).reshape(5, 2)
    teacher = {"name": "dlib_face_recognition_resnet_model_v1 (own HOG detection + 5-point chip)",
               **ev.metrics(np.load(dlib_file)), **_timing(dlib_ms_per_face(lfw / rel, lm)),
               "missed_detections": int((out / "dlib_missed.txt").read_text())}
    crop = read_image(sample)
    students: dict[str, Any] = {}
    for name in STUDENTS:
        ckpt = out / "runs" / name / "student.safetensors"
        if not ckpt.is_file():
            print(f"{name}: no finished run ({ckpt}); left out")
            continue
        summary = json.loads((out / "runs" / name / "summary.json").read_text())
        fp32 = out / "export" / f"{name}.onnx"
        fp32.parent.mkdir(exist_ok=True)
        export = _export(ckpt, fp32, out, int8=False)
        row = {**_model_facts(ckpt), **ev.metrics(_student_embeddings(ckpt, ev.paths)),
               **_timing(onnx_ms_per_face(Path(export["file"]), crop)), "train_seconds": summary.get("seconds"),
               "steps": summary.get("step"), "torch_threads": summary.get("torch_threads"), "export": export}
        students[name] = row
    if not students:
        raise SystemExit("no finished student runs under " + str(out / "runs"))
    recommended = max((n for n in students if not n.endswith("_s1")),  # chosen on validation only, among the
                      key=lambda n: students[n]["val_pairs_acc"])  # seed-0 runs (second seeds are for comparisons)
    # int8 of the recommended student and (issue 20 amendment) of every mimicking one, PReLU and ReLU
    for name in sorted({recommended, *(n for n in students if n.startswith("mimic") and not n.endswith("_s1"))}):
        export8 = _export(out / "runs" / name / "student.safetensors", out / "export" / f"{name}_int8.onnx", out,
                          int8=True)
        int8_file = Path(export8["file"])
        if int8_file.is_file():
            students[f"{name}_int8"] = {**{k: students[name][k] for k in ("arch", "params", "macs")},
                                        **ev.metrics(_student_embeddings(int8_file, ev.paths)),
                                        **_timing(onnx_ms_per_face(int8_file, crop)), "export": export8}
    result = {"benchmark": "real_teacher", "protocol": "benchmarks/README.md#real-teacher-benchmark-protocol",
              "split": {"test_sets": [s + 1 for s in TEST_SETS], "val_sets": [s + 1 for s in VAL_SETS],
                        "train_people": len(split["train"]), "test_pairs": len(ev.test[2]),
                        "val_pairs": len(ev.val[2]), "probes": len(ev.probe_idx),
                        "distractors": len(ev.distractor_idx), "fallback_crops": fallback},
              "teacher": teacher, "students": students, "recommended": recommended,
              "goals": _goals(teacher, students, recommended),
              "provenance": recorder.finish()}
    write_json(out / "real_teacher.json", result)
    table = format_table(result)
    (out / "real_teacher.md").write_text(table)
    print(table)
    if args.results:
        write_json(ROOT / "benchmarks" / "results" / "real_teacher.json", result)
        (ROOT / "benchmarks" / "results" / "real_teacher.md").write_text(table)


def _goals(teacher: dict[str, Any], students: dict[str, Any], rec: str) -> dict[str, Any]:
    r = students[rec]
    goals = {"accuracy_ratio": r["pairs_acc"] / teacher["pairs_acc"],
             "speedup_fp32": teacher["ms_per_face"] / r["ms_per_face"]}
    if f"{rec}_int8" in students:
        goals["speedup_int8"] = teacher["ms_per_face"] / students[f"{rec}_int8"]["ms_per_face"]
    if "mimic" in students and "scratch" in students:
        goals["mimic_minus_scratch_points"] = 100 * (students["mimic"]["pairs_acc"] - students["scratch"]["pairs_acc"])
    pairs = [(p, r) for p, r in (("mimic", "mimic_relu"), ("mimic_s1", "mimic_relu_s1"))
             if p in students and r in students]
    if pairs:  # issue 20 amendments: ReLU - PReLU test accuracy, per seed and their mean
        diffs = [100 * (students[r]["pairs_acc"] - students[p]["pairs_acc"]) for p, r in pairs]
        goals["relu_minus_prelu_points"] = {"per_seed": diffs, "mean": float(np.mean(diffs))}
    goals["met"] = {"accuracy >= 0.95x dlib": goals["accuracy_ratio"] >= 0.95,
                    "fp32 >= 10x faster than dlib": goals["speedup_fp32"] >= 10,
                    "mimic >= scratch + 10 points": goals.get("mimic_minus_scratch_points", -1e9) >= 10}
    return goals


def _ms(row: dict[str, Any]) -> str:
    low, high = row.get("ms_per_face_spread") or (row["ms_per_face"], row["ms_per_face"])
    return f"{row['ms_per_face']:.2f} ({low:.2f}–{high:.2f})"


def format_table(result: dict[str, Any]) -> str:
    t = result["teacher"]
    head = ("| model | params | MMACs | test pairs acc % (3 sets) | TAR@FAR=1e-3 % | 1:N rank-1 % | val acc % "
            "| ms/face, 1 thread (range of 5 trials) |\n|---|---|---|---|---|---|---|---|")
    lines = [head, "| dlib ResNet (teacher, own pipeline) | – | – | "
                   f"{100 * t['pairs_acc']:.2f} ± {100 * t['pairs_acc_std']:.2f} | {100 * t['tar_far1e-3']:.2f} | "
                   f"{100 * t['rank1']:.2f} | {100 * t['val_pairs_acc']:.2f} | {_ms(t)} |"]
    for name, r in result["students"].items():
        star = " (recommended)" if name == result["recommended"] else ""
        star += " (rejected by its export gates)" if (r.get("export") or {}).get("rejected") else ""
        lines.append(f"| {name}{star} | {r['params'] / 1e6:.3f}M | {r['macs'] / 1e6:.0f} | "
                     f"{100 * r['pairs_acc']:.2f} ± {100 * r['pairs_acc_std']:.2f} | {100 * r['tar_far1e-3']:.2f} | "
                     f"{100 * r['rank1']:.2f} | {100 * r['val_pairs_acc']:.2f} | {_ms(r)} |")
    g = result["goals"]
    lines.append("")
    lines.append(f"recommended: {result['recommended']} (best validation accuracy); accuracy "
                 f"{g['accuracy_ratio']:.3f}x dlib; {g['speedup_fp32']:.1f}x faster (fp32)"
                 + (f", {g['speedup_int8']:.1f}x (int8)" if "speedup_int8" in g else "")
                 + (f"; mimic − scratch {g['mimic_minus_scratch_points']:+.2f} points"
                    if "mimic_minus_scratch_points" in g else "")
                 + (f"; ReLU − PReLU {g['relu_minus_prelu_points']['mean']:+.2f} points (seeds: "
                    + ", ".join(f"{d:+.2f}" for d in g["relu_minus_prelu_points"]["per_seed"]) + ")"
                    if "relu_minus_prelu_points" in g else ""))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="stage", required=True)
    for name, fn in (("prepare", cmd_prepare), ("cache", cmd_cache), ("train", cmd_train), ("report", cmd_report)):
        p = sub.add_parser(name)
        p.add_argument("--students", nargs="+", choices=list(STUDENTS), default=list(STUDENTS))
        p.add_argument("--threads", type=int, default=1, help="torch threads per student process")
        p.add_argument("--set", nargs="*", default=[], help="extra dotted overrides for every student")
        p.add_argument("--allow-dirty", action="store_true", help="report: record from a dirty tree (recorded)")
        p.add_argument("--results", action="store_true",
                       help="report: also write benchmarks/results/real_teacher.{json,md}")
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
