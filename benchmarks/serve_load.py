"""Load benchmark of ``defectnet.serve``: K concurrent HTTP clients against the split and the
fused Serve applications, and the same K clients calling an in-process Inspector, on the same
machine, the same frames and the same engine, in alternating rounds.

::

    OMP_NUM_THREADS=1 python benchmarks/serve_load.py --make-engine /tmp/serve-engine
    OMP_NUM_THREADS=1 python benchmarks/serve_load.py --engine /tmp/serve-engine \\
        --out benchmarks/results/serve_load_cpu2.json

``--make-engine`` exports a **random-init** ResNet-18 DefectNet with the ``compact`` preset
(2 classes) at preprocessing scale 640x256 -- fine for timing (the graphs' cost does not
depend on the weights; the detector's post-processing works on a fixed number of proposals).

* Frames: a pool of smooth random 640x256 textures, PNG-encoded (what a client sends; every
  path decodes them: the Ingress for Serve, the Inspector's submit for in-process).
* Gate threshold: the 0.45 quantile of P(defective) over the pool, computed in process
  before the runs, so about 55 % of the frames pass the gate (normal share 0.45).
* Modes: ``inproc`` (one Inspector: batch 4, gate and detector threads, K client threads
  calling ``inspect``), ``split`` (Ingress, Gate 1, Detector 1 replica), ``fused`` (Ingress,
  Fused 2 replicas): two model cores for each, one ONNX Runtime intra-op thread per session.
  Both Serve applications run side by side on one loopback Ray cluster; an idle one costs
  no CPU. Rounds alternate inproc / split / fused so that load from other processes on a
  shared machine hits all three alike.
* Per round: throughput, p50/p99 request latency, and from the Ingress's ``/metrics`` each
  deployment's busy time (the compute time of its batches), wait time (queue, batch forming,
  transfer) and calls.
* Serve overhead per image: one request at a time (K=1), the median latency over HTTP minus
  the median in-process latency, on the same frames; and per request, the record's latency
  minus its stage times.
* The sizing rule ``detector replicas ~ gate replicas x pass rate x t_detector / t_gate``:
  t_gate (preprocess + gate + select) and t_detector (detector + postprocess) from
  ``Pipeline.run`` one image at a time in process, against the busy and wait times the split
  application measured.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

CLASSES = ["hole", "stain"]


def make_engine(out: Path, scale: tuple[int, int]) -> None:
    import torch

    from defectnet.export import export_engine
    from defectnet.model import ModelConfig, build_model
    from defectnet.model_source import ModelSource

    torch.manual_seed(0)
    model = build_model(ModelConfig.preset("compact", num_classes=len(CLASSES), backbone="resnet18")).eval()
    export_engine(ModelSource(model, CLASSES, scale=scale), out, verify=False)


def frames(n: int, height: int, width: int, seed: int = 0) -> list[bytes]:
    """Smooth random textures (upsampled noise), PNG-encoded."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        small = rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)
        noise = rng.integers(-12, 13, (height, width, 3))
        arr = np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def post(url: str, body: bytes, key: str) -> tuple[int, dict[str, Any], float]:
    t0 = time.perf_counter()
    request = urllib.request.Request(f"{url}/v1/inspect?key={key}", data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as r:
            status, record = r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        status, record = e.code, json.loads(e.read())
    return status, record, (time.perf_counter() - t0) * 1e3


def metrics(url: str) -> dict[tuple[str, str], float]:
    """{(series, deployment label or ''): value} of the Ingress's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as r:
        text = r.read().decode()
    return {(s.name, s.labels.get("deployment", "")): s.value for f in text_string_to_metric_families(text)
            for s in f.samples if not s.labels or set(s.labels) == {"deployment"}}


def run_round(call: Any, pool: list[bytes], n: int, k: int, tag: str) -> dict[str, Any]:
    """n requests from k client threads; ``call(body, key) -> (ok, record, latency_ms)``."""
    latencies: list[float] = []
    records: list[dict[str, Any]] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        ok, record, ms = call(pool[i % len(pool)], f"{tag}-{i}")
        with lock:
            latencies.append(ms)
            if ok:
                records.append(record)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(k) as ex:
        list(ex.map(one, range(n)))
    wall = time.perf_counter() - t0
    overhead = [r["latency_ms"] - sum(r["timings_ms"].values()) for r in records]
    return {"requests": n, "answered_200": len(records), "wall_s": wall, "images_per_s": n / wall,
            "p50_ms": pct(latencies, 50), "p99_ms": pct(latencies, 99),
            "pass_rate": sum(r["ran_detector"] for r in records) / max(1, len(records)),
            "record_latency_minus_stages_ms_median": statistics.median(overhead) if overhead else None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--make-engine", type=Path, metavar="DIR", help="only export the engine to DIR and exit")
    ap.add_argument("--engine", type=Path)
    ap.add_argument("--scale", type=int, nargs=2, default=(640, 256), metavar=("LONG", "SHORT"))
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--pool", type=int, default=32)
    ap.add_argument("--clients", type=int, default=8, help="K concurrent clients")
    ap.add_argument("--requests", type=int, default=96, help="requests per mode and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sequential", type=int, default=24, help="K=1 requests per mode (the overhead)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--batch-wait-ms", type=float, default=10.0)
    ap.add_argument("--normal-share", type=float, default=0.45)
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    if args.make_engine:
        make_engine(args.make_engine, tuple(args.scale))
        print(f"exported a random-init ResNet-18 compact engine to {args.make_engine}")
        return 0
    if args.engine is None:
        ap.error("give --engine DIR (make one with --make-engine DIR)")

    from defectnet.serve.local import LOOPBACK_ENV

    os.environ.update(LOOPBACK_ENV)  # before ray is imported
    import torch

    torch.set_num_threads(1)
    from defectnet.runtime.backends import BackendOptions
    from defectnet.runtime.inspection.inspector import Inspector
    from defectnet.runtime.inspection.validation import to_image
    from defectnet.runtime.pipeline import Pipeline
    from defectnet.serve.local import start_local
    from defectnet.serve.options import Scaling, ServeOptions

    load_before = os.getloadavg()
    pool = frames(args.pool, args.height, args.width)
    pipeline = Pipeline.from_engine(args.engine, backend_options=BackendOptions(threads=1), gate_threshold=2.0)
    p = [pipeline.run([to_image(f)])[0].p_defective for f in pool]
    threshold = float(np.quantile(p, args.normal_share))
    pipeline.gate_threshold = threshold
    common: dict[str, Any] = {"engine": str(args.engine.resolve()), "threads": 1, "gate_threshold": threshold,
                              "max_batch_size": args.batch, "batch_wait_ms": args.batch_wait_ms,
                              "max_queued": 256, "request_timeout_s": 120.0}
    split = ServeOptions(**common, mode="split", gate=Scaling(cpus=1), detector=Scaling(cpus=1))
    fused = ServeOptions(**common, mode="fused", fused=Scaling(replicas=2, cpus=1))
    t0 = time.perf_counter()
    service = start_local(split, port=args.port, num_cpus=4 + 2, app_name="split")
    from ray import serve

    from defectnet.serve.app import build_app

    serve.run(build_app(fused), name="fused", route_prefix="/fused")
    startup_s = time.perf_counter() - t0
    urls = {"split": service.url, "fused": f"{service.url}/fused"}
    results: dict[str, Any] = {"rounds": {m: [] for m in ("inproc", "split", "fused")}}
    try:
        with Inspector(pipeline, batch_size=args.batch, max_wait_ms=args.batch_wait_ms,
                       max_in_flight=8 * args.batch) as insp:

            def inproc(body: bytes, key: str) -> tuple[bool, dict[str, Any], float]:
                t = time.perf_counter()
                record = insp.inspect(body, key=key).to_json()
                return record["verdict"] != "ERROR", record, (time.perf_counter() - t) * 1e3

            def http(url: str) -> Any:
                def call(body: bytes, key: str) -> tuple[bool, dict[str, Any], float]:
                    status, record, ms = post(url, body, key)
                    return status == 200, record, ms
                return call

            calls = {"inproc": inproc, "split": http(urls["split"]), "fused": http(urls["fused"])}
            inproc_records: list[dict[str, Any]] = []
            for mode, call in calls.items():  # warm-up: sessions, connections, batch queues
                run_round(call, pool, 2 * args.clients, args.clients, f"warm-{mode}")
            for rnd in range(args.rounds):
                for mode, call in calls.items():
                    before = metrics(urls[mode]) if mode != "inproc" else {}
                    stats = run_round(call, pool, args.requests, args.clients, f"{mode}-{rnd}")
                    if mode != "inproc":
                        after = metrics(urls[mode])
                        stats["deployments"] = {
                            d: {"calls": after[("defectnet_serve_deployment_batch_size_count", d)]
                                - before[("defectnet_serve_deployment_batch_size_count", d)],
                                "busy_s": after[("defectnet_serve_deployment_busy_seconds_total", d)]
                                - before[("defectnet_serve_deployment_busy_seconds_total", d)],
                                "wait_s": after[("defectnet_serve_deployment_wait_seconds_total", d)]
                                - before[("defectnet_serve_deployment_wait_seconds_total", d)],
                                "batch_size_sum": after[("defectnet_serve_deployment_batch_size_sum", d)]
                                - before[("defectnet_serve_deployment_batch_size_sum", d)]}
                            for d in (("Gate", "Detector") if mode == "split" else ("Fused",))}
                    results["rounds"][mode].append(stats)
                    print(f"round {rnd} {mode}: {stats['images_per_s']:.1f} img/s, p50 {stats['p50_ms']:.0f} ms, "
                          f"p99 {stats['p99_ms']:.0f} ms", file=sys.stderr)
            # stage times in process, one image at a time (the sizing rule's t_gate, t_detector)
            for i in range(2 * len(pool)):
                (r,) = pipeline.run([to_image(pool[i % len(pool)])])
                inproc_records.append({"ran_detector": r.ran_detector, "timings_ms": r.timings_ms})
            # one request at a time: the Serve overhead per image
            sequential: dict[str, Any] = {}
            for mode, call in calls.items():
                ms = [call(pool[i % len(pool)], f"seq-{mode}-{i}")[2] for i in range(args.sequential)]
                sequential[mode] = {"requests": args.sequential, "p50_ms": pct(ms, 50), "mean_ms": statistics.mean(ms)}
    finally:
        service.shutdown()

    gate_stages, detector_stages = ("preprocess", "gate", "select"), ("detector", "postprocess")
    t_gate = statistics.mean(sum(r["timings_ms"].get(k, 0.0) for k in gate_stages) for r in inproc_records)
    det_rows = [r for r in inproc_records if r["ran_detector"]]
    t_detector = statistics.mean(sum(r["timings_ms"].get(k, 0.0) for k in detector_stages) for r in det_rows) \
        if det_rows else float("nan")
    pass_rate = len(det_rows) / len(inproc_records)
    split_rounds = results["rounds"]["split"]
    wall = sum(r["wall_s"] for r in split_rounds)
    dep = {d: {k: sum(r["deployments"][d][k] for r in split_rounds) for k in ("calls", "busy_s", "wait_s")}
           for d in ("Gate", "Detector")}
    measured_pass = dep["Detector"]["calls"] / dep["Gate"]["calls"]
    sizing = {
        "rule": "detector replicas ~ gate replicas x pass rate x t_detector / t_gate",
        "inproc_t_gate_ms": t_gate, "inproc_t_detector_ms": t_detector, "inproc_pass_rate": pass_rate,
        "predicted_detector_replicas_per_gate_replica": pass_rate * t_detector / t_gate,
        "serve_pass_rate": measured_pass,
        "serve_t_gate_ms": dep["Gate"]["busy_s"] / dep["Gate"]["calls"] * 1e3,
        "serve_t_detector_ms": dep["Detector"]["busy_s"] / dep["Detector"]["calls"] * 1e3,
        "serve_busy_ratio_detector_over_gate": dep["Detector"]["busy_s"] / dep["Gate"]["busy_s"],
        "gate_utilisation": dep["Gate"]["busy_s"] / wall, "detector_utilisation": dep["Detector"]["busy_s"] / wall,
        "gate_wait_ms_per_call": dep["Gate"]["wait_s"] / dep["Gate"]["calls"] * 1e3,
        "detector_wait_ms_per_call": dep["Detector"]["wait_s"] / dep["Detector"]["calls"] * 1e3,
    }

    def summary(mode: str) -> dict[str, Any]:
        rounds = results["rounds"][mode]
        n = sum(r["requests"] for r in rounds)
        return {"requests": n, "answered_200": sum(r["answered_200"] for r in rounds),
                "images_per_s": n / sum(r["wall_s"] for r in rounds),
                "p50_ms_median_of_rounds": statistics.median(r["p50_ms"] for r in rounds),
                "p99_ms_median_of_rounds": statistics.median(r["p99_ms"] for r in rounds),
                "pass_rate": statistics.mean(r["pass_rate"] for r in rounds)}

    table = {m: summary(m) for m in ("inproc", "split", "fused")}
    for mode in ("split", "fused"):
        rounds = results["rounds"][mode]
        w = sum(r["wall_s"] for r in rounds)
        table[mode]["deployments"] = {
            d: {"calls": sum(r["deployments"][d]["calls"] for r in rounds),
                "busy_s": sum(r["deployments"][d]["busy_s"] for r in rounds),
                "busy_share_of_wall": sum(r["deployments"][d]["busy_s"] for r in rounds) / w,
                "wait_ms_per_call": sum(r["deployments"][d]["wait_s"] for r in rounds)
                / max(1, sum(r["deployments"][d]["calls"] for r in rounds)) * 1e3,
                "mean_batch_size": sum(r["deployments"][d]["batch_size_sum"] for r in rounds)
                / max(1, sum(r["deployments"][d]["calls"] for r in rounds))}
            for d in rounds[0]["deployments"]}
        table[mode]["throughput_vs_inproc"] = table[mode]["images_per_s"] / table["inproc"]["images_per_s"]
    overhead = {mode: sequential[mode]["p50_ms"] - sequential["inproc"]["p50_ms"] for mode in ("split", "fused")}
    out = {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
                    "note": "shared 2-core VM: other jobs (a training run on one core) ran during the benchmark"},
        "engine": {"path": str(args.engine), "model": "random-init ResNet-18 DefectNet, compact preset, 2 classes",
                   "scale": list(args.scale), "frames": f"{args.pool} smooth random {args.width}x{args.height} PNGs"},
        "settings": {"clients": args.clients, "requests_per_round": args.requests, "rounds": args.rounds,
                     "batch": args.batch, "batch_wait_ms": args.batch_wait_ms, "normal_share": args.normal_share,
                     "gate_threshold": threshold, "gate_threshold_rule": f"{args.normal_share} quantile of P(defective) "
                     "over the frame pool, in process", "ort_threads_per_session": 1,
                     "split": "Ingress 1 (0 CPU), Gate 1, Detector 1", "fused": "Ingress 1 (0 CPU), Fused 2",
                     "inproc": "Inspector(batch, gate + detector threads), inspect() from K threads"},
        "startup_s": startup_s,
        "summary": table,
        "sequential_k1": sequential,
        "serve_overhead_per_image_ms": overhead,
        "sizing": sizing,
        "rounds": results["rounds"],
    }
    text = json.dumps(out, indent=2)
    if args.out:
        from defectnet.io import atomic_write_text

        atomic_write_text(args.out, text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
