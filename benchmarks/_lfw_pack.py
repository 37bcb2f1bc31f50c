"""LFW at 112x112 for the GPU RCO study: the seeded identity split of :mod:`facerco.data.lfw_split`, aligned by
facerco's own five-point alignment, packed into one small folder that travels with the checkout.

Why a pack: the device machine receives the checkout and the paths a call carries (64 MiB in all) and no
``../shared``; the 250x250 photos are 163 MiB, and its image has no dlib. So the alignment runs on a CPU before the
run (``gpu_rco_study.py pack``): :func:`facerco.prep.align.align_tree` with the dlib detector (HOG, upsample 1,
5-point model) and ``--select central``, every photo of the split; a photo the detector missed is warped with the
median five points of the detected ones (as ``benchmarks/real_teacher.py`` does), for every model alike. Where dlib is
missing, ``alignment="fixed_box"`` cuts :data:`facerco.data.lfw_split.CROP_BOX` instead (``prepare_lfw``'s crop); the
manifest says which.

Pack folder (``manifest.json`` last, so a killed build is not taken for a pack)::

    crops.bin                          the JPEG crops (RGB, ``size`` px), concatenated
    index.json                         {"files": relative photo paths, "offsets": len(files)+1 byte offsets,
                                        "source": per photo "detected" | "median" | "fixed_box"}
    split.json                         lfw_split's record (every list) plus "kept" (the people packed, by part)
    pairs_val.txt, pairs_heldout.txt   the split's validation and held-out pairs (LFW format)
    manifest.json                      how it was made: source folder, split arguments, alignment, JPEG quality,
                                       counts, seconds, sha256 of crops.bin

Parts and labels (:func:`pack_arrays`): ``train`` (labels 0..T-1, people in sorted order), ``val`` and ``test``
(probe/gallery people, labels 0..P-1) and ``val_distractors`` / ``test_distractors`` (one label per person, after the
part's people), the same parts as ``lfw_split``: validation never shares a person with test.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["PARTS", "DETECTOR", "Pack", "find_lfw", "find_pack", "build_pack", "read_pack", "pack_arrays",
           "pack_pairs", "synthetic_pairs"]

REPO = Path(__file__).resolve().parents[1]
PARTS = ("train", "val", "val_distractors", "test", "test_distractors")
DETECTOR = {"name": "dlib", "options": {"upsample": 1, "points": "5"}, "policy": "central"}
PAIRS = {"val": "pairs_val.txt", "test": "pairs_heldout.txt"}
DEFAULT_PACK = "bench_out/lfw112_pack"


def find_lfw(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The ``lfw_deepfunneled`` folder: ``explicit``, ``$FACERCO_REAL_DATA/lfw_deepfunneled``, then ``shared/data``
    inside the checkout and ``../shared/data`` beside it; None when none holds ``pairs.txt``."""
    env = os.environ.get("FACERCO_REAL_DATA")
    places = [Path(explicit)] if explicit else []
    places += [Path(env) / "lfw_deepfunneled", Path(env)] if env else []
    places += [REPO / "shared" / "data" / "lfw_deepfunneled", REPO.parent / "shared" / "data" / "lfw_deepfunneled"]
    return next((p for p in places if (p / "pairs.txt").is_file()), None)


