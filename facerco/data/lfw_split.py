"""The CPU-scale LFW protocol: a documented, seeded identity split of ``lfw_deepfunneled`` and its preparation.

Split (``lfw_split``), a pure function of the folder listing, ``num_train`` and ``seed``:

* **train**: ``num_train`` people drawn without replacement (``numpy.random.default_rng(seed)``) from the people
  with at least ``min_train_images`` (4) images, taken in sorted name order;
* **test**: every other person with at least 2 images (never trained on; probe/gallery for 1:N);
* **distractors**: the people with exactly one image (4,069 in LFW), MegaFace-style distractors;
* **held-out pairs**: the pairs of the official ``pairs.txt`` (View 2, 10 folds) whose two identities are both
  outside the train split. To keep the 10-fold layout that verification expects, each fold keeps its first
  ``m`` matched and first ``m`` mismatched surviving pairs, with ``m`` the smallest such count over folds
  (``num_train=400, seed=0`` keeps 10 x 150 + 150 = 3,000 pairs).

Preparation (``prepare_lfw``): the deep-funneled images are 250x250 and roughly centred; instead of detecting
landmarks we cut the fixed box x 50..200, y 40..190 (150x150, eyes near 43 % and mouth near 80 % of the height,
close to the ArcFace 112x112 template) and resize it to ``size`` with area interpolation. That is acceptable for
a CPU-scale study; real 5-point alignment is the job of ``facerco align``. The output folder holds
``train/<person>/<person>_NNNN.jpg`` (train identities), ``eval/<person>/...`` (every other person, for the
held-out pairs and identification), ``pairs_heldout.txt`` (LFW pairs format) and ``split.json``.

Command line: ``python -m facerco.data.lfw_split ../shared/data/lfw_deepfunneled data/lfw_cpu``.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from facerco.utils.io import atomic_path, atomic_write_text, write_json

__all__ = ["CROP_BOX", "LFWPair", "LFWSplit", "count_people", "lfw_split", "format_pairs", "prepare_lfw", "main"]

CROP_BOX = (50, 40, 200, 190)  # x0, y0, x1, y1 in the 250x250 deep-funneled image


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
    """Identity lists and held-out pairs of one seeded split."""

    seed: int
    num_train: int
    train: list[str]
    test: list[str]
    distractors: list[str]
    pairs: list[LFWPair] = field(default_factory=list)  # held-out, balanced, in 10-fold order
    pairs_per_set: int = 0
    counts: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, int]:
        return {
            "train_identities": len(self.train),
            "train_images": sum(self.counts[n] for n in self.train),
            "test_identities": len(self.test),
            "test_images": sum(self.counts[n] for n in self.test),
            "distractors": len(self.distractors),
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


def lfw_split(root: str | os.PathLike[str], num_train: int = 400, seed: int = 0, min_train_images: int = 4) -> LFWSplit:
    """The seeded identity split described in the module docstring."""
    base = Path(root)
    counts = count_people(base)
    eligible = sorted(n for n, c in counts.items() if c >= min_train_images)
    if not 0 < num_train <= len(eligible):
        raise ValueError(
            f"{base}: num_train must be in [1, {len(eligible)}] (people with >= {min_train_images} images)"
        )
    rng = np.random.default_rng(seed)
    train = sorted(eligible[i] for i in rng.choice(len(eligible), size=num_train, replace=False))
    train_set = set(train)
    test = sorted(n for n, c in counts.items() if c >= 2 and n not in train_set)
    distractors = sorted(n for n, c in counts.items() if c == 1)
    split = LFWSplit(seed=seed, num_train=num_train, train=train, test=test, distractors=distractors, counts=counts)
    pairs_txt = base / "pairs.txt"
    if pairs_txt.is_file():
        official = _read_official_pairs(pairs_txt)
        kept = [p for p in official if p.name1 not in train_set and p.name2 not in train_set]
        folds = sorted({p.fold for p in official})
        per = min(
            min(sum(1 for p in kept if p.fold == f and p.same), sum(1 for p in kept if p.fold == f and not p.same))
            for f in folds
        )
        balanced: list[LFWPair] = []
        for f in folds:
            balanced += [p for p in kept if p.fold == f and p.same][:per]
            balanced += [p for p in kept if p.fold == f and not p.same][:per]
        split.pairs, split.pairs_per_set = balanced, per
    return split


def format_pairs(split: LFWSplit) -> str:
    """The held-out pairs in the LFW ``pairs.txt`` format (readable by ``facerco.data.pairs.read_lfw_pairs``)."""
    folds = len({p.fold for p in split.pairs})
    lines = [f"{folds}\t{split.pairs_per_set}"]
    for p in split.pairs:
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


def prepare_lfw(
    root: str | os.PathLike[str], out: str | os.PathLike[str], num_train: int = 400, seed: int = 0, size: int = 112
) -> LFWSplit:
    """Write the cropped train/eval folders, ``pairs_heldout.txt`` and ``split.json``; resumable (skips done files)."""
    base, dst = Path(root), Path(out)
    split = lfw_split(base, num_train=num_train, seed=seed)
    _write_people(base, dst / "train", split.train, size, "lfw train")
    _write_people(base, dst / "eval", split.test + split.distractors, size, "lfw eval")
    atomic_write_text(dst / "pairs_heldout.txt", format_pairs(split))
    write_json(
        dst / "split.json",
        {
            "source": str(base),
            "seed": seed,
            "num_train": num_train,
            "size": size,
            "crop_box_xyxy": list(CROP_BOX),
            "pairs_per_set": split.pairs_per_set,
            **split.summary(),
            "train": split.train,
            "test": split.test,
            "distractors": split.distractors,
        },
    )
    return split


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m facerco.data.lfw_split", description=__doc__.splitlines()[0])
    parser.add_argument("root", help="lfw_deepfunneled folder (with pairs.txt)")
    parser.add_argument("out", help="output folder (train/, eval/, pairs_heldout.txt, split.json)")
    parser.add_argument("--num-train", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=112)
    args = parser.parse_args(argv)
    split = prepare_lfw(args.root, args.out, num_train=args.num_train, seed=args.seed, size=args.size)
    for key, value in split.summary().items():
        print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
