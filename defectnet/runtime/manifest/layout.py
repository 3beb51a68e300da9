"""The manifest's fixed names: format, schema version, file and graph names, which graphs
each engine kind needs, and the OpenVINO precisions a graph entry may name."""

from __future__ import annotations

from defectnet.runtime.types import EngineKind

ENGINE_FORMAT = "defectnet-engine"
SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"

GATE, DETECTOR, CLASSIFIER = "gate", "detector", "classifier"
#: Graph file names, and which graphs each kind needs.
GRAPH_FILES: dict[str, str] = {GATE: "gate.onnx", DETECTOR: "detector.onnx", CLASSIFIER: "classifier.onnx"}
REQUIRED_GRAPHS: dict[EngineKind, tuple[str, ...]] = {
    EngineKind.DEFECTNET: (GATE, DETECTOR),
    EngineKind.ONE_MODEL: (GATE, DETECTOR),
    EngineKind.TWO_MODEL: (CLASSIFIER, GATE, DETECTOR),
}
GATE_CALIBRATION_KEY = "gate_calibration"

#: OpenVINO's ``INFERENCE_PRECISION_HINT`` values a graph entry may name.
INFERENCE_PRECISIONS: tuple[str, ...] = ("f32", "bf16", "f16")