def find_pack(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """A finished pack: ``explicit``, ``$FACERCO_LFW_PACK``, ``bench_out/lfw112_pack`` or ``shared/lfw112_pack`` in
    the checkout; None when none has a manifest."""
    env = os.environ.get("FACERCO_LFW_PACK")
    places = [Path(p) for p in (explicit, env) if p] + [REPO / DEFAULT_PACK, REPO / "shared" / "lfw112_pack"]
    return next((p for p in places if (p / "manifest.json").is_file()), None)


# ----------------------------------------------------------------------------------------------------------------
# Building (on a CPU, before the GPU run)
# ----------------------------------------------------------------------------------------------------------------


def _people(split: Any, limits: Mapping[str, int] | None) -> dict[str, list[str]]:
    """People per part; ``limits[part]`` keeps the first k of the part's seeded list (a tiny dry-run pack)."""
    lists = {"train": split.train, "val": split.val, "val_distractors": split.val_distractors,
             "test": split.test, "test_distractors": split.distractors}
    limits = limits or {}
    return {part: list(names[: limits[part]] if limits.get(part) else names) for part, names in lists.items()}


def _photos(people: Mapping[str, list[str]], counts: Mapping[str, int], per_id: int | None) -> list[str]:
    """Relative photo paths of every packed person (the first ``per_id`` of each when given), part by part."""
    files = []
    for names in people.values():
        for name in names:
            n = counts[name] if not per_id else min(per_id, counts[name])
            files += [f"{name}/{name}_{k:04d}.jpg" for k in range(1, n + 1)]
    return files


def _dlib_landmarks(lfw: Path, files: list[str], align_dir: Path, workers: int) -> tuple[dict[str, Any], dict]:
    """Five points per photo from :func:`align_tree` (dlib, central), the median of the detected ones for a miss."""
    from facerco.prep.align import align_tree, read_report
    from facerco.prep.detectors import DetectorSpec

    start = time.time()
    counts = align_tree(lfw, align_dir, DetectorSpec(DETECTOR["name"], dict(DETECTOR["options"])),
                        policy=DETECTOR["policy"], workers=workers, files=files, progress=False)
    seconds = time.time() - start
    report = read_report(align_dir / "align_report.csv")
    found = {f: np.array(report[f]["landmarks"].split(), np.float32).reshape(5, 2) for f in files
             if report.get(f, {}).get("landmarks")}
    if not found:
        raise RuntimeError(f"{align_dir}: the detector found no face in any of {len(files)} photos")
    median = np.median(np.stack(list(found.values())), axis=0)
    info = {"align_counts": counts, "align_seconds": seconds, "detected": len(found),
            "median": len(files) - len(found), "median_points": median.round(2).tolist(),
            "align_images_per_s": counts["aligned"] / max(seconds, 1e-9) if counts["aligned"] else None}
    return {f: (found[f], "detected") if f in found else (median, "median") for f in files}, info


def _crop(lfw: Path, rel: str, size: int, landmarks: np.ndarray | None) -> np.ndarray:
    """RGB ``size`` crop: the five-point warp of the source photo, or the fixed box when ``landmarks`` is None."""
    import cv2

    from facerco.data.lfw_split import crop_resize
    from facerco.prep.align import read_image, warp_face

    image = read_image(lfw / rel)
    if landmarks is None:
        return cv2.cvtColor(crop_resize(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), size), cv2.COLOR_BGR2RGB)
    return warp_face(image, landmarks, size)


