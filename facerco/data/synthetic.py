"""Generated faces for the demo and for tests: procedural identities, exact landmarks, deterministic by seed.

An identity is a seeded draw of face geometry and appearance (outline, ears, hair style and colour, brows, eye,
nose and mouth shapes, skin tone, beard, glasses, marks). Each image draws nuisances (yaw/pitch approximated by
depth-dependent feature shifts, residual roll/scale/shift, expression, lighting gradient and colour cast, blur,
noise, occluders, JPEG quality). Aligned images are 112x112 crops whose five landmarks sit exactly on the ArcFace
template when every nuisance is zero; "wild" scenes place one or several faces in cluttered backgrounds and
report boxes plus landmarks.

Every random draw comes from ``numpy.random.default_rng([seed, stream, identity, image])``, so any image can be
rendered alone, in any order or process, and always gives the same bytes. Distractor identities use their own
stream, disjoint from the regular identities.

Example:
    >>> gen = SyntheticFaces(seed=0)
    >>> sample = gen.render(identity=3, image=0)
    >>> sample.image.shape, sample.landmarks.shape
    ((112, 112, 3), (5, 2))
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from facerco.data.synthetic_identity import TEMPLATE_112, Identity, draw_identity
from facerco.data.synthetic_render import ImageParams, Nuisance, draw_face, draw_image_params, finish_pixels
from facerco.data.synthetic_scene import WildFace, clutter_background, compose_scene, place_faces
from facerco.utils.io import atomic_write_text
from facerco.utils.workers import process_context

__all__ = [
    "TEMPLATE_112",
    "Nuisance",
    "ImageParams",
    "FaceSample",
    "WildScene",
    "SyntheticFaces",
    "render_aligned",
    "render_wild",
    "identity_name",
    "encode_jpeg",
    "write_identity_folder",
    "read_landmarks_csv",
]

_STREAM_IDENTITY = 1  # identity draws: [seed, stream, identity]
_STREAM_IMAGE = 2  # aligned images: [seed, stream, identity, image]
_STREAM_SCENE = 3  # wild scenes: [seed, stream, identity, image]
_STREAM_SCENE_EXTRA = 4  # extra faces in wild scenes: [seed, stream, scene, k]
_DISTRACTOR = 1 << 20  # added to the stream number for distractor identities


@dataclass(frozen=True)
class FaceSample:
    """One aligned face: image RGB uint8 (S,S,3), landmarks (5,2) float32 pixels, and the drawn nuisances."""

    image: np.ndarray
    landmarks: np.ndarray
    params: ImageParams


@dataclass(frozen=True)
class WildScene:
    """A scene: image RGB uint8 (H,W,3), boxes (F,4) x0,y0,x1,y1 and landmarks (F,5,2) per face, identities (F,)."""

    image: np.ndarray
    boxes: np.ndarray
    landmarks: np.ndarray
    identities: np.ndarray
    jpeg_quality: int


def identity_name(index: int, distractor: bool = False) -> str:
    """Folder name of an identity: ``00042`` for regular identities, ``d00042`` for distractors."""
    return f"{'d' if distractor else ''}{index:05d}"


class SyntheticFaces:
    """Deterministic face generator; identities are drawn lazily and cached (LRU).

    Args:
        seed: base seed of every random stream.
        nuisance: nuisance ranges for aligned images (default: modest, like real aligned crops).
        size: side of aligned images (multiple of 112 recommended; the template is scaled).
        identity_spread: how far identity shapes range (1.0 default; smaller = harder to tell apart).
        cache_size: identities kept in memory.
    """

    def __init__(self, seed: int = 0, nuisance: Nuisance | None = None, size: int = 112,
                 identity_spread: float = 1.0, cache_size: int = 4096) -> None:
        if size < 16:
            raise ValueError(f"synthetic faces: size must be >= 16 pixels, got {size}")
        if seed < 0:
            raise ValueError(f"synthetic faces: seed must be >= 0, got {seed}")
        self.seed = int(seed)
        self.nuisance = nuisance if nuisance is not None else Nuisance()
        self.size = int(size)
        self.identity_spread = float(identity_spread)
        self._cache: OrderedDict[tuple[int, bool], Identity] = OrderedDict()
        self._cache_size = cache_size
        self._place = np.diag([size / 112.0, size / 112.0, 1.0])

    def _rng(self, stream: int, distractor: bool, *keys: int) -> np.random.Generator:
        if any(k < 0 for k in keys):
            raise ValueError(f"synthetic faces: identity and image indices must be >= 0, got {keys}")
        return np.random.default_rng([self.seed, stream + (_DISTRACTOR if distractor else 0), *keys])

    def identity(self, index: int, distractor: bool = False) -> Identity:
        """The identity ``index`` (of the distractor stream when ``distractor``)."""
        key = (int(index), bool(distractor))
        ident = self._cache.get(key)
        if ident is None:
            ident = draw_identity(self._rng(_STREAM_IDENTITY, distractor, index), index, self.identity_spread)
            self._cache[key] = ident
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return ident

    def image_params(self, identity: int, image: int, distractor: bool = False) -> ImageParams:
        """The nuisance values of one aligned image (deterministic)."""
        ident = self.identity(identity, distractor)
        return draw_image_params(self._rng(_STREAM_IMAGE, distractor, identity, image), self.nuisance, ident)

    def render(self, identity: int, image: int, distractor: bool = False,
               params: ImageParams | None = None) -> FaceSample:
        """Render aligned image ``image`` of ``identity``; ``params`` overrides the drawn nuisances."""
        ident = self.identity(identity, distractor)
        if params is None:
            params = self.image_params(identity, image, distractor)
        bg = np.asarray(params.background, dtype=np.uint8).reshape(2, 2, 3)
        img = cv2.resize(bg, (self.size, self.size), interpolation=cv2.INTER_LINEAR)
        stroke = self.size / 112.0
        lms, _ = draw_face(img, ident, params, self._place, stroke)
        img = finish_pixels(img, params, stroke)
        return FaceSample(img, lms.astype(np.float32), params)

    def render_wild(self, identity: int, image: int, distractor: bool = False, size: tuple[int, int] = (320, 240),
                    extra_faces: int = 0, eye_range: tuple[float, float] = (14.0, 44.0),
                    max_roll: float = 30.0) -> WildScene:
        """A cluttered scene holding ``identity`` (first face) plus up to ``extra_faces`` faces of other identities.

        Extra faces are drawn from the distractor stream, keyed by this scene, so they never collide with the
        regular identities. ``size`` is (width, height); ``eye_range`` bounds the inter-ocular distance in pixels.
        """
        width, height = size
        if width < 64 or height < 64:
            raise ValueError(f"synthetic faces: wild scenes need at least 64x64 pixels, got {width}x{height}")
        rng = self._rng(_STREAM_SCENE, distractor, identity, image)
        bg = clutter_background(rng, width, height)
        places = place_faces(rng, width, height, 1 + extra_faces, eye_range[0], eye_range[1], max_roll)
        wild_nz = replace(self.nuisance, roll=0.0)
        faces = []
        ids = []
        for k, place in enumerate(places):
            if k == 0:
                ident = self.identity(identity, distractor)
                ids.append(identity)
            else:
                extra = int(self._rng(_STREAM_SCENE_EXTRA, distractor, identity, image, k).integers(0, 1 << 30))
                ident = self.identity(extra, True)
                ids.append(-1 - extra)
            faces.append(WildFace(ident, draw_image_params(rng, wild_nz, ident), place))
        scene_params = draw_image_params(rng, self.nuisance, faces[0].identity)
        scene_params = replace(scene_params, occluder=())
        img, boxes, lms = compose_scene(bg, faces, scene_params)
        return WildScene(img, boxes, lms.astype(np.float32), np.asarray(ids, dtype=np.int64),
                         scene_params.jpeg_quality)


def render_aligned(seed: int, identity: int, image: int, distractor: bool = False,
                   nuisance: Nuisance | None = None, size: int = 112) -> FaceSample:
    """One aligned face (convenience wrapper; use :class:`SyntheticFaces` in loops to reuse identities)."""
    return SyntheticFaces(seed, nuisance, size).render(identity, image, distractor)


def render_wild(seed: int, identity: int, image: int, extra_faces: int = 2, size: tuple[int, int] = (320, 240),
                distractor: bool = False, nuisance: Nuisance | None = None) -> WildScene:
    """One cluttered scene with several faces (convenience wrapper)."""
    return SyntheticFaces(seed, nuisance).render_wild(identity, image, distractor, size, extra_faces)


def encode_jpeg(image_rgb: np.ndarray, quality: int) -> bytes:
    """JPEG bytes of an RGB uint8 image (OpenCV writes BGR, so channels are swapped first)."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("synthetic faces: OpenCV failed to encode a JPEG")
    return buf.tobytes()


