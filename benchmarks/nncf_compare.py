"""OpenVINO INT8 from the project's one calibration against NNCF's post-training quantization.

    pip install nncf==3.4.0      # not a project dependency: only this comparison uses it
    python benchmarks/nncf_compare.py --engine RUN/engine --data CALIB_DATA --eval-data TEST_DATA \\
        --out benchmarks/results/nncf_compare_<date>_<what>.json [--calib-size 300] [--threads 2]

Both start from the same float32 graphs (the exported engine optimised at ONNX Runtime's
basic level, as every build does) and the same calibration images (``select_calibration_set``
of ``--data``'s train split; the detector on the features of the images the float32 gate
passes, as the project's calibration feeds it):

* **project**: ``defectnet-build-engine --int8 --backend openvino``'s candidates, i.e. the
  ranges of the project's one calibration written as U8S8 (ONNX Runtime) and S8S8
  (TensorRT-style) Q/DQ graphs;
* **nncf**: ``nncf.quantize`` on the same ONNX graphs (its ONNX backend, default preset:
  symmetric weights and activations, per-channel weights, fast bias correction; RoiAlign
  left out, which has no INT8 kernel and whose statistics NNCF misses for pyramid levels
  that get no boxes), written as its own Q/DQ graphs.

Every graph runs on OpenVINO (inference precision f32, so the INT8 kernels come from the
Q/DQ graph only). Per graph, the candidates are timed with the build's own timing function
(interleaved, batch 1, test images of ``--data``, the detector on the float32 gate's
features); each INT8 variant is then installed as an OpenVINO engine folder and evaluated
with ``defectnet-eval``'s engine evaluation on ``--eval-data``'s test split, next to the
float32 graphs on OpenVINO. The JSON holds the command, the times and every metric.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import platform
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from defectnet.calibration.calibrate import DETECTOR_MIN_IMAGES, DetectorFeeds, _session
from defectnet.calibration.dataset import select_calibration_set
from defectnet.calibration.prepare import optimize_basic
from defectnet.engine_build import BuildOptions
from defectnet.engine_build.per_graph import (
    Candidate,
    make_candidates,
    time_candidates,
    timing_inputs,
    write_folder,
)
from defectnet.evaluation.evaluate import evaluate_engine
from defectnet.io import atomic_write_json
from defectnet.runtime import load_engine
from defectnet.runtime.engine import DETECTOR, GATE, read_manifest
from defectnet.runtime.manifest import write_manifest
from defectnet.runtime.types import BackendName, Precision

KEPT_METRICS = ("mAP", "AP50", "F1", "gate_recall", "gate_precision", "att_ms", "num_images", "num_normal",
                "num_defective", "num_detector_runs")


def nncf_quantize(path: Path, feeds: list[dict[str, np.ndarray]], out: Path) -> Path:
    """``nncf.quantize`` of the ONNX graph ``path`` on ``feeds`` (every one used), saved to ``out``."""
    import nncf
    import onnx

    model = onnx.load(str(path))
    # RoiAlign has no INT8 kernel, and NNCF's statistics miss the pyramid levels that get no
    # boxes ("Statistics were not collected for the node /RoiAlign_3"): leave RoiAlign and the
    # Reshape -> ScatterND chain that merges the levels out, so the box head's input
    # quantizer sits after the merge
    ignored, frontier = set(), {o for n in model.graph.node if n.op_type == "RoiAlign" for o in n.output}
    ignored |= {n.name for n in model.graph.node if n.op_type == "RoiAlign"}
    while frontier:
        nxt = [n for n in model.graph.node if frontier & set(n.input) and n.op_type in ("Reshape", "ScatterND")
               and n.name not in ignored]
        ignored |= {n.name for n in nxt}
        frontier = {o for n in nxt for o in n.output}
    quantized = nncf.quantize(model, nncf.Dataset(feeds), subset_size=len(feeds),
                              ignored_scope=nncf.IgnoredScope(names=sorted(ignored), validate=False))
    onnx.save(quantized, str(out))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", type=Path, required=True, help="exported float32 engine folder")
    parser.add_argument("--data", type=Path, required=True, help="calibration (train) and timing (test) data")
    parser.add_argument("--eval-data", type=Path, required=True, help="data whose test split is evaluated")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--calib-size", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the engine folders here")
    args = parser.parse_args(argv)
    import nncf
    import openvino

    t_start = time.time()
    src = load_engine(args.engine)
    options = BuildOptions(precision=Precision.INT8, backend=BackendName.OPENVINO, data_dir=args.data,
                           calib_size=args.calib_size, threads=args.threads, log=lambda m: print(m, flush=True))
    options.validate()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="nncf-compare-"))
    tmp = work / "graphs"
    tmp.mkdir(parents=True, exist_ok=True)
    prepared = {g: optimize_basic(p, tmp / f"{g}.fp32.onnx") for g, p in src.graphs.items()}

    t0 = time.perf_counter()
    candidates, blocks = make_candidates(src, prepared, options, tmp)
    project_s = time.perf_counter() - t0

    calib = select_calibration_set(args.data, args.calib_size, scale=src.preprocessor.scale,
                                   size_divisor=src.preprocessor.size_divisor, seed=options.seed)
    gate_feeds = [{"images": x, "image_sizes": s} for _im, x, s in calib.batches()]
    detector_feeds = list(DetectorFeeds(calib, _session(prepared[GATE], args.threads), None, src.gate_threshold,
                                        DETECTOR_MIN_IMAGES))
    t0 = time.perf_counter()
    nncf_files = {GATE: nncf_quantize(prepared[GATE], gate_feeds, tmp / "gate.nncf.onnx"),
                  DETECTOR: nncf_quantize(prepared[DETECTOR], detector_feeds, tmp / "detector.nncf.onnx")}
    nncf_s = time.perf_counter() - t0
    for g, path in nncf_files.items():
        candidates[g].append(Candidate(g, BackendName.OPENVINO, Precision.INT8, path, "f32"))  # name: "openvino int8"

    inputs = timing_inputs(src, options)
    times = time_candidates(src, prepared, candidates, inputs, threads=args.threads, repeat=args.repeat,
                            log=options.log)

    variants: dict[str, dict[str, Candidate]] = {}
    for c in (c for cs in candidates.values() for c in cs):
        label = "nncf" if c.precision == Precision.INT8 and c.flavour is None else \
            "fp32" if c.precision == Precision.FP32 else f"project {c.flavour} Q/DQ"
        variants.setdefault(label, {})[c.graph] = c
    results: dict[str, Any] = {}
    for label, chosen in variants.items():
        folder = work / label.replace(" ", "-").replace("/", "")
        block = {} if label in ("nncf", "fp32") else blocks
        write_folder(folder, src, chosen, options, block, None)
        if label == "nncf":
            manifest = read_manifest(folder)
            write_manifest(folder, replace(manifest, extra={**manifest.extra, "nncf": {
                "version": nncf.__version__, "calibration_images": len(gate_feeds),
                "detector_calibration_images": len(detector_feeds), "call": "nncf.quantize(onnx_model, "
                "nncf.Dataset(feeds), subset_size=len(feeds), ignored_scope=IgnoredScope(names=RoiAlign and the "
                "Reshape/ScatterND chain after it)) (defaults otherwise)"}}))
        options.log(f"evaluating {label} on {args.eval_data} ...")
        ev = evaluate_engine(folder, args.eval_data, backend=BackendName.OPENVINO, threads=args.threads,
                             progress=False)
        d = ev.to_dict()
        results[label] = {
            "graphs": {g: {"file": c.file.name, "candidate": c.name,
                           "median_ms": round(statistics.median(times[g][c.name]), 3),
                           "times_ms": [round(t, 3) for t in times[g][c.name]]} for g, c in chosen.items()},
            "metrics": {k: d.get(k) for k in KEPT_METRICS}, "engine_dir": str(folder)}

    record = {
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]),
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads},
        "versions": {"nncf": nncf.__version__, "openvino": openvino.__version__},
        "engine": str(args.engine.resolve()), "data": str(args.data.resolve()),
        "eval_data": str(args.eval_data.resolve()), "calibration_images": len(gate_feeds),
        "detector_calibration_images": len(detector_feeds),
        "quantize_seconds": {"project (both Q/DQ flavours, ranges once)": round(project_s, 1),
                             "nncf (gate + detector)": round(nncf_s, 1)},
        "timing": {"repeat": args.repeat, "inputs": len(inputs), "method": "defectnet.engine_build.per_graph."
                   "time_candidates: interleaved, batch 1, detector on the float32 gate's features"},
        "variants": results, "wall_s": round(time.time() - t_start, 1)}
    atomic_write_json(args.out, record)
    for label, r in results.items():
        m = r["metrics"]
        print(f"{label:28s} gate {r['graphs'][GATE]['median_ms']:7.2f} ms  detector "
              f"{r['graphs'][DETECTOR]['median_ms']:7.2f} ms  mAP {m['mAP']:.4f}  F1 {m['F1']:.4f}  "
              f"gate recall {m['gate_recall']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
