"""Graph-by-graph CPU timings: ONNX Runtime vs OpenVINO at fp32 / INT8 / bf16, side by side.

    python benchmarks/openvino_graphs.py --out benchmarks/results/openvino_graphs_<date>.json \\
        [--scales 640x256,1333x800] [--repeat 9] [--threads 2] [--calib-size 8] [--workdir DIR]

For each preprocessing scale it exports a *random-init* ResNet-18 compact DefectNet (14
classes; speed does not depend on the weights), generates a few synthetic fabric images at
the real fabric size (2446x1000, padded to 640x256 / 1344x576 after preprocessing), builds
every candidate of ``defectnet-build-engine --backend auto`` with the build's own code
(ORT basic optimisation; the project's one INT8 calibration, both Q/DQ flavours; OpenVINO's
half precision) and times each graph's candidates with the build's own timing function:
interleaved round-robin, batch 1, the detector on the float32 gate's features, medians.
It also times the sub-batch selection (OpenVINO ROI views vs its Gather graph vs a numpy
copy; ONNX Runtime's Gather graph). No accuracy is measured: random weights have none.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch

from defectnet.calibration.prepare import optimize_basic
from defectnet.data.synthetic import KINDS, SynthParams, generate
from defectnet.engine_build import BuildOptions
from defectnet.engine_build.per_graph import (
    make_candidates,
    rank_graph,
    time_candidates,
    timing_inputs,
)
from defectnet.export import export_engine
from defectnet.io import atomic_write_json
from defectnet.model import DefectNet, ModelConfig
from defectnet.model_source import ModelSource
from defectnet.runtime import load_engine
from defectnet.runtime.backends import BackendOptions, make_backend
from defectnet.runtime.types import BackendName, Precision

FABRIC_SIZE = (2446, 1000)  # (width, height) of the fabric images


def _scale(text: str) -> tuple[int, int]:
    long, short = (int(v) for v in text.lower().split("x"))
    return long, short


def _stats(ts: list[float]) -> dict[str, float]:
    q = np.percentile(ts, [25, 75])
    return {"median_ms": round(statistics.median(ts), 3), "p25_ms": round(float(q[0]), 3),
            "p75_ms": round(float(q[1]), 3), "n": len(ts)}


def _time(fn: Any, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def selection_timings(engine_dir: Path, threads: int, hw: tuple[int, int], n: int = 15) -> dict[str, Any]:
    """ms of selecting images {0, 2} (Gather) or {1, 2} (consecutive) of a batch of 4 random
    images of the padded input size ``hw``."""
    engine = load_engine(engine_dir)
    h, w = hw
    x = torch.randint(0, 256, (4, 3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    s = torch.tensor([[h, w]] * 4)
    out: dict[str, Any] = {"batch": 4, "input": [h, w]}
    ov = make_backend(engine, "openvino", BackendOptions(threads=threads))
    _, f = ov.run_gate(x, s)
    gather, consecutive = torch.tensor([0, 2]), torch.tensor([1, 2])
    import openvino as ovm

    from defectnet.runtime.backends.onnx_runtime import _selector_model
    from defectnet.runtime.backends.openvino import compile_graph

    with tempfile.TemporaryDirectory() as tmp:  # the Gather graph ONNX Runtime's backend uses, on OpenVINO
        path = Path(tmp) / "select.onnx"
        path.write_bytes(_selector_model())
        request = compile_graph(ovm.Core(), path, threads=threads, name="select").create_infer_request()

    def gather_graph() -> None:
        for k in ("c2", "c3", "c4", "c5"):
            request.set_tensor(k, f[k])
            request.set_tensor(f"{k}_out", ovm.Tensor(ovm.Type.f32, ovm.Shape([0, 0, 0, 0])))
        request.set_tensor("index", ovm.Tensor(gather.numpy()))
        request.infer()

    for name, fn in {"openvino_select_np_take (used: non-consecutive)": lambda: ov.select(f, gather),
                     "openvino_select_roi_views (used: consecutive)": lambda: ov.select(f, consecutive),
                     "openvino_compiled_gather_graph (not used)": gather_graph}.items():
        fn()
        out[name] = _stats(_time(fn, n))
    ort = make_backend(engine, "onnxruntime", BackendOptions(threads=threads))
    _, fo = ort.run_gate(x, s)
    ort.select(fo, gather)
    out["onnxruntime_gather_graph"] = _stats(_time(lambda: ort.select(fo, gather), n))
    out["feature_bytes_per_image"] = int(sum(v.data.nbytes for v in f.values()) // 4)
    return out


@click.command()
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--scales", default="640x256,1333x800", show_default=True, help="Preprocessing scales (long x short).")
@click.option("--repeat", default=9, show_default=True, help="Interleaved repetitions per candidate.")
@click.option("--threads", default=2, show_default=True, help="Threads of every runtime.")
@click.option("--calib-size", default=8, show_default=True, help="INT8 calibration images (speed only).")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None)
def main(out: Path, scales: str, repeat: int, threads: int, calib_size: int, workdir: Path | None) -> None:
    torch.set_num_threads(threads)
    t_start = time.time()
    load_before = os.getloadavg()
    work = workdir or Path(tempfile.mkdtemp(prefix="defectnet-ov-graphs-"))
    data = work / "fabric"
    if not (data / "annotations").exists():
        generate(SynthParams("fabric", images=calib_size + 4, normal_share=0.44, seed=0, size=FABRIC_SIZE,
                             test_share=4 / (calib_size + 4)), KINDS["fabric"], data)
    results: list[dict[str, Any]] = []
    for text in scales.split(","):
        scale = _scale(text)
        click.echo(f"== scale {scale[0]}x{scale[1]}", err=True)
        engine_dir = work / f"const-{scale[0]}x{scale[1]}"
        if not (engine_dir / "manifest.json").exists():
            torch.manual_seed(0)
            cfg = ModelConfig.preset("compact", num_classes=len(KINDS["fabric"].classes), backbone="resnet18")
            names = list(KINDS["fabric"].classes)
            export_engine(ModelSource(DefectNet(cfg).eval(), names, variant="const", scale=scale), engine_dir,
                          verify=False)
        src = load_engine(engine_dir)
        tmp = work / f"candidates-{scale[0]}x{scale[1]}"
        tmp.mkdir(exist_ok=True)
        prepared = {g: optimize_basic(p, tmp / f"{g}.fp32.onnx") for g, p in src.graphs.items()}
        options = BuildOptions(precision=None, backend=BackendName.AUTO, data_dir=data, calib_size=calib_size, threads=threads,
                               log=lambda m: click.echo(m, err=True))
        candidates, blocks = make_candidates(src, prepared, options, tmp)
        inputs = timing_inputs(src, options)
        t0 = time.time()
        times = time_candidates(src, prepared, candidates, inputs, threads=threads, repeat=repeat,
                                log=lambda m: click.echo(m, err=True))
        graphs: dict[str, Any] = {}
        for g, cands in candidates.items():
            ranked, status, best_fp32 = rank_graph(cands, times[g], (Precision.FP32, Precision.INT8, Precision.FP16),
                                                   open_choice=True)
            graphs[g] = {
                "candidates": {c.name: {**c.to_dict(), **_stats(times[g][c.name]),
                                        "times_ms": [round(t, 3) for t in times[g][c.name]]} for c in cands},
                "fastest": ranked[0].name, "fastest_fp32": best_fp32.name,
                "dropped_slower_than_fp32": sorted(k for k, v in status.items() if v == "slower than fp32")}
            for c in cands:
                click.echo(f"  {g:<9} {c.name:<44} {statistics.median(times[g][c.name]):8.2f} ms", err=True)
        timing_s = time.time() - t0
        results.append({"scale": list(scale), "input_hw": list(inputs[0][0].shape[2:]), "graphs": graphs,
                        "half_mode": blocks.get("half_mode"), "timing_seconds": round(timing_s, 1),
                        "selection": selection_timings(engine_dir, threads,
                                                       (int(inputs[0][0].shape[2]), int(inputs[0][0].shape[3])))})
    import onnxruntime
    import openvino

    record = {
        "what": "graph-by-graph CPU timings of random-init ResNet-18 compact DefectNet graphs (const): "
                "ONNX Runtime vs OpenVINO at fp32 / INT8 / bf16, interleaved, batch 1, medians; speed only "
                "(random weights: no accuracy); the detector on the float32 gate's features",
        "command": shlex.join(["python", "benchmarks/openvino_graphs.py", *sys.argv[1:]]),
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpu": _cpu(), "cores": os.cpu_count(), "platform": platform.platform(),
                    "load_average_before": [round(v, 2) for v in load_before],
                    "load_average_after": [round(v, 2) for v in os.getloadavg()],
                    "note": "shared machine: a one-thread training job and other users' processes ran alongside"},
        "versions": {"onnxruntime": onnxruntime.__version__, "openvino": openvino.get_version(),
                     "torch": torch.__version__, "python": platform.python_version()},
        "settings": {"threads": threads, "repeat": repeat, "images_per_repetition": len(inputs),
                     "calibration_images": calib_size, "model": "ResNet-18 compact (fpn 64, 300 proposals), "
                                                                "random init, 14 classes"},
        "scales": results,
        "wall_seconds": round(time.time() - t_start, 1),
    }
    atomic_write_json(out, record)
    click.echo(json.dumps({"wrote": str(out)}))


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
