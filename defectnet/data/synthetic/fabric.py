"""Synthetic fabric images imitating the Tianchi 2019 Guangdong fabric set.

Real images are 2446x1000 grey-blue twill; the default here is 612x250 (1/4 scale). Defect
sizes are given in *full-size* pixels and multiplied by the scale ``s`` (geometric mean of
the width and height ratios to 2446x1000), with floors in output pixels so that tiny
defects stay learnable at reduced sizes (tiny spots 6-10 px, no box side under ~4 px).
Box shapes follow the real set: tiny knots, hair-thin threads spanning much of the image
(vertical warp / horizontal weft), broken-yarn streaks with aspect ratios 1:28..28:1,
holes, stains and creases. Benign, unannotated irregularities of real cloth (slubs, lint,
dust, dye bands, selvedges, weave-density changes) come from :mod:`fabric_benign`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from defectnet.data.synthetic import fabric_benign, paint
from defectnet.data.synthetic.common import DEFAULT_BENIGN_RATE, BBox, Defect, KindSpec, benign_rng, retry
from defectnet.data.synthetic.fabric_benign import Weave

FULL_SIZE = (2446, 1000)
DEFAULT_SIZE = (612, 250)
#: Class names; COCO category id = position + 1.
CLASSES: tuple[str, ...] = (
    "knot", "fly_yarn", "warp_thread", "weft_thread", "broken_yarn", "hole", "stain", "crease",
)
#: Relative frequency of each class among defects.
CLASS_WEIGHTS = np.array([1.2, 1.0, 1.0, 1.0, 1.2, 0.8, 0.9, 0.8])
#: Probability of 1, 2 or 3 defects in a defective image.
COUNT_PROBS = np.array([0.72, 0.20, 0.08])

_GREY = np.array([128.0, 132.0, 137.0], dtype=np.float32)
_BLUE = np.array([92.0, 110.0, 140.0], dtype=np.float32)


def _scale(w: int, h: int) -> float:
    return float(np.sqrt((w / FULL_SIZE[0]) * (h / FULL_SIZE[1])))


def texture(rng: np.random.Generator, w: int, h: int, benign_rate: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """A normal twill image: float32 ``[h, w, 3]`` (0..255) and its base colour ``[3]``.

    Diagonal twill ribs (random angle 30-60 deg either way, random period) over a faint warp/
    weft grid, per-yarn thickness noise along rows and columns, low-frequency mottling, an
    illumination gradient with vignetting, and sensor noise. Every draw has a fixed count,
    so a defective image shares its background with the normal image of the same index.
    With ``benign_rate > 0`` benign irregularities (:func:`fabric_benign.paint_benign`) are
    painted before the sensor noise from the child stream :func:`benign_rng` of ``rng``, so
    they are shared too and leave ``rng``'s draws unchanged; call it once per ``rng``.
    """
    s = _scale(w, h)
    ys, xs = paint.axes(h, w)
    theta = np.deg2rad(rng.uniform(30.0, 60.0)) * rng.choice([-1.0, 1.0])
    period = max(rng.uniform(12.0, 26.0) * s, 2.7)
    grid_period = period * rng.uniform(0.55, 0.8)
    u = xs * np.float32(np.cos(theta)) + ys * np.float32(np.sin(theta))
    rib = rng.uniform(0.04, 0.11)
    lum = rib * np.sin(u * np.float32(2 * np.pi / period))
    lum += rng.uniform(0.01, 0.04) * (np.sin(xs * np.float32(2 * np.pi / grid_period))
                                       * np.sin(ys * np.float32(2 * np.pi / grid_period)))
    lum += rng.uniform(0.008, 0.025) * paint.smooth_1d(rng, w, 3)[None, :]
    lum += rng.uniform(0.004, 0.015) * paint.smooth_1d(rng, h, 3)[:, None]
    lum += rng.uniform(0.01, 0.04) * paint.smooth_noise(rng, h, w, (4, 9))
    gx, gy = rng.normal(0.0, 0.08, size=2)
    vig = rng.uniform(0.0, 0.25)
    xn, yn = xs / np.float32(w) - 0.5, ys / np.float32(h) - 0.5
    lum += np.float32(gx) * xn + np.float32(gy) * yn - np.float32(vig) * (xn * xn + yn * yn)
    lum += 1.0
    base = (_GREY + (_BLUE - _GREY) * rng.uniform(0.0, 1.0)) * rng.uniform(0.75, 1.2)
    base = (base * rng.uniform(0.96, 1.04, size=3)).astype(np.float32)
    noise = rng.standard_normal((h, w), dtype=np.float32) * np.float32(rng.uniform(1.5, 4.5))
    img = lum[..., None] * base
    if benign_rate > 0.0:
        fabric_benign.paint_benign(benign_rng(rng), img, base, s, Weave(float(theta), float(period), float(rib)),
                                   benign_rate)
    img += noise[..., None]
    return img.astype(np.float32), base


def _stamp(rng: np.random.Generator, img: np.ndarray, alpha: np.ndarray,
           *extras: np.ndarray) -> tuple[np.ndarray, int, int, list[np.ndarray]]:
    """Fit ``alpha`` into the image (same crop for the ``extras`` of its shape) and pick a
    position fully inside: ``(alpha, y0, x0, extras)``."""
    h, w = img.shape[:2]
    alpha, (ty, tx, th, tw) = paint.fit_trim(alpha, h, w)
    y0, x0 = paint.place(rng, alpha.shape, (h, w))
    return alpha, y0, x0, [e[ty: ty + th, tx: tx + tw] for e in extras]


def _gain(rng: np.random.Generator, lo: float, hi: float) -> float:
    """A brightness gain with ``|gain - 1|`` in ``[lo, hi]``, darker or lighter."""
    return float(1.0 + rng.choice([-1.0, 1.0]) * rng.uniform(lo, hi))


def _knot(rng: np.random.Generator, img: np.ndarray, base: np.ndarray, s: float) -> BBox:
    d = max(rng.uniform(10.0, 30.0) * s, rng.uniform(6.0, 10.0))
    alpha, y0, x0, _ = _stamp(rng, img, paint.blob(rng, d / 2 * rng.uniform(0.6, 1.0), d / 2, rough=0.25))
    target = base * (rng.uniform(0.35, 0.7) if rng.random() < 0.7 else rng.uniform(1.35, 1.7))
    paint.mix(img, alpha * np.float32(rng.uniform(0.4, 0.95)), y0, x0, target)
    return paint.box_of(alpha, y0, x0)


def _fly_yarn(rng: np.random.Generator, img: np.ndarray, base: np.ndarray, s: float) -> BBox:
    length = max(rng.uniform(40.0, 160.0) * s, rng.uniform(12.0, 26.0))
    n = 12
    turn = np.cumsum(rng.normal(0.0, 0.55, n - 1)) + rng.uniform(0, 2 * np.pi)
    steps = np.stack([np.sin(turn), np.cos(turn)], axis=1) * (length / (n - 1))
    pts = np.vstack([np.zeros((1, 2)), np.cumsum(steps, axis=0)])
    alpha, y0, x0, _ = _stamp(rng, img, paint.polyline(rng, pts, max(rng.uniform(1.1, 2.0), 6.0 * s)))
    target = base * (rng.uniform(1.4, 1.8) if rng.random() < 0.6 else rng.uniform(0.35, 0.6))
    paint.mix(img, alpha * np.float32(rng.uniform(0.45, 0.95)), y0, x0, target)
    return paint.box_of(alpha, y0, x0)


def _thread_alpha(rng: np.random.Generator, length: int, s: float) -> np.ndarray:
    """A thin, gently wandering vertical thread: alpha ``[length, pw]`` (rows along it)."""
    length = max(length, 8)
    t = max(rng.uniform(6.0, 14.0) * s, rng.uniform(1.4, 2.4))
    amp = max(rng.uniform(4.0, 16.0) * s, rng.uniform(1.2, 2.5))
    knots = max(2, int(length / max(rng.uniform(60.0, 300.0) * s, 12.0)) + 2)
    centre = paint.upsample(rng.standard_normal((1, knots)).astype(np.float32), 1, length)[0]
    centre = (centre - centre.min()) / max(float(np.ptp(centre)), 1e-3) * np.float32(2 * amp) - np.float32(amp)
    centre += np.float32(rng.normal(0.0, 0.25)) * (np.arange(length, dtype=np.float32) / length - 0.5) * amp
    pw = int(np.ceil(2 * np.abs(centre).max() + t)) + 4
    xs = np.arange(pw, dtype=np.float32)[None, :]
    dist = np.abs(xs - (pw - 1) / 2.0 - centre[:, None])
    return paint.cut(t / 2.0 + 0.5 - dist)


def _warp_thread(rng: np.random.Generator, img: np.ndarray, base: np.ndarray, s: float) -> BBox:
    h = img.shape[0]
    alpha, y0, x0, _ = _stamp(rng, img, _thread_alpha(rng, int(rng.uniform(0.25, 1.0) * h), s))
    paint.scale_brightness(img, alpha * np.float32(rng.uniform(0.4, 1.0)), y0, x0, _gain(rng, 0.18, 0.5))
    return paint.box_of(alpha, y0, x0)


def _weft_thread(rng: np.random.Generator, img: np.ndarray, base: np.ndarray, s: float) -> BBox:
    w = img.shape[1]
    alpha = np.ascontiguousarray(_thread_alpha(rng, int(rng.uniform(0.12, 0.8) * w), s).T)
    alpha, y0, x0, _ = _stamp(rng, img, alpha)
    paint.scale_brightness(img, alpha * np.float32(rng.uniform(0.4, 1.0)), y0, x0, _gain(rng, 0.18, 0.5))
    return paint.box_of(alpha, y0, x0)


def _broken_yarn(rng: np.random.Generator, img: np.ndarray, base: np.ndarray, s: float) -> BBox:
    """A band of missing/loose yarns along the warp or weft: aspect 1:4..1:28 either way."""
    h, w = img.shape[:2]
    vertical = bool(rng.random() < 0.5)
    length = int(rng.uniform(0.3, 0.95) * h if vertical else rng.uniform(0.08, 0.6) * w)
    ratio = float(np.exp(rng.uniform(np.log(4.0), np.log(28.0))))
    width = max(length / ratio, 4.0)
    edge = paint.smooth_1d(rng, length, 9) * np.float32(width * 0.06)
    across = np.arange(int(np.ceil(width + 4 * width * 0.1)) + 3, dtype=np.float32)[None, :]
    centre = (across.shape[1] - 1) / 2.0
    dist = np.abs(across - centre - edge[:, None] * 0.5) - (width / 2.0 + edge[:, None] * 0.5)
    along = np.arange(length, dtype=np.float32)[:, None]
    taper = np.minimum(along + 1, length - along) / np.float32(max(width * 0.7, 2.0))
    alpha = paint.cut(np.minimum(0.5 - dist, taper))
    stripes = 0.7 + 0.3 * np.sin(across * np.float32(2 * np.pi / max(2.5, 10.0 * s)))
    alpha = alpha * stripes.astype(np.float32)
    if not vertical:
        alpha = np.ascontiguousarray(alpha.T)
    alpha, y0, x0, _ = _stamp(rng, img, alpha)
    paint.scale_brightness(img, alpha * np.float32(rng.uniform(0.5, 1.0)), y0, x0, _gain(rng, 0.12, 0.35))
    return paint.box_of(alpha, y0, x0)


def _hole(rng: np.random.Generator, img: np.ndarray, base: np.ndarray, s: float) -> BBox:
    """A torn hole: dark (or back-lit bright) opening, a lighter frayed rim, loose yarn
    ends crossing it along the warp or weft."""
    d = max(rng.uniform(40.0, 170.0) * s, rng.uniform(10.0, 18.0))
    rho = paint.blob_field(rng, d / 2 * rng.uniform(0.55, 1.0), d / 2, rough=0.16, reach=1.35)
    edge = 1.0 / max(d / 2 * 0.5, 1.0)
    fray = paint.cut((1.3 - rho) / (2 * edge) + 0.5)
    inner_full = paint.cut((1.0 - rho) / edge + 0.5)
    ys, xs = paint.axes(*rho.shape)
    along = ys if rng.random() < 0.5 else xs
    strands = np.zeros_like(rho)
    for _ in range(int(rng.integers(0, 4))):
        off = rng.uniform(0.3, 0.7) * along.size
        strands = np.maximum(strands, np.clip(np.float32(max(1.2, 5.0 * s)) - np.abs(along - np.float32(off)), 0.0, 1.0) * np.ones_like(rho))
    alpha, y0, x0, (inner, strand) = _stamp(rng, img, fray, inner_full, strands * (inner_full > 0))
    paint.mix(img, alpha * np.float32(0.5), y0, x0, base * np.float32(rng.uniform(1.15, 1.45)))
    dark = rng.uniform(10.0, 45.0) if rng.random() < 0.8 else rng.uniform(200.0, 235.0)
    paint.mix(img, inner * np.float32(rng.uniform(0.8, 1.0)), y0, x0, np.full(3, dark, dtype=np.float32))
    paint.mix(img, strand * np.float32(0.8), y0, x0, base * np.float32(rng.uniform(0.9, 1.3)))
    return paint.box_of(alpha, y0, x0)


def _stain(rng: np.random.Generator, img: np.ndarray, base: np.ndarray, s: float) -> BBox:
    d = max(rng.uniform(80.0, 450.0) * s, rng.uniform(14.0, 26.0))
    rho = paint.blob_field(rng, d / 2 * rng.uniform(0.45, 1.0), d / 2, rough=0.35)
    mottle = paint.smooth_noise(rng, rho.shape[0], rho.shape[1], (5, 5))
    alpha, _, _ = paint.trim(paint.cut((1.0 - rho) * 2.2 + 0.25 * mottle))
    alpha, y0, x0, _ = _stamp(rng, img, alpha)
    kind = rng.random()
    if kind < 0.4:  # oil: brownish
        target = np.array([110.0, 92.0, 60.0], dtype=np.float32) * np.float32(rng.uniform(0.7, 1.1))
    elif kind < 0.8:  # water: darker fabric
        target = base * np.float32(rng.uniform(0.55, 0.75))
    else:  # dirt: grey-yellow
        target = np.array([150.0, 140.0, 105.0], dtype=np.float32)
    paint.mix(img, alpha * np.float32(rng.uniform(0.25, 0.7)), y0, x0, target)
    return paint.box_of(alpha, y0, x0)


def _crease(rng: np.random.Generator, img: np.ndarray, base: np.ndarray, s: float) -> BBox:
    """A bent fold: a bright/dark ridge pair (derivative-of-Gaussian profile) along a curve."""
    h, w = img.shape[:2]
    if rng.random() < 0.7:
        phi = np.deg2rad(rng.uniform(-35.0, 35.0))
        length = rng.uniform(0.2, 0.75) * w
    else:
        phi = np.deg2rad(rng.uniform(60.0, 120.0))
        length = rng.uniform(0.4, 1.1) * h
    sigma = max(rng.uniform(10.0, 32.0) * s, 2.5)
    bend = rng.uniform(0.0, 0.06) * length
    reach = bend + 3.0 * sigma
    half_x = abs(length / 2 * np.cos(phi)) + abs(reach * np.sin(phi)) + 2
    half_y = abs(length / 2 * np.sin(phi)) + abs(reach * np.cos(phi)) + 2
    ys, xs = paint.axes(int(2 * half_y) + 1, int(2 * half_x) + 1)
    yy, xx = ys - np.float32(half_y), xs - np.float32(half_x)
    u = xx * np.float32(np.cos(phi)) + yy * np.float32(np.sin(phi))
    v = -xx * np.float32(np.sin(phi)) + yy * np.float32(np.cos(phi))
    d = (v - np.float32(bend) * np.sin(u * np.float32(np.pi / length) * rng.uniform(1.0, 2.0))) / np.float32(sigma)
    prof = -1.65 * d * np.exp(-0.5 * d * d)
    taper = np.clip((length / 2 - np.abs(u)) / np.float32(0.15 * length), 0.0, 1.0)
    alpha, y0, x0, (sign,) = _stamp(rng, img, paint.cut(np.abs(prof) * taper), np.sign(prof).astype(np.float32))
    amp = np.float32(rng.uniform(12.0, 40.0))
    paint.add(img, alpha, y0, x0, (sign * amp)[..., None] * (base / base.mean()))
    return paint.box_of(alpha, y0, x0)


_Painter = Callable[[np.random.Generator, np.ndarray, np.ndarray, float], BBox]
PAINTERS: tuple[_Painter, ...] = (
    _knot, _fly_yarn, _warp_thread, _weft_thread, _broken_yarn, _hole, _stain, _crease,
)


def render(rng: np.random.Generator, size: tuple[int, int], defective: bool,
           benign_rate: float = DEFAULT_BENIGN_RATE) -> tuple[np.ndarray, list[Defect]]:
    """Render one fabric image: uint8 ``[H, W, 3]`` RGB and its defects (none if normal);
    a defective image has 1-3 defects (mostly 1). Benign irregularities (``benign_rate`` x
    :data:`fabric_benign.MEANS` per image) are painted on both kinds and never annotated."""
    w, h = size
    img, base = texture(rng, w, h, benign_rate)
    defects: list[Defect] = []
    if defective:
        s = _scale(w, h)
        n = int(rng.choice(len(COUNT_PROBS), p=COUNT_PROBS)) + 1
        for cls in rng.choice(len(CLASSES), size=n, p=CLASS_WEIGHTS / CLASS_WEIGHTS.sum()):
            defects.append(Defect(int(cls) + 1, retry(PAINTERS[int(cls)], rng, img, base, s)))
    out = np.clip(img + 0.5, 0.0, 255.0).astype(np.uint8)
    return out, defects


SPEC = KindSpec(name="fabric", classes=CLASSES, default_size=DEFAULT_SIZE, default_normal_share=0.44,
                render=render, benign_means=fabric_benign.MEANS)
