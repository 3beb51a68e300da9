"""Synthetic liquor-bottle inspection images imitating the Tianchi 2019 Chongqing set.

Each image is one of two scenes (half each): a *cap* seen from above (a knurled metal or
plastic cap on a dark background: rim, embossed ring, printed emblem) or a *label* seen
from the side (a cylindrical bottle with a printed label band and a dot-matrix ink-jet
code on the glass above it). Every label image carries a code; only abnormal codes are
annotated. Classes follow the real set (its "code normal" and "cap twist" are left out).
Benign, unannotated variation (glare, dust, print bands) comes from :mod:`bottle_benign`.
Sizes scale with the scene (``m = min(W, H)``), with a 4-6 px floor for the smallest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from defectnet.data.synthetic import bottle_benign, inkjet, paint
from defectnet.data.synthetic.common import DEFAULT_BENIGN_RATE, BBox, Defect, KindSpec, benign_rng, retry

DEFAULT_SIZE = (658, 492)
CLASSES: tuple[str, ...] = (
    "cap_broken", "cap_deformed", "cap_bad_edge", "cap_break_point",
    "label_skew", "label_wrinkle", "label_bubble", "code_abnormal",
)
CAP_CLASSES = (0, 1, 2, 3)
LABEL_CLASSES = (4, 5, 6, 7)
COUNT_PROBS = np.array([0.75, 0.19, 0.06])

_CAP_COLOURS = np.array([[205, 165, 70], [175, 35, 40], [185, 185, 190], [225, 220, 205], [40, 70, 150]], np.float32)
_GLASS = np.array([[232, 230, 222], [125, 165, 135], [115, 70, 38], [55, 85, 160], [205, 212, 212]], np.float32)
_PAPER = np.array([[185, 32, 32], [236, 226, 190], [205, 168, 72], [32, 42, 95], [244, 244, 240]], np.float32)
_INK = np.array([[200, 160, 60], [25, 25, 25], [150, 20, 20], [230, 210, 120], [30, 40, 110]], np.float32)
#: Inks that stand out on each paper (red, cream, gold, dark blue, white).
_INKS_FOR = ((0, 1, 3), (0, 1, 2, 4), (1, 2, 4), (0, 3), (0, 1, 2, 4))


@dataclass
class _Scene:
    """What the overlay defects need. img: float32 ``[H, W, 3]`` being painted; on: float32
    ``[H, W]`` where they may paint (cap or label); anchor: bool ``[H, W]`` where they may
    be centred (cap rim / label interior); colour: the surface colour ``[3]``; centre:
    ``(y, x)`` of the cap; body: float32 ``[H, W]`` the whole object (cap, or bottle with its
    label: where a reflection may fall), None = ``on``."""

    img: np.ndarray
    on: np.ndarray
    anchor: np.ndarray
    colour: np.ndarray
    centre: tuple[float, float] = (0.0, 0.0)
    body: np.ndarray | None = None


def _background(rng: np.random.Generator, w: int, h: int, lo: float, hi: float) -> np.ndarray:
    """Grey backdrop float32 ``[h, w, 3]``: level in ``[lo, hi]``, gradient, soft mottling."""
    ys, xs = paint.axes(h, w)
    level = rng.uniform(lo, hi)
    g = rng.normal(0.0, 0.15, 2).astype(np.float32)
    lum = level * (1.0 + g[0] * (xs / w - 0.5) + g[1] * (ys / h - 0.5) + 0.08 * paint.smooth_noise(rng, h, w, (3, 4)))
    return np.repeat(lum[..., None], 3, axis=2).astype(np.float32)


_Bump = Callable[[np.ndarray], np.ndarray]


def _wrap(angle: np.ndarray) -> np.ndarray:
    """Angles wrapped to ``[-pi, pi)`` (float32 in, float32 out)."""
    return (angle + np.float32(np.pi)) % np.float32(2 * np.pi) - np.float32(np.pi)


def _cap_scene(rng: np.random.Generator, w: int, h: int, bumps: list[_Bump],
               dents: list[tuple[float, float]]) -> tuple[_Scene, list[np.ndarray]]:
    """Top view of a cap. Each ``bump(theta) -> radius change`` deforms the outline; each
    ``dent = (angle, half width)`` scuffs the rim there. Returns the scene and, per bump,
    ``changed`` bool ``[H, W]``: the pixels that bump moved (outline and rim). Work is
    limited to the square around the cap (a bump moves the outline by at most 0.04 m)."""
    m = min(w, h)
    img = _background(rng, w, h, 12.0, 50.0)
    cx = w / 2 + rng.uniform(-0.04, 0.04) * w
    cy = h / 2 + rng.uniform(-0.04, 0.04) * h
    r0 = rng.uniform(0.3, 0.37) * m
    reach = r0 * 1.01 + 0.045 * m + 3
    y0, y1 = max(0, int(cy - reach)), min(h, int(np.ceil(cy + reach)) + 1)
    x0, x1 = max(0, int(cx - reach)), min(w, int(np.ceil(cx + reach)) + 1)
    ys_all, xs_all = paint.axes(h, w)
    ys, xs = ys_all[y0:y1], xs_all[:, x0:x1]
    dx, dy = xs - np.float32(cx), ys - np.float32(cy)
    rho = np.sqrt(dx * dx + dy * dy)
    theta = np.arctan2(dy, dx)
    radius = r0 * (1.0 + rng.uniform(0.0, 0.008) * np.cos(2 * (theta - rng.uniform(0, np.pi))))
    rim_w = rng.uniform(0.07, 0.11) * r0
    changed = []
    total = np.zeros_like(theta)
    for bump in bumps:
        delta = bump(theta)
        moved = np.zeros((h, w), dtype=bool)
        moved[y0:y1, x0:x1] = ((np.abs(delta) > 0.5) & (rho >= np.minimum(radius, radius + delta) - rim_w)
                               & (rho <= np.maximum(radius, radius + delta) + 1.0))
        changed.append(moved)
        total += delta
    radius = radius + total
    inside = np.clip(radius - rho + 0.5, 0.0, 1.0)
    colour = _CAP_COLOURS[rng.integers(len(_CAP_COLOURS))] * np.float32(rng.uniform(0.85, 1.1))
    hx, hy = rng.uniform(-0.4, 0.4, 2) * r0
    shade = 0.7 + 0.45 * np.exp(-((dx - hx) ** 2 + (dy - hy) ** 2) / np.float32(2 * (0.55 * r0) ** 2))
    ring = rng.uniform(0.5, 0.75) * r0
    d_ring = (rho - np.float32(ring)) / np.float32(max(0.02 * r0, 1.0))
    shade = shade - 0.35 * d_ring * np.exp(-0.5 * d_ring * d_ring)
    teeth = int(rng.integers(80, 140))
    rim = np.clip((rho - (radius - rim_w)) + 0.5, 0.0, 1.0)
    knurl = 0.8 + 0.25 * np.sin(teeth * theta)
    for a0, half in dents:  # a scuffed, chipped stretch of the rim
        near = np.abs(_wrap(theta - a0)) < half
        knurl = np.where(near, knurl * 0.7, knurl)
    shade = shade * (1.0 - rim) + rim * knurl * (1.05 + 0.3 * np.exp(-(((rho - radius + rim_w / 2) / rim_w) ** 2)))
    star = rho < 0.28 * r0 * (0.62 + 0.38 * np.cos(int(rng.integers(5, 9)) * theta + rng.uniform(0, 6.3)))
    surface = shade[..., None] * colour
    surface = np.where(star[..., None], surface * np.float32(rng.uniform(0.55, 0.75)), surface)
    img[y0:y1, x0:x1] += (surface - img[y0:y1, x0:x1]) * inside[..., None]
    on = np.zeros((h, w), dtype=np.float32)
    on[y0:y1, x0:x1] = inside
    anchor = np.zeros((h, w), dtype=bool)
    anchor[y0:y1, x0:x1] = (rho < radius - 0.3 * rim_w) & (rho > radius - 1.2 * rim_w)
    return _Scene(img, on, anchor, colour, (float(cy), float(cx))), changed


def _label_scene(rng: np.random.Generator, w: int, h: int, skew: float) -> tuple[_Scene, np.ndarray, np.ndarray]:
    """Side view of a bottle with a label (sheared by ``skew`` radians). Returns the scene
    (``on`` = label area), the label alpha ``[H, W]`` and the glass colour. Work is limited
    to the bottle's columns and the label's rows (4096x3000 images stay affordable)."""
    img = _background(rng, w, h, 60.0, 200.0)
    cx = w / 2 + rng.uniform(-0.05, 0.05) * w
    bw = rng.uniform(0.28, 0.36) * w
    c0, c1 = max(0, int(cx - bw) - 1), min(w, int(np.ceil(cx + bw)) + 2)
    ys, xs_all = paint.axes(h, w)
    xs = xs_all[:, c0:c1]
    y_sh = rng.uniform(0.1, 0.25) * h
    t = np.clip((ys - np.float32(y_sh - 0.25 * h)) / np.float32(0.25 * h), 0.0, 1.0)
    half = np.float32(bw) * (0.42 + 0.58 * t * t * (3 - 2 * t))
    q = (xs - np.float32(cx)) / half
    body = np.clip((1.0 - np.abs(q)) * half + 0.5, 0.0, 1.0)
    qc = np.clip(q, -1.0, 1.0)
    cyl = np.sqrt(1.0 - qc * qc)
    hl = rng.uniform(-0.55, -0.35)
    spec = np.exp(-(((qc - np.float32(hl)) / np.float32(0.07)) ** 2)) + 0.35 * np.exp(-(((qc - 0.6) / 0.05) ** 2))
    glass = _GLASS[int(rng.integers(len(_GLASS)))] * np.float32(rng.uniform(0.85, 1.05))
    surface = (0.45 + 0.55 * cyl)[..., None] * glass + (90.0 * spec)[..., None]
    yl = rng.uniform(0.42, 0.52) * h
    lh = rng.uniform(0.28, 0.38) * h
    reach = abs(np.tan(skew)) * np.pi / 2 * bw + 2
    r0, r1 = max(0, int(yl - reach)), min(h, int(np.ceil(yl + lh + reach)) + 1)
    qw, cw, sw = q[r0:r1], cyl[r0:r1], spec[r0:r1]
    u = np.arcsin(qc[r0:r1]) * np.float32(bw)
    v = (ys[r0:r1] - np.float32(yl)) - np.float32(np.tan(skew)) * u
    lab = np.clip(np.minimum(v, np.float32(lh) - v) + 0.5, 0.0, 1.0) * (np.abs(qw) < 0.999)
    pi = int(rng.integers(len(_PAPER)))
    paper = _PAPER[pi] * np.float32(rng.uniform(0.9, 1.05))
    ink = _INK[_INKS_FOR[pi][int(rng.integers(len(_INKS_FOR[pi])))]]
    vn = v / np.float32(lh)
    pattern = ((np.abs(vn - 0.075) < 0.018) | (np.abs(vn - 0.925) < 0.018)).astype(np.float32)
    for v0, v1, cell in ((0.2, 0.45, lh * 0.05), (0.56, 0.66, lh * 0.022), (0.72, 0.82, lh * 0.022)):
        cols = int(1.2 * bw / cell) + 1
        grid = rng.random((max(1, int((v1 - v0) * lh / cell)), cols)) < 0.55
        gy = np.clip(((vn - np.float32(v0)) * np.float32(lh / cell)).astype(np.int32), 0, grid.shape[0] - 1)
        gx = np.clip(((u + np.float32(0.6 * bw)) / np.float32(cell)).astype(np.int32), 0, cols - 1)
        inside = (vn >= v0) & (vn < v1) & (np.abs(u) < 0.45 * bw * (1.0 if v0 < 0.3 else 0.8))
        pattern = np.maximum(pattern, (grid[gy, gx] & inside).astype(np.float32))
    paper_img = paper + (ink - paper) * pattern[..., None] * np.float32(0.9)
    surface[r0:r1] += (paper_img * (0.55 + 0.45 * cw)[..., None] + (35.0 * sw)[..., None] - surface[r0:r1]) * lab[..., None]
    img[:, c0:c1] += (surface - img[:, c0:c1]) * body[..., None]
    label = np.zeros((h, w), dtype=np.float32)
    label[r0:r1, c0:c1] = lab * body[r0:r1]
    strict = np.zeros((h, w), dtype=bool)
    strict[r0:r1, c0:c1] = (lab >= 1.0) & (np.abs(qw) < 0.8)
    whole = np.zeros((h, w), dtype=np.float32)
    whole[:, c0:c1] = body
    return _Scene(img, label, strict, paper, body=whole), label, glass


def _put(rng: np.random.Generator, sc: _Scene, alpha: np.ndarray, *extras: np.ndarray,
         at: tuple[int, int] | None = None) -> tuple[np.ndarray, int, int, list[np.ndarray]]:
    """Centre ``alpha`` on ``at = (y, x)`` or a random anchor pixel, clip it to the paintable
    area and trim; ``extras`` (of alpha's shape) are cut alike. Returns ``(alpha, y0, x0, extras)``."""
    h, w = sc.on.shape
    alpha, (ty, tx, ph, pw) = paint.fit_trim(alpha, h, w)
    extras = tuple(e[ty: ty + ph, tx: tx + pw] for e in extras)
    cand = np.flatnonzero(sc.anchor)
    for _ in range(20):
        cy, cx = at if at is not None else divmod(int(cand[rng.integers(cand.size)]), w)
        y0 = min(max(cy - ph // 2, 0), h - ph)
        x0 = min(max(cx - pw // 2, 0), w - pw)
        masked = paint.cut(alpha * sc.on[y0: y0 + ph, x0: x0 + pw])
        if masked.any():
            out, dy, dx = paint.trim(masked)
            return out, y0 + dy, x0 + dx, [e[dy: dy + out.shape[0], dx: dx + out.shape[1]] for e in extras]
        at = None
    raise ValueError("no room for the defect")


def _box(mask: np.ndarray) -> BBox:
    """Tight COCO box of a non-empty bool mask ``[H, W]``."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1)


def _cap_broken(rng: np.random.Generator, sc: _Scene, m: int) -> BBox:
    """A chunk broken out of the rim: dark gap with a bright fracture edge."""
    r = max(rng.uniform(0.03, 0.09) * m, 6.0)
    rho = paint.blob_field(rng, r * rng.uniform(0.5, 1.0), r, rough=0.45, reach=1.2)
    outer = paint.cut((1.15 - rho) * 5.0)
    alpha, y0, x0, (inner,) = _put(rng, sc, outer, paint.cut((0.9 - rho) * 5.0))
    paint.mix(sc.img, alpha * np.float32(0.8), y0, x0, np.minimum(sc.colour * np.float32(1.4), 255.0))
    inner = inner * (alpha > 0)
    paint.mix(sc.img, inner, y0, x0, np.full(3, rng.uniform(10.0, 35.0), np.float32))
    return paint.box_of(alpha, y0, x0)


def _cap_break_point(rng: np.random.Generator, sc: _Scene, m: int) -> BBox:
    """A small dark radial gap across the knurled rim (a broken bridge of the tamper ring)."""
    cand = np.flatnonzero(sc.anchor)
    y, x = divmod(int(cand[rng.integers(cand.size)]), sc.on.shape[1])
    a = np.arctan2(y - sc.centre[0], x - sc.centre[1])
    ln = max(rng.uniform(0.015, 0.035) * m, 6.0)
    pts = np.array([[0.0, 0.0], [ln * np.sin(a), ln * np.cos(a)]])
    line = paint.polyline(rng, pts, max(2.5, rng.uniform(0.005, 0.012) * m))
    alpha, y0, x0, _ = _put(rng, sc, line, at=(y, x))
    paint.mix(sc.img, alpha * np.float32(rng.uniform(0.7, 0.95)), y0, x0, np.full(3, 18.0, np.float32))
    return paint.box_of(alpha, y0, x0)


def _label_wrinkle(rng: np.random.Generator, sc: _Scene, m: int) -> BBox:
    """2-5 parallel ridges (bright/dark pairs) on the label."""
    length = max(rng.uniform(0.06, 0.2) * m, 10.0)
    sigma = max(rng.uniform(0.002, 0.005) * m, 1.0)
    k = int(rng.integers(2, 6))
    gap = sigma * rng.uniform(3.0, 6.0)
    phi = np.deg2rad(rng.uniform(40.0, 140.0))
    n = int(length / 2 + k * gap + 4 * sigma) + 2
    ys, xs = paint.axes(2 * n + 1, 2 * n + 1)
    yy, xx = ys - np.float32(n), xs - np.float32(n)
    u = xx * np.float32(np.cos(phi)) + yy * np.float32(np.sin(phi))
    v = -xx * np.float32(np.sin(phi)) + yy * np.float32(np.cos(phi)) + np.float32(0.04 * length) * np.sin(u / length * 4)
    prof = np.zeros_like(u)
    for j in range(k):
        d = (v - np.float32((j - (k - 1) / 2) * gap)) / np.float32(sigma)
        prof += -1.65 * d * np.exp(-0.5 * d * d) * np.float32(rng.uniform(0.5, 1.0))
    taper = np.clip((length / 2 * rng.uniform(0.6, 1.0) - np.abs(u)) / np.float32(0.2 * length), 0.0, 1.0)
    alpha, y0, x0, (sign,) = _put(rng, sc, paint.cut(np.abs(prof) * taper), np.sign(prof).astype(np.float32))
    paint.add(sc.img, alpha, y0, x0, (sign * np.float32(rng.uniform(20.0, 55.0)))[..., None])
    return paint.box_of(alpha, y0, x0)


def _label_bubble(rng: np.random.Generator, sc: _Scene, m: int) -> BBox:
    """An air bubble under the label: raised ellipse with a highlight and a shadowed rim."""
    r = max(rng.uniform(0.01, 0.04) * m, 4.0)
    rho = paint.blob_field(rng, r * rng.uniform(0.6, 1.0), r, rough=0.1)
    alpha = paint.cut((1.0 - rho) * r + 0.5)
    hh, ww = rho.shape
    ys, xs = paint.axes(hh, ww)
    hlt = np.exp(-(((ys - hh * 0.38) ** 2 + (xs - ww * 0.38) ** 2) / np.float32(2 * (0.3 * r) ** 2)))
    shade = 55.0 * hlt - 45.0 * np.clip((rho - 0.7) / 0.3, 0.0, 1.0) * ((ys + xs) > (hh + ww) / 2)
    alpha, y0, x0, (delta,) = _put(rng, sc, alpha, shade.astype(np.float32))
    paint.add(sc.img, np.where(alpha > 0, 1.0, 0.0).astype(np.float32), y0, x0,
              (delta * np.float32(rng.uniform(0.5, 1.0)) + np.float32(12.0) * alpha)[..., None])
    return paint.box_of(alpha, y0, x0)


def _bump(kind: int, rng: np.random.Generator, m: int) -> tuple[Callable[[np.ndarray], np.ndarray], float, float]:
    """Outline change for cap_deformed (smooth dent/bulge, kind 1) or cap_bad_edge (jagged
    chipped stretch, kind 2): ``(f(theta) -> radius change, centre angle, half width)``."""
    a0 = rng.uniform(-np.pi, np.pi)
    if kind == 1:
        depth = max(rng.uniform(0.012, 0.04) * m, 3.0) * (1.0 if rng.random() < 0.3 else -1.0)
        half = rng.uniform(0.25, 0.7)
    else:
        depth = -max(rng.uniform(0.005, 0.015) * m, 2.5)
        half = rng.uniform(0.1, 0.3)
    teeth, phase = float(rng.integers(60, 160)), rng.uniform(0, 2 * np.pi)

    def f(theta: np.ndarray) -> np.ndarray:
        d = _wrap(theta - a0)
        win = np.where(np.abs(d) < half, 0.5 * (1.0 + np.cos(np.pi * d / half)), 0.0)
        if kind == 2:
            win = (np.abs(d) < half) * np.abs(np.sin(teeth * theta + phase)) ** 0.5
        return (depth * win).astype(np.float32)

    return f, a0, half


def render(rng: np.random.Generator, size: tuple[int, int], defective: bool,
           benign_rate: float = DEFAULT_BENIGN_RATE) -> tuple[np.ndarray, list[Defect]]:
    """Render one bottle image: uint8 ``[H, W, 3]`` RGB and its defects (none if normal).
    Benign variation (``benign_rate`` x :data:`bottle_benign.MEANS` per image: print bands,
    glare, dust) is painted on both kinds and never annotated."""
    w, h = size
    m = min(w, h)
    cap_view = bool(rng.random() < 0.5)
    classes: list[int] = []
    if defective:
        n = int(rng.choice(len(COUNT_PROBS), p=COUNT_PROBS)) + 1
        classes = [int(c) for c in rng.choice(CAP_CLASSES if cap_view else LABEL_CLASSES, size=n, replace=False)]
    defects: list[Defect] = []
    if cap_view:
        geo = [c for c in classes if c in (1, 2)]
        bumps = [_bump(c, rng, m) for c in geo]
        scene, changed = _cap_scene(rng, w, h, [b[0] for b in bumps],
                                    [(a0, half) for c, (_, a0, half) in zip(geo, bumps) if c == 2])
        defects.extend(Defect(c + 1, _box(ch)) for c, ch in zip(geo, changed))
        painters = {0: _cap_broken, 3: _cap_break_point}
    else:
        skew = np.deg2rad(rng.uniform(2.5, 7.0)) * rng.choice([-1.0, 1.0]) if 4 in classes else 0.0
        scene, label, glass = _label_scene(rng, w, h, float(skew))
        if 4 in classes:
            defects.append(Defect(5, _box(label > paint.ALPHA_CUT)))
        bbox = inkjet.print_code(rng, scene.img, label, glass, 7 in classes)
        if 7 in classes:
            defects.append(Defect(8, bbox))
        painters = {5: _label_wrinkle, 6: _label_bubble}
    if benign_rate > 0.0:  # before the overlay defects, from a child stream: rng's draws are unchanged
        bottle_benign.paint_benign(benign_rng(rng), scene.img, scene.on,
                                   scene.on if scene.body is None else scene.body, m, benign_rate)
    for c in classes:
        if c in painters:
            defects.append(Defect(c + 1, retry(painters[c], rng, scene, m)))
    noise = rng.standard_normal((h, w), dtype=np.float32) * np.float32(rng.uniform(1.5, 3.5))
    out = np.clip(scene.img + noise[..., None] + 0.5, 0.0, 255.0).astype(np.uint8)
    return out, defects


SPEC = KindSpec(name="bottle", classes=CLASSES, default_size=DEFAULT_SIZE, default_normal_share=0.25,
                render=render, benign_means=bottle_benign.MEANS)
