"""Do ``defectnet-eval`` and ``defectnet-bench`` time the same model alike? Their two timed
calls, on the same images in one process, interleaved image by image.

``defectnet-eval RUN`` times ``model.inference`` on the data set's padded batch (the PyTorch
model itself; the uint8 batch converted to float inside the timed region:
``defectnet.evaluation.evaluate._run_model``). ``defectnet-bench --checkpoint RUN`` times
``Pipeline.inference`` over the torch backend behind the bench's stage timer (uint8 into
the backbone, sub-batch selection, detections copied into padded tensors:
``defectnet.bench.runner._infer``), on the image decoded and preprocessed by the pipeline's
own preprocessor. This script calls both on every test image in the order eval, bench,
bench, eval (then the next image), ``--rounds`` times, so that load on the machine falls on
both alike, and reports the mean over images of each image's median time per path (ATT,
ATT_normal, ATT_defective by ground truth; also over the images that skipped / ran the
detector) and the ratios eval / bench; the same from each image's best (minimum) time,
which is what remains when other work on a shared machine is taken out (it only adds time);
and median / best, how much that other work added. Both use the same
threads and the same warm-up. What it does not reproduce: two runs at different times on a
shared machine (the recorded eval and bench files), which is a difference of conditions,
not of code.

Usage::

    python benchmarks/eval_vs_bench.py --make DIR [--size tiny]   # synthetic data + a random-weight run
    python benchmarks/eval_vs_bench.py --dir DIR --threads 2 --rounds 2 --out FILE.json

``--make`` writes ``DIR/data`` (``defectnet-synth fabric``: ``--images`` images, half of them
test images) and ``DIR/runs/const``: a random-weight ResNet-18 ``compact`` DefectNet whose
gate threshold is the median P(defective) of the test images, so about half of them leave
after the backbone; ``--size r18-640x256`` (612x250 images at 640x256: the architecture of
the recorded 48-epoch models) or ``tiny`` (192x96, 16-channel FPN: many more rounds fit in
the same time). Random weights: the times show the mechanism, not a trained model's numbers.
"""

from __future__ import annotations

import datetime as _dt
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import click
import torch

#: --size: (image size WxH of the data, model scale, extra ModelConfig fields).
SIZES: dict[str, tuple[tuple[int, int], tuple[int, int], dict[str, Any]]] = {
    "r18-640x256": ((612, 250), (640, 256), {}),
    "tiny": ((192, 96), (192, 96), {"fpn_channels": 16, "representation_size": 32}),
}


def make(root: Path, images: int, size: str) -> None:
    """Synthetic data and a random-weight const run folder (see the module docstring)."""
    from defectnet.data.coco import load_split
    from defectnet.data.synthetic import KINDS, SynthParams, generate
    from defectnet.model import ModelConfig, build_model
    from defectnet.train.checkpoint import CheckpointMeta, default_model_io, save_checkpoint, write_run_json

    image_size, scale, extra = SIZES[size]
    data = root / "data"
    generate(SynthParams("fabric", images=images, normal_share=0.44, seed=0, size=image_size, test_share=0.5),
             KINDS["fabric"], data)
    ds = load_split(data, "test", scale=scale)
    torch.manual_seed(0)
    cfg = ModelConfig.preset("compact", num_classes=ds.num_classes, backbone="resnet18", **extra)
    model = build_model(cfg).eval()
    with torch.no_grad():
        p = [float(model.features(ds[i].image[None].float(), [(int(ds[i].image.shape[-2]), int(ds[i].image.shape[-1]))])[0])
             for i in range(len(ds))]
    torch.manual_seed(0)  # the same weights again, with the threshold
    model = build_model(cfg.replace(gate_threshold=statistics.median(p))).eval()
    run = root / "runs" / "const"
    meta = CheckpointMeta(kind="detector", variant="const", epoch=1, iteration=1, model_config=model.config.to_dict(),
                          train_config={"scale": list(scale), "backbone": "resnet18"},
                          class_names=list(ds.class_names), label_to_category_id=dict(ds.label_to_category_id))
    final = save_checkpoint(run, model, {}, meta, default_model_io())
    write_run_json(run, {"kind": "detector", "variant": "const", "final_checkpoint": str(final.relative_to(run))})
    click.echo(f"wrote {data} and {run}")


