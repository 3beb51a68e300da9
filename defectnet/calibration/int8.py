"""INT8 explicit quantization: calibrate once with onnxruntime, emit two Q/DQ flavours.

Precision lives in the graph (``docs/architecture.md``, "Precision": TensorRT 10.1 deprecated implicit INT8
calibrators, TensorRT 11 removed them). One calibration measures the activation ranges
(:func:`calibrate_graph`: ``create_calibrator`` + ``collect_data`` in chunks +
``compute_data``); both flavours are then written from those *same* ranges by
``quantize_static`` reading them from an onnxruntime calibration cache file (no second
calibration pass, :func:`quantize_graph`):

``tensorrt``
    int8 activations, symmetric (every zero point 0 -- TensorRT's parser rejects others),
    per-channel symmetric int8 weights, *no* int32 bias quantization (``QuantizeBias:
    False``; TensorRT dequantizes INT8/FP8/FP4/INT4 only), Q/DQ only on the inputs of Conv,
    Gemm, MatMul and the residual/FPN Add (TensorRT's placement recipe: quantize the inputs
    of weighted ops, not their outputs; it fuses the rest), a dedicated Q/DQ pair per
    consumer (``DedicatedQDQPair``).

``onnxruntime``
    uint8 activations (asymmetric) + int8 weights, i.e. U8S8: ONNX Runtime's fast x86
    integer convolutions are U8S8 (3.9x on the gate graph vs 1.2-1.5x for S8S8,
    ``docs/architecture.md``, "Precision"), int32 biases (what its QLinearConv fusion expects), Q/DQ around Conv, Gemm,
    MatMul, Add, Relu, MaxPool, Resize and Flatten, so whole chains run in integers. ``reduce_range`` (7-bit weights) is switched on automatically on x86 CPUs
    without VNNI, where U8S8 products can saturate.

Only the compute nodes of :mod:`defectnet.calibration.regions` are quantized; every other
node is passed as ``nodes_to_exclude`` and its reason goes into the manifest.

Chunked calibration: onnxruntime 1.32's ``CalibMaxIntermediateOutputs`` clears the
collected outputs without merging them (issue #18893), so a calibration with N samples
keeps only the last few or none. Here every chunk is one ``collect_data`` call: the
MinMax calibrator merges each chunk's range into its running range (the same as
``quantize_static``'s ``CalibStridedMinMax``), the histogram calibrators (entropy,
percentile) merge each chunk into their histograms. Histogram methods use one sample per
chunk: the detector's RoI tensors have data-dependent sizes, which onnxruntime cannot
stack within one chunk, and one image's activations at 800x1344 are already ~1 GB.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import platform
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from defectnet.calibration.regions import classify_nodes
from defectnet.errors import ConfigError, EngineError
from defectnet.runtime.types import BackendName

log = logging.getLogger(__name__)

METHODS = ("minmax", "entropy", "percentile")
#: Q/DQ flavours, named after the runtime each is for.
FLAVOURS: tuple[BackendName, ...] = (BackendName.TENSORRT, BackendName.ONNXRUNTIME)

# Op types whose tensors get Q/DQ, per flavour (inside the compute regions only).
_TRT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Add")
_ORT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Relu", "Clip", "MaxPool", "Resize",
            "Flatten", "GlobalAveragePool", "AveragePool")


@dataclass(frozen=True)
class CalibrationSettings:
    """How activation ranges are measured.

    method: ``minmax`` (exact range of the calibration data), ``entropy`` (KL-divergence
    threshold, TensorRT's classic calibrator), ``percentile`` (clip the outer
    ``100 - percentile`` percent). num_bins: histogram bins (entropy/percentile; None =
    512 / 2048). chunk_size: inference runs per ``collect_data`` call for minmax
    (histogram methods always use 1, see the module docstring).
    """

    method: str = "minmax"
    percentile: float = 99.99
    num_bins: int | None = None
    num_quantized_bins: int = 128
    chunk_size: int = 16

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown calibration method {self.method!r}; use one of {', '.join(METHODS)}")
        if not 50.0 < self.percentile <= 100.0:
            raise ConfigError(f"--percentile must be in (50, 100], e.g. 99.99; got {self.percentile}")
        if self.num_bins is not None and self.num_bins < 2 * self.num_quantized_bins:
            raise ConfigError(f"num_bins ({self.num_bins}) must be at least 2 * num_quantized_bins "
                              f"({self.num_quantized_bins})")
        if self.chunk_size < 1:
            raise ConfigError(f"chunk_size must be >= 1, got {self.chunk_size}")

    @property
    def bins(self) -> int:
        return self.num_bins or (512 if self.method == "entropy" else 2048)

    @property
    def runs_per_chunk(self) -> int:
        return self.chunk_size if self.method == "minmax" else 1

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["num_bins"] = self.bins if self.method != "minmax" else None
        d["runs_per_chunk"] = self.runs_per_chunk
        if self.method != "percentile":
            d.pop("percentile")
        if self.method != "entropy":
            d.pop("num_quantized_bins")
        return d


def cpu_has_vnni() -> bool | None:
    """True/False on Linux x86 (from /proc/cpuinfo), None when unknown."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return "avx512_vnni" in flags or "avx_vnni" in flags


