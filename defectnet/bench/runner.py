"""Interleaved measurement of every case on the same images.

Protocol (one ``run_cases`` call):

1. every case is loaded (sessions built, weights read) and warmed up: ``warmup`` untimed
   batch-1 calls on images alternating ground-truth defective / normal
   (:func:`defectnet.evaluation.evaluate.warmup_indices`), then one untimed batch of
   ``batch`` images when batch throughput is measured;
2. for each repetition, the cases take turns (round-robin, the starting case rotating by
   one each repetition so no case always runs first); each turn times every image once at
   batch 1 in the fixed image order; then the cases take turns again for the batch-``batch``
   pass over the same images;
3. per image and batch: **decode** (file -> uint8 tensor), **preprocess** (keep-ratio
   resize + pad: the pipeline's :class:`~defectnet.data.transforms.Preprocessor`), the
   **model part** between device synchronisations (:class:`~defectnet.evaluation.timing.
   LatencyTimer`: host-to-device copy, gate/classifier, sub-batch selection, detector, copy
   of the detections to the host -- the seed's ATT), and **postprocess** (boxes to original
   pixels). End-to-end time = all four. The backend calls inside the model part are timed
   per stage by :class:`StageTimedBackend` (synchronised on a GPU), so the stacked bars can
   show gate vs detector vs the rest.

Detections are kept from the first repetition (accuracy is computed once per case); later
repetitions are compared with it and a difference is reported (a nondeterministic backend).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from defectnet.bench.imageset import ImageSet
from defectnet.bench.scenario import AUTO, ONNXRUNTIME, OPENVINO, TENSORRT, TORCH, Case
from defectnet.data.image_io import read_image
from defectnet.data.transforms import Preprocessor, boxes_to_original
from defectnet.errors import DataError
from defectnet.evaluation.evaluate import warmup_indices
from defectnet.evaluation.timing import Clock, LatencyTimer, Sync, device_sync
from defectnet.runtime.backends import Backend, RawDetections
from defectnet.runtime.types import EngineKind
from defectnet.structures import Detections, ImageBatch

#: Backend calls timed inside the model part, in pipeline order.
BACKEND_STAGES: tuple[str, ...] = ("classifier", "gate", "select", "detector")
#: Everything reported per image (ms): ``other`` = model part minus the backend stages
#: (pipeline bookkeeping, result formatting).
STAGES: tuple[str, ...] = ("decode", "preprocess", *BACKEND_STAGES, "other", "postprocess")


class StageTimedBackend(Backend):
    """Wraps a backend and adds the time of each call to ``ms[stage]`` (synchronised
    before and after with ``sync``). :meth:`take` returns and resets the sums."""

    name = "stage-timed"

    def __init__(self, inner: Backend, sync: Sync = lambda: None, clock: Clock = time.perf_counter) -> None:
        self.inner, self.sync, self.clock = inner, sync, clock
        self.ms: dict[str, float] = {}

    def take(self) -> dict[str, float]:
        out, self.ms = self.ms, {}
        return out

    def _timed(self, stage: str, fn: Callable[..., Any], *args: Any) -> Any:
        self.sync()
        t0 = self.clock()
        out = fn(*args)
        self.sync()
        self.ms[stage] = self.ms.get(stage, 0.0) + (self.clock() - t0) * 1e3
        return out

    def load(self) -> None:
        self.inner.load()

    def run_classifier(self, images: Tensor, image_sizes: Tensor) -> Tensor:
        out: Tensor = self._timed("classifier", self.inner.run_classifier, images, image_sizes)
        return out

    def run_gate(self, images: Tensor, image_sizes: Tensor) -> tuple[Tensor, Any]:
        out: tuple[Tensor, Any] = self._timed("gate", self.inner.run_gate, images, image_sizes)
        return out

    def select(self, features: Any, index: Tensor) -> Any:
        return self._timed("select", self.inner.select, features, index)

    def run_detector(self, features: Any, image_sizes: Tensor) -> RawDetections:
        out: RawDetections = self._timed("detector", self.inner.run_detector, features, image_sizes)
        return out


@dataclass
class LoadedCase:
    """A case ready to measure. pipeline: anything with ``preprocessor`` and
    ``inference(images, image_sizes)`` (a :class:`~defectnet.runtime.Pipeline`). gate_off:
    the gated model with its detector forced on every image
    (:func:`defectnet.bench.gating.gate_off_twin`)."""

    case: Case
    pipeline: Any
    stages: StageTimedBackend | None
    sync: Sync
    label_to_category_id: dict[int, int]
    remark: str
    has_gate: bool
    device: str
    load_s: float = 0.0
    gate_off: bool = False


@dataclass
class RawCase:
    """What one case measured. model_s / e2e_s: ``[repetition][image]`` seconds at batch 1;
    stage_ms: ``[repetition]`` stage -> mean ms per image at batch 1; stage_calls:
    ``[repetition][image]`` the backend stages' ms of each batch-1 call; batch_model_s /
    batch_e2e_s: ``[repetition]`` total seconds of the batch pass."""

    loaded: LoadedCase
    model_s: list[list[float]] = field(default_factory=list)
    e2e_s: list[list[float]] = field(default_factory=list)
    stage_ms: list[dict[str, float]] = field(default_factory=list)
    stage_calls: list[list[dict[str, float]]] = field(default_factory=list)
    batch_model_s: list[float] = field(default_factory=list)
    batch_e2e_s: list[float] = field(default_factory=list)
    detections: list[Detections] = field(default_factory=list)
    scale_factors: list[tuple[float, float]] = field(default_factory=list)
    original_sizes: list[tuple[int, int]] = field(default_factory=list)
    unstable_repetitions: list[int] = field(default_factory=list)


# ----------------------------------------------------------------------------- loading
_info_cache: dict[Path, Any] = {}


def _run_info(run_dir: Path) -> tuple[Any, Any]:
    from defectnet.train.checkpoint import load_run

    return load_run(run_dir, "cpu")


def _scale_of(info: Any) -> tuple[int, int]:
    from defectnet.data.transforms import DEFAULT_SCALE

    tc = info.detector.train_config if info.detector is not None else info.train_config
    scale = info.train_config.get("scale") or tc.get("scale") or DEFAULT_SCALE
    return int(scale[0]), int(scale[1])


def row_remark(case: Case) -> str:
    """The seed's Remark column for the row (from its run folder when it has one)."""
    from defectnet.evaluation.evaluate import remark_for

    row = case.row
    if row.run_dir is None:
        return row.name
    key = Path(row.run_dir).resolve()
    if key not in _info_cache:
        _info_cache[key] = _run_info(row.run_dir)[1]
    return remark_for(_info_cache[key])


