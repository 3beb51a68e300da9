"""RecordCounts: the one way batch defectnet-infer and the service client count the records
they wrote."""

from __future__ import annotations

from defectnet.runtime.inspection.batch import Summary
from defectnet.runtime.inspection.counts import RecordCounts
from defectnet.runtime.inspection.records import InspectionResult
from defectnet.runtime.types import Verdict
from defectnet.serve.client import ClientSummary


def test_every_written_record_is_counted_once() -> None:
    c = RecordCounts(inputs=6, skipped=1)
    c.count("OK", None, False)
    c.count("NG", None, True)
    c.count("NG", None, True)
    c.count("ERROR", "decode_failed", False)
    c.count("something else", None, True)  # not a verdict: an error, not a lost record
    assert (c.images, c.errors, c.records) == (3, 2, 5)
    assert c.errors_by_reason == {"decode_failed": 1, "None": 1}
    s = c.to_json()
    assert s["gate_pass_rate"] == 2 / 3 and s["ok"] == 1 and s["ng"] == 2
    assert c.headline() == ("inputs 6: 3 processed (1 OK, 2 NG), 2 errors (None 1, decode_failed 1), "
                            "1 already recorded (skipped)")
    assert c.unfinished_line() == []
    c.unfinished = 2
    assert c.unfinished_line()[0].startswith("interrupted: 2 inputs have no record yet")


def test_batch_and_client_summaries_agree_on_the_same_records() -> None:
    results = [InspectionResult("a", "a.png", 0, Verdict.OK, ran_detector=False, batch_size=1),
               InspectionResult("b", "b.png", 1, Verdict.NG, ran_detector=True, batch_size=1),
               InspectionResult("c", "c.png", 2, Verdict.ERROR, reason="not_found", message="missing")]
    batch = Summary(inputs=3)
    client = ClientSummary(inputs=3)
    for r in results:
        batch.add(r)
        client.add(r.to_json())  # the record the service sends back
    shared = RecordCounts(inputs=3).to_json().keys()
    assert {k: client.to_json()[k] for k in shared} == {k: batch.to_json()[k] for k in shared}
    assert batch.to_json()["errors_by_reason"] == {"not_found": 1} and batch.to_json()["gate_pass_rate"] == 0.5
    assert client.text().splitlines()[0] == batch.text().splitlines()[0]
