"""Write an engine folder: the ONNX graphs, their metadata, the TensorRT check, the parity
report and ``manifest.json`` (written last).

Exporter: ``torch.onnx.export(..., dynamo=False)`` (TorchScript tracing) at opset 17.
Why: the detector graph is written for it (:mod:`defectnet.export.graphs`) — constant TopK
K, NMS through a symbolic that emits one standard ``NonMaxSuppression``, no Python
control flow on data — so the traced graph has no ``If``/``Loop`` nodes and keeps every
dimension dynamic. ``dynamo=True`` would need the data-dependent NMS output and NonZero
sizes declared as unbacked symbols plus a custom translation table, for the same graph.
The parity check at two input sizes (``docs/architecture.md``, "Export") guards against frozen sizes either way.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import logging
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import defectnet
from defectnet.data.transforms import PAD_VALUE, PIXEL_MEAN, PIXEL_STD
from defectnet.errors import ExportError
from defectnet.export.graphs import ClassifierGraph, DetectorGraph, GateGraph
from defectnet.export.trt_ops import check_graphs
from defectnet.io import atomic_write_bytes
from defectnet.model_source import ModelSource
from defectnet.runtime.engine import (
    CLASSIFIER,
    CLASSIFIER_OUTPUTS,
    DETECTOR,
    DETECTOR_INPUTS,
    DETECTOR_OUTPUTS,
    FEATURE_NAMES,
    GATE,
    GATE_OUTPUTS,
    GRAPH_FILES,
    IMAGE_INPUTS,
    MANIFEST_FILE,
    SCHEMA_VERSION,
    sha256_file,
)
from defectnet.runtime.manifest import (
    GraphEntry,
    Manifest,
    Preprocessing,
    TensorRtCheck,
    Verification,
    write_manifest,
)
from defectnet.runtime.types import EngineKind

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17
EXPORTER = "torch.onnx.export(dynamo=False) (TorchScript tracing)"
META_PREFIX = "defectnet."


def library_versions() -> dict[str, str]:
    import onnx
    import torchvision

    versions = {"defectnet": defectnet.__version__, "torch": torch.__version__,
                "torchvision": torchvision.__version__, "onnx": onnx.__version__}
    try:
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    except ImportError:  # pragma: no cover
        pass
    return versions


def preprocessing_block(source: ModelSource) -> Preprocessing:
    """What a runtime must do before the gate graph (and what the graph does itself)."""
    return Preprocessing((int(source.scale[0]), int(source.scale[1])), source.size_divisor, {
        "pad_value": list(PAD_VALUE),
        "resize": "keep-ratio, long side <= max(scale), short side <= min(scale), antialiased",
        "input": "uint8 RGB [B, 3, H, W], top-left aligned, padded bottom/right to multiples of size_divisor",
        "normalisation_in_graph": {"mean": list(PIXEL_MEAN), "std": list(PIXEL_STD)},
        "boxes": "model-input pixels of the resized image; divide by the scale factor for original pixels"})


def _dynamic(names: Sequence[str], axes: dict[str, dict[int, str]]) -> dict[str, dict[int, str]]:
    return {n: axes.get(n, {0: "batch"}) for n in names}


def _feature_axes() -> dict[str, dict[int, str]]:
    return {n: {0: "batch", 2: f"{n}_height", 3: f"{n}_width"} for n in FEATURE_NAMES}


def _to_onnx(module: nn.Module, args: tuple[Tensor, ...], inputs: Sequence[str], outputs: Sequence[str],
             axes: dict[str, dict[int, str]], opset: int) -> bytes:
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings on shape checks; the legacy-exporter notice
        torch.onnx.export(module, args, buffer, dynamo=False,  # type: ignore[arg-type]  # BytesIO works
                          opset_version=opset, input_names=list(inputs),
                          output_names=list(outputs), dynamic_axes=_dynamic([*inputs, *outputs], axes),
                          do_constant_folding=True)
    return buffer.getvalue()


def _finish(data: bytes, graph: str, meta: dict[str, str], doc: str) -> Any:
    """Add metadata_props, run the full ONNX checker; returns the ModelProto."""
    import onnx

    model = onnx.load_from_string(data)
    model.doc_string = doc
    model.producer_name = "defectnet"
    model.producer_version = defectnet.__version__
    del model.metadata_props[:]
    for key, value in {**meta, "graph": graph}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = META_PREFIX + key, value
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:  # noqa: BLE001 - checker raises ValidationError / InferenceError
        raise ExportError(f"the exported {graph} graph fails onnx.checker ({e}); this is an exporter bug — "
                          "report it with the model config") from None
    return model


def trace_inputs(source: ModelSource, batch: int = 2) -> tuple[Tensor, Tensor]:
    """Example inputs for tracing: a small uint8 batch of two different image sizes."""
    h, w = 2 * 64, 3 * 64
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, h, w), generator=g, dtype=torch.uint8)
    sizes = torch.tensor([[h, w]] + [[h - 32, w - 40]] * (batch - 1), dtype=torch.int64)
    return images, sizes


def export_graphs(source: ModelSource, out: Path, opset: int = DEFAULT_OPSET) -> dict[str, Path]:
    """Write gate.onnx, detector.onnx (and classifier.onnx) with metadata to ``out``."""
    if opset < 17:
        raise ExportError(f"opset {opset} is too old: RoiAlign with output_half_pixel needs opset >= 16 and the "
                          "engine format uses 17; pass --opset 17")
    meta = {
        "schema_version": str(SCHEMA_VERSION), "kind": source.kind.value,
        "class_names": json.dumps(source.class_names, ensure_ascii=False),
        "preprocessing": json.dumps(preprocessing_block(source).to_json()),
        "gate_threshold": repr(source.gate_threshold),
        "source_checkpoint_sha256": json.dumps(source.weights),
        "versions": json.dumps(library_versions()),
    }
    images, sizes = trace_inputs(source)
    detector = source.detector
    gate = GateGraph(detector).eval()
    det = DetectorGraph(detector).eval()
    with torch.no_grad():
        _, feats = detector.features(images, sizes)
    feat_args = tuple(feats[n] for n in FEATURE_NAMES)
    image_axes = {"images": {0: "batch", 2: "height", 3: "width"}}
    jobs: list[tuple[str, Callable[[], bytes], str]] = [
        (GATE, lambda: _to_onnx(gate, (images, sizes), IMAGE_INPUTS, GATE_OUTPUTS,
                                {**image_axes, **_feature_axes()}, opset),
         "DefectNet backbone + gate: uint8 images + sizes -> P(defective), C2..C5"
         + ("" if detector.gate is not None else " (no gate head: P = 1)")),
        (DETECTOR, lambda: _to_onnx(det, (*feat_args, sizes), DETECTOR_INPUTS, DETECTOR_OUTPUTS,
                                    _feature_axes(), opset),
         "DefectNet detector: C2..C5 + sizes -> FPN, RPN, cascade, NMS -> padded boxes/scores/labels/count"),
    ]
    if source.classifier is not None:
        classifier = ClassifierGraph(source.classifier).eval()
        jobs.insert(0, (CLASSIFIER, lambda: _to_onnx(classifier, (images, sizes), IMAGE_INPUTS,
                                                     CLASSIFIER_OUTPUTS, image_axes, opset),
                        "two-model baseline classifier: uint8 images + sizes -> P(defective)"))
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name, run, doc in jobs:
        try:
            data = run()
        except ExportError:
            raise
        except Exception as e:  # noqa: BLE001 - the exporter raises many types
            raise ExportError(f"torch.onnx.export failed for the {name} graph ({type(e).__name__}: {e})") from e
        model = _finish(data, name, meta, doc)
        paths[name] = atomic_write_bytes(out / GRAPH_FILES[name], model.SerializeToString())
        log.info("wrote %s (%.1f MB)", paths[name], paths[name].stat().st_size / 1e6)
    return paths


#: The manifest's description of what produces P(defective), per kind.
GATE_DESCRIPTIONS = {
    EngineKind.DEFECTNET: "gate head: P(defective) = softmax(Linear(masked-avg-pool(C5)))[1]",
    EngineKind.TWO_MODEL: "two-model: classifier.onnx gives P; gate.onnx is the gate-less backbone (P = 1)",
    EngineKind.ONE_MODEL: "one-model: gate.onnx is the backbone only, P = 1 for every image",
}


def build_manifest(source: ModelSource, paths: dict[str, Path], opset: int, trt: dict[str, Any],
                   verification: dict[str, Any] | None) -> Manifest:
    """The manifest of a fresh export of ``source`` (graphs ``paths``, TensorRT check ``trt``)."""
    cfg = source.detector.config
    io_names = {GATE: (IMAGE_INPUTS, GATE_OUTPUTS), DETECTOR: (DETECTOR_INPUTS, DETECTOR_OUTPUTS),
                CLASSIFIER: (IMAGE_INPUTS, CLASSIFIER_OUTPUTS)}
    graphs = {name: GraphEntry(path.name, sha256_file(path), path.stat().st_size, *io_names[name])
              for name, path in paths.items()}
    return Manifest(
        kind=source.kind, variant=source.variant, graphs=graphs, class_names=tuple(source.class_names),
        gate_threshold=source.gate_threshold, detections_per_img=int(cfg.detections_per_img),
        score_thresh=float(cfg.score_thresh), preprocessing=preprocessing_block(source),
        source=source.provenance(), created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        tensorrt_check=TensorRtCheck.from_json(trt),
        verification=None if verification is None else Verification.from_json(verification),
        extra={"gate": GATE_DESCRIPTIONS[source.kind], "exporter": {"name": EXPORTER, "opset": opset},
               "versions": library_versions()})


def export_engine(source: ModelSource, out: str | os.PathLike[str], *, opset: int = DEFAULT_OPSET,
                  verify: bool = True, images: list[Tensor] | None = None, image_source: str = "synthetic",
                  tolerances: Any = None) -> Manifest:
    """Export ``source`` to the engine folder ``out`` and return its manifest.

    Steps: graphs (+ metadata, onnx.checker), TensorRT parser check, parity verification
    against PyTorch (``verify``; ``images`` are uint8 ``[3, H, W]`` test images, synthetic
    ones when None), then ``manifest.json``. A failed verification raises ExportError and
    leaves no manifest, so the folder never looks like a usable engine.
    """
    from defectnet.export.verify import Tolerances, verify_engine_dir

    out = Path(out)
    stale = out / MANIFEST_FILE
    if stale.exists():
        stale.unlink()  # the folder is not a valid engine until the new manifest lands
    paths = export_graphs(source, out, opset)
    trt = check_graphs(paths)
    manifest = build_manifest(source, paths, opset, trt, None)
    if verify:
        report = verify_engine_dir(out, manifest, source, images=images, image_source=image_source,
                                   tolerances=tolerances or Tolerances())
        manifest = replace(manifest, verification=Verification.from_json(report))
    write_manifest(out, manifest)
    return manifest
