"""INT8 Q/DQ: the two flavours from one calibration, the float32 regions, determinism and
chunked (strided) calibration that keeps every sample."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from calibration_helpers import Quantized, gate_feeds
from onnx import TensorProto, helper, numpy_helper

from defectnet.calibration import (
    CalibrationSettings,
    calibrate_graph,
    check_flavour,
    classify_nodes,
    onnxruntime_flavour,
    quantize_graph,
    tensorrt_flavour,
)
from defectnet.calibration.int8 import compute_tensors
from defectnet.export.trt_ops import check_graph


def _consts(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _zero_points(model: onnx.ModelProto) -> list[np.ndarray]:
    consts = _consts(model)
    return [consts[n.input[2]] for n in model.graph.node
            if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2 and n.input[2]]


@pytest.mark.parametrize("graph", ["gate", "detector"])
def test_tensorrt_flavour_is_symmetric_int8_without_int32_bias(quantized: Quantized, graph: str) -> None:
    model = onnx.load(str(quantized.files["tensorrt"][graph]))
    zps = _zero_points(model)
    assert zps, "no Q/DQ nodes"
    assert all(z.dtype == np.int8 and not z.any() for z in zps)  # zero points all 0 (TensorRT's rule)
    report = check_graph(model, graph)
    assert report["supported"], report["problems"]
    assert check_flavour(model, tensorrt_flavour(), graph) == []
    consts = _consts(model)
    dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert not any(consts.get(n.input[0], np.zeros(0, np.int8)).dtype == np.int32 for n in dq)  # no int32 bias
    weights = [n for n in dq if n.input[0] in consts and consts[n.input[0]].dtype == np.int8]
    assert weights and all(consts[n.input[1]].size > 1 for n in weights if consts[n.input[0]].ndim == 4)  # per-channel


@pytest.mark.parametrize("graph", ["gate", "detector"])
def test_onnxruntime_flavour_is_u8s8(quantized: Quantized, graph: str) -> None:
    model = onnx.load(str(quantized.files["onnxruntime"][graph]))
    consts = _consts(model)
    q = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert q and all(consts[n.input[2]].dtype == np.uint8 for n in q)  # uint8 activations
    weights = [consts[n.input[0]] for n in model.graph.node
               if n.op_type == "DequantizeLinear" and n.input[0] in consts and consts[n.input[0]].ndim >= 2]
    assert weights and all(w.dtype == np.int8 for w in weights)  # int8 weights
    assert check_flavour(model, onnxruntime_flavour(), graph) == []


def test_float_regions_keep_float_weights_and_reasons(quantized: Quantized, prepared: dict[str, Path]) -> None:
    for flavour in ("tensorrt", "onnxruntime"):
        model = onnx.load(str(quantized.files[flavour]["detector"]))
        consts = _consts(model)
        regions = classify_nodes(model, "detector")
        for node in model.graph.node:
            if node.op_type in ("Conv", "Gemm") and node.name in regions.float32:
                # predictors (box deltas, class scores, objectness) keep float32 weights
                assert consts[node.input[1]].dtype == np.float32, node.name
            if node.op_type in ("NonMaxSuppression", "RoiAlign", "TopK"):
                assert node.name in regions.float32
        quantized_convs = [n for n in model.graph.node if n.op_type == "Conv" and n.input[1] not in consts]
        assert quantized_convs  # weights come through DequantizeLinear
    report = classify_nodes(onnx.load(str(prepared["detector"])), "detector").report(
        onnx.load(str(prepared["detector"])), ["Conv", "Gemm"])
    reasons = {r["reason"].split(":")[0] for r in report}
    assert {"RPN predictors", "cascade predictors"} <= reasons
    box = next(r for r in report if r["reason"].startswith("cascade predictors"))
    assert any("bbox_pred" in n for n in box["nodes"]) and any("cls_score" in n for n in box["nodes"])


def test_quantized_graphs_run_close_to_float(quantized: Quantized, prepared: dict[str, Path], tiny_data: Path) -> None:
    from calibration_helpers import SCALE

    from defectnet.calibration import select_calibration_set

    calib = select_calibration_set(tiny_data, 1, scale=SCALE, split="test")  # an unseen, in-distribution image
    x, s = calib.load(calib.images[0])
    feed = {"images": x, "image_sizes": s}
    ref = ort.InferenceSession(str(prepared["gate"]), providers=["CPUExecutionProvider"]).run(None, feed)
    float_dets = ort.InferenceSession(str(prepared["detector"]), providers=["CPUExecutionProvider"]).run(
        None, {**dict(zip(["c2", "c3", "c4", "c5"], ref[1:])), "image_sizes": feed["image_sizes"]})
    for flavour in ("tensorrt", "onnxruntime"):
        got = ort.InferenceSession(str(quantized.files[flavour]["gate"]),
                                   providers=["CPUExecutionProvider"]).run(None, feed)
        assert abs(float(got[0][0]) - float(ref[0][0])) < 0.02  # P(defective)
        c5_rel = np.abs(got[4] - ref[4]).mean() / np.abs(ref[4]).mean()
        assert c5_rel < 0.1, (flavour, c5_rel)
        det = ort.InferenceSession(str(quantized.files[flavour]["detector"]), providers=["CPUExecutionProvider"])
        out = det.run(None, {**dict(zip(["c2", "c3", "c4", "c5"], ref[1:])), "image_sizes": feed["image_sizes"]})
        _assert_detections_close(float_dets, out, flavour)


def _assert_detections_close(ref: list[np.ndarray], got: list[np.ndarray], flavour: str) -> None:
    """The quantized detector finds the float detector's most confident boxes: for each float
    detection scoring at least 0.9x the float top score (a random tiny model scores flatly,
    ~0.2-0.3), a quantized one of the same class with IoU >= 0.7 and a score within 0.05
    (outputs: boxes [1, M, 4], scores [1, M], labels [1, M], count [1])."""
    from torchvision.ops import box_iou

    n_ref, n_got = int(ref[3][0]), int(got[3][0])
    keep = ref[1][0, :n_ref] >= 0.9 * ref[1][0, :n_ref].max(initial=0.0)
    assert n_ref and keep.any(), "the float detector must find something for this comparison to mean anything"
    rb, rs, rl = (torch.from_numpy(a[0, :n_ref][keep]) for a in ref[:3])
    gb, gs, gl = (torch.from_numpy(a[0, :n_got]) for a in got[:3])
    iou = box_iou(rb.float(), gb.float()) if n_got else torch.zeros(len(rb), 0)
    for i in range(len(rb)):
        ok = (iou[i] >= 0.7) & (gl == rl[i]) & ((gs - rs[i]).abs() <= 0.05)
        assert bool(ok.any()), (flavour, f"float box {rb[i].tolist()} score {float(rs[i]):.3f} class {int(rl[i])} "
                                          f"has no quantized match (best IoU {float(iou[i].max()) if n_got else 0:.2f})")


def test_calibration_and_quantization_are_deterministic(prepared: dict[str, Path], tmp_path: Path) -> None:
    flav = tensorrt_flavour()
    tensors = compute_tensors(onnx.load(str(prepared["gate"])), "gate", flav.op_types)

    def once(tag: str) -> tuple[str, bytes]:
        run = calibrate_graph(prepared["gate"], gate_feeds(3), CalibrationSettings(chunk_size=2), flav.op_types,
                              graph="gate", tensors=tensors, threads=1)
        from onnxruntime.quantization.calibrate import CalibrationCacheEncoder

        q = quantize_graph(prepared["gate"], run.ranges, flav, tmp_path / f"{tag}.onnx", graph="gate")
        return json.dumps(run.ranges, cls=CalibrationCacheEncoder, sort_keys=True), q.path.read_bytes()

    assert once("a") == once("b")


def _probe_model() -> onnx.ModelProto:
    """x [1, 4] -> Add(x, 1) -> Relu -> y: the Add's input range is what gets measured."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    one = numpy_helper.from_array(np.ones((1, 4), np.float32), "one")
    nodes = [helper.make_node("Add", ["x", "one"], ["a"], name="add"), helper.make_node("Relu", ["a"], ["y"], name="relu")]
    model = helper.make_model(helper.make_graph(nodes, "probe", [x], [y], [one]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("method,chunk", [("minmax", 3), ("percentile", 1)])
def test_chunked_calibration_keeps_every_sample(tmp_path: Path, method: str, chunk: int) -> None:
    """onnxruntime 1.32's CalibMaxIntermediateOutputs drops collected outputs (#18893); our
    chunks must merge every sample: the extremes sit in the first and a middle sample."""
    path = tmp_path / "probe.onnx"
    onnx.save(_probe_model(), str(path))
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.uniform(-1, 1, (1, 4)).astype(np.float32)} for _ in range(10)]
    feeds[0]["x"][0, 1] = 100.0
    feeds[5]["x"][0, 2] = -50.0
    settings = CalibrationSettings(method=method, chunk_size=chunk, percentile=100.0)
    run = calibrate_graph(path, feeds, settings, ["Add"], graph="probe")
    assert run.samples == 10
    assert run.chunks == (4 if method == "minmax" else 10)
    lo, hi = (float(np.asarray(v).reshape(-1)[0]) for v in run.ranges["x"].range_value)
    assert hi >= 99.0 and lo <= -49.0, (lo, hi)