def _write_crops(lfw: Path, out: Path, files: list[str], marks: Mapping[str, Any], size: int, quality: int
                 ) -> list[int]:
    """Encode every crop into ``crops.bin``; returns the byte offsets."""
    import cv2

    offsets = [0]
    with open(out / "crops.bin.tmp", "wb") as handle:
        for rel in files:
            lmk, _ = marks.get(rel, (None, "fixed_box"))
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(_crop(lfw, rel, size, lmk), cv2.COLOR_RGB2BGR),
                                   [cv2.IMWRITE_JPEG_QUALITY, quality])
            if not ok:
                raise ValueError(f"{rel}: cannot encode the crop")
            handle.write(buf.tobytes())
            offsets.append(offsets[-1] + len(buf))
    os.replace(out / "crops.bin.tmp", out / "crops.bin")
    return offsets


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_pack(lfw: str | os.PathLike[str], out: str | os.PathLike[str], *, alignment: str = "dlib",
               align_dir: str | os.PathLike[str] | None = None, size: int = 112, quality: int = 90, workers: int = 1,
               limits: Mapping[str, int] | None = None, per_id: int | None = None, num_train: int = 400,
               seed: int = 0) -> dict[str, Any]:
    """Split, align and pack LFW into ``out`` (see the module docstring); returns the manifest.

    Args:
        lfw: the ``lfw_deepfunneled`` folder (with ``pairs.txt``).
        out: the pack folder (created; an existing pack there is replaced).
        alignment: ``dlib`` (align_tree, the study's) or ``fixed_box`` (prepare_lfw's crop, no detector).
        align_dir: where align_tree writes its crops and report (default ``out/../lfw_aligned``; resumable).
        size: crop side. quality: JPEG quality of the packed crops.
        workers: alignment processes. limits, per_id: a tiny pack (first k people per part, first n photos each).
        num_train, seed: ``lfw_split``'s arguments (the study's: 400 and 0).
    """
    from facerco.data.lfw_split import CROP_BOX, _split_record, format_pairs, lfw_split
    from facerco.utils.io import write_json

    if alignment not in ("dlib", "fixed_box"):
        raise ValueError(f"alignment must be dlib or fixed_box, got {alignment!r}")
    start = time.time()
    base, dst = Path(lfw), Path(out)
    split = lfw_split(base, num_train=num_train, seed=seed)
    people = _people(split, limits)
    files = _photos(people, split.counts, per_id)
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "manifest.json").unlink(missing_ok=True)
    marks: dict[str, Any] = {}
    info: dict[str, Any] = {}
    if alignment == "dlib":
        marks, info = _dlib_landmarks(base, files, Path(align_dir or dst.parent / "lfw_aligned"), workers)
    offsets = _write_crops(base, dst, files, marks, size, quality)
    index = {"files": files, "offsets": offsets, "source": [marks[f][1] if f in marks else "fixed_box"
                                                             for f in files]}
    (dst / "index.json").write_text(json.dumps(index), encoding="utf-8")
    write_json(dst / "split.json", {**_split_record(split, base, size, len(split.val_distractors)), "kept": people})
    for part, name in PAIRS.items():
        (dst / name).write_text(format_pairs(split, part), encoding="utf-8")
    manifest = {
        "format": 1, "source": str(base), "split": {"num_train": num_train, "seed": seed, "counts": split.summary(),
                                                    "val_pairs_source": split.val_pairs_source},
        "subset": {"limits": dict(limits or {}), "per_id": per_id} if limits or per_id else None,
        "alignment": ({"method": "dlib", "function": "facerco.prep.align.align_tree", **DETECTOR, **info}
                      if alignment == "dlib" else {"method": "fixed_box", "box_xyxy": list(CROP_BOX)}),
        "size": size, "jpeg_quality": quality, "images": len(files),
        "people": {part: len(names) for part, names in people.items()},
        "bytes": offsets[-1], "crops_sha256": _sha256(dst / "crops.bin"), "seconds": time.time() - start,
    }
    write_json(dst / "manifest.json", manifest)
    return manifest


# ----------------------------------------------------------------------------------------------------------------
# Reading (on the GPU machine)
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Pack:
    """A finished pack: its manifest, split record, photo list and JPEG bytes (memory-mapped)."""

    root: Path
    manifest: dict[str, Any]
    split: dict[str, Any]
    files: list[str]
    offsets: np.ndarray
    blob: np.ndarray

    def decode(self, i: int, size: int | None = None) -> np.ndarray:
        """Photo ``i`` as RGB uint8, resized (area) to ``size`` when given."""
        import cv2

        img = cv2.imdecode(self.blob[self.offsets[i]:self.offsets[i + 1]], cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f"{self.root}: crop {i} ({self.files[i]}) does not decode")
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        if size and size != img.shape[0]:
            img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
        return img


def read_pack(root: str | os.PathLike[str]) -> Pack:
    """Open a pack folder; a missing manifest (an unfinished build) or a byte count that disagrees is an error."""
    base = Path(root)
    if not (base / "manifest.json").is_file():
        raise FileNotFoundError(f"{base}: no manifest.json (not a finished pack; build it: python "
                                f"benchmarks/gpu_rco_study.py pack --pack {base})")
    manifest = json.loads((base / "manifest.json").read_text(encoding="utf-8"))
    index = json.loads((base / "index.json").read_text(encoding="utf-8"))
    blob = np.memmap(base / "crops.bin", np.uint8, mode="r")
    if len(blob) != manifest["bytes"]:
        raise ValueError(f"{base}/crops.bin: {len(blob)} bytes, the manifest says {manifest['bytes']}")
    return Pack(base, manifest, json.loads((base / "split.json").read_text(encoding="utf-8")), index["files"],
                np.asarray(index["offsets"], np.int64), blob)


