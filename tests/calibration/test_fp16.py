"""FP16 graphs: float32 islands that really stay float32, TensorRT-parsable, and numerics
close to float32 on ONNX Runtime's CPU provider."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from calibration_helpers import SCALE
from onnx import TensorProto

from defectnet.calibration import convert_graph_fp16, float32_island_violations, select_calibration_set
from defectnet.export.trt_ops import check_graph


@pytest.fixture(scope="module")
def fp16(prepared: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("fp16")
    return {g: convert_graph_fp16(p, tmp / f"{g}.fp16.onnx", graph=g).path for g, p in prepared.items()}


@pytest.mark.parametrize("graph", ["gate", "detector"])
def test_fp16_graph_structure(fp16: dict[str, Path], prepared: dict[str, Path], graph: str) -> None:
    model = onnx.load(str(fp16[graph]))
    assert float32_island_violations(model, graph) == []
    assert check_graph(model, graph)["supported"]
    half = [t for t in model.graph.initializer if t.data_type == TensorProto.FLOAT16]
    assert half, "no float16 weights"
    io = {vi.name: vi.type.tensor_type.elem_type for vi in [*model.graph.input, *model.graph.output]}
    ref = onnx.load(str(prepared[graph]))
    assert io == {vi.name: vi.type.tensor_type.elem_type for vi in [*ref.graph.input, *ref.graph.output]}  # keep_io


def test_plain_converter_would_round_the_islands(prepared: dict[str, Path]) -> None:
    """Why fuse_cast_roundtrips exists: the converter alone casts every island edge to fp16."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from defectnet.calibration import classify_nodes
    from defectnet.calibration.fp16 import op_block_list, topological_sort

    model = onnx.load(str(prepared["detector"]))
    raw = convert_float_to_float16(model, keep_io_types=True, op_block_list=op_block_list(),
                                   node_block_list=classify_nodes(model, "detector").float_names())
    topological_sort(raw)
    assert len(float32_island_violations(raw, "detector")) > 10


def _matched(ref: list[np.ndarray], got: list[np.ndarray]) -> tuple[float, float]:
    """Share of reference detections with a same-label candidate box of IoU > 0.9, and the
    largest score difference among those."""
    import torch
    from torchvision.ops import box_iou

    n, m = int(ref[3][0]), int(got[3][0])
    if n == 0:
        return 1.0, 0.0
    iou = box_iou(torch.from_numpy(ref[0][0, :n]), torch.from_numpy(got[0][0, :m]))
    same = torch.from_numpy(ref[2][0, :n])[:, None] == torch.from_numpy(got[2][0, :m])[None, :]
    iou = torch.where(same, iou, torch.zeros_like(iou))
    best, idx = iou.max(dim=1) if m else (torch.zeros(n), torch.zeros(n, dtype=torch.long))
    ok = best > 0.9
    diffs = np.abs(ref[1][0, :n][ok.numpy()] - got[1][0, :m][idx[ok].numpy()])
    return float(ok.float().mean()), float(diffs.max()) if diffs.size else 0.0


def test_fp16_numerics_close_to_float32(fp16: dict[str, Path], prepared: dict[str, Path], tiny_data: Path) -> None:
    def session(p: Path) -> ort.InferenceSession:
        return ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])

    g32, g16 = session(prepared["gate"]), session(fp16["gate"])
    d32, d16 = session(prepared["detector"]), session(fp16["detector"])
    calib = select_calibration_set(tiny_data, 2, scale=SCALE, split="test")
    for _im, x, s in calib.batches():
        feed = {"images": x, "image_sizes": s}
        a, b = g32.run(None, feed), g16.run(None, feed)
        assert abs(float(a[0][0]) - float(b[0][0])) < 2e-3  # P(defective)
        for fa, fb in zip(a[1:], b[1:]):
            assert np.abs(fa - fb).max() / np.abs(fa).max() < 2e-2
        dfeed = {**dict(zip(["c2", "c3", "c4", "c5"], a[1:])), "image_sizes": s}
        share, score_diff = _matched(d32.run(None, dfeed), d16.run(None, dfeed))
        assert share >= 0.9 and score_diff < 5e-3, (share, score_diff)
