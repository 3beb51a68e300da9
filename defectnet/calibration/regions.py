"""Which nodes of the exported graphs may run in reduced precision, and why the rest may not.

Both INT8 (:mod:`defectnet.calibration.int8`) and FP16 (:mod:`defectnet.calibration.fp16`)
use the same split. The TorchScript exporter names every node after the module that ran it
(``/backbone/body/layer1/layer1.0/conv1/Conv``, ``/fpn/layer_blocks.0/...``,
``/heads.2/mlp/fc6/Gemm``); code that is not inside an ``nn.Module`` call -- anchors, box
decoding, clipping, top-k, NMS, the RoIAlign level mapping, post-processing -- gets a
top-level name (``/Add_56``, ``/NonMaxSuppression_1``). So the rule is:

* a node inside one of the *network scopes* (the convolution/linear trunks) is a
  *compute* node, eligible for INT8 Q/DQ or FP16,
* unless a :class:`FloatRule` keeps it in float32 for a stated reason,
* and every node outside the network scopes stays float32 (:data:`OUTSIDE_REASON`).

The reasons below are what the engine manifest records (``quantization.float_regions`` /
``fp16.float32_islands``).

RoIAlign itself stays float32, but in the INT8 graphs it reads the dequantized FPN outputs
(the Q/DQ pair the RPN conv needs is shared). Feeding it the float tensors instead was
measured and not worth a float copy of P2..P5: 625 vs 619 of 694 float32 detections kept
(IoU >= 0.5, same label) on the ONNX Runtime flavour of a partly trained model.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

#: Module scopes that hold the heavy convolutions / fully connected layers, per graph.
NETWORK_SCOPES: Mapping[str, tuple[str, ...]] = {
    # ResNet body of the gate graph (stem, layer1..4, residual Adds, MaxPool).
    "gate": ("/backbone/body/",),
    # The two-model baseline's ResNet classifier body.
    "classifier": ("/classifier/body/",),
    # FPN (lateral/output convs, top-down Add + Resize, P6 MaxPool), the shared RPN 3x3
    # conv, and the cascade heads' two-FC trunks (fc6, fc7).
    "detector": ("/fpn/", "/rpn_head/conv/", "/heads."),
}


@dataclass(frozen=True)
class FloatRule:
    """Nodes whose name matches ``pattern`` stay float32 for ``reason``."""

    name: str
    pattern: str
    reason: str

    def matches(self, node_name: str) -> bool:
        return re.search(self.pattern, node_name) is not None


#: Float32 rules inside or beside the network scopes, per graph (first match wins).
FLOAT_RULES: Mapping[str, tuple[FloatRule, ...]] = {
    "gate": (
        FloatRule("normalisation", r"^/backbone/normalize/",
                  "uint8 -> float normalisation ((x - mean) / std): exact in float32 and fused by TensorRT; "
                  "the first Conv quantizes its own (normalised) input"),
        FloatRule("gate_head", r"^/gate/|^/Softmax|^/Gather",
                  "gate head (masked average pool of C5 + Linear(C5, 2) + softmax): P(defective) decides which "
                  "images reach the detector, so its precision is the gate's recall; it costs ~2*C5 MACs "
                  "per image, INT8/FP16 would gain nothing"),
    ),
    "classifier": (
        FloatRule("normalisation", r"^/classifier/normalize/",
                  "uint8 -> float normalisation: exact in float32; the first Conv quantizes its input"),
    ),
    "detector": (
        FloatRule("rpn_predictors", r"^/rpn_head/(cls_logits|bbox_pred)",
                  "RPN predictors: objectness logits rank proposals (TopK, NMS) and the deltas are decoded into "
                  "box coordinates; 1x1 convs with A and 4A output channels, float32 costs nothing"),
        FloatRule("box_predictors", r"^/heads\.\d+/(cls_score|bbox_pred)/",
                  "cascade predictors: class scores feed the score threshold and NMS, box-regression deltas feed "
                  "decoding (small defects move by a few pixels); Linear(1024 -> K+1 / 4) is negligible work"),
    ),
}

OUTSIDE_REASON = ("outside the convolution/linear trunks: shape and index arithmetic, anchors, box decoding "
                  "and clipping, TopK, NonMaxSuppression and its inputs, the RoIAlign level mapping and "
                  "RoIAlign itself, padding of the outputs -- coordinates and scores stay float32")


@dataclass(frozen=True)
class NodeRegions:
    """The split of one graph's nodes. compute: names eligible for INT8/FP16. float32:
    name -> reason of every other node (Constant nodes included)."""

    graph: str
    compute: tuple[str, ...]
    float32: Mapping[str, str]

    def float_names(self) -> list[str]:
        return list(self.float32)

    def report(self, model: Any, op_types: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """JSON-able ``[{"reason", "nodes": [...], "count"}]`` for the manifest. ``op_types``
        limits the listed names to nodes of those types (the ones a precision change would
        otherwise touch); ``count`` is the number of float32 nodes with that reason."""
        types = {n.name: n.op_type for n in model.graph.node}
        wanted = set(op_types) if op_types is not None else None
        grouped: dict[str, list[str]] = {}
        counts: dict[str, int] = {}
        for name, reason in self.float32.items():
            counts[reason] = counts.get(reason, 0) + 1
            if wanted is None or types.get(name) in wanted:
                grouped.setdefault(reason, []).append(name)
        return [{"reason": reason, "count": counts[reason], "nodes": sorted(grouped.get(reason, []))}
                for reason in counts]


def graph_kind(graph: str) -> str:
    if graph not in NETWORK_SCOPES:
        raise ValueError(f"unknown graph {graph!r}; expected one of {sorted(NETWORK_SCOPES)}")
    return graph


def classify_nodes(model: Any, graph: str) -> NodeRegions:
    """Split the nodes of ``model`` (an ONNX ModelProto of graph ``graph``) into compute
    nodes and float32 nodes with reasons. Unnamed nodes stay float32."""
    scopes = NETWORK_SCOPES[graph_kind(graph)]
    rules = FLOAT_RULES.get(graph, ())
    compute: list[str] = []
    float32: dict[str, str] = {}
    for node in model.graph.node:
        name = node.name
        if not name:
            continue
        rule = next((r for r in rules if r.matches(name)), None)
        if rule is not None:
            float32[name] = rule.reason
        elif name.startswith(scopes):
            compute.append(name)
        else:
            float32[name] = OUTSIDE_REASON
    return NodeRegions(graph, tuple(compute), float32)
