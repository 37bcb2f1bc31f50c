"""Rasterising a synthetic identity under per-image nuisances.

All shapes are polygons in the canonical 112x112 template frame with a depth per point. One image is: project
every point for yaw/pitch (sideways shift proportional to depth), re-fit the similarity that brings the projected
landmarks back onto the template (what a real aligner does), add the residual misalignment nuisance (roll, scale,
shift), map to the output (aligned crop or a placement in a larger scene), and fill the polygons with OpenCV at
1/16-pixel precision. Landmarks go through exactly the same transform, so they are exact by construction.
Photometric nuisances (blur, lighting gradient, colour cast, noise) are applied to the finished pixels.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import cv2
import numpy as np

from facerco.data.synthetic_identity import FACE_CENTRE, TEMPLATE_112, Identity, Polygon

__all__ = ["Nuisance", "ImageParams", "draw_image_params", "draw_face", "finish_pixels", "fit_similarity"]

_SHIFT = 4  # fractional bits for cv2 drawing: coordinates are rounded to 1/16 px
_ONE = float(1 << _SHIFT)


@dataclass(frozen=True)
class Nuisance:
    """Ranges of the per-image nuisances (maxima of uniform draws unless stated). ``scaled(k)`` multiplies all."""

    yaw: float = 22.0  # degrees, |yaw| <= this
    pitch: float = 10.0  # degrees
    roll: float = 5.0  # degrees of residual in-plane rotation after alignment
    scale: float = 0.05  # relative residual scale error
    shift: float = 2.5  # pixels of residual translation (at 112 px)
    smile: float = 0.6  # probability of a smile (amount uniform 0..1)
    mouth_open: float = 0.3  # probability of an open mouth
    eye_closure: float = 0.08  # probability of (partly) closed eyes
    gaze: float = 1.2  # pixels of iris offset
    light: float = 0.45  # strength of the lighting gradient (gain difference across the face)
    brightness: float = 0.25  # overall gain in [1 - b, 1 + b]
    colour_cast: float = 0.08  # per-channel gain jitter
    blur_prob: float = 0.5
    blur: float = 1.1  # max Gaussian sigma (pixels at 112)
    noise: float = 7.0  # max noise sigma (grey levels)
    occlusion: float = 0.15  # probability of an occluder over part of the face
    hat: float = 0.08  # probability of a hat hiding the hair and forehead
    gray: float = 0.08  # probability of a greyscale image
    glasses: float = 1.0  # multiplies the identity's probability of wearing its glasses
    jpeg_min: int = 40  # JPEG quality range used when the image is written
    jpeg_max: int = 95

    def scaled(self, k: float) -> Nuisance:
        """All geometric/photometric magnitudes and probabilities times ``k`` (JPEG range kept; glasses kept)."""
        keep = {"jpeg_min", "jpeg_max", "glasses"}
        vals = {f.name: (getattr(self, f.name) if f.name in keep else getattr(self, f.name) * k)
                for f in dataclasses.fields(self)}
        for name in ("smile", "mouth_open", "eye_closure", "blur_prob", "occlusion", "hat", "gray"):
            vals[name] = min(1.0, vals[name])
        return Nuisance(**vals)

    @staticmethod
    def none() -> Nuisance:
        """No nuisance at all: the landmarks land exactly on the template; JPEG at quality 95."""
        return Nuisance().scaled(0.0)


@dataclass(frozen=True)
class ImageParams:
    """The values drawn for one image (replace fields to render controlled variations in tests)."""

    yaw: float = 0.0  # radians
    pitch: float = 0.0
    roll: float = 0.0
    scale: float = 1.0
    shift_x: float = 0.0
    shift_y: float = 0.0
    smile: float = 0.0
    mouth_open: float = 0.0
    eye_closure: float = 0.0
    gaze_x: float = 0.0
    gaze_y: float = 0.0
    glasses: bool = False
    light_dx: float = 0.0  # lighting gain slope across the image (x and y)
    light_dy: float = 0.0
    gain: tuple[float, float, float] = (1.0, 1.0, 1.0)
    blur: float = 0.0
    noise: float = 0.0
    noise_x: int = 0
    noise_y: int = 0
    occluder: tuple[float, ...] = ()  # (kind, cx, cy, rx, ry, angle, r, g, b) in template units, or empty
    hat: tuple[float, ...] = ()  # (r, g, b, brim height above the eyes) or empty
    gray: bool = False
    shirt: tuple[float, float, float] = (90.0, 90.0, 110.0)
    background: tuple[int, ...] = (128,) * 12  # 2x2 RGB corner colours of the aligned-mode background
    jpeg_quality: int = 95


def draw_image_params(rng: np.random.Generator, nz: Nuisance, ident: Identity) -> ImageParams:
    """Draw one image's nuisance values (one vector of uniforms keeps this cheap and order-independent)."""
    u = rng.random(48).tolist()
    deg = math.pi / 180.0
    level = 1.0 + (2.0 * u[17] - 1.0) * nz.brightness

    def sym(i: int, m: float) -> float:
        return (2.0 * u[i] - 1.0) * m

    occ: tuple[float, ...] = ()
    if u[20] < nz.occlusion:
        occ = (float(u[21] < 0.5), 20 + 72 * u[22], 30 + 70 * u[23], 10 + 16 * u[24], 8 + 16 * u[25],
               sym(26, 1.5), 255 * u[27], 255 * u[28], 255 * u[29])
    bg = tuple(int(x) for x in rng.integers(0, 256, 12))
    return ImageParams(
        yaw=sym(0, nz.yaw * deg), pitch=sym(1, nz.pitch * deg), roll=sym(2, nz.roll * deg),
        scale=1.0 + sym(3, nz.scale), shift_x=sym(4, nz.shift), shift_y=sym(5, nz.shift),
        smile=u[7] if u[6] < nz.smile else 0.0, mouth_open=u[9] if u[8] < nz.mouth_open else 0.0,
        eye_closure=0.3 + 0.7 * u[11] if u[10] < nz.eye_closure else 0.0,
        gaze_x=sym(12, nz.gaze), gaze_y=sym(13, nz.gaze * 0.5),
        glasses=bool(ident.glasses) and u[14] < ident.glasses_prob * nz.glasses,
        light_dx=sym(15, nz.light), light_dy=sym(16, nz.light * 0.6),
        gain=(level + sym(30, nz.colour_cast), level + sym(31, nz.colour_cast), level + sym(32, nz.colour_cast)),
        blur=u[19] * nz.blur if u[18] < nz.blur_prob else 0.0,
        noise=u[33] * nz.noise, noise_x=int(u[34] * 128), noise_y=int(u[35] * 128),
        occluder=occ, shirt=(255 * u[36], 255 * u[37], 255 * u[38]), background=bg,
        jpeg_quality=int(round(nz.jpeg_min + u[39] * (nz.jpeg_max - nz.jpeg_min))),
        hat=(255 * u[41], 255 * u[42], 255 * u[43], 12.0 + 8.0 * u[44]) if u[40] < nz.hat else (),
        gray=u[45] < nz.gray,
    )


