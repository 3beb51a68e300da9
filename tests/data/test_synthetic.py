"""The synthetic generator: determinism, COCO validity, shares, box shapes, CLI errors."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from pycocotools.coco import COCO

from defectnet.data.cli import synth_main
from defectnet.data.synthetic import KINDS, SynthParams, generate, image_rng, normal_flags, parse_size
from defectnet.errors import ConfigError

SMALL = {"fabric": "306x125", "bottle": "220x164"}


def _synth(out: Path, *args: str) -> str:
    result = CliRunner().invoke(synth_main, [*args, "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    return result.output


def _load(root: Path, split: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((root / "annotations" / f"{split}.json").read_text())
    return data


@pytest.fixture(scope="module", params=["fabric", "bottle"])
def big_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """200 small images of each kind, default normal share, seed 3."""
    kind = request.param
    out = tmp_path_factory.mktemp(kind)
    _synth(out, kind, "--images", "200", "--seed", "3", "--size", SMALL[kind])
    return kind, out


def test_same_arguments_give_identical_files(tmp_path: Path) -> None:
    for kind in KINDS:
        args = [kind, "--images", "8", "--seed", "5", "--size", SMALL[kind]]
        _synth(tmp_path / f"{kind}_a", *args)
        _synth(tmp_path / f"{kind}_b", *args)
        for rel in ("annotations/train.json", "annotations/test.json",
                    *(f"images/{kind}_{i:06d}.jpg" for i in range(1, 9))):
            assert (tmp_path / f"{kind}_a" / rel).read_bytes() == (tmp_path / f"{kind}_b" / rel).read_bytes(), rel


def test_image_does_not_depend_on_n(tmp_path: Path) -> None:
    size = parse_size(SMALL["fabric"])
    p6 = SynthParams("fabric", 6, 0.5, 11, size)
    p10 = SynthParams("fabric", 10, 0.5, 11, size)
    generate(p6, KINDS["fabric"], tmp_path / "n6")
    generate(p10, KINDS["fabric"], tmp_path / "n10")
    f6, f10 = normal_flags(p6), normal_flags(p10)
    same = [i for i in range(6) if f6[i] == f10[i]]
    assert same
    for i in same:
        name = f"images/fabric_{i + 1:06d}.jpg"
        assert (tmp_path / "n6" / name).read_bytes() == (tmp_path / "n10" / name).read_bytes()


def test_pycocotools_loads_and_fields(big_run: tuple[str, Path]) -> None:
    kind, out = big_run
    spec = KINDS[kind]
    ids: list[int] = []
    ann_ids: list[int] = []
    for split in ("train", "test"):
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(out / "annotations" / f"{split}.json"))
        data = _load(out, split)
        assert [c["id"] for c in data["categories"]] == list(range(1, len(spec.classes) + 1))
        assert {c["supercategory"] for c in data["categories"]} == {"defect"}
        params = data["info"]["parameters"]
        assert params["kind"] == kind and params["seed"] == 3 and params["images"] == 200
        assert params["classes"] == list(spec.classes) and params["size"] == list(parse_size(SMALL[kind]))
        assert data["info"]["generator"] and data["info"]["version"]
        ids += coco.getImgIds()
        ann_ids += coco.getAnnIds()
        for im in data["images"]:
            assert im["file_name"] == f"{kind}_{im['id']:06d}.jpg" and (out / "images" / im["file_name"]).is_file()
        for a in data["annotations"]:
            assert a["iscrowd"] == 0 and all(isinstance(v, float) for v in a["bbox"])
            assert a["area"] == pytest.approx(a["bbox"][2] * a["bbox"][3])
    assert sorted(ids) == list(range(1, 201))
    assert len(set(ann_ids)) == len(ann_ids) and min(ann_ids) == 1
    assert len(_load(out, "test")["images"]) == 40


def test_shares_counts_and_boxes(big_run: tuple[str, Path]) -> None:
    kind, out = big_run
    spec = KINDS[kind]
    w, h = parse_size(SMALL[kind])
    per_image: dict[int, list[dict[str, Any]]] = {}
    n_images = 0
    for split in ("train", "test"):
        data = _load(out, split)
        n_images += len(data["images"])
        for im in data["images"]:
            per_image[im["id"]] = []
            assert (im["width"], im["height"]) == (w, h)
        for a in data["annotations"]:
            per_image[a["image_id"]].append(a)
    normal = sum(1 for anns in per_image.values() if not anns)
    assert normal == round(200 * spec.default_normal_share)  # exact, hence within +-0.05
    assert all(1 <= len(anns) <= 3 for anns in per_image.values() if anns)
    boxes = np.array([a["bbox"] for anns in per_image.values() for a in anns])
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 0] + boxes[:, 2] <= w).all() and (boxes[:, 1] + boxes[:, 3] <= h).all()
    assert boxes[:, 2:].min() >= 4.0, "box sides under 4 px are not learnable"
    cats = {a["category_id"] for anns in per_image.values() for a in anns}
    assert cats == set(range(1, len(spec.classes) + 1)), "every class must appear"
    if kind == "fabric":
        ratio = boxes[:, 2] / boxes[:, 3]
        assert ratio.min() <= 1 / 20 and ratio.max() >= 20, (ratio.min(), ratio.max())


def test_images_are_jpeg_of_the_right_size(big_run: tuple[str, Path]) -> None:
    kind, out = big_run
    with Image.open(out / "images" / f"{kind}_000001.jpg") as im:
        assert im.format == "JPEG" and im.size == parse_size(SMALL[kind]) and im.mode == "RGB"


def test_fabric_boxes_contain_every_painted_pixel() -> None:
    """Normal and defective renders of one index share the background, so the pixels that
    differ are the painted ones: they must lie inside the boxes, which must touch them."""
    size = parse_size(SMALL["fabric"])
    for index in range(12):
        clean, none = KINDS["fabric"].render(image_rng(2, index), size, False)
        dirty, defects = KINDS["fabric"].render(image_rng(2, index), size, True)
        assert not none and defects
        changed = np.abs(dirty.astype(int) - clean.astype(int)).max(axis=2) > 0
        inside = np.zeros_like(changed)
        for d in defects:
            x, y, bw, bh = (int(v) for v in d.bbox)
            inside[y: y + bh, x: x + bw] = True
        assert not (changed & ~inside).any(), index


def test_normal_images_do_not_repeat() -> None:
    size = parse_size(SMALL["fabric"])
    a, _ = KINDS["fabric"].render(image_rng(0, 0), size, False)
    b, _ = KINDS["fabric"].render(image_rng(0, 1), size, False)
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 2.0


@pytest.mark.parametrize("args, message", [
    (["--normal-share", "1.5"], "normal_share"),
    (["--normal-share", "-0.1"], "normal_share"),
    (["--test-share", "2"], "test_share"),
    (["--size", "612by250"], "WIDTHxHEIGHT"),
    (["--size", "10x10"], "out of range"),
    (["--images", "0"], "images"),
    (["--seed", "-1"], "seed"),
])
def test_bad_arguments_are_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(synth_main, ["fabric", "--out", str(tmp_path / "x"), "--images", "4", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "x" / "annotations").exists()


def test_params_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="normal_share"):
        SynthParams("fabric", 10, 1.2, 0, (612, 250))
    with pytest.raises(ConfigError, match="kind"):
        SynthParams("carpet", 10, 0.5, 0, (612, 250))
    with pytest.raises(ConfigError, match="WIDTHxHEIGHT"):
        parse_size("612")


def test_existing_data_set_needs_overwrite(tmp_path: Path) -> None:
    _synth(tmp_path, "fabric", "--images", "4", "--size", SMALL["fabric"])
    result = CliRunner().invoke(synth_main, ["fabric", "--out", str(tmp_path), "--images", "2",
                                             "--size", SMALL["fabric"]])
    assert result.exit_code == 2 and "--overwrite" in result.output
    _synth(tmp_path, "fabric", "--images", "2", "--size", SMALL["fabric"], "--overwrite")
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["fabric_000001.jpg", "fabric_000002.jpg"]


def test_summary_is_printed(tmp_path: Path) -> None:
    result = CliRunner().invoke(synth_main, ["bottle", "--out", str(tmp_path), "--images", "10", "--size",
                                             SMALL["bottle"], "--normal-share", "0.3", "-q"])
    assert result.exit_code == 0, result.output
    assert "train:" in result.output and "test :" in result.output and "boxes per class" in result.output
    assert "normal share 0.300" in result.output
