"""Dot-matrix ink-jet codes printed on the bottle glass (bottle scenes).

A code is two lines of 6-9 digits in a 5x7 dot font, dot pitch ~0.45% of the image width
(at least 3 px). Abnormal codes (the ``code_abnormal`` class) have missing dots, smear,
a double print, a slant, or a line cut short; normal codes are printed but not annotated.
"""

from __future__ import annotations

import numpy as np

from defectnet.data.synthetic import paint
from defectnet.data.synthetic.common import BBox

#: 5x7 dot-matrix digits 0-9 for the ink-jet code ("#" = dot, rows separated by "/").
_DIGITS = (
    ".###./#...#/#..##/#.#.#/##..#/#...#/.###.", "..#../.##../..#../..#../..#../..#../.###.",
    ".###./#...#/....#/...#./..#../.#.../#####", "#####/...#./..#../...#./....#/#...#/.###.",
    "...#./..##./.#.#./#..#./#####/...#./...#.", "#####/#..../####./....#/....#/#...#/.###.",
    "..##./.#.../#..../####./#...#/#...#/.###.", "#####/....#/...#./..#../.#.../.#.../.#...",
    ".###./#...#/#...#/.###./#...#/#...#/.###.", ".###./#...#/#...#/.####/....#/...#./.##..",
)
_FONT = np.array([[[ch == "#" for ch in row] for row in d.split("/")] for d in _DIGITS])  # bool [10, 7, 5]


def code_alpha(rng: np.random.Generator, w: int, abnormal: bool) -> np.ndarray:
    """Dot-matrix code alpha: 2 lines of 6-9 digits, pitch ~0.45% of W (>= 3 px).
    Abnormal codes: missing dots, smear, double print, slant or a cut line."""
    p = max(3, int(round(0.0045 * w)))
    lines = [rng.integers(0, 10, int(rng.integers(6, 10))) for _ in range(2)]
    cols = max(len(ln) for ln in lines) * 6
    dots = np.zeros((16, cols), dtype=bool)
    for li, ln in enumerate(lines):
        for ci, d in enumerate(ln):
            dots[li * 9: li * 9 + 7, ci * 6: ci * 6 + 5] = _FONT[d]
    mode = int(rng.integers(5)) if abnormal else -1
    if mode == 0:  # missing dots over a run of characters
        c0 = int(rng.integers(0, cols // 2))
        span = slice(c0, c0 + int(rng.integers(12, cols // 2 + 13)))
        dots[:, span] &= rng.random(dots[:, span].shape) < rng.uniform(0.2, 0.5)
    elif mode == 3:  # a line half missing
        li = int(rng.integers(2))
        dots[li * 9: li * 9 + 7, int(cols * rng.uniform(0.3, 0.6)):] = False
    yy, xx = paint.axes(p, p)
    disc = np.clip(p * 0.45 + 0.5 - np.sqrt((yy - (p - 1) / 2) ** 2 + (xx - (p - 1) / 2) ** 2), 0, 1)
    alpha = np.kron(dots.astype(np.float32), disc)
    pad = 4 * p
    alpha = np.pad(alpha, pad)
    if mode == 1:  # smeared: ink dragged along the line
        k = int(rng.integers(2, 5)) * p
        csum = np.cumsum(np.pad(alpha, ((0, 0), (k, 0))), axis=1)
        alpha = (csum[:, k:] - csum[:, :-k]) * np.float32(2.0 / k)
    elif mode == 2:  # printed twice, shifted
        sy, sx = int(rng.integers(-p, p + 1)), int(rng.integers(p, 3 * p))
        alpha = np.maximum(alpha, np.roll(alpha, (sy, sx), axis=(0, 1)) * np.float32(rng.uniform(0.5, 1.0)))
    elif mode == 4:  # slanted print head
        k = rng.uniform(0.15, 0.35) * rng.choice([-1.0, 1.0])
        shift = np.round(k * (np.arange(alpha.shape[1]) - alpha.shape[1] / 2)).astype(np.int64)
        alpha = np.pad(alpha, ((int(np.abs(shift).max()), int(np.abs(shift).max())), (0, 0)))
        alpha = alpha[(np.arange(alpha.shape[0])[:, None] - shift[None, :]) % alpha.shape[0], np.arange(alpha.shape[1])]
    return paint.cut(alpha)


def print_code(rng: np.random.Generator, img: np.ndarray, label: np.ndarray, glass: np.ndarray,
                abnormal: bool) -> BBox:
    """Print the code on the glass between the shoulder and the label top."""
    h, w = img.shape[:2]
    alpha, _ = paint.fit_trim(code_alpha(rng, w, abnormal), h, w)
    ph, pw = alpha.shape
    rows = np.flatnonzero(label.max(axis=1) > 0.5)
    top = int(rows[0]) if rows.size else h // 2
    y0 = int(np.clip(top - ph - rng.uniform(0.02, 0.08) * h, 0, max(h - ph, 0)))
    x0 = int(np.clip(w / 2 - pw / 2 + rng.uniform(-0.05, 0.05) * w, 0, w - pw))
    dark = float(glass.mean()) > 120.0
    ink = np.array([30, 30, 34] if dark else [235, 225, 160], dtype=np.float32)
    paint.mix(img, alpha * np.float32(rng.uniform(0.75, 0.95)), y0, x0, ink)
    return paint.box_of(alpha, y0, x0)
