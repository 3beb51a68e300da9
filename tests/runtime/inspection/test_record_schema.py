"""docs/record.schema.json describes InspectionResult.to_json() exactly: every field, the
reason codes of the Reason enum, and nothing else."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from record_schema import check_record, schema

from defectnet.runtime.inspection.records import InspectionResult
from defectnet.runtime.inspection.validation import Reason
from defectnet.runtime.types import Verdict


def _full_verdict_record() -> InspectionResult:
    return InspectionResult(key="line3/0001.png", source="line3/0001.png", sequence=0, verdict=Verdict.NG, p_defective=0.93,
                            ran_detector=True, boxes=torch.tensor([[1.0, 2.0, 30.5, 40.25]]),
                            scores=torch.tensor([0.81]), labels=torch.tensor([2]), class_names=["stain"],
                            original_size=(250, 612), latency_ms=12.5, deadline_ms=200.0, batch_size=4,
                            timings_ms={"preprocess": 1.0, "gate": 5.0}, suppressed=1,
                            review_image="review/1_ng.png", annotated="annotated/0001.jpg")


def _error_record() -> InspectionResult:
    return InspectionResult(key=7, source="<ndarray 40x40 float64>", sequence=7, verdict=Verdict.ERROR,
                            reason=Reason.OUT_OF_RANGE.value, message="<ndarray>: float values span 2..2")


def test_reason_and_verdict_enums_are_the_strenums() -> None:
    assert schema()["$defs"]["reason"]["enum"] == [r.value for r in Reason]
    defs = schema()["$defs"]
    verdicts = [*defs["verdict_record"]["properties"]["verdict"]["enum"],
                defs["error_record"]["properties"]["verdict"]["const"]]
    assert sorted(verdicts) == sorted(v.value for v in Verdict)
    assert schema()["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_schema_lists_every_field_the_record_has() -> None:
    full, error = _full_verdict_record().to_json(), _error_record().to_json()
    check_record(full)
    check_record(error)
    defs = schema()["$defs"]
    assert set(full) == set(defs["verdict_record"]["properties"])
    assert set(error) == set(defs["error_record"]["properties"])
    plain = InspectionResult(key=None, source="x.png", sequence=0, verdict=Verdict.OK, p_defective=0.1,
                             original_size=(8, 8), batch_size=1).to_json()
    check_record(plain)  # the optional fields are optional
    assert set(defs["verdict_record"]["properties"]) - set(plain) == {"review_image", "annotated"}


@pytest.mark.parametrize("change", [
    {"error": "cannot decode"},                                      # the old batch-mode error shape
    {"error": {"reason": "no_such_reason", "message": "m"}},
    {"error": {"reason": "empty", "message": "m", "extra": 1}},
    {"verdict": "NG"},
    {"surprise": True},
])
def test_schema_rejects_other_error_shapes(change: dict[str, Any]) -> None:
    with pytest.raises(AssertionError, match="not valid"):
        check_record({**_error_record().to_json(), **change})


@pytest.mark.parametrize("change", [
    {"detections": []},                                              # NG needs a detection
    {"verdict": "OK"},                                               # OK has none
    {"p_defective": 1.5},
    {"original_size": [250]},
    {"error": {"reason": "empty", "message": "m"}},
])
def test_schema_rejects_broken_verdict_records(change: dict[str, Any]) -> None:
    with pytest.raises(AssertionError, match="not valid"):
        check_record({**_full_verdict_record().to_json(), **change})
