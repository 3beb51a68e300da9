"""DefectNet export: the two deployable ONNX graphs, their parity check and TensorRT check.

Public API::

    export_engine(source, out_dir) -> manifest  gate.onnx + detector.onnx (+ classifier.onnx),
                                                metadata, TensorRT check, parity, manifest.json
    verify_engine_dir(...)                      ONNX Runtime vs PyTorch parity (Tolerances)
    check_graph / check_graphs                  TensorRT ONNX-parser operator check
    GateGraph, DetectorGraph, ClassifierGraph   the export-friendly modules
    batched_nms                                 per-image, per-class NMS -> ONNX NonMaxSuppression

Command line: ``defectnet-export`` (:mod:`defectnet.export.cli`).
"""

from defectnet.export.exporter import DEFAULT_OPSET, export_engine, export_graphs
from defectnet.export.graphs import ClassifierGraph, DetectorGraph, GateGraph
from defectnet.export.nms import batched_nms
from defectnet.export.trt_ops import check_graph, check_graphs
from defectnet.export.verify import Tolerances, verify_engine_dir

__all__ = [
    "DEFAULT_OPSET", "ClassifierGraph", "DetectorGraph", "GateGraph", "Tolerances",
    "batched_nms", "check_graph", "check_graphs", "export_engine", "export_graphs", "verify_engine_dir",
]
