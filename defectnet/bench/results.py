"""From raw measurements to the benchmark's numbers.

Per case (row x backend):

* accuracy once, from the first repetition's detections, with the evaluation package's own
  functions (:func:`~defectnet.evaluation.coco_map.coco_map`,
  :func:`~defectnet.evaluation.f1.image_f1`, :func:`~defectnet.evaluation.f1.gate_metrics`),
  packed into an :class:`~defectnet.evaluation.evaluate.EvalResult` so the seed-layout table
  of :mod:`defectnet.evaluation.report` prints it;
* ATT, ATT_normal, ATT_defective: the **median over repetitions** of each repetition's mean
  per-image model time (batch 1), split by ground truth
  (:func:`~defectnet.evaluation.timing.summarize_times` per repetition);
* ATT_ideal = ATT_one * (1 - alpha (1 - beta)) with ATT_one the one-model row measured on the
  *same backend and precision* in this run (else the case's own ATT_defective, noted);
* p50 / p99: percentiles of all timed per-image model (and end-to-end) times, all repetitions;
* end-to-end ms per image (decode + preprocess + model + box mapping) and throughput in
  images/s at batch 1 and at ``--batch`` (images / wall time of a pass, median over
  repetitions);
* speed-ups: ATT (and end-to-end time) of the PyTorch one-model row divided by the case's,
  both from this run; and for a gated case, ``speedup_gate``: the ATT of its gate-off twin
  (:mod:`defectnet.bench.gating`, same graphs, detector on every image) divided by its own;
* per-image records (``per_image``; see :mod:`defectnet.evaluation.records`): ground truth,
  P(defective), ran_detector, predicted_defective, the model-part time and the backend
  stages' times per image (medians over repetitions), and the detections (written to the
  ``detections.json`` sidecar), so every accuracy number recomputes from the files and the
  speed-recall curve (:func:`~defectnet.bench.resample.speed_recall_curve`) resamples them;
* the gate's ROC AUC / average precision from the per-image P, the share of normal images
  that skip the detector, and the thread counts each case ran with.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from defectnet.bench.gating import GATE_OFF_SUFFIX
from defectnet.bench.imageset import ImageSet
from defectnet.bench.resample import CurvePoint, normal_share_curve, speed_recall_curve
from defectnet.bench.runner import STAGES, RawCase
from defectnet.bench.scenario import TORCH
from defectnet.evaluation.coco_map import coco_map, detections_to_coco
from defectnet.evaluation.evaluate import EvalResult
from defectnet.evaluation.f1 import SCORE_THRESHOLD, gate_metrics, image_f1, predicted_defective
from defectnet.evaluation.records import gate_ranking, group_detections, round_p
from defectnet.evaluation.timing import att_ideal, percentile, summarize_times, thread_counts

SCHEMA = "defectnet-bench"
#: 2: per-image stage times and detections, gate-off cases, thread counts, operating points.
SCHEMA_VERSION = 2
#: Backend stages recorded per image (ms, median over repetitions) as ``<stage>_ms``.
PER_IMAGE_STAGES: tuple[str, ...] = ("classifier", "gate", "select", "detector")


@dataclass
class CaseResult:
    """One (row, backend, precision). metrics: the seed's numbers (ATT fields are medians
    over repetitions; att_p50/p99 are model-part percentiles). Times in ms; throughput in
    images/s; stages_ms: mean ms per image of each stage (median over repetitions).

    gate_off: this is the gate-off twin of ``model_row`` (the row name without the suffix).
    speedup_gate: gate-off ATT / this case's ATT (gated, gate-on cases; ``gate_off_key``
    names the twin). normal_skipped: share of ground-truth normal images that did not run
    the detector. threads: :func:`~defectnet.evaluation.timing.thread_counts` of the case.
    detections_file: the sidecar holding ``per_image["detections"]`` once written.
    operating_point: the validated threshold (``--target-recall``) this case ran at.
    speed_recall: the resampled speed-recall curve (gate-off cases; see
    :func:`~defectnet.bench.resample.speed_recall_curve`)."""

    row: str
    backend: str
    precision: str
    label: str
    kind: str
    engine_dir: str | None
    run_dir: str | None
    metrics: EvalResult
    e2e_ms: float
    e2e_p50_ms: float
    e2e_p99_ms: float
    throughput_b1: float
    throughput_batch: float | None
    att_batch_ms: float | None
    batch: int
    stages_ms: dict[str, float]
    att_reps_ms: list[float]
    speedup_att: float | None = None
    speedup_e2e: float | None = None
    load_s: float = 0.0
    per_image: dict[str, list[Any]] = field(default_factory=dict)
    curve: list[CurvePoint] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    gate_off: bool = False
    model_row: str = ""
    speedup_gate: float | None = None
    gate_off_key: str | None = None
    normal_skipped: float | None = None
    threads: dict[str, Any] = field(default_factory=dict)
    detections_file: str | None = None
    operating_point: dict[str, Any] | None = None
    speed_recall: list[dict[str, Any]] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.row} | {self.label}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["metrics"] = self.metrics.to_dict()
        d["curve"] = [asdict(p) for p in self.curve]
        return _clean(d)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CaseResult:
        data = dict(d)
        data["metrics"] = EvalResult.from_dict(data["metrics"])
        data["curve"] = [CurvePoint(**p) for p in data.get("curve", [])]
        return cls(**data)


@dataclass
class BenchResult:
    """Everything a benchmark run produced (``results.json``)."""

    cases: list[CaseResult]
    skipped: list[dict[str, str]]
    images: dict[str, Any]
    settings: dict[str, Any]
    machine: dict[str, Any] = field(default_factory=dict)
    libraries: dict[str, Any] = field(default_factory=dict)
    baseline: str | None = None
    command: str = ""
    created: str = ""
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return _clean({"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "created": self.created,
                       "command": self.command, "machine": self.machine, "libraries": self.libraries,
                       "settings": self.settings, "images": self.images, "baseline": self.baseline,
                       "notes": self.notes, "skipped": self.skipped, "cases": [c.to_dict() for c in self.cases]})

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BenchResult:
        return cls([CaseResult.from_dict(c) for c in d["cases"]], list(d.get("skipped", [])), dict(d["images"]),
                   dict(d["settings"]), dict(d.get("machine", {})), dict(d.get("libraries", {})), d.get("baseline"),
                   str(d.get("command", "")), str(d.get("created", "")), list(d.get("notes", [])))

    @property
    def labels(self) -> list[str]:
        """Column labels (backend + precision) in first-seen order."""
        return list(dict.fromkeys(c.label for c in self.cases))

    def gate_off_twin(self, case: CaseResult) -> CaseResult | None:
        """The gate-off twin :func:`link_gate_off` paired with a gate-on ``case`` (None when it has none)."""
        if case.gate_off_key is None:
            return None
        return next(c for c in self.cases if c.key == case.gate_off_key)


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def _median(xs: Sequence[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return statistics.median(vals) if vals else None


def _per_image_median(reps: Sequence[Sequence[float]]) -> list[float]:
    return [statistics.median(col) for col in zip(*reps)]


def _accuracy(raw: RawCase, images: ImageSet, coco_gt: Any) -> tuple[Any, Any, Any, list[bool]]:
    label_map = raw.loaded.label_to_category_id
    ids = [images.image_id(k) for k in range(len(images))]
    results = detections_to_coco(raw.detections, ids, raw.scale_factors, raw.original_sizes, label_map)
    mres = coco_map(coco_gt, results, category_ids=sorted(label_map.values()))
    predicted = [predicted_defective(d, SCORE_THRESHOLD) for d in raw.detections]
    truth = images.truth
    return mres, image_f1(predicted, truth), gate_metrics([d.ran_detector for d in raw.detections], truth), predicted


def _stage_per_image(raw: RawCase, n: int) -> dict[str, list[float]]:
    """``<stage>_ms`` per image (median over repetitions) of the backend stages."""
    if len(raw.stage_calls) != len(raw.model_s) or any(len(rep) != n for rep in raw.stage_calls):
        return {}
    return {f"{s}_ms": [round(v, 4) for v in _per_image_median([[c.get(s, 0.0) for c in rep]
                                                                 for rep in raw.stage_calls])]
            for s in PER_IMAGE_STAGES}


def _detections(raw: RawCase, images: ImageSet) -> list[list[list[float]]]:
    """Per-image detection records (original pixels, COCO category ids; the measured
    position's id ``k + 1``, as :meth:`ImageSet.coco_gt` numbers them)."""
    ids = [images.image_id(k) for k in range(len(images))]
    results = detections_to_coco(raw.detections, ids, raw.scale_factors, raw.original_sizes,
                                 raw.loaded.label_to_category_id)
    return group_detections(results, ids)


def _scale(pipeline: Any) -> list[int] | None:
    """The (long, short) scale the pipeline's preprocessor resizes to (None when unknown)."""
    scale = getattr(getattr(pipeline, "preprocessor", None), "scale", None)
    return [int(x) for x in scale] if isinstance(scale, (tuple, list)) else None


def _model_row(name: str, gate_off: bool) -> str:
    return name[:-len(GATE_OFF_SUFFIX)] if gate_off and name.endswith(GATE_OFF_SUFFIX) else name


def summarise_case(raw: RawCase, images: ImageSet, *, att_one_ms: float | None, att_one_from: str | None,
                   batch: int, warmup: int, coco_gt: Any = None) -> CaseResult:
    """The :class:`CaseResult` of one measured case (see the module docstring)."""
    lc, case = raw.loaded, raw.loaded.case
    truth = images.truth
    n = len(images)
    per_rep = [summarize_times(t, truth) for t in raw.model_s]
    att = statistics.median(s.att_ms for s in per_rep)
    att_n = _median([s.att_normal_ms for s in per_rep])
    att_d = _median([s.att_defective_ms for s in per_rep])
    alpha = per_rep[0].alpha
    beta = att_n / att_d if att_n is not None and att_d else None
    notes: list[str] = []
    one, source = att_one_ms, ("given" if att_one_ms is not None else None)
    if one is None and att_d is not None:
        one, source = att_d, "own_att_defective"
        notes.append("att_ideal_ms uses this case's own ATT_defective as the full-path time (no one-model row "
                     f"measured on {case.label})")
    elif att_one_from:
        notes.append(f"att_one_ms from {att_one_from}")
    ideal = None if one is None else one if alpha == 0 else att_ideal(one, alpha, beta) if beta is not None else None
    all_model_ms = [t * 1e3 for rep in raw.model_s for t in rep]
    all_e2e_ms = [t * 1e3 for rep in raw.e2e_s for t in rep]
    mres, f1, gate, predicted = _accuracy(raw, images, coco_gt if coco_gt is not None else images.coco_gt())
    p_rounded = [round_p(d.p_defective) for d in raw.detections]
    ranking = gate_ranking(p_rounded, truth) if lc.has_gate else None
    ran = [bool(d.ran_detector) for d in raw.detections]
    normal_ran = [r for r, t in zip(ran, truth) if not t]
    if raw.unstable_repetitions:
        notes.append(f"detections of repetition(s) {raw.unstable_repetitions} differ from repetition 1 "
                     "(nondeterministic backend); accuracy is from repetition 1")

    def nan_none(d: dict[str, float]) -> dict[str, float | None]:
        return {k: (v if math.isfinite(v) else None) for k, v in d.items()}

    metrics = EvalResult(
        model=case.row.name, mAP=mres.mAP, AP50=mres.AP50, per_class_AP=nan_none(mres.per_class_AP),
        per_class_AP50=nan_none(mres.per_class_AP50), F1=f1.macro_f1, f1_normal=f1.f1_normal,
        f1_defective=f1.f1_defective, gate_recall=gate.recall if lc.has_gate else None,
        gate_precision=gate.precision if lc.has_gate else None, att_ms=att, att_normal_ms=att_n,
        att_defective_ms=att_d, att_ideal_ms=ideal, att_one_ms=one, att_one_source=source,
        att_p50_ms=percentile(all_model_ms, 50) or 0.0, att_p99_ms=percentile(all_model_ms, 99) or 0.0,
        alpha=alpha, beta=beta, num_images=n, num_normal=per_rep[0].num_normal,
        num_defective=per_rep[0].num_defective, num_detector_runs=gate.passed, num_detections=mres.num_detections,
        confusion={"tp": f1.tp, "fp": f1.fp, "fn": f1.fn, "tn": f1.tn}, has_gate=lc.has_gate, warmup=warmup,
        score_threshold=SCORE_THRESHOLD, gate_threshold=lc.pipeline.gate_threshold if lc.has_gate else None,
        device=lc.device, remark=lc.remark,
        run_dir=str(case.row.run_dir) if case.row.run_dir else None, split=images.selection.get("split"),
        gate_roc_auc=ranking.roc_auc if ranking else None,
        gate_average_precision=ranking.average_precision if ranking else None,
        effective_gate_threshold=float(lc.pipeline.gate_threshold) if lc.has_gate else None,
        scale=_scale(lc.pipeline), threads=thread_counts(lc.stages))
    e2e_rep = [statistics.fmean(rep) * 1e3 for rep in raw.e2e_s]
    model_med = [t * 1e3 for t in _per_image_median(raw.model_s)]
    stages = {s: statistics.median(rep.get(s, 0.0) for rep in raw.stage_ms) for s in STAGES}
    return CaseResult(
        row=case.row.name, backend=case.backend, precision=case.precision, label=case.label,
        kind=str(getattr(lc.pipeline, "kind", case.row.kind)),
        engine_dir=str(case.engine.path) if case.engine is not None else None,
        run_dir=str(case.row.run_dir) if case.row.run_dir else None, metrics=metrics,
        e2e_ms=statistics.median(e2e_rep), e2e_p50_ms=percentile(all_e2e_ms, 50) or 0.0,
        e2e_p99_ms=percentile(all_e2e_ms, 99) or 0.0,
        throughput_b1=statistics.median(n / sum(rep) for rep in raw.e2e_s),
        throughput_batch=statistics.median(n / t for t in raw.batch_e2e_s) if raw.batch_e2e_s else None,
        att_batch_ms=statistics.median(t * 1e3 / n for t in raw.batch_model_s) if raw.batch_model_s else None,
        batch=batch, stages_ms=stages, att_reps_ms=[s.att_ms for s in per_rep], load_s=lc.load_s,
        per_image={"image_id": [images.source_image_id(k) for k in range(n)], "defective": truth,
                   "model_ms": model_med, "e2e_ms": [t * 1e3 for t in _per_image_median(raw.e2e_s)],
                   "predicted_defective": predicted, "ran_detector": ran, "p_defective": p_rounded,
                   **_stage_per_image(raw, n), "detections": _detections(raw, images)},
        curve=normal_share_curve(model_med, truth, predicted), notes=notes,
        gate_off=lc.gate_off, model_row=_model_row(case.row.name, lc.gate_off),
        normal_skipped=1.0 - sum(normal_ran) / len(normal_ran) if normal_ran else None,
        threads=thread_counts(lc.stages))


def summarise(raws: Sequence[RawCase], images: ImageSet, *, batch: int, warmup: int) -> tuple[list[CaseResult],
                                                                                          str | None]:
    """All cases' results, with ATT_one per backend label and speed-ups against the PyTorch
    one-model row. Returns (results in the order of ``raws``, the baseline's key or None)."""
    gt = images.coco_gt()
    done: dict[int, CaseResult] = {}
    one_by_label: dict[str, CaseResult] = {}
    order = sorted(range(len(raws)), key=lambda i: not raws[i].loaded.case.row.is_one_model)
    for i in order:
        raw = raws[i]
        label = raw.loaded.case.label
        one = one_by_label.get(label)
        if raw.loaded.case.row.is_one_model and one is None:
            one_att = statistics.median(summarize_times(t, images.truth).att_ms for t in raw.model_s)
            res = summarise_case(raw, images, att_one_ms=one_att, att_one_from="its own ATT (the one-model row)",
                                 batch=batch, warmup=warmup, coco_gt=gt)
            one_by_label[label] = res
        else:
            res = summarise_case(raw, images, att_one_ms=one.metrics.att_ms if one else None,
                                 att_one_from=one.key if one else None, batch=batch, warmup=warmup, coco_gt=gt)
        done[i] = res
    results = [done[i] for i in range(len(raws))]
    base = next((r for r, raw in zip(results, raws) if raw.loaded.case.row.is_one_model and r.backend == TORCH),
                None)
    if base is not None:
        for r in results:
            r.speedup_att = base.metrics.att_ms / r.metrics.att_ms if r.metrics.att_ms > 0 else None
            r.speedup_e2e = base.e2e_ms / r.e2e_ms if r.e2e_ms > 0 else None
    link_gate_off(results, base)
    return results, base.key if base is not None else None


def skipped_ms(case: CaseResult) -> list[float] | None:
    """Per image, what a gate-off case's image costs when the gate sends it out: its model
    time minus the stages only passed images run (None without per-image stage times)."""
    pi = case.per_image
    if "detector_ms" not in pi:
        return None
    passed_only = ("gate", "detector") if case.kind == "two-model" else ("select", "detector")
    return [max(t - sum(pi[f"{s}_ms"][k] for s in passed_only), 0.0) for k, t in enumerate(pi["model_ms"])]


def link_gate_off(results: Sequence[CaseResult], base: CaseResult | None) -> None:
    """Pair every gated case with its gate-off twin: ``speedup_gate`` and ``gate_off_key``
    on the gate-on case, the speed-recall curve on the twin (speed-up against the PyTorch
    one-model ``base``, else against the twin's own gate-off ATT), and a note on the gate-on
    case comparing its measured ATT with the curve's resampled ATT at its threshold."""
    twins = {(r.model_row, r.label): r for r in results if r.gate_off}
    for r in results:
        off = twins.get((r.model_row or r.row, r.label))
        if r.gate_off or off is None or not r.metrics.has_gate:
            continue
        r.gate_off_key = off.key
        r.speedup_gate = off.metrics.att_ms / r.metrics.att_ms if r.metrics.att_ms > 0 else None
        skipped = skipped_ms(off)
        if skipped is None:
            continue
        pi = off.per_image
        ref = statistics.fmean(base.per_image["model_ms"]) if base is not None else statistics.fmean(pi["model_ms"])
        curve = speed_recall_curve(pi["p_defective"], pi["defective"], pi["model_ms"], skipped,
                                   pi["predicted_defective"], reference_ms=ref)
        off.speed_recall = [asdict(pt) for pt in curve]
        off.notes.append("speed_recall: speed-up against "
                         + (f"{base.key} (mean of its per-image medians)" if base is not None else
                            "this gate-off case's own mean per-image time"))
        thr = r.metrics.effective_gate_threshold
        if thr is not None:
            ran = [p >= thr for p in pi["p_defective"]]
            resampled = statistics.fmean(f if x else s_ for f, s_, x in zip(pi["model_ms"], skipped, ran))
            measured = statistics.fmean(r.per_image["model_ms"])
            r.notes.append(f"speed-recall resampling check at threshold {thr:.6g}: {resampled:.1f} ms resampled "
                           f"from the gate-off records vs {measured:.1f} ms measured (mean of per-image medians, "
                           f"{100 * (resampled / measured - 1):+.1f} %)")
