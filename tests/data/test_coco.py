import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from defectnet.data.coco import CocoDataset, collate, load_split
from defectnet.errors import ConfigError, DataError


@pytest.mark.parametrize("background_box", [False, True])
def test_both_normal_image_conventions_load_the_same(make_coco: Callable[..., Path], background_box: bool) -> None:
    ann = make_coco(background_box=background_box)
    ds = CocoDataset(ann)
    assert ds.class_names == ["spot", "thread"] and ds.num_classes == 2
    assert ds.label_to_category_id == {1: 1, 2: 2}
    assert ds.image_ids == [10, 20, 30, 40]
    assert [ds.is_defective(i) for i in range(4)] == [False, True, False, True]
    normal = ds[0]
    assert normal.target["boxes"].shape == (0, 4) and normal.target["labels"].shape == (0,)
    assert normal.image_id == 10
    gt = ds.coco_gt()
    assert sorted(gt.getCatIds()) == [1, 2] and len(gt.getImgIds()) == 4
    assert len(gt.getAnnIds()) == 2  # background boxes are gone


def test_loader_boxes_align_with_pixels_after_resize_and_flip(make_coco: Callable[..., Path]) -> None:
    ann = make_coco(background_box=False)
    torch.manual_seed(0)
    for train in (False, True):
        ds = CocoDataset(ann, scale=(192, 128), train=train, flip_prob=1.0)
        s = ds[1]
        assert s.image.shape == (3, 128, 192) and s.scale_factor == (2.0, 2.0)
        ys, xs = torch.nonzero(s.image[0] > 127, as_tuple=True)
        pixels = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
        assert torch.allclose(s.target["boxes"][0], pixels, atol=1.0)
        assert s.target["labels"].tolist() == [1]


def test_collate_pads_and_keeps_targets(make_coco: Callable[..., Path]) -> None:
    ds = load_split(Path(make_coco(background_box=True)).parent.parent, "train", scale=(100, 70))
    batch, targets = collate([ds[0], ds[1]])
    assert batch.images.shape[0] == 2 and batch.images.shape[-1] % 32 == 0
    assert [t["image_id"] for t in targets] == [10, 20]
    assert batch.original_sizes == [(64, 96), (64, 96)]


def test_missing_image_is_named(make_coco: Callable[..., Path]) -> None:
    ann = make_coco(background_box=False)
    (ann.parent.parent / "images" / "img_3.png").unlink()
    with pytest.raises(DataError, match="img_3.png"):
        CocoDataset(ann)


def test_corrupt_image_is_named(make_coco: Callable[..., Path]) -> None:
    ann = make_coco(background_box=False)
    (ann.parent.parent / "images" / "img_2.png").write_bytes(b"not a png")
    ds = CocoDataset(ann)
    with pytest.raises(DataError, match="img_2.png"):
        ds[1]


def test_size_mismatch_is_reported(make_coco: Callable[..., Path]) -> None:
    ann = make_coco(background_box=False)
    data = json.loads(ann.read_text())
    data["images"][0]["width"] = 50
    ann.write_text(json.dumps(data))
    with pytest.raises(DataError, match="96x64"):
        CocoDataset(ann)[0]


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.pop("annotations"), "annotations"),
    (lambda d: d["annotations"][0].update(image_id=999), "unknown image id 999"),
    (lambda d: d["annotations"][0].update(category_id=7), "category 7"),
    (lambda d: d["annotations"][0].update(bbox=[1, 2, -3, 4]), "invalid bbox"),
    (lambda d: d["images"].append(dict(d["images"][0])), "appears twice"),
    (lambda d: d["images"][0].pop("file_name"), "lacks a valid field"),
])
def test_bad_annotation_files_name_the_problem(make_coco: Callable[..., Path], mutate, message: str) -> None:
    ann = make_coco(background_box=False)
    data = json.loads(ann.read_text())
    mutate(data)
    ann.write_text(json.dumps(data))
    with pytest.raises(DataError, match=message) as err:
        CocoDataset(ann)
    assert str(ann) in str(err.value)


def test_not_json_and_missing_file(make_coco: Callable[..., Path], tmp_path: Path) -> None:
    ann = make_coco(background_box=False)
    ann.write_text("{broken")
    with pytest.raises(DataError, match="not valid JSON"):
        CocoDataset(ann)
    with pytest.raises(DataError, match="does not exist"):
        CocoDataset(tmp_path / "nope.json")
    with pytest.raises(DataError, match="does not exist"):
        load_split(tmp_path / "nothing", "train")
    with pytest.raises(ConfigError, match="split"):
        load_split(tmp_path, "val")