_T9 = np.linspace(0.0, 1.0, 9)
_B9 = np.sin(math.pi * _T9)
_ANG = np.linspace(0.0, 2 * math.pi, 12, endpoint=False)
_COS24, _SIN24 = np.tile(np.cos(_ANG), 2), np.tile(np.sin(_ANG), 2)
_T11 = np.linspace(0.0, 1.0, 11)
_B11 = np.sin(math.pi * _T11)
_LID = (40.0, 28.0, 24.0)
_PUPIL = (15.0, 12.0, 12.0)
_WHITE = (238.0, 236.0, 230.0)
_INNER = (70.0, 25.0, 30.0)
_TEETH = (235.0, 232.0, 222.0)

Op = tuple  # (number of points, colour, thickness, closed)


@dataclass
class _Pack:
    """Per-identity precomputation: static shapes concatenated, eye/mouth constants."""

    back_pts: np.ndarray
    back_z: np.ndarray
    back_ops: list
    front_pts: np.ndarray
    front_z: np.ndarray
    front_ops: list
    glasses_pts: np.ndarray
    glasses_z: np.ndarray
    glasses_ops: list
    outline_start: int
    outline_len: int
    eye: dict
    mouth: dict


def _concat(polys: list[Polygon]) -> tuple[np.ndarray, np.ndarray, list]:
    if not polys:
        return np.zeros((0, 2)), np.zeros(0), []
    pts = np.concatenate([q.points for q in polys])
    z = np.concatenate([q.depth for q in polys])
    return pts, z, [(len(q.points), q.colour, q.thickness, q.closed) for q in polys]