@dataclass(frozen=True)
class QdqFlavour:
    """One Q/DQ layout (see the module docstring); name: the runtime it is for."""

    name: BackendName
    activation: str  # "int8" | "uint8"
    op_types: tuple[str, ...]
    per_channel: bool
    reduce_range: bool
    extra_options: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""

    def quant_types(self) -> tuple[Any, Any]:
        from onnxruntime.quantization import QuantType

        act = QuantType.QUInt8 if self.activation == "uint8" else QuantType.QInt8
        return act, QuantType.QInt8

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "activations": self.activation + (" asymmetric" if self.activation == "uint8"
                                                                       else " symmetric (zero points 0)"),
                "weights": "int8 symmetric, " + ("per-channel" if self.per_channel else "per-tensor")
                           + (", reduce_range (7-bit)" if self.reduce_range else ""),
                "bias": "int32" if self.extra_options.get("QuantizeBias", True) else "float (not quantized)",
                "op_types": list(self.op_types), "extra_options": dict(self.extra_options),
                "description": self.description}


def tensorrt_flavour() -> QdqFlavour:
    return QdqFlavour(
        BackendName.TENSORRT, "int8", _TRT_OPS, per_channel=True, reduce_range=False,
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
                       "DedicatedQDQPair": True, "OpTypesToExcludeOutputQuantization": list(_TRT_OPS)},
        description="explicit-quantization graph for TensorRT (strongly typed network): S8S8, zero points 0, "
                    "no int32 biases")


def onnxruntime_flavour(reduce_range: bool | None = None) -> QdqFlavour:
    if reduce_range is None:
        reduce_range = cpu_has_vnni() is False
    return QdqFlavour(
        BackendName.ONNXRUNTIME, "uint8", _ORT_OPS, per_channel=True, reduce_range=reduce_range,
        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        description="ONNX Runtime on x86 CPUs: U8S8 (uint8 activations, int8 weights), integer kernels "
                    "(QLinearConv/QLinearAdd) after the session's QDQ fusion"
                    + ("; 7-bit weights because this CPU has no VNNI" if reduce_range else ""))


def flavour(name: str) -> QdqFlavour:
    if name == BackendName.TENSORRT:
        return tensorrt_flavour()
    if name == BackendName.ONNXRUNTIME:
        return onnxruntime_flavour()
    raise ConfigError(f"unknown Q/DQ flavour {name!r}; use one of {', '.join(FLAVOURS)}")


def calibrated_op_types(flavours: Iterable[QdqFlavour]) -> list[str]:
    return sorted({t for f in flavours for t in f.op_types})


class _ChunkReader:
    """An onnxruntime ``CalibrationDataReader`` over one chunk of feeds."""

    def __init__(self, feeds: list[dict[str, Any]]) -> None:
        self._feeds = iter(feeds)

    def get_next(self) -> dict[str, Any] | None:
        return next(self._feeds, None)


