"""Procedural face identities: a seeded draw of geometry and appearance, precomputed once per identity.

Everything lives in the canonical frame of the ArcFace 112x112 template (FORMATS.md section 3): the five
landmarks of every identity sit exactly on the template there, so identity is carried by everything around
them (outline, ears, hair, brows, eye/nose/mouth shapes, colours, accessories, marks). Each point also has a
depth (pixels toward the camera, measured from the head centre) so the renderer can approximate yaw and pitch
by moving points sideways in proportion to their depth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["TEMPLATE_112", "FACE_CENTRE", "Polygon", "Identity", "draw_identity"]

#: ArcFace 112x112 five-point template: left eye, right eye, nose tip, left mouth corner, right mouth corner.
TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
#: x of the face's vertical axis in the canonical frame (mid-point of the template's eyes and mouth corners).
FACE_CENTRE = float(TEMPLATE_112[[0, 1, 3, 4], 0].mean())

_SKIN = np.array(
    [[255, 224, 196], [241, 194, 167], [224, 172, 138], [198, 134, 98], [161, 102, 70], [120, 74, 50], [82, 52, 38]],
    dtype=np.float64,
)
_HAIR = np.array(
    [[20, 17, 15], [45, 32, 25], [85, 60, 40], [130, 90, 55], [185, 145, 90], [225, 195, 140], [150, 60, 30],
     [160, 160, 160], [225, 225, 220]],
    dtype=np.float64,
)
_IRIS = np.array([[70, 45, 25], [110, 75, 40], [60, 110, 160], [80, 120, 80], [120, 120, 130]], dtype=np.float64)
HAIR_STYLES = ("bald", "buzz", "short", "fringe", "side", "long", "bun", "afro")
BEARDS = ("none", "stubble", "moustache", "goatee", "full")


@dataclass
class Polygon:
    """One filled or stroked shape of the identity, in canonical coordinates with per-point depth."""

    points: np.ndarray  # (N, 2) float64
    depth: np.ndarray  # (N,) float64
    colour: tuple[float, float, float]
    thickness: float = 0.0  # 0: filled; > 0: open polyline of this width (canonical pixels)
    closed: bool = True


@dataclass
class Identity:
    """Drawn identity parameters plus its static shapes, split into the layers the renderer interleaves."""

    index: int
    params: dict[str, float]
    skin: np.ndarray
    hair_colour: np.ndarray
    back: list[Polygon] = field(default_factory=list)  # behind the head: long hair, afro, ears, neck
    face: list[Polygon] = field(default_factory=list)  # outline, shading, nose, marks, beard
    front: list[Polygon] = field(default_factory=list)  # hair cap, brows (drawn after eyes and mouth)
    glasses: list[Polygon] = field(default_factory=list)  # optional per image
    glasses_prob: float = 0.0
    cache: dict = field(default_factory=dict, repr=False)  # renderer-private precomputations


def _mix(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    return (1.0 - t) * np.asarray(a, dtype=np.float64) + t * np.asarray(b, dtype=np.float64)


def _col(c: np.ndarray) -> tuple[float, float, float]:
    c = np.clip(c, 0, 255)
    return (float(c[0]), float(c[1]), float(c[2]))


def _palette(rng: np.random.Generator, table: np.ndarray, spread: float) -> np.ndarray:
    """A colour interpolated along a palette table, with a small independent jitter."""
    pos = rng.random() * (len(table) - 1)
    i = min(int(pos), len(table) - 2)
    return _mix(table[i], table[i + 1], pos - i) + rng.normal(0.0, spread, 3)


class _Head:
    """Head ellipsoid used to give every canonical point a depth."""

    def __init__(self, cx: float, cy: float, a: float, b: float, d: float) -> None:
        self.cx, self.cy, self.a, self.b, self.d = cx, cy, a, b, d

    def depth(self, pts: np.ndarray, offset: float = 0.0) -> np.ndarray:
        u = (pts[:, 0] - self.cx) / (self.a * 1.02)
        v = (pts[:, 1] - self.cy) / (self.b * 1.15)
        return self.d * np.sqrt(np.clip(1.0 - u * u - v * v, 0.0, None)) + offset


def _superellipse(cx: float, cy: float, a: float, b: float, n: float, taper: float, k: int = 48) -> np.ndarray:
    """Closed outline: a superellipse whose lower half narrows by ``taper`` toward the chin."""
    t = np.linspace(0.0, 2.0 * math.pi, k, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    x = np.sign(c) * np.abs(c) ** (2.0 / n)
    y = np.sign(s) * np.abs(s) ** (2.0 / n)
    narrow = np.where(y > 0, 1.0 - (1.0 - taper) * y**2, 1.0)
    return np.stack([cx + a * x * narrow, cy + b * y], axis=1)


def _ellipse(cx: float, cy: float, rx: float, ry: float, angle: float = 0.0, k: int = 16) -> np.ndarray:
    t = np.linspace(0.0, 2.0 * math.pi, k, endpoint=False)
    x, y = rx * np.cos(t), ry * np.sin(t)
    ca, sa = math.cos(angle), math.sin(angle)
    return np.stack([cx + ca * x - sa * y, cy + sa * x + ca * y], axis=1)


def _hair_layers(rng: np.random.Generator, head: _Head, outline: np.ndarray, p: dict[str, float],
                 colour: np.ndarray, skin: np.ndarray) -> tuple[list[Polygon], list[Polygon]]:
    """Back (behind head) and front (cap over the forehead) hair polygons for the drawn style."""
    style = HAIR_STYLES[int(p["hair_style"])]
    col = _col(colour)
    back: list[Polygon] = []
    front: list[Polygon] = []
    cx, cy, a, b = head.cx, head.cy, head.a, head.b
    vol = p["hair_volume"]
    if style == "bald":
        return back, front
    if style == "long":
        length = p["hair_length"]
        pts = np.array([[cx - a * (1.1 + vol), cy - b * 0.2], [cx - a * (1.05 + vol), cy + length],
                        [cx + a * (1.05 + vol), cy + length], [cx + a * (1.1 + vol), cy - b * 0.2]])
        top = _superellipse(cx, cy - 2, a * (1.08 + vol), b * (1.05 + vol * 0.5), 2.2, 1.0, 32)
        top = top[top[:, 1] < cy - b * 0.1]
        pts = np.concatenate([pts[:2], pts[2:], top[np.argsort(np.arctan2(top[:, 1] - cy, top[:, 0] - cx))][::-1]])
        back.append(Polygon(pts, np.full(len(pts), -a * 0.6), col))
    elif style == "afro":
        pts = _ellipse(cx, cy - b * 0.25, a * (1.35 + vol), b * (0.95 + vol * 0.5), 0.0, 28)
        back.append(Polygon(pts, np.full(len(pts), -a * 0.5), col))
    elif style == "bun":
        pts = _ellipse(cx + rng.normal(0, 3), cy - b * 1.05, a * 0.45, a * 0.4, 0.0, 16)
        back.append(Polygon(pts, np.full(len(pts), -a * 0.2), col))
    # Cap: the outline above the hairline, pushed outward by the volume, closed by the hairline curve.
    hairline = p["hairline"]
    cap_col = _col(_mix(colour, skin, 0.45)) if style == "buzz" else col
    grow = 1.0 + (0.02 if style == "buzz" else vol)
    shell = np.stack([cx + (outline[:, 0] - cx) * grow, cy + (outline[:, 1] - cy) * grow - (grow - 1) * b * 0.4], 1)
    upper = shell[shell[:, 1] < hairline + 6]
    ang = np.arctan2(upper[:, 1] - cy, upper[:, 0] - cx)
    upper = upper[np.argsort(ang)]  # from the left side over the top to the right side
    left_x, right_x = upper[0, 0], upper[-1, 0]
    xs = np.linspace(right_x, left_x, 13)
    tt = np.linspace(0.0, 1.0, 13)
    dip = p["fringe"] if style == "fringe" else p["fringe"] * 0.25
    skew = p["part_skew"] if style in ("side", "short") else 0.0
    line_y = hairline + 6 + dip * np.sin(math.pi * np.clip(tt + skew * (1 - tt) * tt, 0, 1)) ** 0.7
    line_y = np.minimum(line_y, TEMPLATE_112[0, 1] - p["brow_dy"] - 1.0)  # a fringe may hide brows, not eyes
    curve = np.stack([xs, line_y], axis=1)
    pts = np.concatenate([upper, curve])
    front.append(Polygon(pts, head.depth(pts, 1.5), cap_col))
    if style in ("side", "short", "fringe") and p["hair_strands"] > 0.5:
        # A few darker strands give the hair texture a direction (cheap stroked polylines).
        dark = _col(colour * 0.7)
        for k in range(3):
            x0 = cx + (k - 1) * a * 0.35 + skew * 10
            strand = np.array([[x0, hairline - 14], [x0 + 4 + skew * 6, hairline - 5], [x0 + 6, hairline + 4]])
            front.append(Polygon(strand, head.depth(strand, 2.0), dark, 1.0, closed=False))
    return back, front


def _beard(p: dict[str, float], head: _Head, outline: np.ndarray, colour: np.ndarray,
           skin: np.ndarray) -> list[Polygon]:
    kind = BEARDS[int(p["beard"])]
    if kind == "none":
        return []
    tpl = TEMPLATE_112
    mouth_y = float(tpl[3:, 1].mean())
    col = _col(_mix(colour, skin, 0.55 if kind == "stubble" else 0.1))
    out: list[Polygon] = []
    if kind in ("full", "stubble"):
        top = p["beard_top"]
        lower = outline[outline[:, 1] > top]
        lower = lower[np.argsort(-np.arctan2(lower[:, 1] - head.cy, lower[:, 0] - head.cx))]  # right -> left
        inner = _ellipse(FACE_CENTRE, mouth_y + 1, 19, 9 + p["beard_gap"], 0.0, 16)
        inner = inner[inner[:, 1] > mouth_y - 2]
        inner = inner[np.argsort(np.arctan2(inner[:, 1] - mouth_y, inner[:, 0] - FACE_CENTRE))[::-1]]
        pts = np.concatenate([lower[::-1], inner[::-1]])
        out.append(Polygon(pts, head.depth(pts, 0.5), col))
    if kind in ("moustache", "full", "goatee"):
        w = 14 + p["moustache_w"]
        pts = np.array([[FACE_CENTRE - w, mouth_y - 1.5], [FACE_CENTRE - 6, mouth_y - 8], [FACE_CENTRE, mouth_y - 7],
                        [FACE_CENTRE + 6, mouth_y - 8], [FACE_CENTRE + w, mouth_y - 1.5],
                        [FACE_CENTRE, mouth_y - 4.5]])
        out.append(Polygon(pts, head.depth(pts, 3.0), col))
    if kind == "goatee":
        pts = _ellipse(FACE_CENTRE, mouth_y + 12, 8 + p["moustache_w"] * 0.5, 7, 0.0, 14)
        out.append(Polygon(pts, head.depth(pts, 1.0), col))
    return out


def _glasses(p: dict[str, float], head: _Head, skin: np.ndarray) -> list[Polygon]:
    if p["glasses"] < 0.5:
        return []
    style = int(p["glasses_style"])
    col = _col(np.array([p["frame_r"], p["frame_g"], p["frame_b"]]))
    thick = p["frame_thick"]
    out: list[Polygon] = []
    rx, ry = p["lens_rx"], p["lens_ry"]
    for eye in TEMPLATE_112[:2]:
        n = 2.0 if style == 0 else 4.0
        lens = _superellipse(float(eye[0]), float(eye[1]) + 1, rx, ry, n, 1.0, 20)
        z = head.depth(lens, 6.0)
        if style == 2:  # sunglasses: dark filled lenses
            out.append(Polygon(lens, z, _col(np.array([35, 35, 40]) + p["frame_r"] * 0.1)))
        out.append(Polygon(lens, z, col, thick))
    inner_l = TEMPLATE_112[0] + [rx, 0]
    inner_r = TEMPLATE_112[1] - [rx, 0]
    bridge = np.array([inner_l, [FACE_CENTRE, TEMPLATE_112[0, 1] - 2], inner_r])
    out.append(Polygon(bridge, head.depth(bridge, 7.0), col, thick, closed=False))
    for side in (-1, 1):
        eye = TEMPLATE_112[0] if side < 0 else TEMPLATE_112[1]
        arm = np.array([[eye[0] + side * rx, eye[1]], [head.cx + side * head.a * 0.99, eye[1] + 2]])
        out.append(Polygon(arm, np.array([head.depth(arm[:1], 5.0)[0], 0.0]), col, thick, closed=False))
    return out


def _draw_params(rng: np.random.Generator, spread: float) -> dict[str, float]:
    """Scalar identity parameters; ``spread`` scales how far identities differ in shape."""
    u = rng.random(64)
    s = spread

    def rng_in(i: int, lo: float, hi: float) -> float:
        mid = 0.5 * (lo + hi)
        return mid + (u[i] - 0.5) * (hi - lo) * s

    return {
        "face_a": rng_in(0, 35.0, 47.0), "face_top": rng_in(1, 0.0, 16.0), "face_chin": rng_in(2, 106.0, 120.0),
        "face_n": rng_in(3, 1.9, 3.4), "face_taper": rng_in(4, 0.62, 0.98),
        "ear_y": rng_in(5, 50.0, 62.0), "ear_rx": rng_in(6, 3.5, 6.5), "ear_ry": rng_in(7, 7.0, 12.0),
        "hair_style": float(int(u[8] * len(HAIR_STYLES))), "hair_volume": rng_in(9, 0.02, 0.16),
        "hairline": rng_in(10, 10.0, 30.0), "fringe": rng_in(11, 4.0, 18.0), "part_skew": rng_in(12, -0.9, 0.9),
        "hair_length": rng_in(13, 40.0, 90.0), "hair_strands": float(u[14]),
        "brow_dy": rng_in(15, 7.5, 13.5), "brow_thick": rng_in(16, 1.2, 4.2), "brow_len": rng_in(17, 11.0, 19.0),
        "brow_slant": rng_in(18, -0.28, 0.28), "brow_arch": rng_in(19, 0.0, 4.0), "brow_dx": rng_in(20, -2.5, 2.5),
        "eye_w": rng_in(21, 8.5, 13.5), "eye_h": rng_in(22, 2.6, 5.6), "eye_tilt": rng_in(23, -0.16, 0.16),
        "iris_r": rng_in(24, 0.75, 1.05), "lash": rng_in(25, 0.5, 1.4),
        "nose_w": rng_in(26, 7.0, 15.0), "nose_top": rng_in(27, 50.0, 62.0), "nostril": rng_in(28, 1.0, 2.6),
        "nose_dark": rng_in(29, 0.05, 0.2), "nose_z": rng_in(30, 10.0, 20.0),
        "lip_up": rng_in(31, 1.4, 4.6), "lip_low": rng_in(32, 2.0, 6.0), "cupid": rng_in(33, 0.0, 1.8),
        "lip_red": rng_in(34, 0.1, 0.6), "mouth_curve": rng_in(35, -1.0, 2.0),
        "beard": float(int(u[36] * len(BEARDS))) if u[37] < 0.45 else 0.0, "beard_top": rng_in(38, 62.0, 80.0),
        "beard_gap": rng_in(39, 0.0, 5.0), "moustache_w": rng_in(40, -3.0, 3.0),
        "glasses": 1.0 if u[41] < 0.35 else 0.0, "glasses_style": float(int(u[42] * 3)),
        "frame_r": u[43] * 200, "frame_g": u[44] * 200, "frame_b": u[45] * 200,
        "frame_thick": rng_in(46, 0.9, 2.2), "lens_rx": rng_in(47, 9.0, 13.0), "lens_ry": rng_in(48, 6.5, 10.0),
        "glasses_prob": 0.55 + 0.45 * float(u[49]),
        "mole": float(int(u[50] * 3)), "mole_x": rng_in(51, -30.0, 30.0), "mole_y": rng_in(52, 35.0, 95.0),
        "cheek": rng_in(53, 0.0, 0.25), "shade": rng_in(54, 0.0, 0.18), "crease": float(u[55]),
        "neck_w": rng_in(56, 0.45, 0.65),
    }


def draw_identity(rng: np.random.Generator, index: int, spread: float = 1.0) -> Identity:
    """Draw one identity from ``rng`` (the caller derives it from the seed and identity index)."""
    p = _draw_params(rng, spread)
    skin = _palette(rng, _SKIN, 6.0)
    hair = _palette(rng, _HAIR, 8.0)
    iris = _palette(rng, _IRIS, 10.0)
    p.update({"iris_r0": iris[0], "iris_g0": iris[1], "iris_b0": iris[2]})
    cx = FACE_CENTRE
    top, chin = p["face_top"], p["face_chin"]
    cy = 0.5 * (top + chin) + 4.0
    a, b = p["face_a"], 0.5 * (chin - top)
    head = _Head(cx, cy, a, b, a * 0.95)
    outline = _superellipse(cx, 0.5 * (top + chin), a, b, p["face_n"], p["face_taper"])
    ident = Identity(index=index, params=p, skin=skin, hair_colour=hair, glasses_prob=p["glasses_prob"])
    back, front = _hair_layers(rng, head, outline, p, hair, skin)
    neck_w = a * p["neck_w"]
    neck = np.array([[cx - neck_w, cy + b * 0.4], [cx - neck_w * 1.1, 140], [cx + neck_w * 1.1, 140],
                     [cx + neck_w, cy + b * 0.4]])
    back.append(Polygon(neck, np.full(4, -a * 0.3), _col(skin * 0.8)))
    for side in (-1, 1):
        ear = _ellipse(cx + side * a * 0.97, p["ear_y"], p["ear_rx"], p["ear_ry"], side * 0.15, 12)
        back.append(Polygon(ear, np.full(len(ear), -a * 0.15), _col(skin * 0.92)))
    ident.back = back
    face = [Polygon(outline, head.depth(outline), _col(skin))]
    if p["shade"] > 0.02:  # a darker rim gives the outline some volume
        inner = _superellipse(cx, 0.5 * (top + chin) - 2, a * 0.82, b * 0.86, p["face_n"], p["face_taper"], 40)
        face[0] = Polygon(outline, head.depth(outline), _col(skin * (1 - p["shade"])))
        face.append(Polygon(inner, head.depth(inner), _col(skin)))
    if p["cheek"] > 0.08:
        for side in (-1, 1):
            cheek = _ellipse(cx + side * a * 0.52, 78, 7, 5, 0.0, 12)
            face.append(Polygon(cheek, head.depth(cheek, 0.5), _col(_mix(skin, [220, 90, 90], p["cheek"]))))
    tip = TEMPLATE_112[2]
    nw = p["nose_w"]
    nose_z = p["nose_z"]
    shade = _col(skin * (1 - p["nose_dark"]))
    bridge = np.array([[tip[0] - 2.0, p["nose_top"]], [tip[0] - nw * 0.5, tip[1] + 1.5], [tip[0], tip[1] + 3.0],
                       [tip[0] + nw * 0.5, tip[1] + 1.5], [tip[0] + 2.0, p["nose_top"]]])
    bz = head.depth(bridge) + np.array([nose_z * 0.5, 2.0, nose_z * 0.8, 2.0, nose_z * 0.5])
    face.append(Polygon(bridge, bz, shade))
    tip_poly = _ellipse(tip[0], tip[1], nw * 0.22, 2.6, 0.0, 10)
    face.append(Polygon(tip_poly, head.depth(tip_poly) + nose_z, _col(skin * 1.04)))
    for side in (-1, 1):
        nos = _ellipse(tip[0] + side * nw * 0.28, tip[1] + 2.2, p["nostril"], p["nostril"] * 0.6, side * 0.3, 8)
        face.append(Polygon(nos, head.depth(nos) + nose_z * 0.5, _col(skin * 0.45)))
    if p["crease"] > 0.6:  # nasolabial creases
        for side in (-1, 1):
            line = np.array([[tip[0] + side * nw * 0.55, tip[1] + 1], [tip[0] + side * (nw * 0.55 + 5), tip[1] + 12],
                             [tip[0] + side * (nw * 0.55 + 6), tip[1] + 19]])
            face.append(Polygon(line, head.depth(line, 1.0), _col(skin * 0.8), 0.8, closed=False))
    for k in range(int(p["mole"])):
        mx, my = cx + p["mole_x"] * (1 if k == 0 else -0.7), p["mole_y"] - 9 * k
        mole = _ellipse(mx, my, 1.3, 1.3, 0.0, 8)
        face.append(Polygon(mole, head.depth(mole, 0.5), _col(skin * 0.4)))
    face.extend(_beard(p, head, outline, hair, skin))
    ident.face = face
    brow_col = _col(_mix(hair, [20, 15, 10], 0.35))
    for side in (-1, 1):
        eye = TEMPLATE_112[0] if side < 0 else TEMPLATE_112[1]
        xs = np.linspace(-0.5, 0.5, 6)
        bx = eye[0] + side * p["brow_dx"] + xs * p["brow_len"]
        by = eye[1] - p["brow_dy"] - p["brow_arch"] * (1 - (2 * xs) ** 2) + side * xs * p["brow_slant"] * 14
        brow = np.stack([bx, by], axis=1)
        front.append(Polygon(brow, head.depth(brow, 1.0), brow_col, p["brow_thick"], closed=False))
    ident.front = front
    ident.glasses = _glasses(p, head, skin)
    ident.params["head_cx"], ident.params["head_cy"] = head.cx, head.cy
    ident.params["head_a"], ident.params["head_b"], ident.params["head_d"] = head.a, head.b, head.d
    return ident
