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
from defectnet.data.synthetic import (
    GENERATOR_VERSION,
    KINDS,
    SynthParams,
    fabric,
    fabric_benign,
    generate,
    image_rng,
    normal_flags,
    parse_size,
)
from defectnet.errors import ConfigError

SMALL = {"fabric": "306x125", "bottle": "220x164"}
#: 16x16 block means and boxes of generator version 1 renders (seed 7, indices 0-2, both kinds).
V1_GOLDEN = Path(__file__).with_name("synthetic_v1_golden.json")


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
        assert data["info"]["generator_version"] == GENERATOR_VERSION == "2"
        assert params["benign_rate"] == 1.0
        assert params["benign_means"] == dict(spec.benign_means) and min(params["benign_means"].values()) > 0
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


@pytest.mark.parametrize("benign_rate", [0.0, 1.0, 3.0])
def test_fabric_boxes_contain_every_painted_pixel(benign_rate: float) -> None:
    """Normal and defective renders of one index share the background, benign irregularities
    included, so the pixels that differ are the painted defects: they must lie inside the
    boxes, which must touch them."""
    size = parse_size(SMALL["fabric"])
    for index in range(12):
        clean, none = KINDS["fabric"].render(image_rng(2, index), size, False, benign_rate)
        dirty, defects = KINDS["fabric"].render(image_rng(2, index), size, True, benign_rate)
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


def _blocks(img: np.ndarray, k: int) -> np.ndarray:
    h, w = img.shape[:2]
    g = img[: h // k * k, : w // k * k].astype(np.float64).mean(axis=2)
    out: np.ndarray = g.reshape(h // k, k, w // k, k).mean(axis=(1, 3))
    return out


def test_benign_rate_zero_reproduces_version_1() -> None:
    """benign_rate 0 gives version 1's images and boxes (the benign stream is a child of the
    image stream, so it shifts no other draw). Compared by block means within 0.05 grey
    levels rather than bytes, so float rounding on another CPU cannot fail it."""
    golden = json.loads(V1_GOLDEN.read_text())
    k = golden["block"]
    for e in golden["images"]:
        img, defects = KINDS[e["kind"]].render(image_rng(golden["seed"], e["index"]), tuple(e["size"]),
                                               e["defective"], 0.0)
        where = f'{e["kind"]} index {e["index"]} defective={e["defective"]}'
        assert np.abs(_blocks(img, k) - np.array(e["blocks"])).max() < 0.05, where
        assert [[d.category, *d.bbox] for d in defects] == e["boxes"], where  # whole pixels
        if not e["defective"]:  # and with the default rate the same image gets irregularities
            dirty, _ = KINDS[e["kind"]].render(image_rng(golden["seed"], e["index"]), tuple(e["size"]), False, 3.0)
            assert np.abs(_blocks(dirty, k) - np.array(e["blocks"])).max() > 0.05, where


@pytest.mark.parametrize("kind, max_p999", [("fabric", 40.0), ("bottle", 90.0)])
def test_benign_irregularities_change_normal_images_locally(kind: str, max_p999: float) -> None:
    """With the default rate most normal images differ from their benign_rate-0 render, in a
    bounded part of the image and with bounded contrast (lower than the defects')."""
    size = parse_size(SMALL[kind])
    changed, fractions = 0, []
    for index in range(20):
        clean, _ = KINDS[kind].render(image_rng(4, index), size, False, 0.0)
        benign, none = KINDS[kind].render(image_rng(4, index), size, False)
        assert not none
        d = np.abs(benign.astype(int) - clean.astype(int)).max(axis=2)
        changed += bool(d.any())
        fractions.append(float((d > 0).mean()))
        assert np.percentile(d, 99.9) <= max_p999, (index, np.percentile(d, 99.9))
    assert changed >= 14, changed
    assert float(np.median(fractions)) < 0.3, fractions


def test_benign_counts_follow_the_rate() -> None:
    """paint_benign draws Poisson counts with means MEANS * rate (selvedges at most one)."""
    w, h = parse_size(SMALL["fabric"])
    weave = fabric_benign.Weave(0.7, 4.0, 0.08)
    base = np.array([110.0, 120.0, 135.0], np.float32)
    for rate in (0.0, 2.0):
        totals = dict.fromkeys(fabric_benign.PAINTERS, 0)
        for i in range(150):
            img = np.full((h, w, 3), 120.0, np.float32)
            counts = fabric_benign.paint_benign(np.random.default_rng([1, i]), img, base, fabric._scale(w, h), weave,
                                                rate)
            assert counts["selvedge"] <= 1
            assert (img != 120.0).any() == (sum(counts.values()) > 0)
            for name, n in counts.items():
                totals[name] += n
        for name, mean in fabric_benign.MEANS:
            if name != "selvedge":
                expect = 150 * mean * rate
                assert abs(totals[name] - expect) <= 4 * np.sqrt(expect) + 1e-9, (name, totals[name], expect)


def test_benign_irregularities_are_never_annotated(tmp_path: Path) -> None:
    """The same arguments with benign_rate 0 and 2 give the same annotations (benign marks add
    no box and move none) but different images; normal images stay without annotations."""
    for kind in KINDS:
        args = [kind, "--images", "10", "--seed", "6", "--size", SMALL[kind], "--normal-share", "0.5"]
        _synth(tmp_path / f"{kind}0", *args, "--benign-rate", "0")
        _synth(tmp_path / f"{kind}2", *args, "--benign-rate", "2")
        differ = 0
        for split in ("train", "test"):
            a, b = _load(tmp_path / f"{kind}0", split), _load(tmp_path / f"{kind}2", split)
            assert a["info"]["parameters"]["benign_rate"] == 0.0 and b["info"]["parameters"]["benign_rate"] == 2.0
            assert a["annotations"] == b["annotations"] and a["images"] == b["images"]
            for im in b["images"]:
                rel = Path("images") / im["file_name"]
                differ += (tmp_path / f"{kind}0" / rel).read_bytes() != (tmp_path / f"{kind}2" / rel).read_bytes()
        assert differ >= 7, (kind, differ)


@pytest.mark.parametrize("args, message", [
    (["--benign-rate", "-0.5"], "benign_rate"),
    (["--benign-rate", "6"], "benign_rate"),
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
