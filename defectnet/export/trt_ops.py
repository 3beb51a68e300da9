"""Will TensorRT's ONNX parser take this graph? A static check, no TensorRT needed.

The tables below are the operator support matrix of the ONNX-TensorRT parser as published
in ``onnx/onnx-tensorrt`` ``docs/operators.md`` for **TensorRT 10.15** ("supports operators
in the inclusive range of opset 9 to opset 24"). Only the restrictions that a detection
graph can run into are *checked*; the rest are reported as notes. The checks:

* every node is in the default ONNX domain (no custom ops = no custom plugins);
* every op is in the supported list; the model's opset is within 9..24;
* ``TopK``: K is a constant, ``K < 3840``, ``sorted == 1``;
* ``NonMaxSuppression``: 3-D boxes ``[B, N, 4]`` and scores ``[B, C, N]``;
* ``QuantizeLinear``/``DequantizeLinear``: zero points absent or all zero, no INT32
  DequantizeLinear (ONNX Runtime quantizes biases to int32 unless told not to);
* ``Reduce*`` axes, ``Squeeze``/``Unsqueeze`` axes, ``CumSum`` axis: constants;
* ``NonZero`` input FP32/FP16 (the published type list); ``ScatterND`` without reduction;
* UINT8 only on graph inputs/outputs;
* ``If``/``Loop`` are reported as notes (TensorRT wants them folded when it can).

``RoiAlign`` runs through TensorRT's built-in ``ROIAlign_TRT`` plugin: nothing custom to
ship, but the runtime must call ``trt.init_libnvinfer_plugins`` before parsing.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

TENSORRT_VERSION = "10.15"
OPSET_RANGE = (9, 24)
SOURCE = ("onnx/onnx-tensorrt docs/operators.md, TensorRT 10.15 "
          "(https://github.com/onnx/onnx-tensorrt/blob/main/docs/operators.md)")
TOPK_MAX_K = 3840  # exclusive

#: Supported operators -> the published restriction ("" = none).
SUPPORTED: dict[str, str] = {
    **dict.fromkeys(
        "Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh BatchNormalization BlackmanWindow Cast "
        "CastLike Ceil Celu Clip Concat ConstantOfShape Conv ConvTranspose Cos Cosh DepthToSpace Div Einsum Elu "
        "Equal Erf Exp Expand Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool "
        "GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GroupNormalization HammingWindow HannWindow "
        "HardSigmoid HardSwish Identity ImageScaler InstanceNormalization IsInf IsNaN LeakyRelu Less LessOrEqual "
        "Log LogSoftmax LRN LpNormalization MatMul Max Mean MeanVarianceNormalization Min Mish Mod Mul Neg "
        "NonMaxSuppression Not Or Pad ParametricSoftplus Pow PRelu Range Reciprocal Relu Reshape "
        "ReverseSequence RMSNormalization RoiAlign Round ScaledTanh Scan Scatter ScatterElements Selu Shape "
        "Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Sub Sum Tan "
        "Tanh ThresholdedRelu Tile Transpose Trilu Upsample Where Xor".split(), ""),
    "Attention": "Q, K, V and attn_mask must be 4D; past/present key-value and qk_matmul_output unsupported",
    "AveragePool": "2D or 3D pooling only; dilations must be empty or all ones",
    "Constant": "sparse_value, value_string and value_strings attributes are unsupported",
    "CumSum": "axis must be a build-time constant",
    "DeformConv": "1D or 2D spatial input; begin/end pads must be equal",
    "DequantizeLinear": "x_zero_point must be zero; INT8, FP8, FP4, INT4 only",
    "Dropout": "is_training must be an initializer and evaluate to False",
    "EyeLike": "input must have static dimensions",
    "GridSample": "input must be 4D",
    "GRU": "bidirectional: same activations both ways",
    "Hardmax": "axis dimension must be a build-time constant",
    "If": "both branches' outputs must have the same rank and different names",
    "LayerNormalization": "only the first output Y is supported",
    "Loop": "scan output length cannot be dynamic; loop-carried shapes must not change",
    "LpPool": "dilations must be empty or all ones",
    "LSTM": "bidirectional: same activations both ways; input_forget = 0; layout = 0",
    "MaxPool": "2D or 3D pooling only; Indices output unsupported; dilations must be empty or all ones",
    "NonZero": "FP32, FP16 inputs",
    "OneHot": "depth must be a build-time constant",
    "QuantizeLinear": "y_zero_point must be 0",
    "RandomNormal": "seed ignored", "RandomNormalLike": "seed ignored",
    "RandomUniform": "seed ignored", "RandomUniformLike": "seed ignored",
    **dict.fromkeys(
        "ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum "
        "ReduceSumSquare".split(), "axes must be an initializer"),
    "Resize": "modes half_pixel, pytorch_half_pixel, tf_half_pixel_for_nn, asymmetric, align_corners; "
              "nearest or linear; no antialiasing",
    "RNN": "bidirectional: same activations both ways",
    "RotaryEmbedding": "position_ids must be INT64",
    "ScatterND": "reduction other than none is not supported",
    "Squeeze": "axes must be resolvable to a constant",
    "STFT": "frame_step and window must be initializers; real input",
    "TensorScatter": "past_cache and update 4D; axis -2",
    "TopK": "sorted must be 1; K must be less than 3840",
    "Unsqueeze": "axes must be resolvable to a constant",
}

#: Operators the parser lists as unsupported.
UNSUPPORTED: frozenset[str] = frozenset(
    "AffineGrid Bernoulli BitShift BitwiseAnd BitwiseNot BitwiseOr BitwiseXor Col2Im CenterCropPad Compress "
    "ConcatFromSequence ConvInteger DFT Det DynamicQuantizeLinear ImageDecoder MatMulInteger MaxRoiPool "
    "MaxUnpool MelWeightMatrix Multinomial NegativeLogLikelihoodLoss Optional OptionalGetElement "
    "OptionalHasElement QLinearConv QLinearMatMul RegexFullMatch SequenceAt SequenceConstruct SequenceEmpty "
    "SequenceErase SequenceInsert SequenceLength SequenceMap SoftmaxCrossEntropyLoss SplitToSequence "
    "StringConcat StringNormalizer StringSplit TfIdfVectorizer Unique".split())

_AXES_INPUT = {f"Reduce{s}" for s in ("L1", "L2", "LogSum", "LogSumExp", "Max", "Mean", "Min", "Prod", "Sum",
                                      "SumSquare")} | {"Squeeze", "Unsqueeze"}


class _Graph:
    """Constants, types and ranks of the tensors of one (shape-inferred) graph."""

    def __init__(self, model: Any) -> None:
        import onnx
        from onnx import numpy_helper, shape_inference

        try:
            model = shape_inference.infer_shapes(model, strict_mode=False)
        except Exception:  # noqa: BLE001 - best effort: the checks degrade to "unknown"
            pass
        self.model = model
        g = model.graph
        self.consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        for n in g.node:
            if n.op_type == "Constant" and n.output:
                for a in n.attribute:
                    if a.name == "value":
                        self.consts[n.output[0]] = numpy_helper.to_array(a.t)
        self.types: dict[str, int] = {}
        self.ranks: dict[str, int] = {}
        for vi in [*g.input, *g.output, *g.value_info]:
            tt = vi.type.tensor_type
            self.types[vi.name] = tt.elem_type
            if tt.HasField("shape"):
                self.ranks[vi.name] = len(tt.shape.dim)
        for t in g.initializer:
            self.types[t.name] = t.data_type
            self.ranks[t.name] = len(t.dims)
        self.io_names = {vi.name for vi in [*g.input, *g.output]}
        self.uint8 = onnx.TensorProto.UINT8
        self.int32 = onnx.TensorProto.INT32
        self.float_types = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}

    def const(self, name: str) -> np.ndarray | None:
        return self.consts.get(name) if name else None


def _attr(node: Any, name: str, default: Any) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _check_node(node: Any, g: _Graph, problems: list[str], notes: set[str]) -> None:
    op, where = node.op_type, f"{node.op_type} node {node.name or '(unnamed)'}"
    if op == "TopK":
        k = g.const(node.input[1]) if len(node.input) > 1 else None
        if k is None:
            problems.append(f"{where}: K is not a constant; TensorRT needs a build-time K < {TOPK_MAX_K}")
        elif int(np.max(k)) >= TOPK_MAX_K:
            problems.append(f"{where}: K = {int(np.max(k))} but TensorRT needs K < {TOPK_MAX_K}")
        if int(_attr(node, "sorted", 1)) != 1:
            problems.append(f"{where}: sorted must be 1")
    elif op == "NonMaxSuppression":
        for idx, label in ((0, "boxes [B, N, 4]"), (1, "scores [B, C, N]")):
            rank = g.ranks.get(node.input[idx])
            if rank is not None and rank != 3:
                problems.append(f"{where}: {label} must be 3-D, got rank {rank}")
            elif rank is None:
                notes.add(f"{where}: rank of {label} unknown; TensorRT needs 3-D")
    elif op in ("QuantizeLinear", "DequantizeLinear"):
        if len(node.input) > 2 and node.input[2]:
            zp = g.const(node.input[2])
            if zp is None or np.any(zp != 0):
                problems.append(f"{where}: zero point must be a constant 0 for TensorRT (symmetric quantization)")
        if op == "DequantizeLinear" and g.types.get(node.input[0]) == g.int32:
            problems.append(f"{where}: INT32 input (a quantized bias?); TensorRT dequantizes INT8/FP8/FP4/INT4 "
                            "only — quantize without int32 biases")
    elif op in _AXES_INPUT and len(node.input) > 1 and node.input[1] and g.const(node.input[1]) is None:
        problems.append(f"{where}: axes must be a constant")
    elif op == "CumSum" and g.const(node.input[1]) is None:
        problems.append(f"{where}: axis must be a constant")
    elif op == "NonZero":
        t = g.types.get(node.input[0])
        if t is not None and t not in g.float_types:
            problems.append(f"{where}: TensorRT lists NonZero for FP32/FP16 inputs; cast the mask to float first")
    elif op == "ScatterND" and _attr(node, "reduction", b"none") not in (b"none", "none"):
        problems.append(f"{where}: ScatterND reduction is not supported")
    elif op in ("If", "Loop"):
        notes.add(f"{op} present: TensorRT wants conditionals/loops folded where possible")
    elif op == "RoiAlign":
        notes.add("RoiAlign runs through TensorRT's built-in ROIAlign_TRT plugin: call "
                  "trt.init_libnvinfer_plugins(None, '') before parsing")


def check_graph(model: Any, name: str = "graph") -> dict[str, Any]:
    """Check one ONNX model (``ModelProto`` or path). Returns a JSON-able report:
    ``{"graph", "tensorrt_version", "source", "opset", "ops": {op: count}, "problems": [...],
    "notes": [...], "supported": bool}``."""
    import onnx

    if isinstance(model, (str, os.PathLike)):
        model = onnx.load(str(Path(model)), load_external_data=False)
    g = _Graph(model)
    problems: list[str] = []
    notes: set[str] = set()
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or not OPSET_RANGE[0] <= opset <= OPSET_RANGE[1]:
        problems.append(f"opset {opset} is outside TensorRT {TENSORRT_VERSION}'s range {OPSET_RANGE}")
    ops: Counter[str] = Counter()
    for node in model.graph.node:
        ops[node.op_type] += 1
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{node.op_type} node {node.name}: custom domain {node.domain!r} needs a plugin")
        elif node.op_type in UNSUPPORTED:
            problems.append(f"{node.op_type} node {node.name}: not supported by TensorRT {TENSORRT_VERSION}'s parser")
        elif node.op_type not in SUPPORTED:
            problems.append(f"{node.op_type} node {node.name}: not in TensorRT {TENSORRT_VERSION}'s operator list")
        else:
            _check_node(node, g, problems, notes)
        for out in node.output:
            if g.types.get(out) == g.uint8 and out not in g.io_names:
                problems.append(f"{node.op_type} node {node.name}: produces UINT8 tensor {out!r}; TensorRT takes "
                                "UINT8 only as a network input or output")
    return {"graph": name, "tensorrt_version": TENSORRT_VERSION, "source": SOURCE, "opset": opset,
            "ops": dict(sorted(ops.items())), "problems": problems, "notes": sorted(notes),
            "supported": not problems}


def check_graphs(graphs: dict[str, Any]) -> dict[str, Any]:
    """Check several graphs (name -> model/path): ``{"supported", "tensorrt_version", "graphs": {...}}``."""
    reports = {name: check_graph(m, name) for name, m in graphs.items()}
    return {"supported": all(r["supported"] for r in reports.values()), "tensorrt_version": TENSORRT_VERSION,
            "source": SOURCE, "graphs": reports}
