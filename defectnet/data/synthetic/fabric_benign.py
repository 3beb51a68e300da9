"""Benign, unannotated irregularities of real woven cloth (fabric generator, version 2+).

Real "normal" fabric images are not clean twill: they show slubs, loose lint, dust specks,
uneven dye or shading bands, selvedge edges and small weave-density changes. None of these
is a defect by the data set's rule, but each resembles one of the annotated classes (a slub
a knot or broken yarn, lint a fly yarn, a dust speck a small knot, a dye band a stain or
crease), which is what makes a plain detector fire on normal images. They are painted with
lower contrast, softer edges and different shapes than the defects (see docs/data.md for a
table), on normal and defective images alike, before the defects and the sensor noise.

All painters take the benign stream ``b`` (see :func:`common.benign_rng`), the float32
``[H, W, 3]`` image (0..255, painted in place), the fabric's base colour ``[3]``, the scale
``s`` (output / full-size pixels) and the twill geometry; sizes are in full-size 2446x1000
pixels times ``s``, with floors in output pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from defectnet.data.synthetic import paint


@dataclass(frozen=True)
class Weave:
    """The twill of one image: rib direction ``theta`` (radians; the rib phase is
    ``x cos(theta) + y sin(theta)``), rib ``period`` (output pixels) and rib amplitude ``rib``
    (relative luminance)."""

    theta: float
    period: float
    rib: float


#: Mean number per image of each irregularity at ``benign_rate`` 1, in painting order
#: (texture-level changes first, surface marks on top). Selvedges are capped at one.
MEANS: tuple[tuple[str, float], ...] = (
    ("density_change", 0.3), ("selvedge", 0.12), ("dye_band", 0.35),
    ("slub", 0.8), ("lint", 0.5), ("dust", 2.0),
)
_MAX_COUNT = {"selvedge": 1, "dye_band": 2}


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    out: np.ndarray = (t * t * (3.0 - 2.0 * t)).astype(np.float32)
    return out


def _put(b: np.random.Generator, img: np.ndarray, alpha: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Fit a stamp into the image and place it fully inside: ``(alpha, y0, x0)``."""
    h, w = img.shape[:2]
    alpha, _ = paint.fit_trim(alpha, h, w)
    y0, x0 = paint.place(b, alpha.shape, (h, w))
    return alpha, y0, x0


def _soften(alpha: np.ndarray) -> np.ndarray:
    """3x3 box blur of a stamp (padded by one pixel): soft, fibrous edges."""
    a = np.pad(alpha, 2)
    c = np.cumsum(np.cumsum(np.pad(a, ((1, 0), (1, 0))), axis=0), axis=1)
    out: np.ndarray = ((c[3:, 3:] - c[:-3, 3:] - c[3:, :-3] + c[:-3, :-3]) / np.float32(9.0)).astype(np.float32)
    return out


def _density_change(b: np.random.Generator, img: np.ndarray, base: np.ndarray, s: float, weave: Weave) -> None:
    """A soft elliptic region where the twill period differs by 3-8 % (the pick density
    drifted a little): the rib phase is warped so the ribs run a little denser or sparser
    there and bend back at its soft rim, and the denser side is a shade darker. The rib
    contrast is unchanged; there is no edge."""
    h, w = img.shape[:2]
    ry = b.uniform(0.15, 0.45) * h
    rx = ry * b.uniform(1.0, 3.0)
    cy, cx = b.uniform(0.0, h), b.uniform(0.0, w)
    f = 1.0 + b.choice([-1.0, 1.0]) * b.uniform(0.03, 0.08)
    shade = (1.0 - f) * b.uniform(0.2, 0.4)  # denser (f < 1) -> darker
    y0, y1 = max(0, int(cy - ry)), min(h, int(np.ceil(cy + ry)) + 1)
    x0, x1 = max(0, int(cx - rx)), min(w, int(np.ceil(cx + rx)) + 1)
    if y0 >= y1 or x0 >= x1:
        return
    ys, xs = paint.axes(h, w)
    yy, xx = ys[y0:y1], xs[:, x0:x1]
    rho = np.sqrt(((yy - np.float32(cy)) / np.float32(ry)) ** 2 + ((xx - np.float32(cx)) / np.float32(rx)) ** 2)
    m = _smoothstep((1.0 - rho) / np.float32(0.5))
    c, sn = np.float32(np.cos(weave.theta)), np.float32(np.sin(weave.theta))
    u = xx * c + yy * sn
    uc = np.float32(cx * np.cos(weave.theta) + cy * np.sin(weave.theta))
    k = np.float32(2 * np.pi / weave.period)
    # Rib phase warped by the local frequency change: ribs bend, their contrast stays.
    new = np.sin(u * k + (u - uc) * (k * np.float32(1.0 / f - 1.0)) * m)
    dl = np.float32(weave.rib) * (new - np.sin(u * k)) + np.float32(shade) * m
    img[y0:y1, x0:x1] += dl[..., None] * base