def _kind_of_model(model: Any) -> tuple[EngineKind, float]:
    from defectnet.model import TwoModel

    if isinstance(model, TwoModel):
        return EngineKind.TWO_MODEL, float(model.gate_threshold)
    cfg = model.config
    return (EngineKind.DEFECTNET if cfg.with_gate else EngineKind.ONE_MODEL), float(cfg.gate_threshold)


def _check_classes(case: Case, names: Sequence[str], label_map: dict[int, int] | None, images: ImageSet) -> None:
    if list(names) != images.class_names or (label_map is not None and label_map != images.label_to_category_id):
        raise DataError(f"{case.key}: the model detects {list(names)} but the data set has {images.class_names}; "
                        "benchmark on the data set the model was trained on")


def load_case(case: Case, images: ImageSet, *, device: str = "cpu", threads: int | None = None,
              clock: Clock = time.perf_counter, gate_threshold: float | None = None,
              scale: tuple[int, int] | None = None) -> LoadedCase:
    """Build the pipeline of ``case`` (a :class:`~defectnet.runtime.Pipeline` over a
    :class:`StageTimedBackend`); ``gate_threshold`` overrides the model's own for gated rows,
    ``scale`` the test scale ``(long, short)`` of its preprocessing.
    Raises a DefectNetError when the case cannot run here."""
    from defectnet.runtime import Pipeline
    from defectnet.runtime.backends import BackendOptions, make_backend
    from defectnet.runtime.engine import load_engine

    t0 = time.perf_counter()
    # torch threads are process-wide: run_benchmark sets them once (the factory checks they match)
    options = BackendOptions(threads=threads or 0, device=device, providers="cpu" if device == "cpu" else "auto")
    if case.backend == TORCH:
        if case.row.run_dir is not None:
            model, info = _run_info(case.row.run_dir)
            _info_cache[Path(case.row.run_dir).resolve()] = info
            names, label_map, model_scale, divisor = list(info.class_names), dict(info.label_to_category_id), \
                _scale_of(info), 32
        else:
            from defectnet.model_source import load_source_from_manifest

            assert case.engine is not None
            engine = load_engine(case.engine.path)
            source = load_source_from_manifest(engine.manifest, engine.root)
            model, names, label_map = source.model, list(source.class_names), None
            model_scale, divisor = source.scale, source.size_divisor
        _check_classes(case, names, label_map, images)
        remark = row_remark(case)
        kind, threshold = _kind_of_model(model)
        inner: Backend = make_backend(model, TORCH, options)
        sync = device_sync(device)
        where = device
        preprocessor = Preprocessor(model_scale, divisor)
    else:
        assert case.engine is not None
        engine = load_engine(case.engine.path)
        _check_classes(case, engine.class_names, None, images)
        remark = row_remark(case)
        kind, threshold, preprocessor = engine.kind, engine.gate_threshold, engine.preprocessor
        if case.backend not in (ONNXRUNTIME, OPENVINO, AUTO, TENSORRT):  # pragma: no cover - plan_cases makes these
            raise DataError(f"unknown backend {case.backend!r}")
        inner = make_backend(engine, case.backend, options)
        inner.load()  # ONNX Runtime picks its device (providers) when it loads
        where = str(getattr(inner, "device", "cuda" if case.backend == TENSORRT else "cpu"))
        sync = device_sync(where)
        if case.row.engines and case.engine is not None and case.engine.path.name != "engine":
            remark = f"{remark}, {case.engine.path.name}"
    if gate_threshold is not None and kind != EngineKind.ONE_MODEL:
        threshold = gate_threshold
    if scale is not None:
        preprocessor = Preprocessor(scale, preprocessor.size_divisor)
    stages = StageTimedBackend(inner, sync, clock)
    pipeline = Pipeline(stages, kind=kind, class_names=images.class_names, gate_threshold=threshold,
                        preprocessor=preprocessor)
    return LoadedCase(case, pipeline, stages, sync, images.label_to_category_id, remark, kind != EngineKind.ONE_MODEL,
                      str(where), time.perf_counter() - t0)


