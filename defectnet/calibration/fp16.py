"""FP16 graphs for TensorRT's strongly typed networks, with float32 islands.

Converter: onnxruntime's maintained ``onnxruntime.transformers.float16.convert_float_to_float16``
with ``keep_io_types=True`` (the graphs keep their float32/uint8/int64 interface, so the
runtime binds the same tensors for every precision) and a node block list from
:mod:`defectnet.calibration.regions`: only the convolution/linear trunks (ResNet body, FPN,
RPN 3x3 conv, cascade fc6/fc7) run in FP16. These stay float32 and why:

* box decoding and clipping (coordinates up to ~1344 px: FP16's spacing there is 1 px),
  the RPN and cascade predictors (objectness/class logits, box-regression deltas), scores
  before NMS and NonMaxSuppression itself (near-ties would flip), TopK;
* RoIAlign and its level mapping (bilinear sampling positions are coordinates);
* the gate head (P(defective) is the gate's recall) and the uint8 -> float normalisation.

The converter casts the output of every blocked node back to FP16 and casts it up again
at the next blocked node, so inside an island every tensor would be rounded to FP16 at
each edge. :func:`fuse_cast_roundtrips` removes those ``float32 -> float16 -> float32``
pairs, which makes the islands float32 end to end (a test checks it).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from defectnet.calibration.regions import classify_nodes

#: Op types kept float32 wherever they appear (on top of the converter's own defaults).
EXTRA_OP_BLOCK_LIST = ("NonMaxSuppression", "TopK", "RoiAlign", "Exp", "Log", "Softmax", "Sigmoid", "NonZero",
                       "ScatterND", "ScatterElements", "GatherElements")


def op_block_list() -> list[str]:
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST

    return sorted(set(DEFAULT_OP_BLOCK_LIST) | set(EXTRA_OP_BLOCK_LIST))


def _elem_types(model: Any) -> dict[str, int]:
    g = model.graph
    types = {vi.name: vi.type.tensor_type.elem_type for vi in [*g.input, *g.output, *g.value_info]}
    types.update({t.name: t.data_type for t in g.initializer})
    return types


def fuse_cast_roundtrips(model: Any) -> int:
    """Remove ``x(float32) -> Cast(float16) -> Cast(float32)`` chains: consumers read ``x``
    (a graph output keeps its name through an ``Identity``). Returns how many were removed."""
    from onnx import TensorProto

    def cast_to(node: Any) -> int | None:
        if node.op_type != "Cast":
            return None
        return next((int(a.i) for a in node.attribute if a.name == "to"), None)

    g = model.graph
    types = _elem_types(model)
    producer = {o: n for n in g.node for o in n.output}
    outputs = {o.name for o in g.output}
    replace: dict[str, str] = {}
    dead: set[int] = set()
    fused = 0
    for node in g.node:
        if cast_to(node) != TensorProto.FLOAT:
            continue
        up = producer.get(node.input[0])
        if up is None or cast_to(up) != TensorProto.FLOAT16 or types.get(up.input[0]) != TensorProto.FLOAT:
            continue
        fused += 1
        if node.output[0] in outputs:  # keep the output name: Identity(x)
            node.op_type = "Identity"
            del node.attribute[:]
            node.input[0] = up.input[0]
        else:
            replace[node.output[0]] = up.input[0]
            dead.add(id(node))
    if not fused:
        return 0
    for node in g.node:
        for i, name in enumerate(node.input):
            if name in replace:
                node.input[i] = replace[name]
    kept = [n for n in g.node if id(n) not in dead]
    used = {i for n in kept for i in n.input} | outputs
    # fp16 casts whose every consumer was one of the removed float32 casts are dead too
    kept = [n for n in kept if not (cast_to(n) == TensorProto.FLOAT16 and n.output[0] not in used)]
    live = {o for n in kept for o in n.output} | {i.name for i in g.input}
    del g.node[:]
    g.node.extend(kept)
    stale = [vi for vi in g.value_info if vi.name not in live]
    for vi in stale:
        g.value_info.remove(vi)
    return fused


@dataclass
class Fp16Graph:
    graph: str
    path: Path
    fp16_nodes: int
    float32_islands: list[dict[str, Any]]
    casts: int
    roundtrips_removed: int


def convert_graph_fp16(prepared: str | os.PathLike[str], out: str | os.PathLike[str], *, graph: str) -> Fp16Graph:
    """Write the FP16 version of the float32 graph ``prepared`` (see the module docstring)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from defectnet.calibration.prepare import set_metadata
    from defectnet.io import atomic_write_bytes

    model = onnx.load(str(prepared))
    regions = classify_nodes(model, graph)
    converted = convert_float_to_float16(copy_model(model), keep_io_types=True, op_block_list=op_block_list(),
                                         node_block_list=regions.float_names())
    removed = fuse_cast_roundtrips(converted)
    topological_sort(converted)
    set_metadata(converted, {"precision": "fp16"})
    onnx.checker.check_model(converted)
    path = atomic_write_bytes(Path(out), converted.SerializeToString())
    blocked = set(op_block_list())
    fp16_nodes = sum(1 for n in model.graph.node if n.name in set(regions.compute) and n.op_type not in blocked)
    casts = sum(1 for n in converted.graph.node if n.op_type == "Cast") - sum(
        1 for n in model.graph.node if n.op_type == "Cast")
    islands = regions.report(model, op_types={n.op_type for n in model.graph.node} - {"Constant", "Identity"})
    for entry in islands:  # the names are long lists; keep the counts and a few examples
        entry["examples"] = entry.pop("nodes")[:8]
    return Fp16Graph(graph, path, fp16_nodes, islands, casts, removed)


