"""The CPU-scale LFW protocol: a documented, seeded identity split of ``lfw_deepfunneled`` and its preparation.

Split (``lfw_split``), a pure function of the folder listing, ``pairs.txt`` and the arguments:

* **train**: ``num_train`` people drawn without replacement (``numpy.random.default_rng(seed)``) from the people
  with at least ``min_train_images`` (4) images, taken in sorted name order (unchanged since the first version, so
  teachers trained on it stay valid);
* **val**: ``num_val`` (170) people drawn from the remaining people with at least 2 images, and
  ``num_val_distractors`` (600) **val distractors** drawn from the people with exactly one image, both with a
  second stream ``numpy.random.default_rng([seed, 1])``. Validation identification: val people as probes/gallery,
  val distractors as distractors. Model selection (route metrics, ``strategy: best``, gate, GSS, early stopping)
  reads this part only;
* **test**: every other person with at least 2 images (never trained on, never validated on; probe/gallery for
  1:N), and **test distractors** (``distractors``): every other single-image person, MegaFace-style;
* **held-out (test) pairs**: the pairs of the official ``pairs.txt`` (View 2, 10 folds) whose two people are both
  test people or test distractors. To keep the 10-fold layout that verification expects, each fold keeps its first
  ``m`` matched and first ``m`` mismatched surviving pairs, with ``m`` the smallest such count over folds;
* **validation pairs**: the same rule applied to the official pairs whose two people are both in val or val
  distractors, when every fold keeps at least ``val_pairs_per_set`` (60) matched and mismatched pairs. Otherwise
  (the usual case: a mismatched official pair needs *both* its people drawn into a ~15 % slice, so on real LFW
  237 matched but only 48 mismatched pairs survive, 2 in the poorest fold) the validation pairs are
  **generated** from the val images with the ``[seed, 2]`` stream, in the same format: per pair, a matched pair
  picks a val person uniformly, then two of their images; a mismatched pair picks two people uniformly from val +
  val distractors (as the official mismatched pairs mix in single-image people), then one image each; no pair
  repeats; 10 folds of ``val_pairs_per_set`` matched then mismatched pairs (folds are not identity-disjoint: they
  only serve the threshold cross-validation).
  ``split.json`` records which (``val_pairs_source``: ``official`` or ``generated``).

``num_train=400, seed=0`` on the real LFW gives 400 train / 170 val (+600 val distractors, 1,200 generated
validation pairs) / 1,110 test people (+3,469 test distractors) and 10 x 133 + 133 = 2,660 held-out pairs (3,000
before the validation split took its people out).

Preparation (``prepare_lfw``): the deep-funneled images are 250x250 and roughly centred; instead of detecting
landmarks we cut the fixed box x 50..200, y 40..190 (150x150, eyes near 43 % and mouth near 80 % of the height,
close to the ArcFace 112x112 template) and resize it to ``size`` with area interpolation. That is acceptable for
a CPU-scale study; real 5-point alignment is the job of ``facerco align``. The output folder holds
``train/<person>/<person>_NNNN.jpg`` (train people), ``val/<person>/...`` (val people and val distractors, the
images of ``pairs_val.txt``), ``eval/<person>/...`` (test people and test distractors, the images of
``pairs_heldout.txt``), the two pairs files (LFW pairs format) and ``split.json``. Re-running resumes (done images
are skipped) and upgrades a folder prepared before the validation split (its val people move from ``eval/`` to
``val/``).

Command line: ``python -m facerco.data.lfw_split ../shared/data/lfw_deepfunneled data/lfw_cpu``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from tqdm import tqdm

from facerco.utils.io import atomic_path, atomic_write_text, read_json, write_json

__all__ = [
    "CROP_BOX",
    "SPLIT_VERSION",
    "LFWPair",
    "LFWSplit",
    "count_people",
    "lfw_split",
    "format_pairs",
    "prepare_lfw",
    "read_split",
    "is_prepared",
    "prepare_hint",
    "main",
]

CROP_BOX = (50, 40, 200, 190)  # x0, y0, x1, y1 in the 250x250 deep-funneled image
SPLIT_VERSION = 2  # 1: train/test only; 2: + validation people, distractors and pairs_val.txt
FOLDERS = {"train": "train", "val": "val", "test": "eval"}  # split part -> image folder under the output
PAIRS_FILES = {"val": "pairs_val.txt", "test": "pairs_heldout.txt"}


@dataclass(frozen=True)
class LFWPair:
    name1: str
    index1: int
    name2: str
    index2: int
    same: bool
    fold: int


@dataclass
class LFWSplit:
    """Identity lists and pairs of one seeded split (``distractors`` are the test distractors)."""

    seed: int
    num_train: int
    train: list[str]
    test: list[str]
    distractors: list[str]
    pairs: list[LFWPair] = field(default_factory=list)  # held-out (test), balanced, in 10-fold order
    pairs_per_set: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    val: list[str] = field(default_factory=list)
    val_distractors: list[str] = field(default_factory=list)
    val_pairs: list[LFWPair] = field(default_factory=list)  # 10-fold order, official or generated
    val_pairs_per_set: int = 0
    val_pairs_source: str = ""  # "official" | "generated"

    def summary(self) -> dict[str, int]:
        return {
            "train_identities": len(self.train),
            "train_images": sum(self.counts[n] for n in self.train),
            "val_identities": len(self.val),
            "val_images": sum(self.counts[n] for n in self.val),
            "val_distractors": len(self.val_distractors),
            "val_pairs": len(self.val_pairs),
            "test_identities": len(self.test),
            "test_images": sum(self.counts[n] for n in self.test),
            "test_distractors": len(self.distractors),
            "heldout_pairs": len(self.pairs),
        }


def count_people(root: str | os.PathLike[str]) -> dict[str, int]:
    """Images per person: ``people_counts.tsv`` when present (checked against nothing else), else a folder scan."""
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"{base}: LFW folder not found")
    tsv = base / "people_counts.tsv"
    counts: dict[str, int] = {}
    if tsv.is_file():
        for lineno, line in enumerate(tsv.read_text(encoding="utf-8").splitlines(), 1):
            parts = line.split("\t")
            if len(parts) != 2 or not parts[1].strip().isdigit():
                raise ValueError(f"{tsv}: line {lineno}: expected 'name<TAB>count', got {line!r}")
            counts[parts[0]] = int(parts[1])
        return counts
    for entry in sorted(os.scandir(base), key=lambda e: e.name):
        if entry.is_dir() and not entry.name.startswith("."):
            n = sum(1 for f in os.scandir(entry.path) if f.name.lower().endswith(".jpg"))
            if n:
                counts[entry.name] = n
    if not counts:
        raise ValueError(f"{base}: no person folders with .jpg images")
    return counts


def _read_official_pairs(path: Path) -> list[LFWPair]:
    lines = path.read_text(encoding="utf-8").splitlines()
    head = lines[0].split()
    if len(head) != 2:
        raise ValueError(f"{path}: line 1: expected 'folds<TAB>pairs_per_set', got {lines[0]!r}")
    per_set = int(head[1])
    out = []
    for lineno, line in enumerate(lines[1:], 2):
        f = line.split()
        if not f:
            continue
        fold = len(out) // (2 * per_set)
        if len(f) == 3:
            out.append(LFWPair(f[0], int(f[1]), f[0], int(f[2]), True, fold))
        elif len(f) == 4:
            out.append(LFWPair(f[0], int(f[1]), f[2], int(f[3]), False, fold))
        else:
            raise ValueError(f"{path}: line {lineno}: expected 3 or 4 fields, got {line!r}")
    return out


def _balanced(official: list[LFWPair], people: set[str], cap: int | None = None) -> tuple[list[LFWPair], int]:
    """The official pairs inside ``people``, each fold cut to the same ``m`` matched and ``m`` mismatched pairs.

    Why: 10-fold verification assumes equal folds of half matched, half mismatched pairs, like View 2. ``m`` is the
    smallest surviving count over folds and kinds, at most ``cap``.
    """
    kept = [p for p in official if p.name1 in people and p.name2 in people]
    folds = sorted({p.fold for p in official})
    per = min(
        min(sum(1 for p in kept if p.fold == f and p.same), sum(1 for p in kept if p.fold == f and not p.same))
        for f in folds
    )
    per = per if cap is None else min(per, cap)
    balanced: list[LFWPair] = []
    for f in folds:
        balanced += [p for p in kept if p.fold == f and p.same][:per]
        balanced += [p for p in kept if p.fold == f and not p.same][:per]
    return balanced, per


def _draw(rng: np.random.Generator, pool: Sequence[str], k: int) -> list[str]:
    """``k`` names drawn without replacement from ``pool`` (sorted), returned sorted."""
    return sorted(pool[i] for i in rng.choice(len(pool), size=k, replace=False))


def _generate_pairs(
    same_pool: Sequence[str], any_pool: Sequence[str], counts: dict[str, int], per_set: int, folds: int,
    rng: np.random.Generator,
) -> list[LFWPair]:
    """Seeded LFW-style pairs from the given people (rule in the module docstring), in fold order."""
    need = per_set * folds
    available = sum(counts[n] * (counts[n] - 1) // 2 for n in same_pool)
    if available < need:
        raise ValueError(f"only {available} distinct matched pairs among {len(same_pool)} validation people; "
                         f"{need} needed (lower val_pairs_per_set or raise num_val)")
    matched: dict[tuple[str, int, int], None] = {}
    while len(matched) < need:
        name = same_pool[int(rng.integers(len(same_pool)))]
        i, j = sorted(int(x) + 1 for x in rng.choice(counts[name], size=2, replace=False))
        matched.setdefault((name, i, j))
    mismatched: dict[tuple[str, int, str, int], None] = {}
    for _ in range(100 * need):
        if len(mismatched) == need:
            break
        a, b = sorted(any_pool[int(k)] for k in rng.choice(len(any_pool), size=2, replace=False))
        mismatched.setdefault((a, int(rng.integers(counts[a])) + 1, b, int(rng.integers(counts[b])) + 1))
    if len(mismatched) < need:
        raise ValueError(f"only {len(mismatched)} distinct mismatched pairs found among {len(any_pool)} "
                         f"validation people; {need} needed")
    same, diff = list(matched), list(mismatched)
    out: list[LFWPair] = []
    for f in range(folds):
        out += [LFWPair(n, i, n, j, True, f) for n, i, j in same[f * per_set:(f + 1) * per_set]]
        out += [LFWPair(a, i, b, j, False, f) for a, i, b, j in diff[f * per_set:(f + 1) * per_set]]
    return out


def _val_pairs(split: LFWSplit, official: list[LFWPair] | None, per_set: int, rng: np.random.Generator) -> None:
    """Fill ``split.val_pairs``: official pairs when every fold keeps ``per_set`` of each kind, else generated."""
    people = set(split.val) | set(split.val_distractors)
    if official and _balanced(official, people)[1] >= per_set:
        split.val_pairs, split.val_pairs_per_set = _balanced(official, people, cap=per_set)
        split.val_pairs_source = "official"
        return
    folds = len({p.fold for p in official}) if official else 10
    split.val_pairs = _generate_pairs(split.val, sorted(people), split.counts, per_set, folds, rng)
    split.val_pairs_per_set, split.val_pairs_source = per_set, "generated"


def lfw_split(
    root: str | os.PathLike[str], num_train: int = 400, seed: int = 0, min_train_images: int = 4,
    num_val: int = 170, num_val_distractors: int = 600, val_pairs_per_set: int = 60,
) -> LFWSplit:
    """The seeded identity split described in the module docstring."""
    base = Path(root)
    counts = count_people(base)
    eligible = sorted(n for n, c in counts.items() if c >= min_train_images)
    if not 0 < num_train <= len(eligible):
        raise ValueError(
            f"{base}: num_train must be in [1, {len(eligible)}] (people with >= {min_train_images} images)"
        )
    train = _draw(np.random.default_rng(seed), eligible, num_train)
    rest = sorted(n for n, c in counts.items() if c >= 2 and n not in set(train))
    singles = sorted(n for n, c in counts.items() if c == 1)
    if not 0 < num_val < len(rest):
        raise ValueError(f"{base}: num_val must be in [1, {len(rest) - 1}] (people with >= 2 images outside train, "
                         "leaving at least one test person)")
    if not 0 <= num_val_distractors < len(singles):
        raise ValueError(f"{base}: num_val_distractors must be in [0, {len(singles) - 1}] (single-image people, "
                         "leaving at least one test distractor)")
    if val_pairs_per_set < 1:
        raise ValueError(f"{base}: val_pairs_per_set must be >= 1, got {val_pairs_per_set}")
    rng_val = np.random.default_rng([seed, 1])
    val, val_d = _draw(rng_val, rest, num_val), _draw(rng_val, singles, num_val_distractors)
    test = sorted(set(rest) - set(val))
    split = LFWSplit(seed=seed, num_train=num_train, train=train, test=test,
                     distractors=sorted(set(singles) - set(val_d)), counts=counts, val=val, val_distractors=val_d)
    pairs_txt = base / "pairs.txt"
    official = _read_official_pairs(pairs_txt) if pairs_txt.is_file() else None
    if official:
        split.pairs, split.pairs_per_set = _balanced(official, set(split.test) | set(split.distractors))
        if not split.pairs:
            raise ValueError(f"{pairs_txt}: some fold keeps no matched or no mismatched pair between test people; "
                             "lower num_train or num_val")
    _val_pairs(split, official, val_pairs_per_set, np.random.default_rng([seed, 2]))
    return split


def format_pairs(split: LFWSplit, part: Literal["test", "val"] = "test") -> str:
    """The held-out (``test``) or validation pairs in the LFW ``pairs.txt`` format (``read_lfw_pairs``)."""
    pairs, per_set = (split.pairs, split.pairs_per_set) if part == "test" else (split.val_pairs,
                                                                              split.val_pairs_per_set)
    lines = [f"{len({p.fold for p in pairs})}\t{per_set}"]
    for p in pairs:
        if p.same:
            lines.append(f"{p.name1}\t{p.index1}\t{p.index2}")
        else:
            lines.append(f"{p.name1}\t{p.index1}\t{p.name2}\t{p.index2}")
    return "\n".join(lines) + "\n"


def crop_resize(img_bgr: np.ndarray, size: int, box: tuple[int, int, int, int] = CROP_BOX) -> np.ndarray:
    """Cut ``box`` (scaled when the image is not 250x250) and resize to ``size`` x ``size``."""
    h, w = img_bgr.shape[:2]
    sx, sy = w / 250.0, h / 250.0
    x0, y0, x1, y1 = round(box[0] * sx), round(box[1] * sy), round(box[2] * sx), round(box[3] * sy)
    return cv2.resize(img_bgr[y0:y1, x0:x1], (size, size), interpolation=cv2.INTER_AREA)


def _write_people(root: Path, out: Path, names: list[str], size: int, desc: str) -> int:
    n = 0
    for name in tqdm(names, desc=desc, unit="person"):
        src_dir = root / name
        dst_dir = out / name
        dst_dir.mkdir(parents=True, exist_ok=True)
        for src in sorted(src_dir.glob("*.jpg")):
            dst = dst_dir / src.name
            n += 1
            if dst.exists():
                continue
            img = cv2.imread(str(src), cv2.IMREAD_COLOR)
            if img is None:
                raise ValueError(f"{src}: cannot decode image")
            ok, buf = cv2.imencode(".jpg", crop_resize(img, size), [cv2.IMWRITE_JPEG_QUALITY, 95])
            if not ok:
                raise ValueError(f"{src}: cannot encode the cropped image")
            with atomic_path(dst) as tmp:
                tmp.write_bytes(buf.tobytes())
    return n


def _parts(split: LFWSplit) -> dict[str, list[str]]:
    """People per split part, keyed like ``FOLDERS`` (each part's distractors live with it)."""
    return {"train": split.train, "val": split.val + split.val_distractors, "test": split.test + split.distractors}


def _check_disjoint(split: LFWSplit) -> None:
    """Refuse to write a split whose parts share a person or whose pairs leave their part (a bug, not bad input)."""
    parts = _parts(split)
    owner: dict[str, str] = {}
    for part, names in parts.items():
        for name in names:
            if owner.setdefault(name, part) != part:
                raise RuntimeError(f"lfw split: {name} is in both {owner[name]} and {part}")
    for part, pairs in (("val", split.val_pairs), ("test", split.pairs)):
        outside = {n for p in pairs for n in (p.name1, p.name2)} - set(parts[part])
        if outside:
            raise RuntimeError(f"lfw split: {part} pairs use people outside {part}: {sorted(outside)[:3]}")


def _check_no_foreign(dst: Path, split: LFWSplit) -> None:
    """Stop, before changing anything, when an image folder holds people of another split (they would leak).

    ``eval/`` may still hold this split's val people: a version-1 folder, fixed by ``_adopt_old_layout``.
    """
    parts = _parts(split)
    allowed = {"train": set(parts["train"]), "val": set(parts["val"]), "test": set(parts["test"] + parts["val"])}
    for part, names in allowed.items():
        folder = dst / FOLDERS[part]
        if not folder.is_dir():
            continue
        extra = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith(".")
                       and e.name not in names)
        if extra:
            raise ValueError(f"{folder}: holds {len(extra)} people outside this split's {part} part (e.g. "
                             f"{extra[0]}): prepared with another seed or split size? use a fresh output folder")


