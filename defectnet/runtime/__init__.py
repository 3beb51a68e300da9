"""DefectNet runtime: engine folders, backends and the conditional pipeline.

Public API::

    load_engine(dir) -> Engine                  validated engine folder (EngineError otherwise)
    Backend, OnnxRuntimeBackend, TorchBackend   load / run_gate / select / run_detector
    Pipeline.from_engine(dir, backend) -> Pipeline;  pipeline.run(images) -> [ImageResult]
    Inspector.from_engine(dir, backend) -> Inspector: streaming, batching, deadlines, one
        record per input (defectnet.runtime.inspection.inspector)

onnxruntime is imported lazily (only when an OnnxRuntimeBackend loads). Command line:
``defectnet-infer`` (:mod:`defectnet.runtime.cli`).
"""

from defectnet.runtime.backends import Backend, OnnxRuntimeBackend, RawDetections, TorchBackend, make_backend
from defectnet.runtime.engine import Engine, load_engine
from defectnet.runtime.inspection import Inspector
from defectnet.runtime.pipeline import ImageResult, Pipeline

__all__ = ["Backend", "Engine", "ImageResult", "Inspector", "OnnxRuntimeBackend", "Pipeline", "RawDetections", "TorchBackend",
           "load_engine", "make_backend"]