def _chunks(feeds: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    for feed in feeds:
        chunk.append(feed)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@dataclass
class CalibrationRun:
    """The measured ranges of one graph (``ranges``: onnxruntime ``TensorsData``) plus
    the number of inference runs and chunks that fed them."""

    graph: str
    ranges: Any
    samples: int
    chunks: int


def compute_tensors(model: Any, graph: str, op_types: Iterable[str]) -> set[str]:
    """Activation tensors that can get Q/DQ: inputs and outputs of the compute nodes
    (:mod:`.regions`) of ``op_types`` (initializers excluded). Calibration measures only
    these: the float32 regions hold tensors such as the -inf padding of the top-k, which
    would break a histogram and need no range anyway."""
    regions = set(classify_nodes(model, graph).compute)
    wanted = set(op_types)
    inits = {t.name for t in model.graph.initializer}
    return {t for n in model.graph.node if n.name in regions and n.op_type in wanted
            for t in (*n.input, *n.output) if t and t not in inits}


def _calibrator(model_path: Path, op_types: list[str], augmented: Path, settings: CalibrationSettings,
                tensors: set[str] | None) -> Any:
    """onnxruntime's calibrator for ``settings.method`` -- what ``create_calibrator`` builds,
    restricted to ``tensors`` through the public ``select_tensors_to_calibrate`` hook."""
    from onnxruntime.quantization.calibrate import EntropyCalibrater, MinMaxCalibrater, PercentileCalibrater

    base: Any = {"minmax": MinMaxCalibrater, "entropy": EntropyCalibrater,
                 "percentile": PercentileCalibrater}[settings.method]

    class Restricted(base):  # type: ignore[misc,valid-type]
        def select_tensors_to_calibrate(self, model: Any) -> tuple[set[str], dict[str, Any]]:
            found, value_infos = super().select_tensors_to_calibrate(model)
            return (found if tensors is None else found & tensors), value_infos

    kwargs: dict[str, Any] = {"symmetric": False}  # asymmetric: one measurement serves both flavours
    if settings.method == "entropy":
        kwargs.update(num_bins=settings.bins, num_quantized_bins=settings.num_quantized_bins)
    elif settings.method == "percentile":
        kwargs.update(num_bins=settings.bins, percentile=settings.percentile)
    calibrator = Restricted(model_path, op_types, augmented_model_path=str(augmented), **kwargs)
    calibrator.augment_graph()
    return calibrator


def calibrate_graph(model_path: str | os.PathLike[str], feeds: Iterable[dict[str, Any]],
                    settings: CalibrationSettings, op_types: Iterable[str], *, graph: str = "graph",
                    tensors: set[str] | None = None, workdir: str | os.PathLike[str] | None = None,
                    threads: int = 0) -> CalibrationRun:
    """Measure the ranges of the tensors around ``op_types`` nodes of ``model_path`` (only
    ``tensors`` when given) over ``feeds`` (dicts of input name -> numpy array), chunk by
    chunk (see the module docstring)."""
    import onnxruntime as ort

    with contextlib.ExitStack() as stack:
        tmp = Path(workdir) if workdir is not None else Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="defectnet-calib-")))
        augmented = tmp / f"{graph}.augmented.onnx"
        calibrator = _calibrator(Path(model_path), list(op_types), augmented, settings, tensors)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # as onnxruntime does
        if threads:
            options.intra_op_num_threads = threads
        calibrator.infer_session = ort.InferenceSession(str(augmented), options, providers=["CPUExecutionProvider"])
        samples = chunks = 0
        for chunk in _chunks(feeds, settings.runs_per_chunk):
            with contextlib.redirect_stdout(io.StringIO()):  # the histogram collector print()s
                calibrator.collect_data(_ChunkReader(chunk))
            samples += len(chunk)
            chunks += 1
        if samples == 0:
            raise EngineError(f"no calibration data reached the {graph} graph; check --data and --calib-size")
        with contextlib.redirect_stdout(io.StringIO()):
            ranges = calibrator.compute_data()
        del calibrator
        augmented.unlink(missing_ok=True)
    return CalibrationRun(graph, ranges, samples, chunks)


