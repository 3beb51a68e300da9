"""The engine manifest (``ENGINE_DIR/manifest.json``) as typed, validated, frozen dataclasses.

Every writer (``defectnet-export``, ``defectnet-build-engine``, ``defectnet-calibrate-gate``)
builds a :class:`Manifest` and saves it with :func:`write_manifest`; every reader gets one
from :func:`defectnet.runtime.engine.read_manifest` or ``Engine.manifest``. Nothing else
reads or assembles the JSON. :meth:`Manifest.from_json` validates and raises an
:class:`~defectnet.errors.EngineError` naming the field and the fix;
:meth:`Manifest.to_json` gives back exactly what the writers write (same keys and values).

JSON layout, schema 1::

    format "defectnet-engine", schema_version 1, kind, variant, created
    graphs             {name: {file, sha256, bytes, inputs, outputs}}
    class_names, gate_threshold, detections_per_img, score_thresh
    preprocessing      {scale, size_divisor, + descriptive keys}
    source             {checkpoint, weights_sha256, variant, model_config}
    verification       parity report | null;   tensorrt_check {supported, tensorrt_version, graphs}
    built folders:     precision, backend, build {tool, source_engine, ...},
                       quantization {flavour, flavours, calibration, float_regions} (INT8),
                       tensorrt {engines: {name: {file, sha256, bytes, header}}, ...}, accuracy {...}
    per-graph folders: backend "auto" or "openvino", precision (or "mixed"), and per graph
                       graphs.NAME {backend, precision, inference_precision};
                       selection {chosen, candidates, ...}: what --backend auto measured and chose
    gate_calibration   the operating point defectnet-calibrate-gate chose
    anything else      (gate, exporter, versions, fp16, ...): Manifest.extra, kept as written

The schema version changes only when an older defectnet could not read a new folder
correctly; fields old readers ignore (the typed blocks above were all written by schema 1)
keep it. An older or newer ``schema_version`` fails with the fix (re-export, or upgrade).

Modules: :mod:`.layout` (fixed names), :mod:`.reading` (typed JSON reads, :class:`ManifestError`),
:mod:`.blocks` (the optional blocks), :mod:`.document` (:class:`Manifest`, :func:`write_manifest`).
"""

from defectnet.runtime.manifest.blocks import (
    Accuracy,
    BuildInfo,
    GateCalibration,
    GraphEntry,
    PlanEntry,
    Preprocessing,
    Quantization,
    Selection,
    SourceInfo,
    TensorRtCheck,
    TensorRtPlans,
    Verification,
)
from defectnet.runtime.manifest.document import Manifest, write_manifest
from defectnet.runtime.manifest.layout import (
    CLASSIFIER,
    DETECTOR,
    ENGINE_FORMAT,
    GATE,
    GATE_CALIBRATION_KEY,
    GRAPH_FILES,
    INFERENCE_PRECISIONS,
    MANIFEST_FILE,
    REQUIRED_GRAPHS,
    SCHEMA_VERSION,
)
from defectnet.runtime.manifest.reading import ManifestError, parse_enum, rebuild_hint, reexport_hint

__all__ = ["Accuracy", "BuildInfo", "CLASSIFIER", "DETECTOR", "ENGINE_FORMAT", "GATE", "GATE_CALIBRATION_KEY",
           "GRAPH_FILES", "GateCalibration", "GraphEntry", "MANIFEST_FILE", "Manifest", "ManifestError", "PlanEntry",
           "INFERENCE_PRECISIONS", "Preprocessing", "Quantization", "REQUIRED_GRAPHS", "SCHEMA_VERSION", "Selection",
           "SourceInfo", "TensorRtCheck",
           "TensorRtPlans", "Verification", "parse_enum", "rebuild_hint", "reexport_hint", "write_manifest"]
