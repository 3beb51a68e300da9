"""The float32 graph every precision starts from: ONNX Runtime's *basic* graph optimisation.

Why basic, saved to disk (``SessionOptions.optimized_model_filepath``):

* it folds constants and fuses the frozen BatchNorm ``Mul``/``Add`` pairs into the
  convolutions (the exported gate graph has Conv -> Mul -> Add per layer). Quantizing
  before that fusion would put Q/DQ between a Conv and its BatchNorm, which neither ONNX
  Runtime nor TensorRT can fuse into an integer convolution;
* the basic level only applies rewrites inside the standard ONNX domain, so the result is
  portable: the same file runs in any ONNX Runtime build and parses in TensorRT
  (:mod:`defectnet.export.trt_ops` checks it). The *extended*/*all* levels add
  ``com.microsoft`` fused ops and CPU-specific NCHWc layouts that ONNX Runtime's
  documentation says not to save for another machine -- the runtime session applies
  those itself at load time (``ORT_ENABLE_ALL``, the default), which the manifest records.

The node names survive the optimisation (the regions of :mod:`.regions` depend on them);
unnamed nodes get a unique top-level name, unused opset imports are dropped and the
``defectnet.*`` metadata of the exported graph is kept.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

#: What the engine manifest records about graph optimisation.
GRAPH_OPTIMIZATION = {
    "saved_level": "ORT_ENABLE_BASIC",
    "saved_with": "onnxruntime.SessionOptions.optimized_model_filepath",
    "runtime_level": "ORT_ENABLE_ALL (the onnxruntime session default, applied at load time)",
    "why": "basic = constant folding + Conv/BatchNorm fusion in the standard ONNX domain: portable, parses in "
           "TensorRT, and quantizable; extended/all add com.microsoft ops and CPU-specific layouts that must "
           "not be saved for another machine",
}


def used_opsets(model: Any) -> None:
    """Drop opset imports no node uses (the optimiser adds every domain it knows)."""
    used = {n.domain or "" for n in model.graph.node} | {""}
    keep = [o for o in model.opset_import if (o.domain or "") in used or o.domain == "ai.onnx"]
    del model.opset_import[:]
    model.opset_import.extend(keep)


def name_nodes(model: Any) -> int:
    """Give unnamed nodes a unique top-level name (``/unnamed/<op>_<i>``); returns how many."""
    taken = {n.name for n in model.graph.node if n.name}
    count = 0
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"/unnamed/{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
            count += 1
    return count


def optimize_basic(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, threads: int = 1) -> Path:
    """Write the ORT_ENABLE_BASIC-optimised copy of ``src`` to ``dst`` (see the module docstring)."""
    import onnx
    import onnxruntime as ort

    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    original = onnx.load(str(src), load_external_data=False)
    with tempfile.TemporaryDirectory(prefix="defectnet-opt-") as tmp:
        raw = Path(tmp) / "optimized.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(raw)
        options.intra_op_num_threads = threads
        ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
        model = onnx.load(str(raw))
    used_opsets(model)
    name_nodes(model)
    del model.metadata_props[:]
    model.metadata_props.extend(original.metadata_props)
    model.doc_string = original.doc_string
    model.producer_name, model.producer_version = original.producer_name, original.producer_version
    from defectnet.io import atomic_write_bytes

    atomic_write_bytes(dst, model.SerializeToString())
    return dst


def set_metadata(model: Any, values: dict[str, str], prefix: str = "defectnet.") -> None:
    """Set (add or replace) ``prefix + key`` metadata_props on an ONNX model."""
    existing = {p.key: p for p in model.metadata_props}
    for key, value in values.items():
        full = prefix + key
        if full in existing:
            existing[full].value = value
        else:
            entry = model.metadata_props.add()
            entry.key, entry.value = full, value