@dataclass
class QuantizedGraph:
    """A written Q/DQ graph and what the manifest records about it."""

    graph: str
    flavour: QdqFlavour
    path: Path
    quantized_nodes: int
    float_regions: list[dict[str, Any]]


def quantize_graph(prepared: str | os.PathLike[str], ranges: Any, flav: QdqFlavour, out: str | os.PathLike[str],
                   *, graph: str) -> QuantizedGraph:
    """Write the ``flav`` Q/DQ version of the float32 graph ``prepared`` to ``out`` using
    the measured ``ranges`` (``TensorsData``), quantizing only the compute regions."""
    import onnx
    from onnxruntime.quantization import QuantFormat, quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data

    from defectnet.calibration.prepare import set_metadata

    model = onnx.load(str(prepared))
    regions = classify_nodes(model, graph)
    if not regions.compute:
        raise EngineError(f"the {graph} graph {prepared} has no node inside the network scopes, so nothing can be "
                          "quantized; was it exported by defectnet-export (TorchScript module-scoped node names)?")
    from onnxruntime.quantization.calibrate import TensorsData

    activation_type, weight_type = flav.quant_types()
    out = Path(out)
    keep = compute_tensors(model, graph, flav.op_types)
    used = TensorsData(ranges.calibration_method, {k: v for k, v in ranges.data.items() if k in keep})
    with tempfile.TemporaryDirectory(prefix="defectnet-qdq-") as tmp:
        cache = Path(tmp) / "ranges.json"
        save_tensors_data(copy.deepcopy(used), cache)
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # quantize_static warns about pre-processing we did ourselves
        try:
            quantize_static(str(prepared), str(Path(tmp) / "q.onnx"), calibration_data_reader=None,
                            calibration_cache_path=str(cache), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=list(flav.op_types), per_channel=flav.per_channel,
                            reduce_range=flav.reduce_range, activation_type=activation_type,
                            weight_type=weight_type, nodes_to_exclude=regions.float_names(),
                            calibrate_method=ranges.calibration_method, extra_options=dict(flav.extra_options))
        finally:
            root.setLevel(level)
        qmodel = onnx.load(str(Path(tmp) / "q.onnx"))
    qmodel.producer_name, qmodel.producer_version = model.producer_name, model.producer_version
    qmodel.doc_string = model.doc_string
    set_metadata(qmodel, {"precision": "int8", "quantization_flavour": flav.name})
    from defectnet.io import atomic_write_bytes

    atomic_write_bytes(out, qmodel.SerializeToString())
    quantized = sum(1 for n in qmodel.graph.node if n.op_type == "DequantizeLinear")
    return QuantizedGraph(graph, flav, out, quantized, regions.report(model, flav.op_types))


def check_flavour(model: Any, flav: QdqFlavour, graph: str) -> list[str]:
    """Problems of a written Q/DQ graph for its flavour (empty = fine): the tensorrt flavour
    must pass :func:`defectnet.export.trt_ops.check_graph` (zero points 0, no int32
    dequantization); the onnxruntime flavour must quantize activations to uint8."""
    import numpy as np
    from onnx import numpy_helper

    problems: list[str] = []
    if flav.name == BackendName.TENSORRT:
        from defectnet.export.trt_ops import check_graph

        problems += check_graph(model, graph)["problems"]
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    q_nodes = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    if not q_nodes:
        problems.append(f"{graph}: no QuantizeLinear node: nothing was quantized")
    want = np.uint8 if flav.activation == "uint8" else np.int8
    for n in q_nodes:
        zp = consts.get(n.input[2]) if len(n.input) > 2 else None
        if zp is None or zp.dtype != want:
            problems.append(f"{graph}: QuantizeLinear {n.name} does not produce {flav.activation} activations")
    return problems
