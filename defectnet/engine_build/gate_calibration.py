"""The gate threshold as an operating point: the largest P(defective) threshold that keeps a
target defective-image recall on a validation set.

The detector runs for an image iff ``P(defective) >= threshold``. An escape (a defective
image the gate sends out after the backbone) is what a factory pays for, so the threshold
is chosen for recall, not for argmax: with ``n`` defective images and target recall ``r``,
at least ``k = ceil(r * n)`` of them must pass, so the k-th largest P among the defective
images, ``p_k``, is the largest threshold that does (ties only raise the recall). The
threshold is not ``p_k`` itself, where the k-th image would sit exactly on the boundary and
any rounding of P (an INT8 or bf16 engine, another runtime) would send it out: it is the
midpoint, in logit space, between ``p_k`` and the next lower P of any image of the set, so
every image of the set lands on the same side as at ``p_k`` (the same recall and pass rates)
with the widest margin to the boundary image that does so. Normal images do not move the
operating point; they give the gate pass rate it costs.

``defectnet-calibrate-gate --engine DIR --data DIR [--split test] --target-recall 0.995``
computes P for every image of the split with the float pipeline (the engine's FP32 graphs
in ONNX Runtime by default, or ``--backend torch`` for the checkpoint), batch 1 as
evaluation measures it, then writes ``gate_threshold`` and a ``gate_calibration`` block
(recall and pass rate achieved, the data used, the previous threshold) into the engine's
``manifest.json`` atomically, after checking that the new manifest still loads. The graphs
keep their export-time threshold in their ONNX metadata: the manifest is authoritative.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import click
import numpy as np

from defectnet.errors import ConfigError, DataError, DefectNetError, EngineError
from defectnet.io import sha256_file
from defectnet.runtime.backends import BACKENDS
from defectnet.runtime.engine import (
    CLASSIFIER,
    GATE,
    MANIFEST_FILE,
    engine_from_manifest,
    load_engine,
    read_manifest,
)
from defectnet.runtime.manifest import GateCalibration, Manifest, write_manifest
from defectnet.runtime.types import BackendName, EngineKind


@dataclass(frozen=True)
class OperatingPoint:
    """A gate threshold and what it achieves on the set it was chosen on.

    recall: share of defective images with P >= threshold; pass_rate: share of all images
    (the detector's workload); normal_pass_rate: share of normal images (None without any);
    margin: threshold minus the largest P of a defective image below it (how far the
    nearest escape is; None when every defective image passes)."""

    threshold: float
    target_recall: float
    recall: float
    pass_rate: float
    normal_pass_rate: float | None
    images: int
    defective: int
    normal: int
    escapes: int
    margin: float | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def threshold_for_recall(p_defective: Sequence[float] | np.ndarray, is_defective: Sequence[bool] | np.ndarray,
                         target_recall: float) -> OperatingPoint:
    """A threshold whose recall on the defective images is >= ``target_recall``: halfway in
    logit space between the k-th largest defective P and the next lower P of the set, so that
    the boundary image keeps a margin (see the module docstring)."""
    p = np.asarray(p_defective, dtype=np.float64).reshape(-1)
    d = np.asarray(is_defective, dtype=bool).reshape(-1)
    if p.shape != d.shape:
        raise ConfigError(f"{p.size} probabilities but {d.size} labels; they must pair up")
    if not 0.0 < target_recall <= 1.0:
        raise ConfigError(f"target recall must be in (0, 1], got {target_recall!r} (e.g. 0.995)")
    if not np.isfinite(p).all() or (p < 0).any() or (p > 1).any():
        raise DataError("P(defective) values must be finite and in [0, 1]; the gate produced something else")
    n_def = int(d.sum())
    if n_def == 0:
        raise DataError("the calibration set has no defective image, so recall is undefined; use a split with "
                        "defective images")
    k = max(1, math.ceil(target_recall * n_def - 1e-9))  # the float product may land just above an integer
    ranked = np.sort(p[d])[::-1]
    threshold = _midpoint_below(float(ranked[k - 1]), p)
    passed = p >= threshold
    below = ranked[ranked < threshold]
    n_norm = int((~d).sum())
    return OperatingPoint(
        threshold=threshold, target_recall=float(target_recall), recall=float(passed[d].mean()),
        pass_rate=float(passed.mean()), normal_pass_rate=float(passed[~d].mean()) if n_norm else None,
        images=int(p.size), defective=n_def, normal=n_norm, escapes=int((~passed[d]).sum()),
        margin=float(threshold - below.max()) if below.size else None)


def _logit(x: float) -> float:
    return math.log(x) - math.log1p(-x)


def _midpoint_below(boundary: float, p: np.ndarray) -> float:
    """The threshold halfway in logit space between ``boundary`` (the lowest P that must pass)
    and the next lower P of ``p``; ``boundary`` when nothing is below it. At P = 0 or 1
    (no finite logit) the midpoint is taken in P."""
    below = p[p < boundary]
    if not below.size:
        return boundary
    lower = float(below.max())
    if 0.0 < lower and boundary < 1.0:
        mid = 1.0 / (1.0 + math.exp(-(_logit(lower) + _logit(boundary)) / 2))
    else:
        mid = (lower + boundary) / 2
    # rounding may land on an end: keep the set's outcome (boundary passes, lower does not)
    return mid if lower < mid <= boundary else boundary


def gate_probabilities(engine_dir: str | os.PathLike[str], data_dir: str | os.PathLike[str], *,
                       split: str = "test", backend: str = BackendName.AUTO, progress: bool = True
                       ) -> tuple[np.ndarray, np.ndarray, Any]:
    """P(defective) float64 ``[N]`` and ground truth bool ``[N]`` of every image of the split
    (batch 1), and the dataset."""
    from tqdm import tqdm

    from defectnet.data.coco import load_split
    from defectnet.data.transforms import pad_batch
    from defectnet.runtime.pipeline import Pipeline

    engine = load_engine(engine_dir)
    if engine.kind == EngineKind.ONE_MODEL:
        raise EngineError(f"engine {engine_dir} is a one-model engine: it has no gate (P = 1 for every image), so "
                          "there is no threshold to calibrate")
    dataset = load_split(Path(data_dir), split, scale=engine.preprocessor.scale, train=False)
    if tuple(dataset.class_names) != tuple(engine.class_names):
        raise DataError(f"engine {engine_dir} detects {list(engine.class_names)} but {data_dir} has "
                        f"{list(dataset.class_names)}; calibrate on the data set the model was trained on")
    pipeline = Pipeline.from_engine(engine, backend)
    p = np.zeros(len(dataset), dtype=np.float64)
    truth = np.array([dataset.is_defective(i) for i in range(len(dataset))], dtype=bool)
    for i in tqdm(range(len(dataset)), unit="img", disable=not progress, file=sys.stderr, desc="gate"):
        sample = dataset[i]
        images = pad_batch([sample.image], engine.preprocessor.size_divisor)
        sizes = [(int(sample.image.shape[-2]), int(sample.image.shape[-1]))]
        (det,) = pipeline.inference(images, sizes, gate_threshold=math.inf)  # gate only: no detector
        p[i] = det.p_defective
    return p, truth, dataset


def write_operating_point(engine_dir: str | os.PathLike[str], point: OperatingPoint,
                          provenance: dict[str, Any]) -> Manifest:
    """Store ``point.threshold`` as the engine's gate_threshold (+ the calibration block) in
    manifest.json, atomically; the new manifest is validated before it replaces the old."""
    root = Path(engine_dir)
    manifest = read_manifest(root)
    block = {**point.to_json(), **provenance, "previous_threshold": manifest.gate_threshold,
             "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")}
    updated = replace(manifest, gate_threshold=point.threshold, gate_calibration=GateCalibration.from_json(block))
    engine_from_manifest(root, updated, check_hashes=False)  # still a valid engine
    write_manifest(root, updated)
    return updated


def calibrate_gate(engine_dir: str | os.PathLike[str], data_dir: str | os.PathLike[str], *,
                   split: str = "test", target_recall: float = 0.995, backend: str = BackendName.AUTO,
                   write: bool = True, progress: bool = True) -> OperatingPoint:
    """Compute P on the split, choose the operating point and (``write``) store it."""
    if not 0.0 < target_recall <= 1.0:
        raise ConfigError(f"--target-recall must be in (0, 1], got {target_recall!r}")
    p, truth, dataset = gate_probabilities(engine_dir, data_dir, split=split, backend=backend, progress=progress)
    point = threshold_for_recall(p, truth, target_recall)
    if write:
        engine = load_engine(engine_dir, check_hashes=False)
        graph = CLASSIFIER if engine.kind == EngineKind.TWO_MODEL else GATE
        provenance = {
            "data": str(Path(data_dir).resolve()), "split": split, "annotations": str(dataset.ann_file),
            "annotations_sha256": sha256_file(dataset.ann_file), "backend": backend,
            "batch_size": 1, "p_graph": graph, "p_graph_sha256": engine.manifest.graphs[graph].sha256,
            "rule": "largest threshold with recall(P >= threshold) >= target_recall on the defective images",
        }
        write_operating_point(engine_dir, point, provenance)
    return point


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--engine", "engine_dir", required=True, type=click.Path(file_okay=False),
              help="Engine folder (its manifest.json gets the new gate_threshold).")
@click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False),
              help="Data folder with annotations/{split}.json and images/ (defectnet-synth layout).")
@click.option("--split", default="test", show_default=True, type=click.Choice(["train", "test"]))
@click.option("--target-recall", default=0.995, show_default=True, type=float,
              help="Defective-image recall the gate must keep on this split.")
@click.option("--backend", type=click.Choice(list(BACKENDS)), default=BackendName.AUTO.value, show_default=True,
              help="auto (default): as the engine was built (a plain export on onnxruntime, a built folder on its backend, a per-graph folder on each graph's); onnxruntime / openvino: the engine's graphs; torch: the checkpoint it was exported from; tensorrt: the folder's TensorRT plans (NVIDIA GPU).")
@click.option("--dry-run", is_flag=True, help="Print the operating point; do not change the manifest.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def main(engine_dir: str, data_dir: str, split: str, target_recall: float, backend: str, dry_run: bool,
         as_json: bool, no_progress: bool) -> None:
    """Choose the gate threshold for a target defective-image recall and store it in the engine."""
    try:
        previous = load_engine(engine_dir, check_hashes=False).gate_threshold
        point = calibrate_gate(engine_dir, data_dir, split=split, target_recall=target_recall, backend=backend,
                               write=not dry_run, progress=not no_progress)
    except DefectNetError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps({**point.to_json(), "previous_threshold": previous, "written": not dry_run}))
        return
    normal = "n/a" if point.normal_pass_rate is None else f"{point.normal_pass_rate:.3f}"
    click.echo(f"{split} split of {data_dir}: {point.images} images ({point.defective} defective, "
               f"{point.normal} normal)")
    click.echo(f"gate threshold {point.threshold:.6g} (was {previous:.6g}): recall {point.recall:.4f} "
               f"(target {point.target_recall}), {point.escapes} escapes, pass rate {point.pass_rate:.3f} "
               f"(normal images passed: {normal})")
    click.echo("dry run: manifest unchanged" if dry_run else f"wrote gate_threshold to {Path(engine_dir) / MANIFEST_FILE}")


__all__ = ["OperatingPoint", "calibrate_gate", "gate_probabilities", "main", "threshold_for_recall",
           "write_operating_point"]