@dataclass(frozen=True)
class _Job:
    out: str
    seed: int
    nuisance: Nuisance
    size: int
    spread: float
    wild: bool
    distractor: bool
    images: int
    wild_size: tuple[int, int]


_WORKER_GEN: dict[tuple, SyntheticFaces] = {}


def _write_identity(job: _Job, identity: int) -> list[list[str]]:
    """Write one identity's images; returns its CSV rows (path, 10 landmark coordinates, then the box if wild)."""
    key = (job.seed, job.nuisance, job.size, job.spread)
    gen = _WORKER_GEN.get(key)
    if gen is None:
        gen = _WORKER_GEN.setdefault(key, SyntheticFaces(job.seed, job.nuisance, job.size, job.spread))
    name = identity_name(identity, job.distractor)
    folder = Path(job.out) / name
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for k in range(job.images):
        if job.wild:
            scene = gen.render_wild(identity, k, job.distractor, job.wild_size)
            img, lms, quality, box = scene.image, scene.landmarks[0], scene.jpeg_quality, scene.boxes[0]
        else:
            sample = gen.render(identity, k, job.distractor)
            img, lms, quality, box = sample.image, sample.landmarks, sample.params.jpeg_quality, None
        rel = f"{name}/{k:04d}.jpg"
        (Path(job.out) / rel).write_bytes(encode_jpeg(img, quality))
        row = [rel, *(f"{v:.3f}" for v in lms.reshape(-1))]
        if box is not None:
            row += [f"{v:.3f}" for v in box]
        rows.append(row)
    return rows


