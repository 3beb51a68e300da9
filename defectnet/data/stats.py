"""Statistics of a detection split: what a user checks before training on it."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass

import numpy as np

from defectnet.data.coco import CocoDataset


@dataclass(frozen=True)
class SplitStatistics:
    """Counts and box-shape summary of one split (original image coordinates)."""

    images: int
    normal: int
    defective: int
    normal_share: float
    boxes: int
    boxes_per_class: dict[str, int]
    image_sizes: dict[str, int]           # "WxH" -> count
    box_width_px: tuple[float, float, float]   # min, median, max
    box_height_px: tuple[float, float, float]
    aspect_ratio_w_over_h: tuple[float, float]  # min, max

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def split_statistics(ds: CocoDataset) -> SplitStatistics:
    """Summarise ``ds`` from its annotations alone (no image is decoded)."""
    per_class: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    widths: list[float] = []
    heights: list[float] = []
    normal = 0
    for i in range(len(ds)):
        _, _, w, h = ds.image_info(i)
        sizes[f"{w}x{h}"] += 1
        boxes, labels = ds.boxes_of(i)
        normal += int(boxes.shape[0] == 0)
        for label in labels.tolist():
            per_class[ds.class_names[label - 1]] += 1
        widths += (boxes[:, 2] - boxes[:, 0]).tolist()
        heights += (boxes[:, 3] - boxes[:, 1]).tolist()
    wa, ha = np.asarray(widths or [0.0]), np.asarray(heights or [0.0])
    ratio = wa / np.maximum(ha, 1e-6)

    def summary(a: np.ndarray) -> tuple[float, float, float]:
        return float(a.min()), float(np.median(a)), float(a.max())

    n = len(ds)
    return SplitStatistics(
        images=n, normal=normal, defective=n - normal, normal_share=normal / n if n else 0.0,
        boxes=len(widths), boxes_per_class={c: per_class[c] for c in ds.class_names},
        image_sizes=dict(sizes.most_common()), box_width_px=summary(wa), box_height_px=summary(ha),
        aspect_ratio_w_over_h=(float(ratio.min()), float(ratio.max())) if widths else (0.0, 0.0),
    )


def format_statistics(name: str, s: SplitStatistics) -> str:
    """A few human-readable lines."""
    classes = ", ".join(f"{c} {k}" for c, k in s.boxes_per_class.items())
    lo, hi = s.aspect_ratio_w_over_h
    return "\n".join([
        f"{name}: {s.images} images, {s.normal} normal / {s.defective} defective "
        f"(normal share {s.normal_share:.2f}), {s.boxes} boxes",
        f"  image sizes: {', '.join(f'{k} x{v}' for k, v in s.image_sizes.items())}",
        f"  boxes per class: {classes}",
        f"  box width px min/median/max {s.box_width_px[0]:.0f}/{s.box_width_px[1]:.0f}/{s.box_width_px[2]:.0f}, "
        f"height {s.box_height_px[0]:.0f}/{s.box_height_px[1]:.0f}/{s.box_height_px[2]:.0f}, "
        f"aspect w:h from 1:{1 / max(lo, 1e-6):.1f} to {hi:.1f}:1",
    ])
