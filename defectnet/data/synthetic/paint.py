"""Vectorised painting primitives shared by the fabric and bottle renderers.

Images are float32 ``[H, W, 3]`` RGB on a 0..255 scale while they are painted. A defect is
a *stamp*: a float32 alpha patch ``[h, w]`` in ``[0, 1]`` placed with its top-left corner
at ``(y0, x0)``; alpha below :data:`ALPHA_CUT` is zeroed when the stamp is made, so the
box of the painted pixels is exactly the box of the stamp's non-zero alpha.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from defectnet.data.synthetic.common import BBox

#: Alpha below this is not painted (so boxes are tight around visible pixels).
ALPHA_CUT = 0.12
#: Smallest box side (pixels) a stamp is grown to by its shape parameters.
MIN_SIDE = 4


@lru_cache(maxsize=32)
def axes(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Broadcastable pixel-centre coordinates: ``ys`` float32 ``[h, 1]``, ``xs`` ``[1, w]``."""
    ys = np.arange(h, dtype=np.float32)[:, None]
    xs = np.arange(w, dtype=np.float32)[None, :]
    ys.setflags(write=False)
    xs.setflags(write=False)
    return ys, xs


@lru_cache(maxsize=64)
def _lerp_index(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear interpolation (align corners) of ``n_in`` samples at ``n_out`` points:
    int ``[n_out]`` lower and upper source indices and float32 ``[n_out]`` upper weights."""
    pos = np.linspace(0.0, n_in - 1.0, n_out)
    lo = np.clip(np.floor(pos).astype(np.int64), 0, max(n_in - 2, 0))
    hi = np.minimum(lo + 1, n_in - 1)
    frac = (pos - lo).astype(np.float32)
    for a in (lo, hi, frac):
        a.setflags(write=False)
    return lo, hi, frac


def upsample(small: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear upsampling of float32 ``[a, b]`` to ``[h, w]``. Element-wise on purpose: a
    BLAS matrix product here was 20x slower on a busy 2-core machine (thread spinning)."""
    small = small.astype(np.float32)
    lo, hi, f = _lerp_index(h, small.shape[0])
    rows = small[lo] + (small[hi] - small[lo]) * f[:, None]
    lo, hi, f = _lerp_index(w, small.shape[1])
    out: np.ndarray = rows[:, lo] + (rows[:, hi] - rows[:, lo]) * f[None, :]
    return out


def smooth_noise(rng: np.random.Generator, h: int, w: int, cells: tuple[int, int]) -> np.ndarray:
    """float32 ``[h, w]`` smooth noise, std ~0.7: ``cells = (rows, cols)`` random values interpolated."""
    return upsample(rng.standard_normal(cells).astype(np.float32), h, w)


def smooth_1d(rng: np.random.Generator, n: int, width: int) -> np.ndarray:
    """float32 ``[n]`` noise smoothed with a box filter of ``width`` samples, std ~1."""
    width = max(1, width)
    raw = rng.standard_normal(n + width - 1).astype(np.float32)
    out: np.ndarray = np.convolve(raw, np.full(width, 1.0 / width, dtype=np.float32), mode="valid")
    return (out * np.float32(np.sqrt(width))).astype(np.float32)


def cut(alpha: np.ndarray) -> np.ndarray:
    """Clip to ``[0, 1]`` and zero the invisible tail (< ALPHA_CUT). float32, same shape."""
    a: np.ndarray = np.clip(alpha, 0.0, 1.0).astype(np.float32)
    a[a < ALPHA_CUT] = 0.0
    return a


def trim(alpha: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Crop a stamp to its non-zero alpha: returns ``(patch, dy, dx)`` (offset of the crop)."""
    rows = np.flatnonzero(alpha.any(axis=1))
    cols = np.flatnonzero(alpha.any(axis=0))
    if rows.size == 0:
        raise ValueError("empty stamp")
    return alpha[rows[0]: rows[-1] + 1, cols[0]: cols[-1] + 1], int(rows[0]), int(cols[0])


def fit_trim(alpha: np.ndarray, h: int, w: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Trim a stamp to its non-zero alpha and, if it is larger than ``h x w``, crop it to its
    centre part and trim again. Returns ``(patch, (y, x, ph, pw))`` with ``patch ==
    alpha[y: y + ph, x: x + pw]``, so other arrays of the stamp's shape can be cut alike.
    Raises ValueError if nothing visible is left."""
    patch, y, x = trim(alpha)
    ph, pw = patch.shape
    if ph > h or pw > w:
        cy, cx = max(0, (ph - h) // 2), max(0, (pw - w) // 2)
        patch, dy, dx = trim(patch[cy: cy + min(ph, h), cx: cx + min(pw, w)])
        y, x = y + cy + dy, x + cx + dx
    return patch, (y, x, patch.shape[0], patch.shape[1])


def place(rng: np.random.Generator, patch: tuple[int, int], image: tuple[int, int],
          region: tuple[int, int, int, int] | None = None) -> tuple[int, int]:
    """Top-left ``(y0, x0)`` so that a ``patch = (h, w)`` stamp lies fully inside the image
    ``(H, W)`` (and, if given, with its centre inside ``region = (y0, x0, y1, x1)``)."""
    ph, pw = patch
    hh, ww = image
    ylo, yhi, xlo, xhi = 0, hh - ph, 0, ww - pw
    if region is not None:
        ry0, rx0, ry1, rx1 = region
        ylo, yhi = max(ylo, ry0 - ph // 2), min(yhi, ry1 - ph // 2)
        xlo, xhi = max(xlo, rx0 - pw // 2), min(xhi, rx1 - pw // 2)
        if ylo > yhi:
            ylo, yhi = 0, hh - ph
        if xlo > xhi:
            xlo, xhi = 0, ww - pw
    return int(rng.integers(ylo, yhi + 1)), int(rng.integers(xlo, xhi + 1))


def box_of(alpha: np.ndarray, y0: int, x0: int) -> BBox:
    """Tight COCO box ``(x, y, w, h)`` of the non-zero pixels of a stamp at ``(y0, x0)``."""
    rows = np.flatnonzero(alpha.any(axis=1))
    cols = np.flatnonzero(alpha.any(axis=0))
    return (float(x0 + cols[0]), float(y0 + rows[0]), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1))


def mix(img: np.ndarray, alpha: np.ndarray, y0: int, x0: int, target: np.ndarray) -> None:
    """In place: ``img = img * (1 - a) + target * a`` over the stamp; target broadcasts to
    ``[h, w, 3]`` (an RGB triple or a per-pixel colour)."""
    h, w = alpha.shape
    view = img[y0: y0 + h, x0: x0 + w]
    a = alpha[..., None]
    view += (target - view) * a


def add(img: np.ndarray, alpha: np.ndarray, y0: int, x0: int, delta: np.ndarray | float) -> None:
    """In place: ``img += alpha * delta`` (delta: scalar, RGB triple or ``[h, w, 3]``)."""
    h, w = alpha.shape
    img[y0: y0 + h, x0: x0 + w] += alpha[..., None] * delta


def scale_brightness(img: np.ndarray, alpha: np.ndarray, y0: int, x0: int, gain: float) -> None:
    """In place: multiply the stamp area by ``1 + alpha * (gain - 1)``."""
    h, w = alpha.shape
    img[y0: y0 + h, x0: x0 + w] *= (1.0 + alpha * (gain - 1.0))[..., None]


def blob_field(rng: np.random.Generator, ry: float, rx: float, rough: float = 0.2,
               reach: float = 1.0) -> np.ndarray:
    """Normalised radius field float32 ``[h, w]`` of an irregular ellipse with radii
    ``(ry, rx)`` pixels, random orientation and a wobbly outline (``rough`` = relative radius
    noise): ``rho < 1`` inside the outline. The patch covers ``rho <= reach``."""
    r = max(ry, rx)
    n = int(np.ceil(r * reach * (1 + 2 * rough))) + 2
    ys, xs = axes(2 * n + 1, 2 * n + 1)
    yy, xx = ys - n, xs - n
    t = rng.uniform(0, np.pi)
    u = xx * np.cos(t) + yy * np.sin(t)
    v = -xx * np.sin(t) + yy * np.cos(t)
    ang = np.arctan2(v, u)
    wob = np.ones_like(ang)
    for k in (2, 3, 5):
        wob = wob + rough / k * rng.standard_normal() * np.cos(k * ang + rng.uniform(0, 2 * np.pi))
    rho: np.ndarray = np.sqrt((u / max(rx, 0.5)) ** 2 + (v / max(ry, 0.5)) ** 2) / np.maximum(wob, 0.3)
    return rho.astype(np.float32)


def blob(rng: np.random.Generator, ry: float, rx: float, rough: float = 0.2, soft: float = 1.0) -> np.ndarray:
    """A filled irregular ellipse (see :func:`blob_field`) with an anti-aliased edge about
    ``soft`` pixels wide. Returns a trimmed, cut alpha ``[h, w]``."""
    rho = blob_field(rng, ry, rx, rough)
    edge = max(soft, 0.3) / max(min(rx, ry), 0.5)
    patch, _, _ = trim(cut((1.0 - rho) / edge + 0.5))
    return patch


def polyline(rng: np.random.Generator, points: np.ndarray, thickness: float) -> np.ndarray:
    """Rasterise a polyline ``points`` float ``[n, 2]`` (y, x), given relative to its own
    bounding box, with an anti-aliased round pen of ``thickness`` pixels. Returns a
    trimmed, cut alpha ``[h, w]``. Cost: one distance map per segment over the patch."""
    pad = thickness + 2
    p = points - points.min(axis=0) + pad
    h = int(np.ceil(p[:, 0].max() + pad)) + 1
    w = int(np.ceil(p[:, 1].max() + pad)) + 1
    ys, xs = axes(h, w)
    best = np.full((h, w), np.inf, dtype=np.float32)
    for (ay, ax), (by, bx) in zip(p[:-1], p[1:]):
        dy, dx = by - ay, bx - ax
        ll = dy * dy + dx * dx
        tt = np.clip(((ys - ay) * dy + (xs - ax) * dx) / ll, 0.0, 1.0) if ll > 0 else np.zeros((1, 1))
        d2 = (ys - (ay + tt * dy)) ** 2 + (xs - (ax + tt * dx)) ** 2
        np.minimum(best, d2, out=best)
    alpha = cut(thickness / 2.0 + 0.5 - np.sqrt(best))
    patch, _, _ = trim(alpha)
    return patch
