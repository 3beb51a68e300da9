"""Gate on vs gate off, and each gated case's threshold at a recall validated off the test set.

* :func:`gate_off_twin`: every measured case of a gated model (DefectNet gate, two-model
  classifier) gets a **gate off** twin: the same loaded graphs (the same backend object, so
  no second session and no second set of weights) with the detector forced on every image.
  The :class:`~defectnet.runtime.Pipeline` runs the detector for ``P(defective) >=
  threshold``; at threshold 0 that holds for every image, on every backend, since P is a
  probability. The gate graph still runs (for a DefectNet it *is* the backbone the detector
  needs), so gate on vs gate off isolates what skipping the detector buys. Its row is named
  ``<row> (gate off)``.
* :func:`choose_thresholds`: ``defectnet-bench --target-recall R`` sets each gated case's
  threshold to the largest P(defective) that keeps a defective-image recall >= R on a
  **validation** image set (never the measured test images):
  :func:`~defectnet.engine_build.gate_calibration.threshold_for_recall` on P from the case's
  own gate graph (an INT8 gate gets the threshold of its own, quantized P).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from defectnet.bench.imageset import ImageSet
from defectnet.bench.runner import LoadedCase
from defectnet.bench.scenario import Case, ModelRow
from defectnet.data.image_io import read_image
from defectnet.errors import ConfigError

#: Appended to a gated row's name for its gate-off twin.
GATE_OFF_SUFFIX = " (gate off)"
#: The Pipeline threshold that forces the detector on: P(defective) >= 0 for every image.
GATE_OFF_THRESHOLD = 0.0


def gate_off_twin(lc: LoadedCase) -> LoadedCase:
    """The gate-off twin of a gated loaded case (see the module docstring)."""
    if not lc.has_gate:
        raise ConfigError(f"{lc.case.key} has no gate; only gated rows get a gate-off twin")
    row = lc.case.row
    twin_row = ModelRow(row.name + GATE_OFF_SUFFIX, row.variant, row.kind, row.run_dir, row.engines, [])
    case = Case(twin_row, lc.case.backend, lc.case.precision, lc.case.engine, lc.case.label)
    pipeline = copy.copy(lc.pipeline)
    pipeline.gate_threshold = GATE_OFF_THRESHOLD
    return dataclasses.replace(lc, case=case, pipeline=pipeline, remark=f"{lc.remark}, gate off", load_s=0.0,
                               gate_off=True)


def with_gate_off(loaded: Sequence[LoadedCase]) -> list[LoadedCase]:
    """``loaded`` with each gated case preceded by its gate-off twin (so tables show the
    gate-off row above the gate-on row); a case that already has its twin keeps it."""
    twins = {lc.case.key for lc in loaded if lc.gate_off}
    out: list[LoadedCase] = []
    for lc in loaded:
        twin_key = f"{lc.case.row.name}{GATE_OFF_SUFFIX} | {lc.case.label}"
        if lc.has_gate and not lc.gate_off and twin_key not in twins:
            out.append(gate_off_twin(lc))
        out.append(lc)
    return out


def validation_p(lc: LoadedCase, images: ImageSet, reader: Callable[[Path], torch.Tensor] = read_image
                 ) -> list[float]:
    """P(defective) of every image of ``images`` through ``lc``'s own gate (batch 1, gate
    only: the detector never runs)."""
    pipe = lc.pipeline
    out: list[float] = []
    with torch.no_grad():
        for k in range(len(images)):
            batch = pipe.preprocessor([reader(images.path(k))])
            (det,) = pipe.inference(batch.images, batch.image_sizes, gate_threshold=math.inf)
            out.append(float(det.p_defective))
    if lc.stages is not None:
        lc.stages.take()  # not part of any measurement
    return out


def choose_thresholds(loaded: Sequence[LoadedCase], val_images: ImageSet, target_recall: float, *,
                      reader: Callable[[Path], torch.Tensor] = read_image,
                      log: Callable[[str], None] = lambda _: None) -> dict[str, dict[str, Any]]:
    """Set every gated, gate-on case's threshold for ``target_recall`` on ``val_images``;
    returns ``case key -> operating point`` (threshold, validation recall, pass rates, the
    validation set). Raises ConfigError when the validation images hold no defective one."""
    from defectnet.engine_build.gate_calibration import threshold_for_recall

    if not any(val_images.truth):
        raise ConfigError("the validation images hold no defective image, so recall is undefined there; use "
                          "--val-split/--val-data with defective images")
    points: dict[str, dict[str, Any]] = {}
    for lc in loaded:
        if not lc.has_gate or lc.gate_off:
            continue
        p = validation_p(lc, val_images, reader)
        point = threshold_for_recall(p, val_images.truth, target_recall)
        lc.pipeline.gate_threshold = point.threshold
        points[lc.case.key] = {**point.to_json(), "validation": dict(val_images.selection)}
        log(f"{lc.case.key}: gate threshold {point.threshold:.6g} for recall >= {target_recall} on "
            f"{point.defective} defective validation images (recall {point.recall:.3f}, normal pass rate "
            f"{point.normal_pass_rate if point.normal_pass_rate is not None else float('nan'):.3f})")
    return points