def _pack(ident: Identity) -> _Pack:
    pack = ident.cache.get("pack")
    if pack is not None:
        return pack
    p = ident.params
    back_pts, back_z, back_ops = _concat([*ident.back, *ident.face])
    front_pts, front_z, front_ops = _concat(ident.front)
    g_pts, g_z, g_ops = _concat(ident.glasses)
    w, h = p["eye_w"], p["eye_h"]
    xs = (_T9 - 0.5) * w
    up = -h * _B9**0.8
    lo = 0.75 * h * _B9
    r = min(h * p["iris_r"] * 0.85, w * 0.3)
    rot = []
    for side in (-1, 1):
        ca, sa = math.cos(side * p["eye_tilt"]), math.sin(side * p["eye_tilt"])
        rot.append(np.array([[ca, sa], [-sa, ca]]))  # transposed rotation for row vectors
    iris = (p["iris_r0"], p["iris_g0"], p["iris_b0"])
    eye = {"xs": xs, "up": up, "white_x": np.concatenate([xs, xs[::-1]]), "white_y": np.concatenate([up, lo[::-1]]),
           "rad": np.concatenate([np.full(12, r), np.full(12, 0.45 * r)]), "w": w, "h": h, "rot": rot,
           "open_ops": [(18, _WHITE, 0.0, True), (12, iris, 0.0, True), (12, _PUPIL, 0.0, True),
                        (9, _LID, p["lash"], False)],
           "closed_ops": [(9, _LID, p["lash"], False)], "depth": float(p["head_d"]) * 0.93 - 1.0}
    lip = ident.skin * (1 - p["lip_red"]) + np.array([185.0, 60.0, 70.0]) * p["lip_red"]
    mouth = {"up": p["lip_up"] * _B11**0.5 - p["cupid"] * np.exp(-(((_T11 - 0.5) / 0.1) ** 2)),
             "low": p["lip_low"] * _B11**0.6, "curve": p["mouth_curve"],
             "lip_up": tuple(float(c) for c in np.clip(lip * 0.88, 0, 255)),
             "lip_low": tuple(float(c) for c in np.clip(lip * 0.97, 0, 255)), "depth": float(p["head_d"]) * 0.7}
    pack = _Pack(back_pts, back_z, back_ops, front_pts, front_z, front_ops, g_pts, g_z, g_ops,
                 len(ident.back), len(ident.face[0].points), eye, mouth)
    pack.outline_start = sum(op[0] for op in back_ops[:len(ident.back)])
    ident.cache["pack"] = pack
    return pack


def _eyes(pack: _Pack, ip: ImageParams) -> tuple[np.ndarray, list]:
    """Both eyes (white, iris, pupil, upper lid) for the image's closure and gaze; points and draw ops."""
    e = pack.eye
    o = 1.0 - ip.eye_closure
    w, h = e["w"], e["h"]
    if h * o > 0.5:
        ix = np.clip(ip.gaze_x + e["rad"] * _COS24, -0.5 * w, 0.5 * w)
        bb = np.sin(math.pi * (ix / w + 0.5))
        iy = np.clip(ip.gaze_y + e["rad"] * _SIN24, -h * o * np.abs(bb) ** 0.8, 0.75 * h * o * bb)
        local = np.stack([np.concatenate([e["white_x"], ix, e["xs"]]),
                          np.concatenate([o * e["white_y"], iy, o * e["up"]])], axis=1)
        ops = e["open_ops"]
    else:
        local = np.stack([e["xs"], o * e["up"]], axis=1)
        ops = e["closed_ops"]
    pts = np.concatenate([local @ e["rot"][0] + TEMPLATE_112[0], local @ e["rot"][1] + TEMPLATE_112[1]])
    return pts, ops + ops


def _mouth(pack: _Pack, ip: ImageParams) -> tuple[np.ndarray, list, np.ndarray]:
    """Lips (and inner mouth, teeth) for the expression; returns points, draw ops and the two corners."""
    m = pack.mouth
    s, o = ip.smile, ip.mouth_open
    lx, ly = TEMPLATE_112[3, 0] - 1.3 * s, TEMPLATE_112[3, 1] - 2.4 * s
    rx, ry = TEMPLATE_112[4, 0] + 1.3 * s, TEMPLATE_112[4, 1] - 2.4 * s
    x = lx + (rx - lx) * _T11
    line = ly + (ry - ly) * _T11 + (m["curve"] * (1 - s) + 3.0 * s) * _B11
    xx = np.concatenate([x, x[::-1]])
    top = line - m["up"]
    parts_x, parts_y, ops = [], [], []
    if o > 0.04:
        gap = 7.0 * o * _B11**0.8
        lower_top = line + gap
        parts_x.append(xx)
        parts_y.append(np.concatenate([line, lower_top[::-1]]))
        ops.append((22, _INNER, 0.0, True))
        if s > 0.3:
            k = slice(2, 9)
            teeth_low = line[k] + np.minimum(gap[k], 2.5)
            parts_x.append(np.concatenate([x[k], x[k][::-1]]))
            parts_y.append(np.concatenate([line[k], teeth_low[::-1]]))
            ops.append((14, _TEETH, 0.0, True))
    else:
        lower_top = line
    parts_x += [xx, xx]
    parts_y += [np.concatenate([lower_top, (lower_top + m["low"])[::-1]]), np.concatenate([top, line[::-1]])]
    ops += [(22, m["lip_low"], 0.0, True), (22, m["lip_up"], 0.0, True)]
    pts = np.stack([np.concatenate(parts_x), np.concatenate(parts_y)], axis=1)
    return pts, ops, np.array([[lx, ly], [rx, ry]])


