"""defectnet-calibrate-gate: the threshold rule on hand-made probabilities, and the manifest it
writes (still a loadable engine)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from runtime_helpers import CLASSES, images

from defectnet.engine_build.gate_calibration import main, threshold_for_recall
from defectnet.errors import ConfigError, DataError
from defectnet.runtime import Pipeline, load_engine

pytestmark = pytest.mark.timeout(120)

DEFECTIVE = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05]
NORMAL = [0.65, 0.35, 0.01]


def _point(target: float):  # type: ignore[no-untyped-def]
    p = DEFECTIVE + NORMAL
    truth = [True] * len(DEFECTIVE) + [False] * len(NORMAL)
    return threshold_for_recall(p, truth, target)


def _logit_mid(a: float, b: float) -> float:
    la, lb = (np.log(x) - np.log1p(-x) for x in (a, b))
    return float(1 / (1 + np.exp(-(la + lb) / 2)))


def test_threshold_reaching_the_target_recall_with_a_margin() -> None:
    op = _point(0.8)  # 8 of 10 defective images must pass: the 8th largest defective P is 0.2 ...
    # ... and the threshold sits halfway (logit) between it and the next lower P of any image (0.1)
    assert op.threshold == pytest.approx(_logit_mid(0.1, 0.2)) and 0.1 < op.threshold < 0.2
    assert op.recall == 0.8 and op.escapes == 2
    assert op.pass_rate == pytest.approx(10 / 13) and op.normal_pass_rate == pytest.approx(2 / 3)
    assert op.margin == pytest.approx(op.threshold - 0.1) and (op.images, op.defective, op.normal) == (13, 10, 3)
    assert _point(0.85).threshold == pytest.approx(_logit_mid(0.05, 0.1))  # ceil(8.5) = 9 must pass
    assert _point(0.81).threshold == _point(0.85).threshold
    # all must pass: below the lowest defective P (0.05) is the normal 0.01
    assert _point(1.0).threshold == pytest.approx(_logit_mid(0.01, 0.05)) and _point(1.0).recall == 1.0
    assert _point(1.0).margin is None
    # at least one image passes: 0.9, with the defective 0.8 the next lower P
    assert _point(0.1).threshold == pytest.approx(_logit_mid(0.8, 0.9)) == _point(0.05).threshold
    # every image of the set is on the same side as at the k-th defective P, for every target
    p_all = np.array(DEFECTIVE + NORMAL)
    for target in (0.3, 0.55, 0.8, 0.95):
        op = _point(target)
        d = np.array(DEFECTIVE)
        k_th = np.sort(d)[::-1][int(np.ceil(target * len(d) - 1e-9)) - 1]
        assert ((p_all >= op.threshold) == (p_all >= k_th)).all()
        assert (d >= op.threshold).mean() >= target and op.threshold <= k_th


def test_threshold_edge_cases() -> None:
    # 0.995 * 200 = 199.00000000000003 in floating point: 199 images must pass, not 200
    p = np.linspace(0.999, 0.001, 200)
    op = threshold_for_recall(p, np.ones(200, bool), 0.995)
    assert p[199] < op.threshold <= p[198] and op.escapes == 1
    # ties at the boundary only raise the recall; nothing below it: the boundary itself
    op = threshold_for_recall([0.5, 0.5, 0.5, 0.1], [True] * 4, 0.5)
    assert 0.1 < op.threshold <= 0.5 and op.recall == 0.75 and op.normal_pass_rate is None
    assert threshold_for_recall([0.3, 0.4], [True, True], 1.0).threshold == 0.3
    # P = 0 below the boundary (no finite logit): the midpoint in P
    assert threshold_for_recall([0.0, 0.2], [False, True], 0.9).threshold == pytest.approx(0.1)
    # neighbours one float apart: the boundary image still passes
    b = 0.3
    op = threshold_for_recall([np.nextafter(b, 0.0), b], [False, True], 1.0)
    assert op.recall == 1.0 and op.normal_pass_rate == 0.0
    with pytest.raises(DataError, match="no defective image"):
        threshold_for_recall([0.2, 0.3], [False, False], 0.9)
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ConfigError, match="target recall"):
            threshold_for_recall([0.2], [True], bad)
    with pytest.raises(DataError, match="finite"):
        threshold_for_recall([float("nan")], [True], 0.9)
    with pytest.raises(ConfigError, match="pair up"):
        threshold_for_recall([0.1, 0.2], [True], 0.9)


def _coco_folder(root: Path, n: int = 8) -> tuple[Path, list[bool]]:
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    imgs, anns, truth = [], [], []
    for i, im in enumerate(images(n, seed=7)):
        h, w = int(im.shape[1]), int(im.shape[2])
        name = f"img_{i}.png"
        Image.fromarray(im.permute(1, 2, 0).numpy()).save(root / "images" / name)
        imgs.append({"id": i + 1, "file_name": name, "width": w, "height": h})
        if i % 2 == 0:  # every other image is defective
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 1 + i % 4 // 2,
                         "bbox": [10, 10, 20, 15], "area": 300, "iscrowd": 0})
        truth.append(i % 2 == 0)
    cats = [{"id": k + 1, "name": name} for k, name in enumerate(CLASSES)]
    (root / "annotations" / "test.json").write_text(json.dumps({"images": imgs, "annotations": anns,
                                                                "categories": cats}))
    return root, truth


def test_cli_writes_a_loadable_manifest(run_engine: Path, tmp_path: Path) -> None:
    engine = tmp_path / "engine"
    shutil.copytree(run_engine, engine)
    data, truth = _coco_folder(tmp_path / "data")
    before = load_engine(engine)

    dry = CliRunner().invoke(main, ["--engine", str(engine), "--data", str(data), "--target-recall", "0.75",
                                    "--dry-run", "--no-progress"])
    assert dry.exit_code == 0, dry.output
    assert "dry run" in dry.output and load_engine(engine).manifest == before.manifest

    result = CliRunner().invoke(main, ["--engine", str(engine), "--data", str(data), "--target-recall", "0.75",
                                       "--no-progress"])
    assert result.exit_code == 0, result.output
    after = load_engine(engine)  # hashes checked: still a valid engine
    # the expected operating point, from P computed independently through the runtime pipeline
    pipe = Pipeline.from_engine(engine)
    p = [pipe.gate_stage([im]).p_defective.item() for im in images(8, seed=7)]
    expected = threshold_for_recall(p, truth, 0.75)
    assert after.gate_threshold == pytest.approx(expected.threshold, abs=1e-6)
    assert after.gate_threshold != before.gate_threshold
    block = after.manifest.gate_calibration
    assert block is not None and block.threshold == after.gate_threshold
    assert block.target_recall == 0.75 and block.recall >= 0.75 and block.split == "test"
    assert block.extra["images"] == 8 and block.extra["defective"] == 4
    assert block.previous_threshold == before.gate_threshold
    assert block.extra["data"] == str(data.resolve()) and len(block.extra["annotations_sha256"]) == 64
    assert block.pass_rate == pytest.approx(expected.pass_rate)
    # nothing else changed
    assert replace(after.manifest, gate_threshold=before.gate_threshold, gate_calibration=None) == before.manifest
    assert f"recall {block.recall:.4f}" in result.output
    # the new threshold is what the runtime now uses
    assert Pipeline.from_engine(engine).gate_threshold == after.gate_threshold

    bad = CliRunner().invoke(main, ["--engine", str(engine), "--data", str(tmp_path / "nope"), "--no-progress"])
    assert bad.exit_code == 1 and "does not exist" in bad.output
