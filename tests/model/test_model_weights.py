"""save_weights / load_weights / load_model (safetensors)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from model_testing import noise_image, on_canvas

from defectnet.errors import CheckpointError
from defectnet.model import DefectNet, load_model, load_weights, save_weights, saved_config


def test_round_trip(make_model: Callable[..., DefectNet], tmp_path: Path) -> None:
    model = make_model(seed=0).eval()
    path = save_weights(model, tmp_path / "run" / "model.safetensors")
    assert path.is_file() and not list(path.parent.glob(".*tmp"))
    other = make_model(seed=1).eval()
    load_weights(other, path)
    for (k, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), k
    images = on_canvas([noise_image(0, boxes=[(20, 20, 60, 50)])])
    a = model.inference(images, [(128, 192)], gate_threshold=0.0)[0]
    b = other.inference(images, [(128, 192)], gate_threshold=0.0)[0]
    torch.testing.assert_close(a.boxes, b.boxes)
    assert saved_config(path) == model.config
    rebuilt = load_model(path)
    assert rebuilt.config == model.config and torch.equal(
        rebuilt.roi_heads.heads[1].bbox_pred.weight, model.roi_heads.heads[1].bbox_pred.weight)


def test_bad_files_raise_checkpoint_error(make_model: Callable[..., DefectNet], tmp_path: Path) -> None:
    model = make_model()
    with pytest.raises(CheckpointError, match="does not exist"):
        load_weights(model, tmp_path / "missing.safetensors")
    path = save_weights(model, tmp_path / "model.safetensors")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt.safetensors.*truncated or corrupt"):
        load_weights(model, corrupt)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_weights(model, garbage)
    # another config: different class count (shapes) and no gate (keys)
    with pytest.raises(CheckpointError, match="shape mismatches.*cls_score.*load_model"):
        load_weights(make_model(num_classes=5), path)
    with pytest.raises(CheckpointError, match="unexpected keys.*gate"):
        load_weights(make_model(with_gate=False), path)