# ----------------------------------------------------------------------------- measuring
@dataclass
class _Pass:
    detections: list[Detections]
    model_s: list[float]
    e2e_s: list[float]
    stage_ms: dict[str, float]
    scale_factors: list[tuple[float, float]]
    original_sizes: list[tuple[int, int]]
    stage_calls: list[dict[str, float]] = field(default_factory=list)


def _infer(pipeline: Any, batch: ImageBatch) -> list[Detections]:
    """The timed model part: the pipeline's gate -> detector on a preprocessed batch, results
    on the host (as :func:`defectnet.evaluation.evaluate.evaluate` times it)."""
    return [d.to("cpu") for d in pipeline.inference(batch.images, batch.image_sizes)]


def measure_pass(loaded: LoadedCase, images: ImageSet, positions: Sequence[int], batch: int, timer: LatencyTimer,
                 clock: Clock, reader: Callable[[Path], Tensor] = read_image,
                 tick: Callable[[], None] = lambda: None) -> _Pass:
    """Decode, preprocess, run and postprocess ``positions`` in batches of ``batch``.

    model_s / e2e_s: one entry per *timed* batch (warm-up calls of ``timer`` are run but not
    recorded); stage_ms: summed milliseconds per stage over the timed batches. ``tick`` is
    called after each batch (outside the timed region: progress bars).
    """
    pipe = loaded.pipeline
    out = _Pass([], [], [], dict.fromkeys(STAGES, 0.0), [], [])
    for start in range(0, len(positions), batch):
        chunk = positions[start:start + batch]
        t0 = clock()
        decoded = [reader(images.path(k)) for k in chunk]
        t1 = clock()
        prepared = pipe.preprocessor(decoded)
        t2 = clock()
        if loaded.stages is not None:
            loaded.stages.take()
        dets, model = timer(partial(_infer, pipe, prepared))
        stage = loaded.stages.take() if loaded.stages is not None else {}
        t3 = clock()
        for d, f, size in zip(dets, prepared.scale_factors, prepared.original_sizes):
            boxes_to_original(d.boxes.clone(), f, size)
        t4 = clock()
        tick()
        if model is None:
            continue
        if len(dets) != len(chunk):
            raise DataError(f"{loaded.case.key}: the pipeline returned {len(dets)} results for {len(chunk)} images")
        out.detections.extend(dets)
        out.scale_factors.extend(prepared.scale_factors)
        out.original_sizes.extend(prepared.original_sizes)
        out.model_s.append(model)
        out.e2e_s.append(t4 - t0)
        out.stage_ms["decode"] += (t1 - t0) * 1e3
        out.stage_ms["preprocess"] += (t2 - t1) * 1e3
        out.stage_ms["postprocess"] += (t4 - t3) * 1e3
        backend_ms = 0.0
        for name, ms in stage.items():
            out.stage_ms[name] = out.stage_ms.get(name, 0.0) + ms
            backend_ms += ms
        out.stage_ms["other"] += max(model * 1e3 - backend_ms, 0.0)
        out.stage_calls.append(stage)
    return out


