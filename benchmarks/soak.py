"""Soak test of the inspection runtime: N frames through one Inspector, memory sampled.

Reports the resident set size (RSS) after 1,000 and after all frames (plus a sample every
``--sample-every`` frames), the streaming throughput, and a comparison on the same frames:
the Inspector (batching + gate/detector pipelining) against ``Pipeline.run([frame])`` one
image at a time. A leak shows as RSS still climbing between 1k and 10k frames (the
allocators settle within the first few hundred frames).

Usage (a tiny random-weight engine is exported when --engine is not given; exporting it
first keeps the exporter's memory out of the RSS numbers)::

    OMP_NUM_THREADS=1 python benchmarks/soak.py --make-engine /tmp/soak-engine
    OMP_NUM_THREADS=1 python benchmarks/soak.py --engine /tmp/soak-engine --frames 10000 \\
        --height 128 --width 192 --out benchmarks/results/soak_tiny_cpu.json

Frames: a pool of ``--pool`` distinct random-texture uint8 HxWx3 frames (as a camera hands
them over), cycled. The gate threshold defaults to the median P(defective) of the pool, so
about half of the frames run the detector (the fabric set has 44% normal images).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


def rss_bytes() -> int:
    """Resident set size of this process: psutil when installed, else /proc/self/statm."""
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def make_tiny_engine(out: Path, scale: tuple[int, int]) -> Path:
    """Export a random-weight ResNet-18 DefectNet (32-channel FPN, 300 proposals, livelier
    gate) to ``out``: the size class of the runtime tests' engine."""
    from defectnet.export import export_engine
    from defectnet.model import ModelConfig, build_model
    from defectnet.model_source import ModelSource

    torch.manual_seed(0)
    cfg = ModelConfig(num_classes=2, backbone="resnet18", fpn_channels=32, representation_size=64,
                      rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=300, detections_per_img=50)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for head in model.roi_heads.heads:
            assert isinstance(head.cls_score, torch.nn.Linear)
            head.cls_score.weight.normal_(0, 0.3)
        assert model.gate is not None
        model.gate.fc.weight.normal_(0, 0.01)
    export_engine(ModelSource(model, ["hole", "stain"], scale=scale), out, verify=False)
    return out


