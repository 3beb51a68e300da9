"""Run a model over a data set at batch size 1 and compute the seed's metrics.

:func:`evaluate` decodes and preprocesses each image outside the timed region, then times
``model.inference`` between device synchronisations (host-to-device copy of the padded
uint8 tensor and the copy of the detections back to the host included), then computes
mAP/AP50 (:mod:`.coco_map`), image-level macro F1 and gate recall/precision (:mod:`.f1`) and
ATT figures (:mod:`.timing`). :func:`evaluate_run` does the same for a run folder.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol, cast

import torch
from tqdm import tqdm

from defectnet.errors import ConfigError, DataError
from defectnet.evaluation.coco_map import coco_map, detections_to_coco
from defectnet.evaluation.f1 import SCORE_THRESHOLD, gate_metrics, image_f1, predicted_defective
from defectnet.evaluation.records import gate_ranking, group_detections, round_p
from defectnet.evaluation.timing import Clock, LatencyTimer, device_sync, summarize_times, thread_counts
from defectnet.structures import Detections, ImageBatch


class InferenceModel(Protocol):
    """What :func:`evaluate` needs: DefectNet and TwoModel both qualify."""

    def inference(self, images: torch.Tensor, image_sizes: list[tuple[int, int]],
                  gate_threshold: float | None = None) -> list[Detections]: ...


@dataclass
class EvalResult:
    """One evaluated model (a row of the table). Times in ms; None where undefined.

    mAP / AP50: COCO AP@[.5:.95] / AP@.5 over defect categories; per_class_AP(50): name ->
    AP (None for a category without ground truth). F1: macro image-level F1. gate_recall /
    gate_precision: of the gate's "run the detector" decisions (None for a model without
    gate). att_*: see :mod:`defectnet.evaluation.timing`. gate_roc_auc /
    gate_average_precision: of P(defective) against the ground truth, from the per-image
    records (:mod:`defectnet.evaluation.ranking`; None without a gate).
    effective_gate_threshold: the P(defective) threshold the gate ran at (``gate_threshold``
    is the override given; None there = the model's own). scale: the test scale (long, short
    side) the images were resized to. threads: the thread counts the
    timing ran with (:func:`~defectnet.evaluation.timing.thread_counts`). per_image: the
    records every number above is computed from (:mod:`defectnet.evaluation.records`;
    ``detections`` is moved to the sidecar file named by ``detections_file`` when the result
    is written).
    """

    model: str
    mAP: float
    AP50: float
    per_class_AP: dict[str, float | None]
    per_class_AP50: dict[str, float | None]
    F1: float
    f1_normal: float | None
    f1_defective: float | None
    gate_recall: float | None
    gate_precision: float | None
    att_ms: float
    att_normal_ms: float | None
    att_defective_ms: float | None
    att_ideal_ms: float | None
    att_one_ms: float | None
    att_one_source: str | None
    att_p50_ms: float
    att_p99_ms: float
    alpha: float
    beta: float | None
    num_images: int
    num_normal: int
    num_defective: int
    num_detector_runs: int
    num_detections: int
    confusion: dict[str, int]
    has_gate: bool
    warmup: int
    score_threshold: float
    gate_threshold: float | None
    device: str
    remark: str = ""
    run_dir: str | None = None
    split: str | None = None
    notes: list[str] = field(default_factory=list)
    gate_roc_auc: float | None = None
    gate_average_precision: float | None = None
    effective_gate_threshold: float | None = None
    scale: list[int] | None = None
    threads: dict[str, Any] = field(default_factory=dict)
    per_image: dict[str, list[Any]] = field(default_factory=dict)
    detections_file: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: NaN becomes None."""
        def clean(v: Any) -> Any:
            if isinstance(v, float) and not math.isfinite(v):
                return None
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            if isinstance(v, list):
                return [clean(x) for x in v]
            return v
        return {k: clean(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EvalResult:
        return cls(**dict(d))


def _threshold_of(model: Any, override: float | None) -> float | None:
    """The gate threshold ``model`` runs at: the override, else its own (a Pipeline's or a
    TwoModel's ``gate_threshold``, a DefectNet's ``config.gate_threshold``)."""
    if override is not None:
        return float(override)
    for owner in (model, getattr(model, "config", None)):
        value = getattr(owner, "gate_threshold", None)
        if isinstance(value, (int, float)):
            return float(value)
    return None


def _run_model(model: InferenceModel, batch: ImageBatch, device: torch.device,
               gate_threshold: float | None) -> list[Detections]:
    images = batch.images.to(device).float()
    dets = model.inference(images, batch.image_sizes, gate_threshold=gate_threshold)
    return [d.to("cpu") for d in dets]


def warmup_indices(dataset: Any, k: int) -> list[int]:
    """``k`` image indices for the warm-up calls, alternating ground-truth defective and
    normal images from the start of the set, so both the gate exit and the detector path
    are warm before timing starts."""
    defective: list[int] = []
    normal: list[int] = []
    for i in range(len(dataset)):
        if len(defective) >= k and len(normal) >= k:
            break
        (defective if dataset.is_defective(i) else normal).append(i)
    mixed = [i for pair in zip(defective, normal) for i in pair]
    mixed += [i for i in defective + normal if i not in mixed]
    return mixed[:max(k, 0)]


def evaluate(model: InferenceModel, dataset: Any, *, name: str = "model", device: str | torch.device = "cpu",
             warmup: int = 3, att_one_ms: float | None = None, gate_threshold: float | None = None,
             score_threshold: float = SCORE_THRESHOLD, has_gate: bool = True,
             label_to_category_id: Mapping[int, int] | None = None, progress: bool = True,
             clock: Clock = time.perf_counter, collate: Callable[[list[Any]], tuple[ImageBatch, Any]] | None = None,
             remark: str = "") -> EvalResult:
    """Evaluate ``model`` (already on ``device``, eval mode) on ``dataset`` at batch size 1.

    dataset: a :class:`defectnet.data.coco.CocoDataset` (test mode) or anything with
    ``__len__``, ``__getitem__ -> Sample``, ``is_defective(i)``, ``coco_gt()`` and
    ``label_to_category_id``. warmup: untimed model calls before timing, on images chosen by
    :func:`warmup_indices` (every image is then timed once). att_one_ms: the one-model's ATT for ATT_ideal.
    gate_threshold: override of the model's P(defective) threshold. has_gate: report gate
    recall/precision (False for the one-model). label_to_category_id: the model's label map
    (default: the data set's). clock: seconds (tests inject a fake).
    """
    if collate is None:
        from defectnet.data.coco import collate as coco_collate
        collate = coco_collate
    n = len(dataset)
    if n == 0:
        raise DataError("the evaluation data set is empty; check --data and --split")
    label_map = dict(label_to_category_id if label_to_category_id is not None else dataset.label_to_category_id)
    dev = torch.device(device)
    timer = LatencyTimer(device_sync(dev), clock, warmup=min(warmup, n))
    dets: list[Detections] = []
    image_ids: list[int] = []
    factors: list[tuple[float, float]] = []
    originals: list[tuple[int, int]] = []
    truth: list[bool] = []
    if hasattr(model, "eval"):
        model.eval()  # type: ignore[attr-defined]
    with torch.no_grad():
        for i in warmup_indices(dataset, warmup):
            batch, _ = collate([dataset[i]])
            timer(partial(_run_model, model, batch, dev, gate_threshold))
        for i in tqdm(range(n), desc=f"eval {name}", disable=not progress, dynamic_ncols=True, leave=False):
            sample = dataset[i]
            batch, _ = collate([sample])
            out, _dt = timer(partial(_run_model, model, batch, dev, gate_threshold))
            if len(out) != 1:
                raise DataError(f"model returned {len(out)} results for one image")
            dets.append(out[0])
            image_ids.append(int(sample.image_id))
            factors.append(tuple(sample.scale_factor))  # type: ignore[arg-type]
            originals.append(tuple(sample.original_size))  # type: ignore[arg-type]
            truth.append(bool(dataset.is_defective(i)))
    results = detections_to_coco(dets, image_ids, factors, originals, label_map)
    mres = coco_map(dataset.coco_gt(), results, category_ids=sorted(label_map.values()))
    predicted = [predicted_defective(d, score_threshold) for d in dets]
    f1 = image_f1(predicted, truth)
    gate = gate_metrics([d.ran_detector for d in dets], truth)
    p_rounded = [round_p(d.p_defective) for d in dets]
    ranking = gate_ranking(p_rounded, truth) if has_gate else None
    per_image: dict[str, list[Any]] = {
        "image_id": image_ids, "defective": truth, "p_defective": p_rounded,
        "ran_detector": [bool(d.ran_detector) for d in dets], "predicted_defective": predicted,
        "model_ms": [round(t * 1e3, 4) for t in timer.times],
        "detections": group_detections(results, image_ids)}
    timing = summarize_times(timer.times, truth, att_one_ms)
    notes: list[str] = []
    if timing.att_one_source == "own_att_defective":
        notes.append("att_ideal_ms uses this model's own ATT_defective as the full-path time (no one-model "
                     "ATT was given)")

    def nan_none(d: dict[str, float]) -> dict[str, float | None]:
        return {k: (v if math.isfinite(v) else None) for k, v in d.items()}

    return EvalResult(
        model=name, mAP=mres.mAP, AP50=mres.AP50, per_class_AP=nan_none(mres.per_class_AP),
        per_class_AP50=nan_none(mres.per_class_AP50), F1=f1.macro_f1, f1_normal=f1.f1_normal,
        f1_defective=f1.f1_defective, gate_recall=gate.recall if has_gate else None,
        gate_precision=gate.precision if has_gate else None, att_ms=timing.att_ms,
        att_normal_ms=timing.att_normal_ms, att_defective_ms=timing.att_defective_ms,
        att_ideal_ms=timing.att_ideal_ms, att_one_ms=timing.att_one_ms, att_one_source=timing.att_one_source,
        att_p50_ms=timing.p50_ms, att_p99_ms=timing.p99_ms, alpha=timing.alpha, beta=timing.beta,
        num_images=n, num_normal=timing.num_normal, num_defective=timing.num_defective,
        num_detector_runs=gate.passed, num_detections=mres.num_detections,
        confusion={"tp": f1.tp, "fp": f1.fp, "fn": f1.fn, "tn": f1.tn}, has_gate=has_gate,
        warmup=min(warmup, n), score_threshold=score_threshold, gate_threshold=gate_threshold,
        device=str(dev), remark=remark, notes=notes,
        gate_roc_auc=ranking.roc_auc if ranking else None,
        gate_average_precision=ranking.average_precision if ranking else None,
        threads=thread_counts(getattr(model, "backend", None)), per_image=per_image,
        scale=[int(x) for x in dataset.scale] if hasattr(dataset, "scale") else None,
        effective_gate_threshold=_threshold_of(model, gate_threshold) if has_gate else None)


def _schedule_tag(epochs: int) -> str:
    """mmdetection's schedule names: 12 epochs = ``1x``, 24 = ``2x``; otherwise ``{n}e``."""
    return f"{epochs // 12}x" if epochs % 12 == 0 else f"{epochs}e"


def remark_for(info: Any) -> str:
    """The seed's Remark column for a run, e.g. ``defectnet_const+cascade_rcnn_r50_fpn_1x``
    or ``r50_e52+cascade_rcnn_r50_fpn_1x`` for a two-model."""
    def short(tc: dict[str, Any]) -> str:
        return str(tc.get("backbone", "resnet50")).replace("resnet", "r")

    if info.kind == "two-model" and info.detector is not None:
        det = f"cascade_rcnn_{short(info.detector.train_config)}_fpn_{_schedule_tag(info.detector.epoch)}"
        return f"{short(info.train_config)}_e{info.epoch}+{det}"
    det = f"cascade_rcnn_{short(info.train_config)}_fpn_{_schedule_tag(info.epoch)}"
    return f"{info.name}+{det}" if info.name.startswith("defectnet") else det


def evaluate_run(run_dir: str | os.PathLike[str], data_dir: str | os.PathLike[str], *, split: str = "test",
                 device: str = "cpu", warmup: int = 3, att_one_ms: float | None = None,
                 gate_threshold: float | None = None, progress: bool = True,
                 model_io: Any = None, scale: tuple[int, int] | None = None) -> EvalResult:
    """Load a finished run (:func:`defectnet.train.checkpoint.load_run`) and evaluate it on
    ``data_dir``'s ``split`` at the run's train scale (the test scale of the recipe), or at
    ``scale`` (long, short) when given."""
    from defectnet.data.coco import load_split
    from defectnet.train.checkpoint import load_run

    model, info = load_run(run_dir, device, model_io=model_io)
    if info.kind == "classifier":
        raise ConfigError(f"{run_dir} is the classifier stage of a two-model run; evaluate the two-model run "
                          f"folder ({Path(run_dir).parent}) instead")
    tc = info.detector.train_config if info.detector is not None else info.train_config
    dataset = load_split(Path(data_dir), split, scale=scale or tuple(tc.get("scale", (1333, 800))), train=False,
                         background_category_ids=tuple(tc.get("background_category_ids", (0,))))
    if dict(dataset.label_to_category_id) != dict(info.label_to_category_id):
        raise DataError(f"{run_dir} was trained on categories {info.class_names} (label -> id "
                        f"{info.label_to_category_id}) but {data_dir} has {list(dataset.class_names)} "
                        f"({dataset.label_to_category_id}); evaluate on the data set it was trained on")
    result = evaluate(cast(InferenceModel, model), dataset, name=info.name, device=device, warmup=warmup, att_one_ms=att_one_ms,
                      gate_threshold=gate_threshold, has_gate=info.has_gate,
                      label_to_category_id=info.label_to_category_id, progress=progress, remark=remark_for(info))
    result.run_dir = str(Path(run_dir))
    result.split = split
    return result


def evaluate_runs(run_dirs: Sequence[str | os.PathLike[str]], data_dir: str | os.PathLike[str], *,
                  split: str = "test", device: str = "cpu", warmup: int = 3, att_one_ms: float | None = None,
                  gate_threshold: float | None = None, progress: bool = True,
                  log: Callable[[str], None] = lambda _: None, scale: tuple[int, int] | None = None
                  ) -> list[EvalResult]:
    """Evaluate several runs side by side, in the order given.

    One-model runs are evaluated first: the first one's ATT becomes ATT_one of every other
    row's ATT_ideal (unless ``att_one_ms`` is given), as the seed's table compares against it.
    """
    from defectnet.train.checkpoint import read_run_json

    if warmup < 0:
        raise ConfigError(f"warmup must be >= 0, got {warmup}")
    variants = [read_run_json(r).get("variant") for r in run_dirs]
    order = sorted(range(len(run_dirs)), key=lambda i: variants[i] != "one-model")
    results: dict[int, EvalResult] = {}
    att_one, att_one_from = att_one_ms, ("given" if att_one_ms is not None else None)
    for i in order:
        r = evaluate_run(run_dirs[i], data_dir, split=split, device=device, warmup=warmup, att_one_ms=att_one,
                         gate_threshold=gate_threshold, progress=progress, scale=scale)
        if att_one is None and variants[i] == "one-model":
            att_one, att_one_from = r.att_ms, str(run_dirs[i])
        if att_one_from is not None and r.att_one_source == "given":
            r.notes.append(f"att_one_ms from {att_one_from}")
        results[i] = r
        log(f"evaluated {run_dirs[i]}")
    return [results[i] for i in range(len(run_dirs))]


def evaluate_engine(engine_dir: str | os.PathLike[str], data_dir: str | os.PathLike[str], *,
                    backend: str = "auto", split: str = "test", warmup: int = 3,
                    att_one_ms: float | None = None, gate_threshold: float | None = None,
                    progress: bool = True, scale: tuple[int, int] | None = None, threads: int = 0) -> EvalResult:
    """Evaluate an exported engine folder through :class:`defectnet.runtime.Pipeline` on
    ``backend`` with exactly the metrics of :func:`evaluate` (batch 1, model part timed), at the
    engine's preprocessing scale or at ``scale`` (the graphs take any size). threads: the
    backend's intra-op threads (0 = the library's default; for the torch backend it must equal
    the process's torch thread count)."""
    from defectnet.data.coco import load_split
    from defectnet.runtime import Pipeline, load_engine
    from defectnet.runtime.backends import BackendOptions
    from defectnet.runtime.types import EngineKind

    engine = load_engine(engine_dir)
    pipeline = Pipeline.from_engine(engine, backend, backend_options=BackendOptions(threads=threads))
    dataset = load_split(Path(data_dir), split, scale=scale or engine.preprocessor.scale, train=False)
    if tuple(dataset.class_names) != tuple(engine.class_names):
        raise DataError(f"engine {engine_dir} detects {list(engine.class_names)} but {data_dir} has "
                        f"{list(dataset.class_names)}; evaluate on the data set the model was trained on")
    from defectnet.train.config import Variant

    variant = engine.manifest.variant
    name = Variant(variant).table_name if variant in set(Variant) else engine.kind
    runs_on = pipeline.backend.label  # what --backend auto resolved to
    result = evaluate(pipeline, dataset, name=f"{name} [{runs_on}]", warmup=warmup, att_one_ms=att_one_ms,
                      gate_threshold=gate_threshold, has_gate=engine.kind != EngineKind.ONE_MODEL, progress=progress,
                      remark=f"engine {Path(engine_dir).name}, {runs_on}")
    result.run_dir = str(Path(engine_dir))
    result.split = split
    return result