def _signature(dets: list[Detections]) -> list[tuple[int, bool, float]]:
    return [(int(d.scores.numel()), bool(d.ran_detector), round(float(d.scores.sum()), 4)) for d in dets]


def run_cases(loaded: Sequence[LoadedCase], images: ImageSet, *, repeat: int = 5, warmup: int = 3, batch: int = 4,
              clock: Clock = time.perf_counter, progress: bool = True,
              reader: Callable[[Path], Tensor] = read_image) -> list[RawCase]:
    """Measure every loaded case on ``images`` (see the module docstring). ``batch`` <= 1
    skips the batch pass. ``clock``/``reader`` are injectable for tests."""
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    n = len(images)
    positions = list(range(n))
    warm = warmup_indices(images, warmup)
    raws = [RawCase(lc) for lc in loaded]
    timers = [LatencyTimer(lc.sync, clock, warmup=len(warm)) for lc in loaded]
    batch_timers = [LatencyTimer(lc.sync, clock, warmup=1 if batch > 1 else 0) for lc in loaded]
    batch_passes = 1 if batch > 1 else 0
    total = len(loaded) * (len(warm) + repeat * n + batch_passes * (1 + repeat * -(-n // batch)))
    bar = tqdm(total=total, desc="bench", disable=not progress, dynamic_ncols=True, leave=False, unit="call")

    def tick() -> None:
        bar.update(1)

    signatures: list[list[tuple[int, bool, float]]] = [[] for _ in loaded]
    with torch.no_grad():
        for i, lc in enumerate(loaded):
            bar.set_postfix_str(f"warm-up {lc.case.key}")
            measure_pass(lc, images, warm, 1, timers[i], clock, reader, tick)
            if batch_passes:
                measure_pass(lc, images, positions[:batch], batch, batch_timers[i], clock, reader, tick)
        m = len(loaded)
        for r in range(repeat):
            order = [(r + j) % m for j in range(m)]
            for i in order:
                bar.set_postfix_str(f"rep {r + 1}/{repeat} {loaded[i].case.key}")
                p = measure_pass(loaded[i], images, positions, 1, timers[i], clock, reader, tick)
                raw = raws[i]
                raw.model_s.append(p.model_s)
                raw.e2e_s.append(p.e2e_s)
                raw.stage_ms.append({k: v / n for k, v in p.stage_ms.items()})
                raw.stage_calls.append(p.stage_calls)
                sig = _signature(p.detections)
                if r == 0:
                    raw.detections, signatures[i] = p.detections, sig
                    raw.scale_factors, raw.original_sizes = p.scale_factors, p.original_sizes
                elif sig != signatures[i]:
                    raw.unstable_repetitions.append(r + 1)
            for i in order if batch_passes else []:
                bar.set_postfix_str(f"rep {r + 1}/{repeat} batch {batch} {loaded[i].case.key}")
                p = measure_pass(loaded[i], images, positions, batch, batch_timers[i], clock, reader, tick)
                raws[i].batch_model_s.append(sum(p.model_s))
                raws[i].batch_e2e_s.append(sum(p.e2e_s))
    bar.close()
    return raws