def topological_sort(model: Any) -> None:
    """Reorder the nodes topologically (stable: original order among ready nodes). The
    converter appends its Cast nodes at the end; the ONNX spec and TensorRT's parser want
    producers before consumers."""
    import heapq

    g = model.graph
    nodes = list(g.node)
    available = {i.name for i in g.input} | {t.name for t in g.initializer} | {""}
    producer_of = {o: k for k, n in enumerate(nodes) for o in n.output}
    waiting: list[set[int]] = []
    dependants: dict[int, list[int]] = {}
    for k, n in enumerate(nodes):
        deps = {producer_of[i] for i in n.input if i not in available and i in producer_of}
        waiting.append(deps)
        for d in deps:
            dependants.setdefault(d, []).append(k)
    ready = [k for k, deps in enumerate(waiting) if not deps]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        k = heapq.heappop(ready)
        order.append(k)
        for j in dependants.get(k, []):
            waiting[j].discard(k)
            if not waiting[j]:
                heapq.heappush(ready, j)
    if len(order) != len(nodes):
        raise ValueError("the graph has a cycle or an input nobody produces")
    del g.node[:]
    g.node.extend(nodes[k] for k in order)


def copy_model(model: Any) -> Any:
    import onnx

    clone = onnx.ModelProto()
    clone.CopyFrom(model)
    return clone


def float32_island_violations(model: Any, graph: str) -> list[str]:
    """Float32-region nodes of an FP16 graph that read a float16 tensor, or a float32 value
    that was rounded through float16 on its way (``Cast(fp16) -> Cast(fp32)``). Empty = clean."""
    from onnx import TensorProto, shape_inference

    inferred = shape_inference.infer_shapes(model)
    types = _elem_types(inferred)
    producer = {o: n for n in inferred.graph.node for o in n.output}
    floats = set(classify_nodes(inferred, graph).float32)

    def cast_to(node: Any) -> int | None:
        return next((int(a.i) for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None

    problems = []
    for node in inferred.graph.node:
        if node.name not in floats or node.op_type in ("Cast", "Constant"):
            continue
        for name in node.input:
            if types.get(name) == TensorProto.FLOAT16:
                problems.append(f"{node.op_type} {node.name} reads float16 tensor {name}")
                continue
            up = producer.get(name)
            if up is None or cast_to(up) != TensorProto.FLOAT:
                continue
            src = producer.get(up.input[0])
            if src is not None and cast_to(src) == TensorProto.FLOAT16 and types.get(src.input[0]) == TensorProto.FLOAT:
                problems.append(f"{node.op_type} {node.name} reads {name}, a float32 value rounded through float16")
    return problems


def compare_outputs(reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray],
                    names: Iterable[str]) -> dict[str, float]:
    """Max absolute and relative (to the reference's max |x|) difference per output."""
    out: dict[str, float] = {}
    for name in names:
        a = np.asarray(reference[name], dtype=np.float64)
        b = np.asarray(candidate[name], dtype=np.float64)
        diff = float(np.max(np.abs(a - b))) if a.size else 0.0
        scale = float(np.max(np.abs(a))) if a.size else 0.0
        out[f"{name}_max_abs"] = diff
        out[f"{name}_max_rel"] = diff / scale if scale > 0 else diff
    return out