def _adopt_old_layout(dst: Path, split: LFWSplit) -> int:
    """Move val people that a version-1 prepare left under ``eval/`` to ``val/``: their crops are reused."""
    moved = 0
    for name in _parts(split)["val"]:
        old, new = dst / FOLDERS["test"] / name, dst / FOLDERS["val"] / name
        if not old.is_dir():
            continue
        if new.exists():
            raise ValueError(f"{old}: a validation person is also under {new}; remove {old} and re-run")
        new.parent.mkdir(parents=True, exist_ok=True)
        os.replace(old, new)
        moved += 1
    return moved


def prepare_lfw(
    root: str | os.PathLike[str], out: str | os.PathLike[str], num_train: int = 400, seed: int = 0, size: int = 112,
    num_val: int = 170, num_val_distractors: int = 600, val_pairs_per_set: int = 60,
) -> LFWSplit:
    """Write the cropped train/val/eval folders, both pairs files and ``split.json`` (last); resumable."""
    base, dst = Path(root), Path(out)
    split = lfw_split(base, num_train=num_train, seed=seed, num_val=num_val,
                      num_val_distractors=num_val_distractors, val_pairs_per_set=val_pairs_per_set)
    _check_disjoint(split)
    _check_no_foreign(dst, split)
    if _adopt_old_layout(dst, split):
        print(f"lfw_split: {dst}: moved validation people from {FOLDERS['test']}/ to {FOLDERS['val']}/", flush=True)
    for part, names in _parts(split).items():
        _write_people(base, dst / FOLDERS[part], names, size, f"lfw {part}")
    atomic_write_text(dst / PAIRS_FILES["val"], format_pairs(split, "val"))
    atomic_write_text(dst / PAIRS_FILES["test"], format_pairs(split, "test"))
    write_json(dst / "split.json", _split_record(split, base, size, num_val_distractors))
    return split


