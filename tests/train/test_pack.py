"""defectnet-pack-run: a finished run -> a float16, inference-only run folder that loads like any
run, checks its weights' hash, and predicts what the source predicts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tiny_models
import torch
from click.testing import CliRunner

from defectnet.errors import CheckpointError
from defectnet.model import ModelConfig
from defectnet.train.checkpoint import (
    STATE_FILE,
    WEIGHTS_FILE,
    CheckpointMeta,
    default_model_io,
    load_run,
    save_checkpoint,
    write_run_json,
)
from defectnet.train.pack import main, pack_run

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def source_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished DefectNet-const run folder of a tiny ResNet-18 (as defectnet-train writes it)."""
    cfg = ModelConfig(num_classes=2, backbone="resnet18", fpn_channels=32, representation_size=64,
                      rpn_pre_nms_top_n_test=200, rpn_post_nms_top_n_test=200, detections_per_img=30)
    model = tiny_models.tiny_model(cfg, seed=3)
    run = tmp_path_factory.mktemp("runs") / "const"
    meta = CheckpointMeta(kind="detector", variant="const", epoch=7, iteration=70, model_config=model.config.to_dict(),
                          train_config={"scale": [320, 256]}, class_names=["hole", "stain"],
                          label_to_category_id={1: 1, 2: 2})
    final = save_checkpoint(run, model, {"step": torch.tensor(70)}, meta, default_model_io())
    write_run_json(run, {"kind": "detector", "variant": "const", "final_checkpoint": str(final.relative_to(run))})
    return run


def test_packed_run_loads_and_predicts_like_the_source(source_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "reference-const"
    content = pack_run(source_run, out)
    packed = content["packed"]
    ckpt = out / content["final_checkpoint"]
    assert ckpt.name == "epoch_0007" and not (ckpt / STATE_FILE).exists()
    src_bytes = (source_run / "checkpoints" / "epoch_0007" / WEIGHTS_FILE).stat().st_size
    assert packed["weights_bytes"] < 0.55 * src_bytes  # float16: half the float32 file
    assert packed["dtype"] == "float16" and 0 < packed["max_relative_weight_change"] < 1e-3
    assert json.loads((out / "run.json").read_text())["packed"]["source_epoch"] == 7

    ref, _ = load_run(source_run)
    got, info = load_run(out)  # hash checked
    assert info.variant == "const" and info.class_names == ["hole", "stain"] and info.epoch == 7
    assert all(p.dtype == torch.float32 for p in got.parameters())
    images = torch.randint(0, 256, (2, 3, 256, 320), generator=torch.Generator().manual_seed(0)).float()
    sizes = [(256, 320), (240, 300)]
    for a, b in zip(ref.inference(images, sizes, gate_threshold=0.0), got.inference(images, sizes, gate_threshold=0.0)):
        assert abs(a.p_defective - b.p_defective) < 2e-3
        k = min(5, len(a.scores), len(b.scores))
        assert k > 0
        torch.testing.assert_close(b.scores[:k], a.scores[:k], atol=5e-3, rtol=0)
        torch.testing.assert_close(b.boxes[:k], a.boxes[:k], atol=0.5, rtol=0)


def test_a_changed_weight_file_fails_and_names_the_fix(source_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "packed"
    content = pack_run(source_run, out)
    weights = out / content["final_checkpoint"] / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256.*git checkout.*defectnet-pack-run"):
        load_run(out)


def test_cli_refuses_a_non_empty_out_and_overwrites_on_request(source_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "packed"
    out.mkdir()
    (out / "stale.txt").write_text("x")
    result = CliRunner().invoke(main, [str(source_run), "--out", str(out)])
    assert result.exit_code == 1 and "--overwrite" in result.output
    result = CliRunner().invoke(main, [str(source_run), "--out", str(out), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert not (out / "stale.txt").exists() and json.loads(result.output)["dtype"] == "float16"
