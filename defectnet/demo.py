"""The main job, end to end on CPU with synthetic data (``make demo`` / ``defectnet-demo``).

Reads top to bottom, one stage per function; each stage calls the library, not a
subprocess, and prints what it measured. Artefacts land under ``--out``.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import click

from defectnet.bench.benchmark import BenchSettings, run_benchmark, write_outputs
from defectnet.bench.writers import markdown_report
from defectnet.data.coco import load_split
from defectnet.data.stats import format_statistics, split_statistics
from defectnet.data.synthetic import KINDS, SynthParams, generate
from defectnet.engine_build import BuildOptions, build_engine, default_out
from defectnet.engine_build.accuracy import Tolerances
from defectnet.errors import DefectNetError
from defectnet.export import export_engine
from defectnet.export.verify import dataset_images
from defectnet.model_source import load_source
from defectnet.runtime import Pipeline
from defectnet.runtime.inspection.batch import run_inference
from defectnet.runtime.types import BackendName, Precision
from defectnet.train import TrainConfig, Variant, train

#: Reduced-size synthetic fabric is 612x250; train and test at that scale (seed's rule,
#: keep ratio: 612x250 -> 627x256, padded 640x256).
SCALE = (640, 256)
#: Default training length of the demo (fits the main job's 20-minute budget on 2 cores).
EPOCHS = 4
#: Calibration images for the demo's INT8 build (its train split has 240).
CALIB_SIZE = 120
#: From random initialisation the original 0.0025 (per 2 images) learns too slowly for a demo.
LR = 0.01


def _stage(title: str) -> float:
    click.secho(f"\n== {title}", bold=True)
    return time.perf_counter()


def make_data(out: Path, images: int, seed: int) -> Path:
    """Stage 1: a synthetic fabric set (44% normal, like the real one), reduced size."""
    t0 = _stage(f"1. synthetic fabric data: {images} images -> {out}")
    params = SynthParams("fabric", images=images, normal_share=0.44, seed=seed, size=(612, 250))
    generate(params, KINDS["fabric"], out)
    click.echo(f"   generated in {time.perf_counter() - t0:.1f} s")
    return out


def show_statistics(data: Path) -> None:
    """Stage 2: load both splits with the COCO loader and print their statistics."""
    _stage("2. data statistics (COCO loader)")
    for split in ("train", "test"):
        click.echo(format_statistics(split, split_statistics(load_split(data, split))))


def train_models(data: Path, runs: Path, epochs: int, lr: float) -> dict[str, Path]:
    """Stage 3: DefectNet (const schedule) and the one-model baseline, ResNet-18, compact
    detector, from random initialisation (nothing can be downloaded here)."""
    trained = {}
    for variant in (Variant.CONST, Variant.ONE_MODEL):
        t0 = _stage(f"3. train {variant}: resnet18, compact preset, {epochs} epochs at {SCALE[0]}x{SCALE[1]}")
        out = runs / variant.value
        cfg = TrainConfig(variant=variant, epochs=epochs, batch_size=4, lr=lr, scale=SCALE, backbone="resnet18",
                          model_preset="compact")
        shutil.rmtree(out, ignore_errors=True)  # the demo owns --out: always a fresh run on fresh data
        trained[variant.value] = train(cfg, data, out, progress=False, log=lambda m: click.echo(f"   {m}"))
        click.echo(f"   trained in {time.perf_counter() - t0:.0f} s -> {out}")
    return trained


def export_models(data: Path, runs: dict[str, Path]) -> dict[str, Path]:
    """Stage 4: gate.onnx + detector.onnx of each model, with the parity check against PyTorch."""
    engines = {}
    for name, run in runs.items():
        t0 = _stage(f"4. export {name} to ONNX (gate + detector graphs), parity check against PyTorch")
        manifest = export_engine(load_source(run), run / "engine", images=dataset_images(data),
                                 image_source=f"{data} (test split)")
        for r in manifest.verification.runs if manifest.verification is not None else ():
            click.echo(f"   parity {r['input_size'][0]}x{r['input_size'][1]} batch {r['batch']}: |dP| "
                       f"{r['p_max_abs_diff']:.1e}, matched {r['matched']} of {r['torch']}, |dbox| "
                       f"{r['box_max_abs_diff']:.1e} px")
        trt = manifest.tensorrt_check
        state = "not run" if trt is None else "all supported" if trt.supported else "PROBLEMS"
        click.echo(f"   TensorRT {trt.tensorrt_version if trt else ''} parser operator check: {state}; exported in "
                   f"{time.perf_counter() - t0:.0f} s")
        engines[name] = run / "engine"
    return engines


def build_int8(data: Path, engine: Path) -> Path:
    """Stage 5: ``defectnet-build-engine --int8``: calibrate the const model once on the train
    split (gate on every image, detector on gate-positive features), write the ONNX Runtime
    U8S8 graphs beside the float32 export, and measure them against the float32 PyTorch model.

    The accuracy gate runs report-only here (every limit 1.0): after four epochs from random
    weights the gate's P(defective) sits near the threshold for many images, so a handful of
    flips are expected and say nothing about INT8. ``defectnet-build-engine`` enforces the
    tolerances. The build prints its comparison ("mAP <int8> vs <float32> (drop ...)")."""
    out = default_out(engine, Precision.INT8, BackendName.ONNXRUNTIME)
    t0 = _stage(f"5. INT8 engine for ONNX Runtime (U8S8 Q/DQ graphs) -> {out}")
    options = BuildOptions(precision=Precision.INT8, backend=BackendName.ONNXRUNTIME, data_dir=data, calib_size=CALIB_SIZE,
                           tolerances=Tolerances(1.0, 1.0, 1.0, 1.0), log=lambda m: click.echo(f"   {m}"))
    options.validate()
    shutil.rmtree(out, ignore_errors=True)
    manifest = build_engine(engine, out, options)
    acc = manifest.accuracy
    if acc is not None and acc.engine_att_ms is not None and acc.reference_att_ms is not None:
        click.echo(f"   ATT {acc.engine_att_ms:.1f} ms (INT8 ONNX Runtime) vs {acc.reference_att_ms:.1f} ms "
                   "(float32 PyTorch)")
    click.echo(f"   built in {time.perf_counter() - t0:.0f} s")
    return out


def infer_folder(data: Path, engine: Path, out: Path) -> None:
    """Stage 6: ``defectnet-infer`` on the test images: one JSON line per image, annotated
    images for review, on ONNX Runtime with batches of 4."""
    _stage(f"6. defectnet-infer on the test images (ONNX Runtime, batch 4) -> {out}")
    test = load_split(data, "test")
    inputs = [test.image_dir / test.image_info(i)[1] for i in range(len(test))]
    pipeline = Pipeline.from_engine(engine, BackendName.ONNXRUNTIME)
    summary = run_inference(pipeline, inputs, out / "results.jsonl", batch=4, save_images=out / "annotated",
                            progress=False, overwrite=True)  # the demo owns --out: always a fresh file
    for line in summary.text().splitlines():
        click.echo(f"   {line}")


def bench(data: Path, runs: Path, out: Path) -> None:
    """Stage 7: the seed's table for every row and backend, measured side by side in one run
    (PyTorch eager fp32 = the baseline, ONNX Runtime float32 and INT8), plus the deployment table and plots."""
    _stage(f"7. defectnet-bench: ATT tables across backends -> {out}")
    settings = BenchSettings(data=str(data), runs_dir=str(runs), backends=(BackendName.TORCH, BackendName.ONNXRUNTIME), repeat=1,
                             warmup=2, batch=4)
    result = run_benchmark(settings, progress=False)
    write_outputs(result, out)
    click.echo(markdown_report(result))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", default=Path("runs/demo"), show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the data set, runs, engines and reports.")
@click.option("--images", default=300, show_default=True, type=click.IntRange(min=20),
              help="Synthetic images to generate (80% train, 20% test).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--epochs", default=EPOCHS, show_default=True, type=click.IntRange(min=1),
              help="Training epochs per model (the original recipe: 12).")
@click.option("--lr", default=LR, show_default=True, type=float, help="SGD learning rate (batch 4).")
def main(out: Path, images: int, seed: int, epochs: int, lr: float) -> None:
    """Run DefectNet's main job on CPU: synthetic data -> statistics -> train DefectNet and the
    one-model baseline -> export ONNX (parity-checked) -> INT8 ONNX Runtime engine ->
    defectnet-infer -> the seed's ATT table for PyTorch and ONNX Runtime (float32, INT8) side
    by side."""
    start = time.perf_counter()
    try:
        data = make_data(out / "data", images, seed)
        show_statistics(data)
        runs = train_models(data, out / "runs", epochs, lr)
        engines = export_models(data, runs)
        build_int8(data, engines["const"])
        infer_folder(data, engines["const"], out / "infer")
        bench(data, out / "runs", out / "bench")
    except DefectNetError as err:
        raise click.ClickException(str(err)) from err
    click.secho(f"\ndemo finished in {time.perf_counter() - start:.0f} s; outputs under {out}", bold=True)


if __name__ == "__main__":
    main()
