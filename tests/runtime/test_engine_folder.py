"""Bad engine folders give an EngineError that says how to fix them."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from defectnet.errors import EngineError
from defectnet.io import sha256_file
from defectnet.runtime import OnnxRuntimeBackend, Pipeline, load_engine


def _copy(engine: Path, dst: Path, copy: tuple[str, ...] = ()) -> Path:
    """A copy of the engine: manifest and the files in ``copy`` copied, other graphs symlinked."""
    dst.mkdir()
    for f in engine.iterdir():
        if f.name == "manifest.json" or f.name in copy:
            shutil.copy(f, dst / f.name)
        else:
            (dst / f.name).symlink_to(f)
    return dst


def _edit_manifest(folder: Path, change: Callable[[dict], None]) -> None:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def test_good_engine_loads(run_engine: Path) -> None:
    engine = load_engine(run_engine)
    assert engine.kind == "defectnet" and engine.class_names == ("hole", "stain")
    assert engine.preprocessor.scale == (320, 256) and set(engine.graphs) == {"gate", "detector"}


def test_missing_folder_and_manifest(tmp_path: Path, run_engine: Path) -> None:
    with pytest.raises(EngineError, match="does not exist"):
        load_engine(tmp_path / "nope")
    folder = _copy(run_engine, tmp_path / "e")
    (folder / "manifest.json").unlink()
    with pytest.raises(EngineError, match="manifest.json is missing.*defectnet-export"):
        load_engine(folder)


def test_missing_graph_file(tmp_path: Path, run_engine: Path) -> None:
    folder = _copy(run_engine, tmp_path / "e")
    (folder / "detector.onnx").unlink()
    with pytest.raises(EngineError, match="detector.onnx is missing"):
        Pipeline.from_engine(folder)


def test_corrupted_graph_bytes(tmp_path: Path, run_engine: Path) -> None:
    folder = _copy(run_engine, tmp_path / "e", copy=("detector.onnx",))
    data = bytearray((folder / "detector.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / "detector.onnx").write_bytes(bytes(data))
    with pytest.raises(EngineError, match="does not match the SHA-256"):
        load_engine(folder)


def test_corrupt_graph_with_matching_hash_fails_at_load(tmp_path: Path, run_engine: Path) -> None:
    folder = _copy(run_engine, tmp_path / "e", copy=("detector.onnx",))
    (folder / "detector.onnx").write_bytes(b"this is not an onnx graph")

    def rehash(m: dict) -> None:
        m["graphs"]["detector"]["sha256"] = sha256_file(folder / "detector.onnx")

    _edit_manifest(folder, rehash)
    backend = OnnxRuntimeBackend(load_engine(folder))
    with pytest.raises(EngineError, match="cannot load the detector graph.*re-export"):
        backend.load()


@pytest.mark.parametrize("change, message", [
    (lambda m: m.update(schema_version=99), r"newer defectnet \(schema 99, this one reads 1\); upgrade defectnet"),
    (lambda m: m.update(schema_version=0), r"older defectnet \(schema 0; .*re-export it with defectnet-export"),
    (lambda m: m.update(format="something-else"), "not a defectnet-engine manifest"),
    (lambda m: m.update(kind="three-model"), "unknown engine kind"),
    (lambda m: m["graphs"]["gate"].pop("sha256"), "lacks the gate graph entry"),
    (lambda m: m["graphs"]["gate"].update(sha256="0" * 64), "does not match the SHA-256"),
    (lambda m: m["graphs"]["gate"].update(file="../gate.onnx"), "plain file name"),
    (lambda m: m.update(preprocessing={"scale": [10, 5], "size_divisor": 32}), "preprocessing block"),
])
def test_wrong_manifest(tmp_path: Path, run_engine: Path, change: Callable[[dict], None], message: str) -> None:
    folder = _copy(run_engine, tmp_path / "e")
    _edit_manifest(folder, change)
    with pytest.raises(EngineError, match=message):
        load_engine(folder)


def test_manifest_not_json(tmp_path: Path, run_engine: Path) -> None:
    folder = _copy(run_engine, tmp_path / "e")
    (folder / "manifest.json").write_text("{ half a manifest")
    with pytest.raises(EngineError, match="not valid JSON"):
        load_engine(folder)
