"""Calibrate the graphs of an engine where each one really sees data.

* the image graphs (``gate``, and the two-model's ``classifier``) on every image of the
  calibration set (:mod:`.dataset`);
* the ``detector`` on the C2..C5 *features* of the images the gate sends to it: the
  float32 gate graph runs on each calibration image and its features are fed to the
  detector calibrator when P(defective) >= the engine's gate threshold (the two-model's
  classifier decides for it). Normal images never reach the detector at run time, so
  their features should not widen its ranges. When fewer than
  :data:`DETECTOR_MIN_IMAGES` images pass (an untrained gate), the highest-P others top
  the set up and the provenance says how many.

The measured ranges are cached (:mod:`.cache`) under a key of everything they depend on.

Method per graph (:func:`recommended_settings`), measured on a trained compact ResNet-18
DefectNet (synthetic fabric, 300 calibration images, 80 test images, 182 float32
detections, both Q/DQ flavours on ONNX Runtime):

============  =================================  ==================================
method        gate: defective images lost/gained  detector on float features:
              at the threshold vs float32         float32 detections kept (IoU>=.5)
============  =================================  ==================================
minmax        0 / 1 (TensorRT flavour 0 / 4)      164/182 (90 %)
percentile    2 / 0 (both flavours)               178/182 (98 %)
entropy       12 / 0                              159/182 (87 %)
============  =================================  ==================================

The gate pools C5 into one vector, so the tail that percentile/entropy clip moves
P(defective) of borderline images; the detector gains from finer steps. Hence MinMax for
the image graphs and percentile (99.99) for the detector. onnxruntime's entropy
calibrator clipped far too much here (mAP 0.079 -> 0.002).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from defectnet.calibration.cache import CacheKey, CalibrationCache
from defectnet.calibration.dataset import CalibrationImage, CalibrationSet
from defectnet.calibration.int8 import (
    CalibrationSettings,
    QdqFlavour,
    calibrate_graph,
    calibrated_op_types,
    compute_tensors,
)
from defectnet.runtime.engine import CLASSIFIER, DETECTOR, FEATURE_NAMES, GATE, GATE_OUTPUTS

log = logging.getLogger(__name__)

DETECTOR_MIN_IMAGES = 32
CACHE_SCHEMA = 1


def _tensors(path: Path, graph: str, op_types: list[str]) -> set[str]:
    import onnx

    return compute_tensors(onnx.load(str(path)), graph, op_types)


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@dataclass
class DetectorFeeds:
    """Iterates detector feeds (c2..c5 + image_sizes) of the gate-positive calibration images
    and records the selection (see the module docstring)."""

    calib: CalibrationSet
    gate: Any
    classifier: Any | None
    threshold: float
    min_images: int
    p: list[float] = field(default_factory=list)
    positives: int = 0
    topped_up: int = 0

    def _features(self, x: np.ndarray, s: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        out = dict(zip(GATE_OUTPUTS, self.gate.run(None, {"images": x, "image_sizes": s})))
        p = float(out["p_defective"][0])
        if self.classifier is not None:
            p = float(self.classifier.run(None, {"images": x, "image_sizes": s})[0][0])
        return p, {**{k: out[k] for k in FEATURE_NAMES}, "image_sizes": s}

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        rejected: list[tuple[float, CalibrationImage]] = []
        for im, x, s in self.calib.batches():
            p, feed = self._features(x, s)
            self.p.append(p)
            if p >= self.threshold:
                self.positives += 1
                yield feed
            else:
                rejected.append((p, im))
        want = min(self.min_images, len(self.calib))
        rejected.sort(key=lambda t: (-t[0], t[1].index))
        for _p, im in rejected[: max(0, want - self.positives)]:
            self.topped_up += 1
            yield self._features(*self.calib.load(im))[1]

    def provenance(self) -> dict[str, Any]:
        return {"rule": "features of the images the float32 gate passes (P(defective) >= gate threshold)"
                        + (", decided by the two-model classifier" if self.classifier is not None else ""),
                "gate_threshold": self.threshold, "gate_positive": self.positives,
                "topped_up_with_highest_p": self.topped_up, "images": self.positives + self.topped_up,
                "of": len(self.calib), "min_images": self.min_images}


@dataclass
class EngineCalibration:
    """Ranges per graph + provenance (for the manifest)."""

    ranges: dict[str, Any]
    provenance: dict[str, Any]
    cache_hit: bool


SettingsArg = CalibrationSettings | Mapping[str, CalibrationSettings]


def per_graph(settings: SettingsArg, graphs: Iterable[str]) -> dict[str, CalibrationSettings]:
    """Settings per graph: one :class:`CalibrationSettings` for all, or a mapping (graphs it
    does not name use :func:`recommended_settings`)."""
    if isinstance(settings, CalibrationSettings):
        return dict.fromkeys(graphs, settings)
    defaults = recommended_settings()
    return {g: settings.get(g, defaults[g]) for g in graphs}


def recommended_settings(percentile: float = 99.99) -> dict[str, CalibrationSettings]:
    """The default per graph, from the measurements in the module docstring: MinMax for the
    image graphs (the gate's P(defective) pools C5; clipping its tail moved images across
    the threshold), percentile for the detector (rare outliers no longer stretch the steps)."""
    return {GATE: CalibrationSettings("minmax"), CLASSIFIER: CalibrationSettings("minmax"),
            DETECTOR: CalibrationSettings("percentile", percentile=percentile)}


def cache_key(graphs: Mapping[str, Path], sources: Mapping[str, str], calib: CalibrationSet,
              settings: SettingsArg, flavours: list[QdqFlavour], gate_threshold: float) -> CacheKey:
    import onnxruntime

    from defectnet.io import sha256_file

    return CacheKey({
        "schema": CACHE_SCHEMA,
        "graphs_sha256": {g: sha256_file(p) for g, p in sorted(graphs.items())},
        "exported_graphs_sha256": dict(sorted(sources.items())),
        "calibration_images_sha256": calib.digest(),
        "calib_size": calib.requested, "selected": len(calib), "seed": calib.seed,
        "scale": list(calib.scale), "size_divisor": calib.size_divisor,
        "settings": {g: st.to_dict() for g, st in sorted(per_graph(settings, graphs).items())},
        "op_types": calibrated_op_types(flavours),
        "flavours": sorted(f.name for f in flavours),
        "gate_threshold": gate_threshold, "detector_min_images": DETECTOR_MIN_IMAGES,
        "onnxruntime": onnxruntime.__version__,
    })


def calibrate_engine(graphs: Mapping[str, Path], sources: Mapping[str, str], calib: CalibrationSet,
                     settings: SettingsArg, flavours: list[QdqFlavour], *, gate_threshold: float,
                     cache: CalibrationCache, workdir: str | os.PathLike[str], threads: int = 0,
                     log_fn: Any = None) -> EngineCalibration:
    """Ranges of every graph in ``graphs`` (name -> float32 graph file), from the cache when
    its key matches, else measured (see the module docstring). ``sources``: SHA-256 of the
    exported graphs they were derived from."""
    say = log_fn or log.info
    key = cache_key(graphs, sources, calib, settings, flavours, gate_threshold)
    cached = cache.load(key)
    cache_info: dict[str, Any] = {"dir": str(cache.root) if cache.root else None, "key": key.digest}
    plan = per_graph(settings, graphs)
    base: dict[str, Any] = {"method": {g: st.method for g, st in plan.items()},
                            "settings": {g: st.to_dict() for g, st in plan.items()}, "set": calib.provenance()}
    if cached is not None:
        say(f"calibration cache hit ({key.digest[:12]}...): reusing the ranges measured on the same graphs, "
            "images and settings")
        return EngineCalibration(cached[0], {**base, **cached[1], "cache": {**cache_info, "hit": True}}, True)
    op_types = calibrated_op_types(flavours)
    ranges: dict[str, Any] = {}
    info: dict[str, Any] = {"graphs": {}}
    for g in (CLASSIFIER, GATE):
        if g not in graphs:
            continue
        say(f"calibrating the {g} graph on {len(calib)} images ({plan[g].method}) ...")
        feeds = ({"images": x, "image_sizes": s} for _im, x, s in calib.batches())
        run = calibrate_graph(graphs[g], feeds, plan[g], op_types, graph=g, workdir=workdir, threads=threads,
                              tensors=_tensors(graphs[g], g, op_types))
        ranges[g] = run.ranges
        info["graphs"][g] = {"samples": run.samples, "chunks": run.chunks, "tensors": len(run.ranges.data)}
    detector_feeds = DetectorFeeds(calib, _session(graphs[GATE], threads),
                                   _session(graphs[CLASSIFIER], threads) if CLASSIFIER in graphs else None,
                                   gate_threshold, DETECTOR_MIN_IMAGES)
    say(f"calibrating the detector graph on the features of the gate-positive images ({plan[DETECTOR].method}) ...")
    run = calibrate_graph(graphs[DETECTOR], detector_feeds, plan[DETECTOR], op_types, graph=DETECTOR, workdir=workdir,
                          threads=threads, tensors=_tensors(graphs[DETECTOR], DETECTOR, op_types))
    ranges[DETECTOR] = run.ranges
    info["graphs"][DETECTOR] = {"samples": run.samples, "chunks": run.chunks, "tensors": len(run.ranges.data)}
    info["detector_images"] = detector_feeds.provenance()
    if detector_feeds.topped_up:
        say(f"only {detector_feeds.positives} calibration images pass the gate; topped the detector's set up with "
            f"{detector_feeds.topped_up} highest-P images")
    path = cache.save(key, ranges, info)
    return EngineCalibration(ranges, {**base, **info, "cache": {**cache_info, "hit": False,
                                                                "file": str(path) if path else None}}, False)
