"""Export of a tiny DefectNet and the baselines: graphs, metadata, manifest, parity."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch
from export_helpers import CLASSES, SCALE, tiny_model, tiny_two_model

from defectnet.errors import ExportError
from defectnet.export import export_engine, verify_engine_dir
from defectnet.io import sha256_file
from defectnet.model_source import ModelSource
from defectnet.runtime import OnnxRuntimeBackend, load_engine
from defectnet.runtime.manifest import Manifest


def _meta(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def test_engine_folder_graphs_and_manifest(defectnet_engine: tuple[Path, ModelSource, Manifest]) -> None:
    out, source, manifest = defectnet_engine
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == manifest.to_json()
    assert on_disk["format"] == "defectnet-engine" and on_disk["schema_version"] == 1
    assert on_disk["kind"] == "defectnet" and on_disk["class_names"] == CLASSES
    assert on_disk["gate_threshold"] == source.gate_threshold
    pre = on_disk["preprocessing"]
    assert pre["scale"] == list(SCALE) and pre["size_divisor"] == 32 and len(pre["pad_value"]) == 3
    assert len(pre["normalisation_in_graph"]["mean"]) == 3
    assert {"torch", "torchvision", "onnx", "onnxruntime", "defectnet"} <= set(on_disk["versions"])
    for name, entry in on_disk["graphs"].items():
        path = out / entry["file"]
        assert sha256_file(path) == entry["sha256"]
        model = onnx.load(str(path))
        onnx.checker.check_model(model, full_check=True)
        assert next(o.version for o in model.opset_import if o.domain == "") >= 17
        meta = _meta(model)
        assert meta["defectnet.graph"] == name
        assert json.loads(meta["defectnet.class_names"]) == CLASSES
        assert json.loads(meta["defectnet.preprocessing"])["scale"] == list(SCALE)
        assert float(meta["defectnet.gate_threshold"]) == source.gate_threshold
        assert "defectnet.source_checkpoint_sha256" in meta and "defectnet.versions" in meta
        ops = {n.op_type for n in model.graph.node}
        assert not ops & {"If", "Loop"}, "graphs must be free of control flow"
        assert all(n.domain in ("", "ai.onnx") for n in model.graph.node), "standard ONNX ops only"
        # batch (and image size) are symbolic, not frozen at the trace size
        for vi in model.graph.input:
            assert vi.type.tensor_type.shape.dim[0].dim_param, f"{name}:{vi.name} has a fixed batch"
    gate = onnx.load(str(out / "gate.onnx"))
    assert gate.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    det_ops = {n.op_type for n in onnx.load(str(out / "detector.onnx")).graph.node}
    assert {"NonMaxSuppression", "RoiAlign", "TopK"} <= det_ops
    trt = on_disk["tensorrt_check"]
    assert trt["supported"] and trt["tensorrt_version"]
    assert set(trt["graphs"]) == {"gate", "detector"}


def test_parity_two_sizes_batch3(defectnet_engine: tuple[Path, ModelSource, Manifest]) -> None:
    report = defectnet_engine[2].verification
    assert report is not None and report.passed and not report.failures
    runs = report.runs
    assert len({tuple(r["input_size"]) for r in runs}) == 2, "two different input sizes"
    for r in runs:
        assert r["batch"] == 3
        assert len({tuple(s) for s in r["image_sizes"]}) >= 2, "a padded batch of different image sizes"
        assert r["p_max_abs_diff"] <= 1e-4
        assert r["torch"] > 0 and r["matched"] >= 0.95 * r["torch"]
        assert r["unmatched_unexplained"] == 0
        assert r["score_max_abs_diff"] <= 1e-3 and r["box_max_abs_diff"] <= 0.5


def test_detector_graph_matches_pytorch_per_image(defectnet_engine: tuple[Path, ModelSource, Manifest]
                                                  ) -> None:
    """The 2nd and 3rd image of a batch get the same detections as when run alone (no NMS cross-talk)."""
    out, source, _ = defectnet_engine
    backend = OnnxRuntimeBackend(load_engine(out))
    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (3, 3, 192, 256), generator=g, dtype=torch.uint8)
    sizes = torch.tensor([[192, 256], [150, 256], [192, 200]])
    _, feats = backend.run_gate(images, sizes)
    together = backend.run_detector(feats, sizes)
    for i in range(3):
        _, one = backend.run_gate(images[i: i + 1], sizes[i: i + 1])
        alone = backend.run_detector(one, sizes[i: i + 1])
        n = int(alone.count[0])
        assert int(together.count[i]) == n
        torch.testing.assert_close(together.scores[i, :n], alone.scores[0, :n], atol=1e-4, rtol=0)


def test_one_model_baseline_exports_with_pass_through_gate(tmp_path: Path) -> None:
    source = ModelSource(tiny_model(1, with_gate=False), CLASSES, scale=SCALE)
    manifest = export_engine(source, tmp_path / "one")
    assert manifest.kind == "one-model" and set(manifest.graphs) == {"gate", "detector"}
    assert manifest.verification is not None and manifest.verification.passed
    backend = OnnxRuntimeBackend(load_engine(tmp_path / "one"))
    p, _ = backend.run_gate(torch.zeros(2, 3, 64, 96, dtype=torch.uint8), torch.tensor([[64, 96], [40, 96]]))
    assert p.tolist() == [1.0, 1.0]


def test_two_model_baseline_exports_classifier(tmp_path: Path) -> None:
    source = ModelSource(tiny_two_model(), CLASSES, scale=SCALE)
    manifest = export_engine(source, tmp_path / "two")
    assert manifest.kind == "two-model"
    assert set(manifest.graphs) == {"classifier", "gate", "detector"}
    assert manifest.verification is not None and manifest.verification.passed
    assert manifest.tensorrt_check is not None and manifest.tensorrt_check.supported
    assert {"RoiAlign"} <= {n.op_type for n in onnx.load(str(tmp_path / "two" / "classifier.onnx")).graph.node}


def test_verification_fails_loudly_past_tolerance(defectnet_engine: tuple[Path, ModelSource, Manifest]
                                                  ) -> None:
    out, source, manifest = defectnet_engine
    changed = tiny_model()
    with torch.no_grad():
        changed.gate.fc.bias += torch.tensor([0.0, 0.5])  # type: ignore[union-attr]
        changed.roi_heads.heads[2].bbox_pred.bias += 0.2
    other = ModelSource(changed, CLASSES, scale=SCALE)
    with pytest.raises(ExportError, match=r"P\(defective\) differs by .*boxes differ by"):
        verify_engine_dir(out, manifest, other)
    assert (out / "verification-failed.json").is_file()
    (out / "verification-failed.json").unlink()


def test_verification_images_from_a_data_folder(tmp_path: Path) -> None:
    from defectnet.data.synthetic import KINDS, SynthParams, generate
    from defectnet.export.verify import _verification_batch, dataset_images

    generate(SynthParams("fabric", images=6, normal_share=0.5, seed=0, size=(128, 64), test_share=0.5),
             KINDS["fabric"], tmp_path)
    found = dataset_images(tmp_path)
    assert len(found) == 3 and all(im.dtype == torch.uint8 and im.shape == (3, 64, 128) for im in found)
    batch = _verification_batch(found[:1])
    assert len(batch) == 3 and len({tuple(im.shape) for im in batch}) >= 2
