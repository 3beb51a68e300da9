"""Integration: defectnet-train and defectnet-eval on generated images with the real model
(tiny resnet18, 128x64 images, 1 epoch). Checks plumbing, not accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from defectnet.evaluation.cli import main as eval_main
from defectnet.model import DefectNet, TwoModel
from defectnet.train.checkpoint import load_run
from defectnet.train.cli import main as train_main

pytestmark = pytest.mark.slow

COMMON = ["--epochs", "1", "--backbone", "resnet18", "--scale", "128x64", "--fpn-channels", "32", "--seed", "0",
          "--no-progress"]


@pytest.fixture(scope="module")
def data_dir(tiny_fabric: Path) -> Path:
    return tiny_fabric


def _train(args: list[str]) -> None:
    result = CliRunner().invoke(train_main, args + COMMON)
    assert result.exit_code == 0, result.output


def test_train_and_evaluate_real_model(data_dir: Path, tmp_path: Path) -> None:
    torch.set_num_threads(2)
    one, const, two = tmp_path / "one", tmp_path / "const", tmp_path / "two"
    _train(["--model", "one-model", "--data", str(data_dir), "--out", str(one)])
    _train(["--model", "const", "--data", str(data_dir), "--out", str(const)])
    _train(["--model", "two-model-small", "--data", str(data_dir), "--out", str(two), "--detector", str(one)])

    model, info = load_run(const)
    assert isinstance(model, DefectNet) and model.config.with_gate and model.config.backbone == "resnet18"
    assert info.epoch == 1 and info.train_config["gate_schedule"]["init_weight"] == 0.15
    two_model, two_info = load_run(two)
    assert isinstance(two_model, TwoModel) and two_info.detector is not None

    # a finished run resumes to "nothing to do"; a fresh start on it is refused
    again = CliRunner().invoke(train_main, ["--model", "const", "--data", str(data_dir), "--out", str(const),
                                            "--resume"] + COMMON)
    assert again.exit_code == 0 and "nothing to do" in again.output
    refused = CliRunner().invoke(train_main, ["--model", "const", "--data", str(data_dir), "--out", str(const)]
                                 + COMMON)
    assert refused.exit_code == 2 and "--resume" in refused.output

    out = tmp_path / "results.json"
    result = CliRunner().invoke(eval_main, [str(const), str(one), str(two), "--data", str(data_dir),
                                            "--out", str(out), "--warmup", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "| Model | mAP | F1-score | ATT(MS) | ATT_normal(MS) | ATT_defective(MS) | Remark |" in result.output
    rows = json.loads(out.read_text())["results"]
    assert [r["model"] for r in rows] == ["defectnet_const", "one-model", "two-model_small"]
    one_row = rows[1]
    assert one_row["gate_recall"] is None and one_row["num_detector_runs"] == one_row["num_images"]
    for r in (rows[0], rows[2]):
        assert r["att_one_ms"] == pytest.approx(one_row["att_ms"]) and r["att_one_source"] == "given"
    for r in rows:
        assert 0.0 <= r["mAP"] <= 1.0 and 0.0 <= r["F1"] <= 1.0 and r["att_ms"] > 0
        assert r["num_images"] == 3


def test_eval_cli_reports_a_bad_run_folder(data_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(eval_main, [str(tmp_path), "--data", str(data_dir)])
    assert result.exit_code == 2 and "run.json" in result.output


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_train_and_evaluate_on_cuda(data_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "const_cuda"
    _train(["--model", "const", "--data", str(data_dir), "--out", str(run), "--device", "cuda"])
    out = tmp_path / "cuda.json"
    result = CliRunner().invoke(eval_main, [str(run), "--data", str(data_dir), "--device", "cuda", "--out", str(out),
                                            "--no-progress"])
    assert result.exit_code == 0, result.output
    row = json.loads(out.read_text())["results"][0]
    assert row["device"] == "cuda" and row["att_ms"] > 0
    model, _ = load_run(run, "cuda")
    assert next(model.parameters()).is_cuda
