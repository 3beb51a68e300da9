"""Engine builds: an exported float32 engine folder -> an optimised / INT8 / FP16 engine
for ONNX Runtime or TensorRT, checked by an accuracy gate.

Public API::

    build_engine(exported_dir, out_dir, BuildOptions(...)) -> manifest
    BuildOptions, Tolerances, ShapeProfile, default_out
    defectnet.engine_build.tensorrt.build_plan(...)        one TensorRT plan (lazy TensorRT import)

Command line: ``defectnet-build-engine`` (:mod:`defectnet.engine_build.cli`). The graph
transformations (calibration, Q/DQ, FP16) live in :mod:`defectnet.calibration`.
"""

from defectnet.engine_build.accuracy import Tolerances
from defectnet.engine_build.build import ENGINE_BACKENDS, PRECISIONS, BuildOptions, build_engine, default_out
from defectnet.engine_build.tensorrt import ShapeProfile, default_profile, parse_shape

__all__ = ["ENGINE_BACKENDS", "PRECISIONS", "BuildOptions", "ShapeProfile", "Tolerances", "build_engine",
           "default_out", "default_profile", "parse_shape"]