def _decode_rows(pack: Pack, rows: Sequence[int], size: int, workers: int) -> np.ndarray:
    """uint8 (len(rows), size, size, 3), decoded in ``workers`` threads (cv2 releases the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    out = np.empty((len(rows), size, size, 3), np.uint8)

    def one(k: int) -> None:
        out[k] = pack.decode(rows[k], size)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        list(pool.map(one, range(len(rows))))
    return out


def pack_arrays(pack: Pack, size: int, workers: int = 1) -> dict[str, dict[str, Any]]:
    """Per part: ``images`` uint8 (N, size, size, 3) RGB, ``labels`` int64 (N,), ``files`` (N relative paths)."""
    row_of = {f: i for i, f in enumerate(pack.files)}
    by_person: dict[str, list[str]] = {}
    for f in pack.files:
        by_person.setdefault(f.split("/")[0], []).append(f)
    kept = pack.split["kept"]
    out = {}
    for part in PARTS:
        main = part.removesuffix("_distractors")
        first = 0 if part == main else len(kept[main])  # distractor labels follow the part's people
        people = sorted(kept[part]) if part == "train" else kept[part]
        files, labels = [], []
        for k, name in enumerate(people):
            mine = sorted(by_person.get(name, []))
            files += mine
            labels += [first + k] * len(mine)
        out[part] = {"images": _decode_rows(pack, [row_of[f] for f in files], size, workers),
                     "labels": np.asarray(labels, np.int64), "files": files}
    return out


def synthetic_pairs(labels: np.ndarray, per_fold: int, rng: np.random.Generator, folds: int = 10) -> np.ndarray:
    """(2 * folds * per_fold, 3) int64 rows ``(i, j, same)`` over ``labels``: per fold ``per_fold`` matched pairs
    (two images of one label) then ``per_fold`` mismatched ones (two labels), the LFW layout; pairs may repeat when
    the set is small (a dry run's)."""
    by_label: dict[int, np.ndarray] = {}
    for lab in np.unique(labels):
        by_label[int(lab)] = np.flatnonzero(labels == lab)
    multi = [lab for lab, idx in by_label.items() if len(idx) >= 2]
    if not multi or len(by_label) < 2:
        raise ValueError("synthetic pairs need a label with two images and two labels")
    keys = np.array(sorted(by_label))
    rows = []
    for _ in range(folds):
        for _ in range(per_fold):
            i, j = rng.choice(by_label[int(rng.choice(multi))], 2, replace=False)
            rows.append((i, j, 1))
        for _ in range(per_fold):
            a, b = rng.choice(keys, 2, replace=False)
            rows.append((rng.choice(by_label[int(a)]), rng.choice(by_label[int(b)]), 0))
    return np.asarray(rows, np.int64)


def pack_pairs(pack: Pack, arrays: Mapping[str, Mapping[str, Any]], part: str) -> tuple[np.ndarray, str]:
    """The pack's ``part`` pairs as rows ``(i, j, same)`` into ``[part people; part distractors]`` and where they come
    from: the split's own file when every pair's photos are packed, else seeded synthetic pairs of the packed photos
    (a tiny dry-run pack), 10 folds."""
    from facerco.data.pairs import read_lfw_pairs

    files = list(arrays[part]["files"]) + list(arrays[f"{part}_distractors"]["files"])
    row_of = {f: i for i, f in enumerate(files)}
    pairs = read_lfw_pairs(pack.root / PAIRS[part], ".", check_exists=False)
    keys = [(Path(a).as_posix(), Path(b).as_posix()) for a, b, _ in pairs]
    if pairs and all(a in row_of and b in row_of for a, b in keys):
        return np.asarray([(row_of[a], row_of[b], int(s)) for (a, b), (_, _, s) in zip(keys, pairs, strict=True)],
                          np.int64), PAIRS[part]
    labels = np.concatenate([arrays[part]["labels"], arrays[f"{part}_distractors"]["labels"]])
    seed = 1 if part == "val" else 2
    return synthetic_pairs(labels, 6, np.random.default_rng([0, seed])), "synthetic (the pack holds a subset)"
