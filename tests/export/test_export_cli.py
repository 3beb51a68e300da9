"""defectnet-export on a run folder (--model NAME under --runs-dir), then --verify-only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from export_helpers import CLASSES, tiny_model

from defectnet.export.cli import main
from defectnet.model import save_weights
from defectnet.train.checkpoint import CheckpointMeta, default_model_io, save_checkpoint, write_run_json


def _fake_run(run_dir: Path) -> None:
    """A finished run folder as defectnet-train writes it (one epoch, tiny model)."""
    model = tiny_model(2)
    meta = CheckpointMeta(kind="detector", variant="const", epoch=1, iteration=1,
                          model_config=model.config.to_dict(), train_config={"scale": [320, 256]},
                          class_names=CLASSES, label_to_category_id={1: 1, 2: 2})
    final = save_checkpoint(run_dir, model, {}, meta, default_model_io())
    write_run_json(run_dir, {"kind": "detector", "variant": "const",
                             "final_checkpoint": str(final.relative_to(run_dir))})


def test_export_run_by_name_then_verify_only(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    _fake_run(runs / "const")
    result = CliRunner().invoke(main, ["--model", "const", "--runs-dir", str(runs), "--no-verify"])
    assert result.exit_code == 0, result.output
    engine = runs / "const" / "engine"
    manifest = json.loads((engine / "manifest.json").read_text())
    assert manifest["verification"] is None and manifest["class_names"] == CLASSES
    assert manifest["preprocessing"]["scale"] == [320, 256]
    weights = runs / "const" / "checkpoints" / "epoch_0001" / "model.safetensors"
    assert list(manifest["source"]["weights_sha256"]) == [str(weights)]

    result = CliRunner().invoke(main, ["--verify-only", "--engine", str(engine)])
    assert result.exit_code == 0, result.output
    assert "parity check passed" in result.output
    assert json.loads((engine / "manifest.json").read_text())["verification"]["passed"]


def test_export_weights_file_and_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(main, ["--model", "nope", "--runs-dir", str(tmp_path)])
    assert missing.exit_code == 1 and "no run 'nope'" in missing.output
    bad = tmp_path / "x.txt"
    bad.write_text("hi")
    result = runner.invoke(main, ["--checkpoint", str(bad), "--out", str(tmp_path / "e")])
    assert result.exit_code == 1 and "neither a finished run folder" in result.output
    weights = tmp_path / "w.safetensors"
    save_weights(tiny_model(3, with_gate=False), weights)
    result = runner.invoke(main, ["--checkpoint", str(weights), "--out", str(tmp_path / "e"), "--no-verify"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "e" / "manifest.json").read_text())
    assert manifest["kind"] == "one-model" and manifest["class_names"] == ["class_1", "class_2"]


@pytest.mark.parametrize("args", [["--verify-only"], ["--checkpoint", "a", "--model", "b"]])
def test_usage_errors(args: list[str]) -> None:
    assert CliRunner().invoke(main, args).exit_code == 2
