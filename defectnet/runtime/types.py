"""The names the engine folders, the runtime and the tools agree on, as string enums.

Every member *is* its string (``StrEnum``): ``BackendName.ONNXRUNTIME == "onnxruntime"``,
it serialises to JSON as the plain string and formats as it in messages, so engine folders
and result records written before these enums existed read and compare unchanged.
"""

from __future__ import annotations

from enum import StrEnum


class BackendName(StrEnum):
    """An inference backend: the engine's ONNX graphs on ONNX Runtime or OpenVINO, the
    PyTorch checkpoint the engine was exported from, or the folder's serialized TensorRT
    plans. ``auto`` runs every graph on the backend its manifest entry names (a per-graph
    engine from ``defectnet-build-engine --backend auto``, e.g. an ONNX Runtime gate with an
    OpenVINO detector; a folder without per-graph entries runs on its ``backend``, else ONNX
    Runtime)."""

    ONNXRUNTIME = "onnxruntime"
    TORCH = "torch"
    TENSORRT = "tensorrt"
    OPENVINO = "openvino"
    AUTO = "auto"


class Precision(StrEnum):
    """The numeric precision of an engine folder's graphs (a plain export is ``fp32``).

    ``fp16`` / ``bf16``: half precision (``--fp16``): TensorRT's FP16 graphs; on a CPU,
    OpenVINO's bf16 inference where the CPU has bf16, else fp16 weights. ``mixed``: the
    graphs of a per-graph engine differ (each graph's manifest entry names its own)."""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"
    BF16 = "bf16"
    MIXED = "mixed"


class EngineKind(StrEnum):
    """What an engine runs: DefectNet (gate head + detector), the one-model baseline (no
    gate: P = 1 for every image) or the two-model baseline (a separate classifier)."""

    DEFECTNET = "defectnet"
    ONE_MODEL = "one-model"
    TWO_MODEL = "two-model"


class Verdict(StrEnum):
    """An image's result: ``NG`` with at least one detection, else ``OK``; ``ERROR`` for an
    input that could not be inspected (an error record)."""

    OK = "OK"
    NG = "NG"
    ERROR = "ERROR"


def choices(enum: type[StrEnum]) -> list[str]:
    """The members' values as plain strings, in definition order (for ``click.Choice``,
    which would show an Enum member's *name*)."""
    return [m.value for m in enum]


__all__ = ["BackendName", "EngineKind", "Precision", "Verdict", "choices"]