def frame_pool(n: int, height: int, width: int, seed: int = 0) -> list[np.ndarray]:
    """Smooth random textures with a few bright blobs (not white noise: closer to fabric)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        base = rng.normal(128, 20, (height // 8 + 1, width // 8 + 1, 3))
        img = np.kron(base, np.ones((8, 8, 1)))[:height, :width]
        img += rng.normal(0, 8, img.shape)
        for _ in range(int(rng.integers(0, 3))):
            y, x = int(rng.integers(0, height - 8)), int(rng.integers(0, width - 8))
            img[y: y + int(rng.integers(4, 24)), x: x + int(rng.integers(4, 24))] += 90
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


def soak(insp_kwargs: dict[str, Any], pipeline: Any, pool: list[np.ndarray], frames: int,
         sample_every: int) -> dict[str, Any]:
    from defectnet.runtime.inspection.inspector import Inspector

    samples: list[tuple[int, int]] = []
    count = [0]

    def on_result(_: Any) -> None:
        count[0] += 1
        if count[0] % sample_every == 0 or count[0] == 1000:
            samples.append((count[0], rss_bytes()))

    rss0 = rss_bytes()
    insp = Inspector(pipeline, on_result=on_result, **insp_kwargs)
    t0 = time.perf_counter()
    for i in range(frames):
        insp.submit(pool[i % len(pool)], key=i)
    insp.close()
    wall = time.perf_counter() - t0
    stats = insp.stats()
    by_n = dict(samples)
    return {"frames": frames, "wall_s": wall, "frames_per_s": frames / wall, "rss_start_mib": rss0 / 2**20,
            "rss_1k_mib": by_n.get(1000, 0) / 2**20, "rss_end_mib": by_n.get(frames, rss_bytes()) / 2**20,
            "rss_samples_mib": [(n, round(b / 2**20, 1)) for n, b in samples],
            "results": stats["results"], "errors": stats["errors"], "gate_pass_rate": stats["gate_pass_rate"],
            "mean_batch_size": stats["mean_batch_size"], "p50_ms": stats["p50_ms"], "p99_ms": stats["p99_ms"],
            "metrics_text_bytes": len(insp.metrics_text())}


def compare(insp_kwargs: dict[str, Any], pipeline: Any, pool: list[np.ndarray], n: int,
            rounds: int = 4) -> dict[str, Any]:
    """Throughput on the same n frames: Inspector stream vs Pipeline.run one at a time, in
    alternating rounds (ABAB...) so that load from other processes hits both alike."""
    from defectnet.runtime.inspection.inspector import Inspector
    from defectnet.runtime.inspection.validation import to_image

    frames = [pool[i % len(pool)] for i in range(n)]
    chunks = [frames[i::rounds] for i in range(rounds)]
    single = stream = 0.0
    for chunk in chunks:
        t0 = time.perf_counter()
        for f in chunk:
            pipeline.run([to_image(f)])  # the same input conversion the Inspector does
        single += time.perf_counter() - t0
        t0 = time.perf_counter()
        with Inspector(pipeline, on_result=lambda r: None, **insp_kwargs) as insp:
            for i, f in enumerate(chunk):
                insp.submit(f, key=i)
        stream += time.perf_counter() - t0
    return {"frames": n, "rounds": rounds, "one_at_a_time_fps": n / single, "streaming_fps": n / stream,
            "speedup": single / stream}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engine", type=Path, help="engine folder (default: export a tiny random one)")
    ap.add_argument("--make-engine", type=Path, metavar="DIR",
                    help="only export the tiny engine to DIR and exit (then soak with --engine DIR, so the "
                         "exporter's memory is not in the RSS numbers)")
    ap.add_argument("--engine-scale", type=int, nargs=2, default=(192, 128), metavar=("LONG", "SHORT"),
                    help="preprocessing scale of the exported tiny engine")
    ap.add_argument("--frames", type=int, default=10_000, help="soak frames (0: only the comparison)")
    ap.add_argument("--height", type=int, default=128)
    ap.add_argument("--width", type=int, default=192)
    ap.add_argument("--pool", type=int, default=64, help="distinct frames, cycled")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads per session")
    ap.add_argument("--gate-threshold", type=float, default=None, help="default: median P of the pool")
    ap.add_argument("--compare", type=int, default=400, help="frames for the streaming vs one-at-a-time run")
    ap.add_argument("--rounds", type=int, default=4, help="alternating rounds of the comparison")
    ap.add_argument("--sample-every", type=int, default=500)
    ap.add_argument("--out", type=Path, default=None, help="write the numbers as JSON here")
    args = ap.parse_args(argv)

    from defectnet.runtime.backends import BackendOptions
    from defectnet.runtime.engine import load_engine
    from defectnet.runtime.inspection.validation import to_image
    from defectnet.runtime.pipeline import Pipeline

    torch.set_num_threads(max(1, args.threads))
    if args.make_engine:
        make_tiny_engine(args.make_engine, tuple(args.engine_scale))
        print(f"wrote {args.make_engine}")
        return 0
    tmp = None
    engine_dir = args.engine
    if engine_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="soak-engine-")
        engine_dir = make_tiny_engine(Path(tmp.name) / "engine", tuple(args.engine_scale))
    engine = load_engine(engine_dir)
    pipeline = Pipeline.from_engine(engine, "onnxruntime", backend_options=BackendOptions(threads=args.threads))
    pool = frame_pool(args.pool, args.height, args.width)
    probe = torch.cat([pipeline.gate_stage([to_image(f) for f in pool[i: i + 8]]).p_defective
                       for i in range(0, len(pool), 8)])
    pipeline.gate_threshold = (float(probe.median()) if args.gate_threshold is None else args.gate_threshold)
    kwargs = {"batch_size": args.batch, "max_wait_ms": args.max_wait_ms}
    report: dict[str, Any] = {
        "engine": str(args.engine or f"tiny random ResNet-18 DefectNet, scale {tuple(args.engine_scale)}"),
        "frame_size": [args.height, args.width], "batch_size": args.batch, "max_wait_ms": args.max_wait_ms,
        "gate_threshold": pipeline.gate_threshold, "intra_op_threads": args.threads,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}",
        "python": sys.version.split()[0], "torch": torch.__version__,
    }
    if args.frames > 0:
        print(f"soak: {args.frames} frames {args.height}x{args.width}, batch {args.batch}", file=sys.stderr)
        report["soak"] = soak(kwargs, pipeline, pool, args.frames, args.sample_every)
        s = report["soak"]
        print(f"RSS: start {s['rss_start_mib']:.1f} MiB, after 1k frames {s['rss_1k_mib']:.1f} MiB, after "
              f"{s['frames']} frames {s['rss_end_mib']:.1f} MiB")
        print(f"throughput {s['frames_per_s']:.1f} frames/s ({s['results']} records, {s['errors']} errors, gate "
              f"pass rate {s['gate_pass_rate']:.2f}, mean batch {s['mean_batch_size']:.2f}, p50 "
              f"{s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms)")
    print(f"compare: {args.compare} frames", file=sys.stderr)
    report["compare"] = compare(kwargs, pipeline, pool, args.compare, args.rounds)
    c = report["compare"]
    print(f"streaming {c['streaming_fps']:.1f} frames/s vs one at a time {c['one_at_a_time_fps']:.1f} frames/s: "
          f"{c['speedup']:.2f}x")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