def _selvedge(b: np.random.Generator, img: np.ndarray, base: np.ndarray, s: float, weave: Weave) -> None:
    """The selvedge along the left or right edge: a band where the twill gives way to tight
    warp cords (plain weave), a little lighter or darker, with a soft inner edge; in half of
    them a row of faint tenter-pin marks at a regular pitch along it."""
    h, w = img.shape[:2]
    width = max(b.uniform(40.0, 160.0) * s, b.uniform(8.0, 14.0))
    soft = max(0.2 * width, 2.0)
    n = min(w, int(np.ceil(width + soft)) + 1)
    left = bool(b.random() < 0.5)
    cols = np.arange(n, dtype=np.float32)  # distance from the edge
    m = _smoothstep((np.float32(width) - cols) / np.float32(soft))[None, :]
    ys, xs = paint.axes(h, w)
    xx = xs[:, :n] if left else xs[:, w - n:][:, ::-1]
    c, sn = np.float32(np.cos(weave.theta)), np.float32(np.sin(weave.theta))
    ribs = np.float32(weave.rib) * np.sin((xx * c + ys * sn) * np.float32(2 * np.pi / weave.period))
    cord = max(weave.period * b.uniform(0.35, 0.6), 2.2)
    cords = np.sin(cols * np.float32(2 * np.pi / cord))[None, :] * np.float32(b.uniform(0.03, 0.06))
    along = np.float32(0.01) * paint.smooth_1d(b, h, max(3, h // 8))[:, None]
    dl = m * (cords - ribs * np.float32(b.uniform(0.5, 0.85)) + np.float32(b.uniform(-0.06, 0.04)) + along)
    pins = bool(b.random() < 0.5)
    pitch = max(b.uniform(80.0, 160.0) * s, 10.0)
    at = b.uniform(0.3, 0.7) * width
    r = max(b.uniform(3.0, 5.0) * s, 0.9)
    phase = b.uniform(0.0, pitch)
    depth = b.uniform(0.08, 0.16)
    if pins:
        dy = (ys - np.float32(phase)) % np.float32(pitch)
        dy = np.minimum(dy, np.float32(pitch) - dy)
        dot = np.exp(-0.5 * ((dy / np.float32(r)) ** 2 + ((cols[None, :] - np.float32(at)) / np.float32(r)) ** 2))
        dl = dl - np.float32(depth) * dot
    view = img[:, :n] if left else img[:, w - n:][:, ::-1]
    view += dl[..., None] * base


def _dye_band(b: np.random.Generator, img: np.ndarray, base: np.ndarray, s: float, weave: Weave) -> None:
    """Uneven dyeing / shading: a wide, low-contrast (3-7 %) band along the warp (60 %) or
    weft running through the whole image, with streaky dye across it, a slow drift along it,
    a slight tint and soft edges (a fifth to a half of its width)."""
    h, w = img.shape[:2]
    vertical = bool(b.random() < 0.6)
    n_across, n_along = (w, h) if vertical else (h, w)
    width = b.uniform(0.06, 0.3) * n_across
    centre = b.uniform(-0.1, 1.1) * n_across
    soft = width * b.uniform(0.2, 0.5)
    x = np.arange(n_across, dtype=np.float32)
    prof = _smoothstep((np.float32(width / 2 + soft / 2) - np.abs(x - np.float32(centre))) / np.float32(soft))
    streaks = paint.smooth_1d(b, n_across, int(b.integers(2, 9))) * np.float32(b.uniform(0.2, 0.5))
    drift = 1.0 + np.float32(0.3) * paint.smooth_1d(b, n_along, max(3, n_along // 4)) / np.float32(2.0)
    amp = b.uniform(0.03, 0.07) * b.choice([-1.0, 1.0])
    tint = (1.0 + b.uniform(-0.35, 0.35, 3)).astype(np.float32)
    across = (np.float32(amp) * prof * (1.0 + streaks)).astype(np.float32)
    field = across[None, :] * drift[:, None] if vertical else drift[None, :] * across[:, None]
    img *= 1.0 + field[..., None] * tint


def _slub(b: np.random.Generator, img: np.ndarray, base: np.ndarray, s: float, weave: Weave) -> None:
    """A slub: a short spindle-shaped thick place along one warp (vertical) or weft yarn,
    12-28 % brighter at its core (a fifth of them a little darker), Gaussian cross-section: softer and
    fainter than a knot, much shorter and thinner than a broken-yarn band."""
    length = max(b.uniform(50.0, 200.0) * s, b.uniform(10.0, 18.0))
    thick = max(b.uniform(6.0, 14.0) * s, b.uniform(1.6, 2.6))
    n_len = int(length) + 1
    pw = int(np.ceil(3 * thick)) + 5
    t = np.linspace(0.0, 1.0, n_len, dtype=np.float32)[:, None]
    spindle = np.clip(np.sin(np.float32(np.pi) * t), 0.0, 1.0) ** np.float32(0.6)
    wob = paint.smooth_1d(b, n_len, max(3, n_len // 3))[:, None] * np.float32(0.25 * thick)
    across = np.arange(pw, dtype=np.float32)[None, :] - np.float32((pw - 1) / 2) - wob
    half = np.float32(thick / 2) * (0.5 + 0.5 * spindle)
    alpha = paint.cut(np.exp(-0.5 * (across / half) ** 2) * spindle)
    if b.random() < 0.5:
        alpha = np.ascontiguousarray(alpha.T)
    gain = b.uniform(0.12, 0.28) * (1.0 if b.random() < 0.8 else -0.7)
    alpha, y0, x0 = _put(b, img, alpha)
    paint.scale_brightness(img, alpha, y0, x0, 1.0 + gain)


def _lint(b: np.random.Generator, img: np.ndarray, base: np.ndarray, s: float, weave: Weave) -> None:
    """Loose lint / fluff: 2-6 hair-thin, curly fibres from one spot, translucent (opacity
    0.4-0.75) and blurred: a faint wisp, where a fly yarn is one thicker, opaque strand."""
    size = max(b.uniform(30.0, 90.0) * s, b.uniform(8.0, 14.0))
    n_pad = int(np.ceil(1.3 * size)) + 3
    ys, xs = paint.axes(2 * n_pad + 1, 2 * n_pad + 1)
    best = np.full((2 * n_pad + 1, 2 * n_pad + 1), np.inf, dtype=np.float32)
    for _ in range(int(b.integers(2, 7))):
        start = b.normal(0.0, 0.15 * size, 2) + n_pad
        turn = np.cumsum(b.normal(0.0, 0.6, 7)) + b.uniform(0.0, 2 * np.pi)
        steps = np.stack([np.sin(turn), np.cos(turn)], axis=1) * (b.uniform(0.4, 1.0) * size / 7)
        pts = np.vstack([start[None, :], start[None, :] + np.cumsum(steps, axis=0)])
        for (ay, ax), (by, bx) in zip(pts[:-1], pts[1:]):
            dy, dx = by - ay, bx - ax
            ll = max(dy * dy + dx * dx, 1e-6)
            tt = np.clip(((ys - ay) * dy + (xs - ax) * dx) / np.float32(ll), 0.0, 1.0)
            np.minimum(best, (ys - (ay + tt * dy)) ** 2 + (xs - (ax + tt * dx)) ** 2, out=best)
    fibre = np.clip(np.float32(0.95) - np.sqrt(best), 0.0, 1.0)
    alpha = paint.cut(_soften(fibre) * np.float32(1.3))
    target = base * np.float32(b.uniform(1.3, 1.6) if b.random() < 0.75 else b.uniform(0.55, 0.75))
    opacity = np.float32(b.uniform(0.4, 0.75))
    try:
        alpha, y0, x0 = _put(b, img, alpha)
    except ValueError:  # nothing visible left
        return
    paint.mix(img, alpha * opacity, y0, x0, target)


def _dust(b: np.random.Generator, img: np.ndarray, base: np.ndarray, s: float, weave: Weave) -> None:
    """A dust speck: a tiny (about 1-4 px across at 1/4 scale) soft dot, 20-45 % darker at its centre
    (a quarter of them lighter); a knot is at least 6 px across and more contrasted."""
    r = max(b.uniform(2.0, 7.0) * s, b.uniform(0.7, 1.5))
    n = int(np.ceil(2.5 * r)) + 1
    ys, xs = paint.axes(2 * n + 1, 2 * n + 1)
    alpha = paint.cut(np.exp(-0.5 * ((ys - n) ** 2 + (xs - n) ** 2) / np.float32(r * r)))
    target = base * np.float32(b.uniform(0.45, 0.7) if b.random() < 0.75 else b.uniform(1.3, 1.5))
    opacity = np.float32(b.uniform(0.5, 0.8))
    alpha, y0, x0 = _put(b, img, alpha)
    paint.mix(img, alpha * opacity, y0, x0, target)


_Painter = Callable[[np.random.Generator, np.ndarray, np.ndarray, float, Weave], None]
PAINTERS: dict[str, _Painter] = {
    "density_change": _density_change, "selvedge": _selvedge, "dye_band": _dye_band,
    "slub": _slub, "lint": _lint, "dust": _dust,
}


def paint_benign(b: np.random.Generator, img: np.ndarray, base: np.ndarray, s: float, weave: Weave,
                 rate: float) -> dict[str, int]:
    """Paint the benign irregularities of one image in place; returns the count of each.

    Counts are Poisson with mean ``MEANS[kind] * rate`` (one draw of all six), then each
    irregularity draws its shape and place from ``b``. ``rate == 0`` paints nothing.
    """
    counts: dict[str, int] = dict.fromkeys(PAINTERS, 0)
    if rate <= 0.0:
        return counts
    drawn = b.poisson(np.array([m for _, m in MEANS]) * rate)
    for (name, _), k in zip(MEANS, drawn):
        counts[name] = min(int(k), _MAX_COUNT.get(name, 1 << 30))
        for _ in range(counts[name]):
            PAINTERS[name](b, img, base, s, weave)
    return counts
