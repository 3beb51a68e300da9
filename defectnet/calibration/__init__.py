"""DefectNet calibration: calibration sets, INT8 Q/DQ quantization, FP16 conversion.

Public API::

    select_calibration_set(data_dir, size, scale=...) -> CalibrationSet   stratified TRAIN images
    CalibrationSettings(method="minmax"|"entropy"|"percentile", ...); recommended_settings() per graph
    calibrate_graph(model, feeds, settings, op_types) -> CalibrationRun   chunked onnxruntime calibration
    calibrate_engine(graphs, ...) -> EngineCalibration                    gate on images, detector on features
    tensorrt_flavour(), onnxruntime_flavour(); quantize_graph(...)        two Q/DQ layouts, one calibration
    CalibrationCache, CacheKey                                            ranges keyed by graphs + data + settings
    convert_graph_fp16(...)                                               FP16 with float32 islands
    optimize_basic(src, dst)                                              the float32 starting graph
    classify_nodes(model, graph) -> NodeRegions                           what may run in reduced precision

onnxruntime (and its quantization tools) is imported lazily inside the functions.
"""

from defectnet.calibration.cache import CacheKey, CalibrationCache, default_cache_dir
from defectnet.calibration.calibrate import EngineCalibration, calibrate_engine, recommended_settings
from defectnet.calibration.dataset import (
    DEFAULT_CALIB_SIZE,
    MIN_RECOMMENDED,
    CalibrationImage,
    CalibrationSet,
    select_calibration_set,
)
from defectnet.calibration.fp16 import convert_graph_fp16, float32_island_violations, fuse_cast_roundtrips
from defectnet.calibration.int8 import (
    FLAVOURS,
    METHODS,
    CalibrationRun,
    CalibrationSettings,
    QdqFlavour,
    calibrate_graph,
    check_flavour,
    onnxruntime_flavour,
    quantize_graph,
    tensorrt_flavour,
)
from defectnet.calibration.prepare import optimize_basic
from defectnet.calibration.regions import NodeRegions, classify_nodes

__all__ = [
    "DEFAULT_CALIB_SIZE", "FLAVOURS", "METHODS", "MIN_RECOMMENDED", "CacheKey", "CalibrationCache",
    "CalibrationImage", "CalibrationRun", "CalibrationSet", "CalibrationSettings", "EngineCalibration", "NodeRegions",
    "QdqFlavour", "calibrate_engine", "calibrate_graph", "check_flavour", "classify_nodes", "convert_graph_fp16",
    "default_cache_dir", "float32_island_violations", "fuse_cast_roundtrips", "onnxruntime_flavour", "optimize_basic",
    "quantize_graph", "recommended_settings", "select_calibration_set", "tensorrt_flavour",
]