def _split_record(split: LFWSplit, source: Path, size: int, num_val_distractors: int) -> dict[str, Any]:
    """``split.json``: settings, counts and every list (``distractors`` = ``test_distractors``, the old key)."""
    return {
        "format_version": SPLIT_VERSION,
        "source": str(source),
        "seed": split.seed,
        "num_train": split.num_train,
        "num_val": len(split.val),
        "num_val_distractors": num_val_distractors,
        "size": size,
        "crop_box_xyxy": list(CROP_BOX),
        "folders": FOLDERS,
        "pairs_files": PAIRS_FILES,
        "pairs_per_set": split.pairs_per_set,
        "val_pairs_per_set": split.val_pairs_per_set,
        "val_pairs_source": split.val_pairs_source,
        "counts": split.summary(),
        "train": split.train,
        "val": split.val,
        "val_distractors": split.val_distractors,
        "test": split.test,
        "test_distractors": split.distractors,
        "distractors": split.distractors,
    }


def read_split(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """``split.json`` of a prepared folder; says to re-run preparation when the folder predates the validation split."""
    base = Path(folder)
    path = base / "split.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; prepare it: python -m facerco.data.lfw_split LFW_DIR {base}")
    data = read_json(path)
    missing = [name for name in PAIRS_FILES.values() if not (base / name).is_file()]
    if int(data.get("format_version", 1)) < SPLIT_VERSION or "val" not in data or missing:
        raise ValueError(f"{path}: prepared before the validation split (no val people or "
                         f"{', '.join(missing) or PAIRS_FILES['val']}); re-run: python -m facerco.data.lfw_split "
                         f"{data.get('source', 'LFW_DIR')} {base} (resumable, reuses the crops)")
    return data