def fit_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping ``src`` (N,2) to ``dst``; 2x3.

    In 2-D the Umeyama solution is a complex-number regression w = a*z + b, solved in closed form.
    """
    z = src[:, 0] + 1j * src[:, 1]
    w = dst[:, 0] + 1j * dst[:, 1]
    zc, wc = z - z.mean(), w - w.mean()
    a = np.vdot(zc, wc) / np.vdot(zc, zc).real
    b = w.mean() - a * z.mean()
    return np.array([[a.real, -a.imag, b.real], [a.imag, a.real, b.imag]])


def _affine3(m: np.ndarray) -> np.ndarray:
    return np.vstack([m, [0.0, 0.0, 1.0]])


def residual_matrix(ip: ImageParams) -> np.ndarray:
    """Template-frame misalignment: scale and roll about the crop centre plus a shift (3x3)."""
    c, s = math.cos(ip.roll) * ip.scale, math.sin(ip.roll) * ip.scale
    cx = cy = 56.0
    return np.array([[c, -s, cx - c * cx + s * cy + ip.shift_x], [s, c, cy - s * cx - c * cy + ip.shift_y],
                     [0.0, 0.0, 1.0]])


def _shirt(ident: Identity, ip: ImageParams) -> tuple[np.ndarray, np.ndarray, list]:
    chin = ident.params["face_chin"]
    cx = FACE_CENTRE
    pts = np.array([[cx - 80, 170], [cx - 70, chin + 14], [cx - 22, chin + 4], [cx + 22, chin + 4],
                    [cx + 70, chin + 14], [cx + 80, 170]])
    return pts, np.full(6, -ident.params["head_a"] * 0.5), [(6, ip.shirt, 0.0, True)]


def _hat(ident: Identity, hat: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray, list]:
    """A crown over the head plus a brim just above the brows (hides hair, hairline and forehead)."""
    p = ident.params
    r, g, b, rise = hat
    brim = TEMPLATE_112[0, 1] - rise
    a = p["head_a"]
    t = np.linspace(math.pi, 2 * math.pi, 13)
    crown = np.stack([FACE_CENTRE + 1.08 * a * np.cos(t), brim + (brim - p["face_top"] + 10) * np.sin(t)], 1)
    band = np.array([[FACE_CENTRE - 1.2 * a, brim - 4], [FACE_CENTRE + 1.2 * a, brim - 4],
                     [FACE_CENTRE + 1.2 * a, brim + 1.5], [FACE_CENTRE - 1.2 * a, brim + 1.5]])
    z = np.full(len(crown) + 4, p["head_d"] * 0.4)
    dark = (0.8 * r, 0.8 * g, 0.8 * b)
    return np.concatenate([crown, band]), z, [(len(crown), (r, g, b), 0.0, True), (4, dark, 0.0, True)]


def draw_face(img: np.ndarray, ident: Identity, ip: ImageParams, place: np.ndarray,
              stroke_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``ident`` into ``img`` (uint8 HxWx3, in place) with template->image matrix ``place`` (3x3).

    Returns (landmarks (5,2) float64 in image pixels, face outline points (K,2) in image pixels).
    """
    p = ident.params
    pack = _pack(ident)
    shirt_pts, shirt_z, shirt_ops = _shirt(ident, ip)
    mouth_pts, mouth_ops, corners = _mouth(pack, ip)
    eye_pts, eye_ops = _eyes(pack, ip)
    eye_z, mouth_z = pack.eye["depth"], pack.mouth["depth"]
    lms = np.vstack([TEMPLATE_112[:3], corners])
    lm_z = np.array([eye_z, eye_z, p["head_d"] + p["nose_z"], mouth_z, mouth_z])
    blocks = [shirt_pts, pack.back_pts, mouth_pts, eye_pts, pack.front_pts]
    depths = [shirt_z, pack.back_z, np.full(len(mouth_pts), mouth_z), np.full(len(eye_pts), eye_z), pack.front_z]
    ops = shirt_ops + pack.back_ops + mouth_ops + eye_ops + pack.front_ops
    if ip.hat:
        hat_pts, hat_z, hat_ops = _hat(ident, ip.hat)
        blocks.append(hat_pts)
        depths.append(hat_z)
        ops = ops + hat_ops
    if ip.glasses:
        blocks.append(pack.glasses_pts)
        depths.append(pack.glasses_z)
        ops = ops + pack.glasses_ops
    pts = np.concatenate(blocks + [lms])
    depth = np.concatenate(depths + [lm_z])
    # Yaw then pitch about the head centre: points move sideways/vertically in proportion to their depth.
    hx, hy = p["head_cx"], p["head_cy"]
    x0, y0 = pts[:, 0] - hx, pts[:, 1] - hy
    cyaw, syaw = math.cos(ip.yaw), math.sin(ip.yaw)
    x1 = x0 * cyaw + depth * syaw
    z1 = depth * cyaw - x0 * syaw
    y1 = y0 * math.cos(ip.pitch) - z1 * math.sin(ip.pitch)
    proj = np.stack([x1 + hx, y1 + hy], axis=1)
    fit = _affine3(fit_similarity(proj[-5:], TEMPLATE_112))
    m = (place @ residual_matrix(ip) @ fit)[:2]
    out = proj @ m[:, :2].T + m[:, 2]
    fixed = np.rint(out * _ONE).astype(np.int32)
    start = 0
    for n, colour, thickness, closed in ops:
        seg = fixed[start:start + n]
        start += n
        if thickness > 0:
            thick = max(1, int(round(thickness * stroke_scale)))
            cv2.polylines(img, [seg], closed, colour, thick, cv2.LINE_AA, _SHIFT)
        else:
            cv2.fillPoly(img, [seg], colour, cv2.LINE_AA, _SHIFT)
    if ip.occluder:
        _draw_occluder(img, ip.occluder, place)
    o0 = len(shirt_pts) + pack.outline_start
    return out[-5:].copy(), out[o0:o0 + pack.outline_len]


