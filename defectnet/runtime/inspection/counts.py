"""What a run over a list of inputs wrote into its record file, counted one way for every
writer: batch ``defectnet-infer`` (:class:`~defectnet.runtime.inspection.batch.Summary`) and
the service client (:class:`~defectnet.serve.client.ClientSummary`) extend
:class:`RecordCounts` with their own timing."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from defectnet.runtime.types import Verdict


@dataclass
class RecordCounts:
    """inputs: all inputs of the run; skipped: already recorded in OUT before it; ok / ng: records
    with a verdict written now; detector_runs: of those, the images the gate passed to the
    detector; errors_by_reason: error records written now, by reason code; unfinished: inputs
    left without a record (an interrupted run)."""

    inputs: int = 0
    skipped: int = 0
    ok: int = 0
    ng: int = 0
    detector_runs: int = 0
    errors_by_reason: Counter[str] = field(default_factory=Counter)
    unfinished: int = 0

    @property
    def images(self) -> int:
        """Records with a verdict (OK or NG) written now."""
        return self.ok + self.ng

    @property
    def errors(self) -> int:
        return sum(self.errors_by_reason.values())

    @property
    def records(self) -> int:
        """Records written now."""
        return self.images + self.errors

    def count(self, verdict: str, reason: str | None, ran_detector: bool) -> None:
        """Count one record written now: an OK or NG verdict is an image; any other verdict is an
        error under ``reason`` (so no written record goes uncounted)."""
        if verdict == Verdict.OK or verdict == Verdict.NG:
            self.ok += verdict == Verdict.OK
            self.ng += verdict == Verdict.NG
            self.detector_runs += bool(ran_detector)
        else:
            self.errors_by_reason[str(reason)] += 1

    def to_json(self) -> dict[str, Any]:
        n = self.images
        return {"inputs": self.inputs, "skipped": self.skipped, "records": self.records, "images": n,
                "errors": self.errors, "errors_by_reason": dict(sorted(self.errors_by_reason.items())),
                "ok": self.ok, "ng": self.ng, "unfinished": self.unfinished,
                "gate_pass_rate": self.detector_runs / n if n else None}

    def headline(self) -> str:
        """``inputs N: I processed (O OK, G NG), E errors (reason n, ...), S already recorded (skipped)``."""
        by_reason = ", ".join(f"{reason} {n}" for reason, n in sorted(self.errors_by_reason.items()))
        return (f"inputs {self.inputs}: {self.images} processed ({self.ok} OK, {self.ng} NG), {self.errors} errors"
                + (f" ({by_reason})" if by_reason else "")
                + (f", {self.skipped} already recorded (skipped)" if self.skipped else ""))

    def unfinished_line(self) -> list[str]:
        """The line that says an interrupted run can be resumed, or none."""
        if not self.unfinished:
            return []
        return [f"interrupted: {self.unfinished} inputs have no record yet; run the same command again to resume"]


__all__ = ["RecordCounts"]
