"""OpenVINO half precision for ``defectnet-build-engine --fp16`` on a CPU.

On a CPU "half precision" is OpenVINO's inference precision, chosen from what the CPU runs
natively (:func:`half_mode`, from the CPU plugin's ``OPTIMIZATION_CAPABILITIES``):

``bf16``  (``BF16`` capability: AVX512-BF16 or AMX) the float32 graph, compiled with
          ``INFERENCE_PRECISION_HINT=bf16``: OpenVINO runs convolutions and matrix products
          in bf16 and keeps what needs float32 (its own per-op rules).
``f16``   (``FP16`` capability: AVX512-FP16 / AMX-FP16 CPUs) the same with ``f16``.
otherwise fp16-compressed weights at f32: the weights of the convolutions and matrix
          products are stored as float16 with a ``Cast`` to float32 in front (half the
          file; what ``openvino.save_model(compress_to_fp16=True)`` does for IR), and the
          graph runs in float32. The weights are rounded to float16 once; nothing runs faster.

The graph stays ONNX in every mode (one file format per engine folder: ONNX Runtime and the
TensorRT parser read it too). The manifest records which mode a folder got, per graph
(``precision``, ``inference_precision``) and in ``extra.openvino`` (the CPU capabilities
and why). Every mode passes the build's accuracy gate like any other precision.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from defectnet.runtime.types import Precision

#: Op types whose float32 weight initializers get float16 storage (fp16-compressed mode).
WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass(frozen=True)
class HalfMode:
    """What ``--fp16`` means on this CPU (see the module docstring). precision: the graph's
    precision (``bf16`` or ``fp16``); inference_precision: OpenVINO's hint; compressed_weights:
    the ONNX file stores float16 weights."""

    precision: Precision
    inference_precision: str
    compressed_weights: bool
    reason: str

    def to_dict(self) -> dict[str, object]:
        return {"precision": self.precision.value, "inference_precision": self.inference_precision,
                "compressed_weights": self.compressed_weights, "reason": self.reason}


def half_mode(capabilities: Sequence[str]) -> HalfMode:
    """The half-precision mode for a CPU with these OpenVINO ``OPTIMIZATION_CAPABILITIES``."""
    caps = {c.upper() for c in capabilities}
    if "BF16" in caps:
        return HalfMode(Precision.BF16, "bf16", False, "the CPU runs bf16 natively (OpenVINO capability BF16)")
    if "FP16" in caps:
        return HalfMode(Precision.FP16, "f16", False, "the CPU runs fp16 natively (OpenVINO capability FP16)")
    return HalfMode(Precision.FP16, "f32", True,
                    "the CPU has neither bf16 nor fp16 arithmetic (OpenVINO capabilities "
                    f"{', '.join(sorted(caps)) or 'none'}): fp16-compressed weights, float32 inference")


def compress_weights_fp16(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> int:
    """Write ``src`` with the float32 weight initializers of :data:`WEIGHT_OPS` stored as
    float16 behind a ``Cast`` to float32; returns how many were compressed."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from defectnet.calibration.prepare import set_metadata
    from defectnet.io import atomic_write_bytes

    model = onnx.load(str(src))
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    weights = {n.input[1] for n in g.node if n.op_type in WEIGHT_OPS and len(n.input) > 1
               and n.input[1] in inits and inits[n.input[1]].data_type == TensorProto.FLOAT}
    casts = []
    for name in sorted(weights):
        init = inits[name]
        half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), f"{name}__fp16")
        g.initializer.remove(init)
        g.initializer.append(half)
        casts.append(helper.make_node("Cast", [half.name], [name], name=f"/fp16_weights/{name}",
                                      to=TensorProto.FLOAT))
    nodes = [*casts, *g.node]
    del g.node[:]
    g.node.extend(nodes)
    set_metadata(model, {"precision": "fp16", "fp16_weights": str(len(casts))})
    onnx.checker.check_model(model)
    atomic_write_bytes(Path(dst), model.SerializeToString())
    return len(casts)


__all__ = ["HalfMode", "WEIGHT_OPS", "compress_weights_fp16", "half_mode"]