def _draw_occluder(img: np.ndarray, occ: tuple[float, ...], place: np.ndarray) -> None:
    kind, cx, cy, rx, ry, ang, r, g, b = occ
    if kind > 0.5:
        t = np.linspace(0.0, 2 * math.pi, 16, endpoint=False)
        x, y = rx * np.cos(t), ry * np.sin(t)
    else:
        x, y = np.array([-rx, rx, rx, -rx]), np.array([-ry, -ry, ry, ry])
    ca, sa = math.cos(ang), math.sin(ang)
    pts = np.stack([cx + ca * x - sa * y, cy + sa * x + ca * y], axis=1)
    out = pts @ place[:2, :2].T + place[:2, 2]
    cv2.fillPoly(img, [np.rint(out * _ONE).astype(np.int32)], (r, g, b), cv2.LINE_AA, _SHIFT)


_NOISE: np.ndarray | None = None


def _noise_bank() -> np.ndarray:
    """A fixed bank of unit Gaussian noise; images take shifted windows of it (no per-image normal draws)."""
    global _NOISE
    if _NOISE is None:
        _NOISE = np.random.default_rng(0x5EED).standard_normal((512, 512, 3)).astype(np.float32)
    return _NOISE


def finish_pixels(img: np.ndarray, ip: ImageParams, blur_scale: float = 1.0) -> np.ndarray:
    """Blur, lighting gradient with colour gain, and sensor noise; returns a new uint8 image."""
    h, w = img.shape[:2]
    if ip.blur > 0.05:
        img = cv2.GaussianBlur(img, (0, 0), ip.blur * blur_scale)
    g = np.asarray(ip.gain, dtype=np.float32)
    dx, dy = 0.5 * ip.light_dx, 0.5 * ip.light_dy
    corners = np.stack([np.stack([g * (1 - dx - dy), g * (1 + dx - dy)]),
                        np.stack([g * (1 - dx + dy), g * (1 + dx + dy)])]).astype(np.float32)
    gain = cv2.resize(corners, (w, h), interpolation=cv2.INTER_LINEAR)
    f = img.astype(np.float32)
    f *= gain
    if ip.noise > 0.05:
        bank = _noise_bank()
        if h + ip.noise_y <= bank.shape[0] and w + ip.noise_x <= bank.shape[1]:
            f += ip.noise * bank[ip.noise_y:ip.noise_y + h, ip.noise_x:ip.noise_x + w]
        else:
            f += ip.noise * np.resize(bank, (h, w, 3))
    np.clip(f, 0.0, 255.0, out=f)
    out = f.astype(np.uint8)
    if ip.gray:
        out = cv2.cvtColor(cv2.cvtColor(out, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    return out