def is_prepared(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder`` holds a complete, current prepared split (``read_split`` would succeed)."""
    try:
        read_split(folder)
    except (OSError, ValueError):
        return False
    return True


def prepare_hint(missing: str | os.PathLike[str]) -> str:
    """``" (why)"`` when a missing file sits in an outdated prepared LFW folder, else ``""`` (for error messages)."""
    folder = Path(missing).parent
    if not (folder / "split.json").is_file():
        return ""
    try:
        read_split(folder)
    except (OSError, ValueError) as exc:
        return f" ({exc})"
    return ""


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m facerco.data.lfw_split", description=__doc__.splitlines()[0])
    parser.add_argument("root", help="lfw_deepfunneled folder (with pairs.txt)")
    parser.add_argument("out", help="output folder (train/, val/, eval/, pairs_val.txt, pairs_heldout.txt, "
                                    "split.json)")
    parser.add_argument("--num-train", type=int, default=400)
    parser.add_argument("--num-val", type=int, default=170, help="validation people (>= 2 images each)")
    parser.add_argument("--num-val-distractors", type=int, default=600, help="single-image validation distractors")
    parser.add_argument("--val-pairs-per-set", type=int, default=60,
                        help="matched (and mismatched) validation pairs per fold, 10 folds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=112)
    args = parser.parse_args(None if argv is None else list(argv))
    split = prepare_lfw(args.root, args.out, num_train=args.num_train, seed=args.seed, size=args.size,
                        num_val=args.num_val, num_val_distractors=args.num_val_distractors,
                        val_pairs_per_set=args.val_pairs_per_set)
    for key, value in split.summary().items():
        print(f"{key}: {value}")
    print(f"val_pairs_source: {split.val_pairs_source}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