def measure(run: Path, data: Path, threads: int, warmup: int, rounds: int, gate_threshold: float | None = None) -> dict[str, Any]:
    """Per-image times (ms) of the eval path and the bench path, interleaved (see the module
    docstring); the detections of both paths compared once."""
    from defectnet.bench.imageset import build_image_set
    from defectnet.bench.runner import StageTimedBackend, _infer
    from defectnet.data.coco import collate, load_split
    from defectnet.data.image_io import read_image
    from defectnet.data.transforms import Preprocessor
    from defectnet.evaluation.evaluate import _run_model, warmup_indices
    from defectnet.model import DefectNet
    from defectnet.runtime import Pipeline
    from defectnet.runtime.backends import BackendOptions, make_backend
    from defectnet.runtime.types import EngineKind
    from defectnet.train.checkpoint import load_run

    model, info = load_run(run, "cpu")
    if not isinstance(model, DefectNet):
        raise SystemExit(f"{run} is not a DefectNet or one-model run; eval_vs_bench compares their paths")
    threshold = float(model.config.gate_threshold) if gate_threshold is None else gate_threshold
    scale = tuple(info.train_config["scale"])
    dataset = load_split(data, "test", scale=scale, train=False)
    images = build_image_set(data, "test")
    pipeline = Pipeline(StageTimedBackend(make_backend(model, "torch", BackendOptions(threads=threads))),
                        kind=EngineKind.DEFECTNET, class_names=list(info.class_names),
                        gate_threshold=threshold, preprocessor=Preprocessor(scale, 32))
    dev = torch.device("cpu")
    eval_in = [collate([dataset[i]])[0] for i in range(len(dataset))]
    bench_in = [pipeline.preprocessor([read_image(images.path(k))]) for k in range(len(images))]
    same_input = all(torch.equal(a.images.to(torch.uint8), b.images) and list(a.image_sizes) == list(b.image_sizes)
                     for a, b in zip(eval_in, bench_in))

    def run_eval(i: int) -> list[Any]:
        return _run_model(model, eval_in[i], dev, threshold)

    def run_bench(i: int) -> list[Any]:
        return _infer(pipeline, bench_in[i])

    with torch.no_grad():
        for i in warmup_indices(dataset, warmup):
            run_eval(i), run_bench(i)
        same_output = all(
            [(d.ran_detector, int(d.scores.numel())) for d in run_eval(i)]
            == [(d.ran_detector, int(d.scores.numel())) for d in run_bench(i)] for i in range(len(dataset)))
        times: dict[str, list[list[float]]] = {path: [[] for _ in range(len(dataset))] for path in ("eval", "bench")}
        for _ in range(rounds):
            for i in range(len(dataset)):
                for path, fn in (("eval", run_eval), ("bench", run_bench), ("bench", run_bench), ("eval", run_eval)):
                    t0 = time.perf_counter()
                    fn(i)
                    times[path][i].append((time.perf_counter() - t0) * 1e3)
    truth = [bool(dataset.is_defective(i)) for i in range(len(dataset))]
    ran = [bool(d.ran_detector) for i in range(len(dataset)) for d in run_bench(i)]
    def figures(per_image: list[float]) -> dict[str, float | None]:
        return {"att_ms": statistics.fmean(per_image),
                "att_normal_ms": statistics.fmean([m for m, t in zip(per_image, truth) if not t]),
                "att_defective_ms": statistics.fmean([m for m, t in zip(per_image, truth) if t]),
                "att_skipped_ms": statistics.fmean([m for m, r in zip(per_image, ran) if not r])
                if not all(ran) else None,
                "att_ran_ms": statistics.fmean([m for m, r in zip(per_image, ran) if r]) if any(ran) else None}

    def ratios(a: dict[str, float | None], b: dict[str, float | None]) -> dict[str, float]:
        return {k: va / vb for k in a if (va := a[k]) is not None and (vb := b[k])}

    # medians: the protocols' own statistic; minima: the best of the calls, what is left when the
    # other work on a shared machine is taken out (it only ever adds time)
    summary = {path: figures([statistics.median(ts) for ts in per_image]) for path, per_image in times.items()}
    best = {path: figures([min(ts) for ts in per_image]) for path, per_image in times.items()}
    return {"images": len(dataset), "normal": truth.count(False), "detector_runs": sum(ran),
            "same_input": same_input, "same_detections": same_output, "summary": summary,
            "eval_over_bench": ratios(summary["eval"], summary["bench"]),
            "best": best, "best_eval_over_bench": ratios(best["eval"], best["bench"]),
            "median_over_best": {path: ratios(summary[path], best[path]) for path in times},
            "per_image_ms": times, "defective": truth, "ran_detector": ran}


