"""defectnet-train --init: start a detector from a finished run (the original's load_from of a
pretrained Cascade R-CNN), with the real tiny model on generated images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from defectnet.errors import ConfigError
from defectnet.train import TrainConfig, Variant
from defectnet.train.cli import main as train_main
from defectnet.train.init import resolve_init

pytestmark = pytest.mark.slow

COMMON = ["--epochs", "1", "--backbone", "resnet18", "--scale", "128x64", "--seed", "0", "--no-progress",
          "--data"]


@pytest.fixture(scope="module")
def data_dir(tiny_fabric: Path) -> Path:
    return tiny_fabric


@pytest.fixture(scope="module")
def one_model(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "one"
    result = CliRunner().invoke(train_main, ["--model", "one-model", "--out", str(out), "--fpn-channels", "32",
                                             *COMMON, str(data_dir)])
    assert result.exit_code == 0, result.output
    return out


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(resolve_init(run) / "model.safetensors"))


def test_defectnet_starts_from_a_one_model_run(one_model: Path, data_dir: Path, tmp_path: Path) -> None:
    torch.set_num_threads(2)
    out = tmp_path / "const"
    result = CliRunner().invoke(train_main, ["--model", "const", "--out", str(out), "--fpn-channels", "32",
                                             "--init", str(one_model), *COMMON, str(data_dir)])
    assert result.exit_code == 0, result.output
    assert "initialised from" in result.output and "gate tensors start fresh" in result.output
    init = json.loads((out / "init.json").read_text())
    assert init["variant"] == "one-model" and sorted(init["fresh"]) == ["gate.fc.bias", "gate.fc.weight"]
    before, after = _weights(one_model), _weights(out)
    # pretrained semantics: stem, stage 1 and BatchNorm statistics stay frozen at the --init values ...
    for key in ("backbone.body.conv1.weight", "backbone.body.layer1.0.conv1.weight",
                "backbone.body.layer3.0.bn1.running_mean"):
        assert torch.equal(before[key], after[key]), key
    # ... while the later stages and the detector train on from them
    assert not torch.equal(before["backbone.body.layer4.0.conv1.weight"], after["backbone.body.layer4.0.conv1.weight"])
    assert "gate.fc.weight" in after and "gate.fc.weight" not in before
    assert json.loads((out / "train_config.json").read_text())["init_from"] == str(one_model)


def test_resume_before_the_first_checkpoint_starts_from_init_again(one_model: Path, data_dir: Path,
                                                                  tmp_path: Path) -> None:
    out = tmp_path / "const"
    result = CliRunner().invoke(train_main, ["--model", "const", "--out", str(out), "--fpn-channels", "32",
                                             "--init", str(one_model), "--resume", *COMMON, str(data_dir)])
    assert result.exit_code == 0, result.output
    assert "initialised from" in result.output and (out / "init.json").is_file()


def test_init_refuses_a_different_detector(one_model: Path, data_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(train_main, ["--model", "const", "--out", str(tmp_path / "c"), "--fpn-channels", "16",
                                             "--init", str(one_model), *COMMON, str(data_dir)])
    assert result.exit_code == 2 and "different detector" in result.output and "fpn_channels" in result.output
    assert not (tmp_path / "c" / "checkpoints").exists()


def test_init_needs_a_run_or_checkpoint_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="neither a finished run folder"):
        resolve_init(tmp_path)


def test_init_is_for_single_detectors_only() -> None:
    with pytest.raises(ConfigError, match="--detector"):
        TrainConfig(Variant.TWO_MODEL_SMALL, init_from="runs/one")
    with pytest.raises(ConfigError, match="not both"):
        TrainConfig(Variant.CONST, init_from="runs/one", backbone_weights="r18.pth")
