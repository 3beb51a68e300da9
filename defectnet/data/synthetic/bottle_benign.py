"""Benign, unannotated variation of the bottle scenes (bottle generator, version 2+).

Real bottle images show reflections on the glass, cap and glossy labels, dust on the glass,
and print/lacquer density that varies from bottle to bottle; none of these is a defect. A
glare spot resembles the highlight of a label bubble, a dust speck a cap break point, a
print band a wrinkle; they are softer and lower in contrast (see docs/data.md).

Painters take the benign stream ``b`` (see :func:`common.benign_rng`), the float32
``[H, W, 3]`` image (0..255, painted in place), ``on`` float32 ``[H, W]`` (the cap or the
label: where print variation goes and glare is centred), ``body`` float32 ``[H, W]`` (the
whole cap or bottle: where glare may spread) and ``m = min(W, H)``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from defectnet.data.synthetic import paint

#: Mean number per image of each kind at ``benign_rate`` 1, in painting order.
MEANS: tuple[tuple[str, float], ...] = (("print_variation", 0.5), ("glare", 0.6), ("dust", 1.5))


def _window(on: np.ndarray, alpha: np.ndarray, cy: float, cx: float) -> tuple[np.ndarray, int, int] | None:
    """Place ``alpha`` centred at ``(cy, cx)``, clipped to the image and masked by ``on``."""
    h, w = on.shape
    ph, pw = alpha.shape
    y0, x0 = int(cy) - ph // 2, int(cx) - pw // 2
    ya, xa = max(0, y0), max(0, x0)
    yb, xb = min(h, y0 + ph), min(w, x0 + pw)
    if ya >= yb or xa >= xb:
        return None
    a = paint.cut(alpha[ya - y0: yb - y0, xa - x0: xb - x0] * on[ya:yb, xa:xb])
    return (a, ya, xa) if a.any() else None


def _anywhere(b: np.random.Generator, on: np.ndarray) -> tuple[float, float]:
    """A random pixel of ``on > 0.5`` (the image centre if there is none)."""
    cand = np.flatnonzero(on > 0.5)
    if cand.size == 0:
        return on.shape[0] / 2, on.shape[1] / 2
    y, x = divmod(int(cand[b.integers(cand.size)]), on.shape[1])
    return float(y), float(x)


def _print_variation(b: np.random.Generator, img: np.ndarray, on: np.ndarray, body: np.ndarray, m: int) -> None:
    """Print / lacquer density variation: a wide, soft band across the label or cap, 3-8 %
    lighter or darker with a slight tint (ink coverage differs between print runs)."""
    h, w = on.shape
    cy, _ = _anywhere(b, on)
    half = b.uniform(0.03, 0.12) * m
    soft = max(half * b.uniform(0.4, 0.8), 2.0)
    gain = b.uniform(0.03, 0.08) * b.choice([-1.0, 1.0])
    tint = (1.0 + b.uniform(-0.3, 0.3, 3)).astype(np.float32)
    y0, y1 = max(0, int(cy - half - soft)), min(h, int(np.ceil(cy + half + soft)) + 1)
    ys = np.arange(y0, y1, dtype=np.float32)[:, None]
    t = np.clip((np.float32(half + soft) - np.abs(ys - np.float32(cy))) / np.float32(2 * soft), 0.0, 1.0)
    band = (t * t * (3 - 2 * t)) * on[y0:y1]
    img[y0:y1] *= 1.0 + (np.float32(gain) * band)[..., None] * tint


def _glare(b: np.random.Generator, img: np.ndarray, on: np.ndarray, body: np.ndarray, m: int) -> None:
    """A specular reflection of the lamp: a soft, elongated bright spot (Gaussian, long axis
    mostly vertical along the bottle), blended towards white at 15-40 % opacity, over the
    label and glass alike (the matte backdrop does not reflect)."""
    cy, cx = _anywhere(b, on)
    ry = max(b.uniform(0.03, 0.12) * m, 4.0)
    rx = max(ry * b.uniform(0.15, 0.5), 2.0)
    phi = np.deg2rad(b.uniform(-25.0, 25.0))
    n = int(np.ceil(2.5 * ry)) + 1
    ys, xs = paint.axes(2 * n + 1, 2 * n + 1)
    yy, xx = ys - np.float32(n), xs - np.float32(n)
    u = yy * np.float32(np.cos(phi)) + xx * np.float32(np.sin(phi))
    v = -yy * np.float32(np.sin(phi)) + xx * np.float32(np.cos(phi))
    alpha = np.exp(-0.5 * ((u / np.float32(ry)) ** 2 + (v / np.float32(rx)) ** 2)).astype(np.float32)
    opacity = np.float32(b.uniform(0.15, 0.4))
    placed = _window(body, alpha, cy, cx)
    if placed is not None:
        a, y0, x0 = placed
        paint.mix(img, a * opacity, y0, x0, np.full(3, 250.0, np.float32))


def _dust(b: np.random.Generator, img: np.ndarray, on: np.ndarray, body: np.ndarray, m: int) -> None:
    """A dust speck anywhere (glass, cap, backdrop): a soft dot 1-4 px across, darker
    (a third lighter) at 30-60 % opacity."""
    h, w = on.shape
    r = max(b.uniform(0.002, 0.006) * m, b.uniform(0.7, 1.4))
    n = int(np.ceil(2.5 * r)) + 1
    ys, xs = paint.axes(2 * n + 1, 2 * n + 1)
    alpha = np.exp(-0.5 * ((ys - n) ** 2 + (xs - n) ** 2) / np.float32(r * r)).astype(np.float32)
    cy, cx = b.uniform(0.0, h), b.uniform(0.0, w)
    target = np.full(3, b.uniform(10.0, 60.0) if b.random() < 0.67 else b.uniform(190.0, 240.0), np.float32)
    opacity = np.float32(b.uniform(0.3, 0.6))
    placed = _window(np.ones((h, w), np.float32), alpha, cy, cx)
    if placed is not None:
        a, y0, x0 = placed
        paint.mix(img, a * opacity, y0, x0, target)


_Painter = Callable[[np.random.Generator, np.ndarray, np.ndarray, np.ndarray, int], None]
PAINTERS: dict[str, _Painter] = {"print_variation": _print_variation, "glare": _glare, "dust": _dust}


def paint_benign(b: np.random.Generator, img: np.ndarray, on: np.ndarray, body: np.ndarray, m: int,
                 rate: float) -> dict[str, int]:
    """Paint one image's benign variation in place; counts are Poisson with mean
    ``MEANS[kind] * rate`` (``rate == 0`` paints nothing). Returns the count of each."""
    counts: dict[str, int] = dict.fromkeys(PAINTERS, 0)
    if rate <= 0.0:
        return counts
    for (name, _), k in zip(MEANS, b.poisson(np.array([mean for _, mean in MEANS]) * rate)):
        counts[name] = int(k)
        for _ in range(counts[name]):
            PAINTERS[name](b, img, on, body, m)
    return counts