@click.command()
@click.option("--make", "make_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write synthetic data and a random-weight run under DIR, then stop.")
@click.option("--images", default=40, show_default=True, help="Images for --make (half test).")
@click.option("--size", default="r18-640x256", show_default=True, type=click.Choice(list(SIZES)),
              help="Model and image size for --make (tiny: 192x96 images, 16-channel FPN).")
@click.option("--dir", "root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="A folder made by --make.")
@click.option("--run", "run_dir", type=click.Path(file_okay=False, exists=True, path_type=Path), default=None,
              help="A trained run folder to time instead of DIR/runs/const (with --data).")
@click.option("--data", "data_dir", type=click.Path(file_okay=False, exists=True, path_type=Path), default=None,
              help="Its data folder (the test split is timed) instead of DIR/data.")
@click.option("--gate-threshold", type=click.FloatRange(0.0, 1.0), default=None,
              help="P(defective) threshold for both paths [default: the run's].")
@click.option("--threads", default=2, show_default=True, type=click.IntRange(min=1))
@click.option("--warmup", default=3, show_default=True, type=click.IntRange(min=0))
@click.option("--rounds", default=2, show_default=True, type=click.IntRange(min=1))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None)
def main(make_dir: Path | None, images: int, size: str, root: Path | None, run_dir: Path | None,
         data_dir: Path | None, gate_threshold: float | None, threads: int, warmup: int, rounds: int, out: Path | None) -> None:
    from defectnet.evaluation.environment import library_versions, machine_info
    from defectnet.io import atomic_write_json

    if make_dir is not None:
        make(make_dir, images, size)
        return
    if root is None and (run_dir is None or data_dir is None):
        raise click.UsageError("give --make DIR, --dir DIR, or --run RUN --data DATA")
    run = run_dir if run_dir is not None else root / "runs" / "const"  # type: ignore[operator]
    data = data_dir if data_dir is not None else root / "data"  # type: ignore[operator]
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    got = measure(run, data, threads, warmup, rounds, gate_threshold)
    for path in ("eval", "bench"):
        s = got["summary"][path]
        click.echo(f"{path}: ATT {s['att_ms']:.1f} ms, ATT_normal {s['att_normal_ms']:.1f}, ATT_defective "
                   f"{s['att_defective_ms']:.1f}")
    click.echo("eval / bench (per-image medians): " + ", ".join(
        f"{k} {v:.3f}" for k, v in got["eval_over_bench"].items()))
    click.echo("eval / bench (per-image best): " + ", ".join(
        f"{k} {v:.3f}" for k, v in got["best_eval_over_bench"].items()))
    click.echo(f"median / best: eval {got['median_over_best']['eval']['att_ms']:.2f}, bench "
               f"{got['median_over_best']['bench']['att_ms']:.2f}; same input {got['same_input']}, same detections "
               f"{got['same_detections']}")
    if out is not None:
        atomic_write_json(out, {
            "command": shlex.join(["python", "benchmarks/eval_vs_bench.py", *sys.argv[1:]]),
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "what": "defectnet-eval's timed call vs defectnet-bench's on the same images, interleaved per image "
                    "(eval, bench, bench, eval), " + (
                        f"the trained run {run} at gate threshold {gate_threshold}" if run_dir is not None else
                        "a random-weight ResNet-18 compact DefectNet (gate threshold at the median P of the test "
                        "images)"),
            "settings": {"threads": threads, "warmup": warmup, "rounds": rounds, "run": str(run),
                         "gate_threshold": gate_threshold,
                         "data": str(data), "torch_threads": torch.get_num_threads(),
                         "torch_interop_threads": torch.get_num_interop_threads()},
            "machine": machine_info(), "libraries": library_versions(),
            "wall_seconds": round(time.perf_counter() - t0, 1), **got})
        click.echo(f"wrote {out}", err=True)


if __name__ == "__main__":
    main()
