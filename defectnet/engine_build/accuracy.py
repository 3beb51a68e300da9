"""The accuracy gate at the end of every engine build.

The built engine is evaluated on the TEST split (:func:`defectnet.evaluation.evaluate.evaluate_engine`,
batch 1, the seed's metrics) and compared with the float32 PyTorch model it was exported
from (the same function on the ``torch`` backend, which loads the checkpoint the manifest
names and checks its weights' SHA-256). When the checkpoint is not available the float32
exported graphs on onnxruntime are the reference (their parity with PyTorch was checked at
export) and the manifest says so. A drop past any tolerance fails the build.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from defectnet.errors import ConfigError, EngineError
from defectnet.runtime.types import BackendName

#: The metrics compared (EvalResult field -> label) and what the manifest keeps per side.
GATED = {"mAP": "mAP", "AP50": "AP50", "F1": "F1", "gate_recall": "gate recall"}
KEPT = ("mAP", "AP50", "F1", "gate_recall", "gate_precision", "num_detector_runs", "num_detections", "att_ms",
        "att_normal_ms", "att_defective_ms", "att_p50_ms", "att_p99_ms", "num_images", "device")


@dataclass(frozen=True)
class Tolerances:
    """Largest allowed drop (reference - engine) per metric, absolute."""

    max_map_drop: float = 0.01
    max_ap50_drop: float = 0.01
    max_f1_drop: float = 0.01
    max_recall_drop: float = 0.005

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not value == value or value > 1:  # NaN or nonsense
                raise ConfigError(f"--{name.replace('_', '-')} must be a drop in [0, 1], got {value}")

    def limit(self, metric: str) -> float:
        return {"mAP": self.max_map_drop, "AP50": self.max_ap50_drop, "F1": self.max_f1_drop,
                "gate_recall": self.max_recall_drop}[metric]


def summarize(result: Any) -> dict[str, Any]:
    d = result.to_dict()
    return {k: d.get(k) for k in KEPT}


def reference_result(source_engine: str | os.PathLike[str], data_dir: str | os.PathLike[str], *,
                     progress: bool = False) -> tuple[Any, str]:
    """(EvalResult, description) of the float32 reference (see the module docstring)."""
    from defectnet.evaluation.evaluate import evaluate_engine

    try:
        return (evaluate_engine(source_engine, data_dir, backend=BackendName.TORCH, progress=progress),
                "float32 PyTorch model the engine was exported from (torch backend)")
    except EngineError as e:
        result = evaluate_engine(source_engine, data_dir, backend=BackendName.ONNXRUNTIME, progress=progress)
        return result, (f"float32 exported graphs on onnxruntime (the PyTorch checkpoint is not available: {e}; "
                        "their parity with PyTorch was verified at export)")


def compare(reference: Any, candidate: Any, tolerances: Tolerances) -> dict[str, Any]:
    """The manifest's ``accuracy`` block: both sides, deltas, tolerances, pass/fail."""
    deltas: dict[str, float | None] = {}
    failures: list[str] = []
    lines: list[str] = []
    for metric, label in GATED.items():
        ref, got = getattr(reference, metric), getattr(candidate, metric)
        if ref is None or got is None:
            deltas[metric] = None
            continue
        drop = float(ref) - float(got)
        deltas[metric] = drop
        limit = tolerances.limit(metric)
        ok = drop <= limit + 1e-12
        lines.append(f"{label} {got:.4f} vs {ref:.4f} (drop {drop:+.4f}, limit {limit:.4f}{'' if ok else ' FAILED'})")
        if not ok:
            failures.append(metric)
    return {"split": reference.split, "num_images": candidate.num_images,
            "reference": summarize(reference), "engine": summarize(candidate), "drops": deltas,
            "tolerances": asdict(tolerances), "passed": not failures, "failed": failures, "summary": lines}


def gate_error(report: dict[str, Any], out: Path, precision: str, hint: str) -> EngineError:
    return EngineError(
        f"the {precision} engine fails the accuracy gate on the {report.get('split')} split "
        f"({report.get('num_images')} images) against the {report.get('reference_source', 'float32 model')}: "
        + "; ".join(report["summary"])
        + f". {out} has no manifest.json (the rejected one is manifest.rejected.json). {hint}")
