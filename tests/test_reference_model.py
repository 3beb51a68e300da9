"""The committed reference model (models/reference-const): small, documented, its weights'
hash checked on load, and exportable with parity against PyTorch."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from defectnet.data.synthetic import KINDS, SynthParams, generate
from defectnet.errors import DefectNetError
from defectnet.export import export_engine
from defectnet.export.verify import dataset_images
from defectnet.io import sha256_file
from defectnet.model_source import load_source

REFERENCE = Path(__file__).resolve().parents[1] / "models" / "reference-const"


def _weights(folder: Path) -> Path:
    run = json.loads((folder / "run.json").read_text())
    return folder / run["final_checkpoint"] / "model.safetensors"


def test_reference_is_committed_small_and_documented() -> None:
    assert (REFERENCE / "run.json").is_file(), "models/reference-const is missing: git checkout -- models/"
    run = json.loads((REFERENCE / "run.json").read_text())
    weights = _weights(REFERENCE)
    assert run["variant"] == "const" and run["packed"]["dtype"] == "float16"
    assert weights.stat().st_size <= 30 * 2**20
    assert sha256_file(weights) == run["packed"]["weights_sha256"]
    readme = (REFERENCE / "README.md").read_text()
    for fact in ("benchmarks/campaign.py", run["packed"]["weights_sha256"], "seed"):
        assert fact in readme


def test_reference_exports_with_parity(tmp_path: Path) -> None:
    data = tmp_path / "data"
    generate(SynthParams("fabric", images=6, normal_share=0.5, seed=3, size=(612, 250), test_share=0.5),
             KINDS["fabric"], data)
    source = load_source(REFERENCE)  # checks the weights' SHA-256
    assert source.variant == "const" and source.scale == (640, 256)
    manifest = export_engine(source, tmp_path / "engine", images=dataset_images(data), image_source=str(data))
    assert manifest.verification is not None and manifest.verification.runs
    for r in manifest.verification.runs:
        assert r["p_max_abs_diff"] < 1e-4 and r["matched"] == r["torch"]


def test_a_changed_weight_file_fails_with_the_fix(tmp_path: Path) -> None:
    copy = tmp_path / "reference-const"
    shutil.copytree(REFERENCE, copy)
    weights = _weights(copy)
    raw = bytearray(weights.read_bytes())
    raw[-3] ^= 0x01  # one bit of one weight
    weights.write_bytes(bytes(raw))
    with pytest.raises(DefectNetError, match=r"git checkout -- .*|defectnet-pack-run"):
        load_source(copy)