_LM_COLUMNS = ["path"] + [f"{a}{i}" for i in range(1, 6) for a in ("x", "y")]
_BOX_COLUMNS = ["box_x0", "box_y0", "box_x1", "box_y1"]


def write_identity_folder(out: str | os.PathLike[str], num_identities: int, images_per_identity: int, seed: int = 0,
                          wild: bool = False, distractors: bool = False, first_identity: int = 0,
                          nuisance: Nuisance | None = None, size: int = 112, identity_spread: float = 1.0,
                          wild_size: tuple[int, int] = (320, 240), workers: int = 0,
                          progress: Callable[[Iterable[int], int], Iterable[int]] | None = None) -> Path:
    """Write ``<out>/<identity>/<nnnn>.jpg`` and ``<out>/landmarks.csv``; returns the CSV path.

    The CSV has columns ``path,x1,y1,...,x5,y5`` (path relative to ``out``; landmarks in the written image's
    pixels, order left eye, right eye, nose, left mouth corner, right mouth corner). Wild mode writes one face
    per scene and adds the face box as ``box_x0,box_y0,box_x1,box_y1``. The CSV is written last and atomically,
    so its presence marks a complete folder. Identities ``first_identity .. first_identity+num_identities-1`` are
    written (``d``-prefixed folders for distractors); ``workers > 1`` spreads identities over processes and gives
    the same bytes as one process. ``progress`` wraps the identity iterator (e.g. a tqdm factory).
    """
    if num_identities < 1 or images_per_identity < 1:
        raise ValueError(f"synthetic faces: need >= 1 identity and image, got {num_identities}x{images_per_identity}")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    job = _Job(str(root), int(seed), nuisance if nuisance is not None else Nuisance(), int(size),
               float(identity_spread), bool(wild), bool(distractors), int(images_per_identity), tuple(wild_size))
    ids = range(first_identity, first_identity + num_identities)
    rows: list[list[str]] = []
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers, mp_context=process_context()) as pool:  # no fork: see there
            results: Iterable[list[list[str]]] = pool.map(_write_identity, [job] * len(ids), ids, chunksize=4)
            if progress is not None:
                results = progress(results, len(ids))
            for part in results:
                rows.extend(part)
    else:
        it: Iterable[int] = progress(ids, len(ids)) if progress is not None else ids
        for identity in it:
            rows.extend(_write_identity(job, identity))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(_LM_COLUMNS + (_BOX_COLUMNS if wild else []))
    writer.writerows(rows)
    csv_path = root / "landmarks.csv"
    atomic_write_text(csv_path, buf.getvalue())
    return csv_path


def read_landmarks_csv(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read a landmarks CSV into {relative path: (5,2) float32}; errors name the file and line."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: file not found")
    out: dict[str, np.ndarray] = {}
    with open(p, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or header[:11] != _LM_COLUMNS:
            raise ValueError(f"{p}: line 1: expected header starting {','.join(_LM_COLUMNS)}, got {header}")
        for line_no, row in enumerate(reader, start=2):
            if len(row) != len(header):
                raise ValueError(f"{p}: line {line_no}: expected {len(header)} columns, got {len(row)}")
            try:
                vals = np.array([float(v) for v in row[1:11]], dtype=np.float32)
            except ValueError as exc:
                raise ValueError(f"{p}: line {line_no}: landmark is not a number ({exc})") from exc
            if not all(math.isfinite(v) for v in vals):
                raise ValueError(f"{p}: line {line_no}: landmark is not finite")
            out[row[0]] = vals.reshape(5, 2)
    return out
