"""Time and peak memory of `facerco eval ijb` after extraction, at IJB-C size, on random features (no images needed).

    python eval/ijb/scale.py --workers 8 --tmp /tmp/ijb_scale

Builds IJB-C-sized meta in memory (469,375 faces in 23,124 templates, 3,531 gallery templates split G1/G2, 19,593 mixed
probe templates, 15,658,489 gallery x probe pairs), writes the pair file and the features as files (the pair file is
parsed by the same reader as the real one; the features are memory-mapped as after extraction), then runs
facerco.eval.ijb.evaluate_ijb and prints the stage timings and the process's peak resident memory.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np

from facerco.eval.ijb import FaceList, IJBFiles, IJBMeta, evaluate_ijb, read_pairs

FACES, TEMPLATES, GALLERY, PAIRS, DIM = 469_375, 23_124, 3_531, 15_658_489, 512


def _meta(tmp: Path, rng: np.random.Generator) -> IJBMeta:
    templates = np.sort(rng.integers(0, TEMPLATES, FACES))
    templates[:TEMPLATES] = np.arange(TEMPLATES)  # every template has a face
    templates.sort()
    medias = templates * 40 + rng.integers(0, 8, FACES)  # ~8 media per template, several frames each
    subjects = np.r_[np.arange(GALLERY), rng.integers(0, GALLERY, TEMPLATES - GALLERY)]
    probes = np.arange(GALLERY, TEMPLATES)
    keep = np.flatnonzero(rng.random(GALLERY * len(probes)) < PAIRS / (GALLERY * len(probes)))
    t1, t2 = keep // len(probes), GALLERY + keep % len(probes)
    label = (subjects[t1] == subjects[t2]).astype(np.int64)
    pair_file = tmp / "ijbc_template_pair_label.txt"
    np.savetxt(pair_file, np.stack([t1, t2, label], 1), fmt="%d")
    t0 = time.perf_counter()
    pairs = read_pairs(pair_file)
    print(f"read {len(pairs.t1):,} pairs ({int(pairs.label.sum()):,} genuine) in {time.perf_counter() - t0:.1f} s")
    files = IJBFiles("IJBC", tmp, tmp, tmp, tmp, pair_file, (), None)
    faces = FaceList([""] * FACES, np.zeros((FACES, 5, 2), np.float32), rng.uniform(0.5, 1, FACES).astype(np.float32),
                     np.arange(1, FACES + 1))
    gal = [("G1", np.arange(0, GALLERY, 2), subjects[0:GALLERY:2]), ("G2", np.arange(1, GALLERY, 2),
                                                                     subjects[1:GALLERY:2])]
    return IJBMeta(files, faces, templates, medias, np.arange(TEMPLATES), pairs, gal, (probes, subjects[probes]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--tmp", default="/tmp/ijb_scale")
    a = p.parse_args()
    tmp = Path(a.tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    meta = _meta(tmp, rng)
    feats = np.lib.format.open_memmap(tmp / "ijbc.npy", mode="w+", dtype=np.float32, shape=(FACES, DIM))
    for s in range(0, FACES, 65536):
        x = rng.normal(size=(min(65536, FACES - s), DIM)).astype(np.float32)
        feats[s : s + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    feats.flush()
    del feats
    feats = np.load(tmp / "ijbc.npy", mmap_mode="r")
    t0 = time.perf_counter()
    res, scores = evaluate_ijb(meta, feats, rng.uniform(5, 30, FACES), workers=a.workers)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"evaluate_ijb: {time.perf_counter() - t0:.1f} s {res['timings']}, {len(scores):,} scores, "
          f"workers {a.workers}, peak RSS {peak:.2f} GiB")
    print("TAR@FAR (eval_ijbc.py)", {k: round(v["tar"], 4) for k, v in res["verification"]["tar_at_far"].items()})
    print("1:N (ijb_evals.py)", res["identification"]["headline"]["rank"])


if __name__ == "__main__":
    main()
