"""The TensorRT ONNX-parser check on small hand-made graphs."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from defectnet.export.trt_ops import SUPPORTED, TENSORRT_VERSION, UNSUPPORTED, check_graph


def _model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
           inits: list[onnx.TensorProto] = (), opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _f(name: str, shape: list[object]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _topk(k: int) -> onnx.ModelProto:
    return _model([helper.make_node("TopK", ["x", "k"], ["v", "i"], axis=1)],
                  [_f("x", ["b", 9000])], [_f("v", ["b", k]), helper.make_tensor_value_info("i", TensorProto.INT64,
                                                                                          ["b", k])],
                  [numpy_helper.from_array(np.array([k], dtype=np.int64), "k")])


def test_published_list_is_embedded() -> None:
    assert TENSORRT_VERSION.startswith("10.")
    assert {"RoiAlign", "NonMaxSuppression", "TopK", "NonZero", "ScatterND"} <= set(SUPPORTED)
    assert "K must be less than 3840" in SUPPORTED["TopK"]
    assert {"Unique", "ConvInteger", "MatMulInteger"} <= UNSUPPORTED


def test_topk_limit() -> None:
    assert check_graph(_topk(1000))["supported"]
    report = check_graph(_topk(3840))
    assert not report["supported"] and "3840" in report["problems"][0]


def test_nms_needs_3d_inputs() -> None:
    def nms(boxes_shape: list[object], scores_shape: list[object]) -> onnx.ModelProto:
        return _model([helper.make_node("NonMaxSuppression", ["b", "s"], ["sel"])],
                      [_f("b", boxes_shape), _f("s", scores_shape)],
                      [helper.make_tensor_value_info("sel", TensorProto.INT64, ["n", 3])])

    assert check_graph(nms(["B", "N", 4], ["B", 1, "N"]))["supported"]
    report = check_graph(nms(["N", 4], ["N"]))
    assert not report["supported"] and any("3-D" in p for p in report["problems"])


def test_quantization_zero_points_and_custom_ops() -> None:
    scale = numpy_helper.from_array(np.array(0.1, dtype=np.float32), "scale")
    zp = numpy_helper.from_array(np.array(3, dtype=np.int8), "zp")
    q = _model([helper.make_node("QuantizeLinear", ["x", "scale", "zp"], ["y"])], [_f("x", [4])],
               [helper.make_tensor_value_info("y", TensorProto.INT8, [4])], [scale, zp])
    assert any("zero point" in p for p in check_graph(q)["problems"])
    custom = _model([helper.make_node("MyPlugin", ["x"], ["y"], domain="com.example")], [_f("x", [4])],
                    [_f("y", [4])])
    custom.opset_import.append(helper.make_opsetid("com.example", 1))
    assert any("plugin" in p for p in check_graph(custom)["problems"])
    unique = _model([helper.make_node("Unique", ["x"], ["y"])], [_f("x", [4])], [_f("y", ["n"])])
    assert any("not supported" in p for p in check_graph(unique)["problems"])


def test_nonzero_on_bool_is_flagged() -> None:
    m = _model([helper.make_node("NonZero", ["x"], ["y"])], [helper.make_tensor_value_info("x", TensorProto.BOOL, [4])],
               [helper.make_tensor_value_info("y", TensorProto.INT64, [1, "n"])])
    assert any("FP32/FP16" in p for p in check_graph(m)["problems"])
