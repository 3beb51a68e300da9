"""Small hand-made COCO folders for loader tests (independent of the synthetic generator)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image


def write_coco(root: Path, *, background_box: bool, images: int = 4, size: tuple[int, int] = (96, 64),
               split: str = "train") -> Path:
    """images 1..n; even ids are defective with one 'spot' (cat 1) box, odd ids are normal.
    With background_box, normal images carry a category-0 "背景" box (the original's convention)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    w, h = size
    data: dict[str, Any] = {"images": [], "annotations": [], "categories": [
        {"id": 1, "name": "spot"}, {"id": 2, "name": "thread"}]}
    if background_box:
        data["categories"].insert(0, {"id": 0, "name": "背景"})
    for i in range(1, images + 1):
        name = f"img_{i}.png"
        arr = np.zeros((h, w, 3), dtype=np.uint8)
        data["images"].append({"id": i * 10, "file_name": name, "width": w, "height": h})
        if i % 2 == 0:
            arr[10:30, 20:50] = 255
            data["annotations"].append({"id": len(data["annotations"]) + 1, "image_id": i * 10,
                                        "category_id": 1, "bbox": [20, 10, 30, 20], "area": 600, "iscrowd": 0})
        elif background_box:
            data["annotations"].append({"id": len(data["annotations"]) + 1, "image_id": i * 10,
                                        "category_id": 0, "bbox": [0, 0, w, h], "area": w * h, "iscrowd": 0})
        Image.fromarray(arr).save(root / "images" / name)
    ann = root / "annotations" / f"{split}.json"
    ann.write_text(json.dumps(data, ensure_ascii=False))
    return ann


@pytest.fixture
def make_coco(tmp_path: Path) -> Callable[..., Path]:
    def make(**kw: Any) -> Path:
        return write_coco(tmp_path / "data", **kw)
    return make
