"""Calibration-set selection: stratified by label and padded input size, deterministic, and
its digest changes with the images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from defectnet.calibration import MIN_RECOMMENDED, select_calibration_set
from defectnet.calibration.dataset import _allocate

SCALE = (192, 96)


def _coco(root: Path, specs: list[tuple[int, int, bool]]) -> Path:
    """A train split of tiny PNGs: (width, height, defective) per image."""
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    images, anns = [], []
    rng = np.random.default_rng(0)
    for i, (w, h, defective) in enumerate(specs, start=1):
        name = f"im_{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "images" / name)
        images.append({"id": i, "file_name": name, "width": w, "height": h})
        if defective:
            anns.append({"id": i, "image_id": i, "category_id": 1, "bbox": [2, 2, 8, 8], "area": 64, "iscrowd": 0})
    data = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "hole"}]}
    (root / "annotations" / "train.json").write_text(json.dumps(data))
    return root


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 30 landscape (half defective) + 10 portrait (3 defective) images
    specs = [(192, 96, i % 2 == 0) for i in range(30)] + [(96, 192, i < 3) for i in range(10)]
    return _coco(tmp_path_factory.mktemp("mixed") / "data", specs)


def test_strata_are_label_and_padded_size(mixed: Path) -> None:
    s = select_calibration_set(mixed, 20, scale=SCALE)
    assert len(s) == 20
    assert set(s.strata) == {"defective@96x192", "normal@96x192", "defective@192x96", "normal@192x96"}
    for name, st in s.strata.items():
        share = st["available"] / 40 * 20
        assert st["selected"] >= 1 and abs(st["selected"] - share) <= 1, (name, st)
    assert sum(st["selected"] for st in s.strata.values()) == 20
    counts: dict[str, int] = {}
    for im in s.images:
        counts[im.stratum] = counts.get(im.stratum, 0) + 1
    assert counts == {k: v["selected"] for k, v in s.strata.items()}
    assert [im.padded_size for im in s.images] == sorted(im.padded_size for im in s.images)


def test_selection_is_deterministic_and_seeded(mixed: Path) -> None:
    a = select_calibration_set(mixed, 12, scale=SCALE)
    b = select_calibration_set(mixed, 12, scale=SCALE)
    c = select_calibration_set(mixed, 12, scale=SCALE, seed=1)
    assert a.images == b.images and a.digest() == b.digest()
    assert {im.index for im in a.images} != {im.index for im in c.images}


def test_small_split_uses_every_image_and_warns(mixed: Path) -> None:
    s = select_calibration_set(mixed, 300, scale=SCALE)
    assert len(s) == 40
    assert any("only 40 images" in n for n in s.notes)
    assert any(f"< {MIN_RECOMMENDED}" in n for n in s.notes)


def test_digest_follows_image_contents(mixed: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(mixed, copy)
    before = select_calibration_set(copy, 40, scale=SCALE)
    digest = before.digest()
    first = copy / "images" / before.images[0].file_name
    Image.fromarray(np.zeros((96, 192, 3), np.uint8) if before.images[0].padded_size == (96, 192)
                    else np.zeros((192, 96, 3), np.uint8)).save(first)
    after = select_calibration_set(copy, 40, scale=SCALE)
    assert after.images == before.images and after.digest() != digest


def test_allocation_sums_and_respects_availability() -> None:
    alloc = _allocate({"a": 100, "b": 1, "c": 7}, 10)
    assert sum(alloc.values()) == 10 and alloc["b"] == 1 and all(v >= 1 for v in alloc.values())
    assert _allocate({"a": 3, "b": 3}, 1) in ({"a": 1, "b": 0}, {"a": 0, "b": 1})
