"""Fakes for the bench tests (a uniquely named module: test files import it, not conftest)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from defectnet.bench.resample import CurvePoint
from defectnet.bench.results import BenchResult, CaseResult
from defectnet.bench.runner import LoadedCase
from defectnet.bench.scenario import Case, ModelRow
from defectnet.evaluation.evaluate import EvalResult
from defectnet.structures import Detections, ImageBatch


class FakeClock:
    """Seconds that move only when a fake advances them; every read is logged in ``events``."""

    def __init__(self, events: list[str] | None = None) -> None:
        self.t = 0.0
        self.events = events if events is not None else []

    def __call__(self) -> float:
        self.events.append("clock")
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def marker_reader(truth_by_path: dict[Path, bool], clock: FakeClock, decode_s: float = 0.003):
    """A ``read_image`` stand-in: 8x8 image, all 255 for a defective image, 0 for a normal one."""
    def read(path: Path) -> Tensor:
        clock.advance(decode_s)
        value = 255 if truth_by_path[Path(path)] else 0
        return torch.full((3, 8, 8), value, dtype=torch.uint8)
    return read


class FakePipeline:
    """Model part: ``normal_s`` / ``defective_s`` per image (by the marker pixel), ``warm_s``
    for the first ``warm_calls`` calls, plus ``offsets[r]`` per image in timed batch-1 pass r
    (``n`` images per pass). Defective images get one detection (score 0.9)."""

    kind = "defectnet"
    gate_threshold = 0.5

    def __init__(self, clock: FakeClock, *, normal_s: float = 0.010, defective_s: float = 0.030,
                 warm_calls: int = 0, warm_s: float = 1.0, preprocess_s: float = 0.002, n: int = 1,
                 offsets: list[float] | None = None, name: str = "fake", order: list[str] | None = None) -> None:
        self.clock, self.normal_s, self.defective_s = clock, normal_s, defective_s
        self.warm_calls, self.warm_s, self.preprocess_s, self.n = warm_calls, warm_s, preprocess_s, n
        self.offsets = offsets or []
        self.calls = 0
        self.name, self.order = name, order

    def preprocessor(self, images: list[Tensor]) -> ImageBatch:
        self.clock.advance(self.preprocess_s)
        sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        return ImageBatch(torch.stack(images), sizes, [(1.0, 1.0)] * len(images), sizes)

    def inference(self, images: Tensor, image_sizes: list[tuple[int, int]]) -> list[Detections]:
        self.clock.events.append("call")
        if self.order is not None:
            self.order.append(self.name)
        out = []
        for i in range(int(images.shape[0])):
            self.calls += 1
            defective = bool(images[i, 0, 0, 0] == 255)
            if self.calls <= self.warm_calls:
                self.clock.advance(self.warm_s)
            else:
                rep = (self.calls - self.warm_calls - 1) // self.n
                extra = self.offsets[rep] if rep < len(self.offsets) else 0.0
                self.clock.advance((self.defective_s if defective else self.normal_s) + extra)
            if defective:
                out.append(Detections(torch.tensor([[1.0, 1.0, 4.0, 4.0]]), torch.tensor([0.9]),
                                      torch.tensor([1]), p_defective=0.9, ran_detector=True))
            else:
                out.append(Detections.empty(p_defective=0.1, ran_detector=False))
        return out


def fake_case(name: str = "defectnet_const", kind: str = "defectnet", label: str = "torch fp32") -> Case:
    backend, precision = label.split(" ")[:2]
    return Case(ModelRow(name, "const", kind), backend, precision, None, label)


def loaded(pipeline: Any, case: Case, label_map: dict[int, int], sync: Any = lambda: None) -> LoadedCase:
    return LoadedCase(case, pipeline, None, sync, label_map, f"{case.row.name} remark", case.row.kind != "one-model",
                      "cpu")


# ----------------------------------------------------------------------------- a hand-made result
def _metrics(model: str, att: float, att_n: float, att_d: float, *, gate: bool, remark: str) -> EvalResult:
    return EvalResult(
        model=model, mAP=0.2, AP50=0.4, per_class_AP={"hole": 0.2}, per_class_AP50={"hole": 0.4}, F1=0.9,
        f1_normal=0.88, f1_defective=0.92, gate_recall=0.95 if gate else None, gate_precision=0.8 if gate else None,
        att_ms=att, att_normal_ms=att_n, att_defective_ms=att_d, att_ideal_ms=att - 1.0, att_one_ms=60.0,
        att_one_source="given", att_p50_ms=att - 0.5, att_p99_ms=att + 5.0, alpha=0.5, beta=att_n / att_d,
        num_images=10, num_normal=5, num_defective=5, num_detector_runs=6 if gate else 10, num_detections=12,
        confusion={"tp": 5, "fp": 1, "fn": 0, "tn": 4}, has_gate=gate, warmup=3, score_threshold=0.05,
        gate_threshold=None, device="cpu", remark=remark)


def _case(row: str, backend: str, precision: str, att: float, att_n: float, att_d: float, speedup: float,
          *, gate: bool) -> CaseResult:
    stages = {"decode": 1.0, "preprocess": 2.0, "classifier": 0.0, "gate": att / 2, "select": 0.1,
              "detector": att / 2 - 0.6, "other": 0.5, "postprocess": 0.25}
    return CaseResult(
        row=row, backend=backend, precision=precision, label=f"{backend} {precision}",
        kind="defectnet" if gate else "one-model", engine_dir=None if backend == "torch" else f"runs/{row}/engine",
        run_dir=f"runs/{row}", metrics=_metrics(row, att, att_n, att_d, gate=gate, remark=f"{row}+cascade"),
        e2e_ms=att + 3.25, e2e_p50_ms=att + 3.0, e2e_p99_ms=att + 9.0, throughput_b1=1000 / (att + 3.25),
        throughput_batch=1500 / (att + 3.25), att_batch_ms=att * 0.8, batch=4, stages_ms=stages,
        att_reps_ms=[att, att + 1, att - 1], speedup_att=speedup, speedup_e2e=speedup * 0.9, load_s=0.5,
        per_image={"model_ms": [att_n] * 5 + [att_d] * 5, "defective": [False] * 5 + [True] * 5},
        curve=[CurvePoint(s, att_d + s * (att_n - att_d), att_n if s > 0 else None, att_d if s < 1 else None, 0.9)
               for s in (0.0, 0.5, 0.99)])


def hand_result() -> BenchResult:
    """Three cases, one skip, fixed numbers (the writers' golden strings are computed from these)."""
    cases = [_case("one-model", "torch", "fp32", 60.0, 60.0, 60.0, 1.0, gate=False),
             _case("defectnet_const", "torch", "fp32", 40.0, 20.0, 60.0, 1.5, gate=True),
             _case("defectnet_const", "onnxruntime", "int8", 20.0, 10.0, 30.0, 3.0, gate=True)]
    return BenchResult(
        cases, [{"row": "(all rows)", "backend": "tensorrt", "precision": "-", "reason": "no GPU"}],
        {"data": "data", "split": "test", "how": "whole split, file order", "normal_share": 0.5, "num_images": 10,
         "num_normal": 5, "num_defective": 5, "with_replacement": []},
        {"repeat": 3, "warmup": 3, "batch": 4, "threads": 1, "device": "cpu"},
        {"cpu": "Test CPU", "usable_cores": 2, "gpus": []},
        {"torch": "2.14.1", "onnxruntime": "1.32.0", "tensorrt": None},
        baseline="one-model | torch fp32", command="defectnet-bench --data data", created="2026-01-01T00:00:00+00:00")


def hand_result_gated() -> BenchResult:
    """PyTorch one-model plus a const model with gate-off twins on torch fp32, onnxruntime
    fp32 and int8 (ATT gate off / on: 64/40, 48/30, 24/16 ms), linked as the bench links them."""
    from defectnet.bench.results import link_gate_off

    def gated(backend: str, precision: str, att: float, off: bool) -> CaseResult:
        c = _case("defectnet_const (gate off)" if off else "defectnet_const", backend, precision, att, att * 0.5,
                  att * 1.5, 60.0 / att, gate=True)
        c.gate_off, c.model_row = off, "defectnet_const"
        c.normal_skipped = 0.0 if off else 0.6
        c.metrics.effective_gate_threshold = 0.0 if off else 0.25
        return c

    one = _case("one-model", "torch", "fp32", 60.0, 60.0, 60.0, 1.0, gate=False)
    one.model_row = "one-model"
    cases = [one]
    for backend, precision, off_att, on_att in (("torch", "fp32", 64.0, 40.0), ("onnxruntime", "fp32", 48.0, 30.0),
                                                 ("onnxruntime", "int8", 24.0, 16.0)):
        cases += [gated(backend, precision, off_att, True), gated(backend, precision, on_att, False)]
    link_gate_off(cases, one)
    return BenchResult(cases, [], {"data": "data", "split": "test", "how": "whole split, file order",
                                   "normal_share": 0.5, "num_images": 10, "num_normal": 5, "num_defective": 5},
                       {"repeat": 3, "warmup": 3, "batch": 4, "threads": 1, "device": "cpu"},
                       {"cpu": "Test CPU", "usable_cores": 2, "gpus": []}, {"torch": "2.14.1"},
                       baseline="one-model | torch fp32", command="defectnet-bench --data data")
