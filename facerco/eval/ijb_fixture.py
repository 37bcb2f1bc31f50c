"""A generated IJB-shaped tree, so ``facerco eval ijb`` can be run and tested where the real IJB-B/C cannot be had.

``write_ijb_fixture(root)`` writes ``root/IJBC/`` (or ``IJBB``) in the insightface test-pack layout that
:mod:`facerco.eval.ijb` reads: loose crops of generated faces (:mod:`facerco.data.synthetic`, one face per crop with
its exact five landmarks), the 5-point + detector-score list, the face → template/media list, the template pair
labels and the 1:N gallery/probe csvs. Per subject: one gallery template (two photos and a two-frame video) and two
probe templates (a three-frame video; two photos); subjects alternate between the two galleries. One extra probe
template (``TWIN_TEMPLATE``) lists exactly the faces of subject 0's gallery template, so its pair with that
template must score 1.0. Every gallery template is paired with every probe template (label = same subject).

Run ``python -m facerco.eval.ijb_fixture OUT`` to write one and try the command.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import numpy as np

from facerco.data.synthetic import SyntheticFaces, encode_jpeg
from facerco.eval.ijb import TARGETS
from facerco.utils.io import atomic_write_bytes, atomic_write_text

__all__ = ["TWIN_TEMPLATE", "write_ijb_fixture"]

TWIN_TEMPLATE = 9000
_GALLERY_MEDIA = (1, 1, 2)  # frames per media of a gallery template: two photos, a two-frame video
_PROBE_MEDIA = ((3,), (1, 1))  # the two probe templates


class _Writer:
    """Accumulates the rows of every meta file while writing face images."""

    def __init__(self, folder: Path, gen: SyntheticFaces, crop: int, rng: np.random.Generator) -> None:
        self.folder, self.gen, self.crop, self.rng = folder, gen, crop, rng
        self.lmk: list[str] = []
        self.tid_mid: list[str] = []
        self.csv_rows: dict[int, list[str]] = {}  # template -> csv rows
        self.faces = 0
        self.media = 0
        self.shot = 0

    def template(self, tid: int, subject: int, media_frames: tuple[int, ...]) -> list[str]:
        """Write the faces of one template; returns their tid/mid rows (reused by the twin)."""
        rows = []
        for frames in media_frames:
            self.media += 1
            for _ in range(frames):
                self.faces += 1
                self.shot += 1
                name = f"{self.faces}.jpg"
                scene = self.gen.render_wild(subject, self.shot, size=(self.crop, self.crop), extra_faces=0,
                                             eye_range=(0.24 * self.crop, 0.34 * self.crop), max_roll=15.0)
                atomic_write_bytes(self.folder / "loose_crop" / name, encode_jpeg(scene.image, 95))
                pts = " ".join(f"{v:.4f}" for v in scene.landmarks[0].ravel())
                self.lmk.append(f"{name} {pts} {self.rng.uniform(0.55, 1.0):.4f}")
                rows.append((name, self.media))
        self.add(tid, subject, rows)
        return rows

    def add(self, tid: int, subject: int, rows: list[tuple[str, int]]) -> None:
        for name, media in rows:
            self.tid_mid.append(f"{name} {tid} {media}")
        self.csv_rows[tid] = [f"{tid},{subject},{name}" for name, _ in rows]


def _csv(path: Path, writer: _Writer, tids: list[int]) -> None:
    body = [row for t in tids for row in writer.csv_rows[t]]
    atomic_write_text(path, "\n".join(["TEMPLATE_ID,SUBJECT_ID,FILENAME", *body]) + "\n")


def write_ijb_fixture(root: str | os.PathLike[str], target: str = "IJBC", subjects: int = 8, seed: int = 0,
                      crop: int = 112) -> dict[str, Any]:
    """Write the tree under ``root/<target>``; returns counts and the template → subject map.

    Args:
        root: IJB_ROOT.
        target: ``IJBC`` (galleries G1/G2) or ``IJBB`` (S1/S2).
        subjects: number of subjects (at least 2: one per gallery).
        seed: seed of the faces and the detector scores.
        crop: side of the loose crops in pixels.
    """
    name = target.upper()
    if name not in TARGETS or subjects < 2:
        raise ValueError(f"need a target in {sorted(TARGETS)} and at least 2 subjects, got {target!r}, {subjects}")
    folder, t = Path(root) / name, name.lower()
    (folder / "meta").mkdir(parents=True, exist_ok=True)
    w = _Writer(folder, SyntheticFaces(seed), crop, np.random.default_rng(seed))
    subject_of: dict[int, int] = {}
    gallery: dict[str, list[int]] = {g: [] for g in TARGETS[name]}
    probes: list[int] = []
    twin_rows: list[tuple[str, int]] = []
    for s in range(subjects):
        rows = w.template(1000 + s, s, _GALLERY_MEDIA)
        twin_rows = twin_rows or rows
        gallery[TARGETS[name][s % 2]].append(1000 + s)
        subject_of[1000 + s] = s
        for j, media in enumerate(_PROBE_MEDIA):
            w.template(2000 + 2 * s + j, s, media)
            probes.append(2000 + 2 * s + j)
            subject_of[2000 + 2 * s + j] = s
    w.add(TWIN_TEMPLATE, 0, twin_rows)
    probes.append(TWIN_TEMPLATE)
    subject_of[TWIN_TEMPLATE] = 0
    meta = folder / "meta"
    # the twin's faces are listed again, as the same images (the two lists must stay aligned line by line)
    atomic_write_text(meta / f"{t}_name_5pts_score.txt", "\n".join(w.lmk + w.lmk[: len(twin_rows)]) + "\n")
    atomic_write_text(meta / f"{t}_face_tid_mid.txt", "\n".join(w.tid_mid) + "\n")
    g_all = [g for gs in gallery.values() for g in gs]
    pairs = [f"{g} {p} {int(subject_of[g] == subject_of[p])}" for g in g_all for p in probes]
    atomic_write_text(meta / f"{t}_template_pair_label.txt", "\n".join(pairs) + "\n")
    for gname, tids in gallery.items():
        _csv(meta / f"{t}_1N_gallery_{gname}.csv", w, tids)
    _csv(meta / f"{t}_1N_probe_mixed.csv", w, probes)
    return {"folder": str(folder), "faces": len(w.tid_mid), "images": w.faces, "templates": len(subject_of),
            "pairs": len(pairs), "subjects": subjects, "subject_of": subject_of, "galleries": gallery,
            "probes": probes}


def main(argv: list[str] | None = None) -> int:
    """``python -m facerco.eval.ijb_fixture OUT [--target IJBB] [--subjects N]``."""
    p = argparse.ArgumentParser(description="write a generated IJB-shaped tree (for trying facerco eval ijb)")
    p.add_argument("root")
    p.add_argument("--target", default="IJBC", choices=sorted(TARGETS))
    p.add_argument("--subjects", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    info = write_ijb_fixture(a.root, a.target, a.subjects, a.seed)
    print(f"{info['folder']}: {info['faces']} faces, {info['templates']} templates, {info['pairs']} pairs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
