"""The main job, end to end on CPU with synthetic data (``make demo`` / ``defectnet-demo``).

Reads top to bottom, one stage per function; each stage calls the library, not a
subprocess, and prints what it measured. Artefacts land under ``--out``.
"""

from __future__ import annotations

import shlex
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click

from defectnet.bench.benchmark import BenchSettings, run_benchmark, write_outputs
from defectnet.bench.results import BenchResult
from defectnet.bench.writers import markdown_report
from defectnet.data.coco import load_split
from defectnet.data.stats import format_statistics, split_statistics
from defectnet.data.synthetic import KINDS, SynthParams, generate
from defectnet.engine_build import BuildOptions, build_engine, default_out
from defectnet.engine_build.gate_calibration import calibrate_gate, threshold_for_recall
from defectnet.errors import ConfigError, DefectNetError
from defectnet.export import export_engine
from defectnet.export.verify import dataset_images
from defectnet.io import atomic_write_json
from defectnet.model_source import load_source
from defectnet.runtime import Pipeline
from defectnet.runtime.inspection.batch import run_inference
from defectnet.runtime.inspection.sheet import write_results_sheet
from defectnet.runtime.types import BackendName
from defectnet.train import TrainConfig, Variant, train

#: Reduced-size synthetic fabric is 612x250; train and test at that scale (seed's rule,
#: keep ratio: 612x250 -> 627x256, padded 640x256).
SCALE = (640, 256)
#: The committed reference DefectNet-const (benchmarks/reference/README.md says how it was trained).
REFERENCE = Path(__file__).resolve().parents[1] / "models" / "reference-const"
#: The short training stage: a fine-tune of the reference, so the training path runs end to end.
FINETUNE_EPOCHS = 1
#: The fine-tune's learning rate: the reference's own after its schedule's last step (0.01 / 100).
FINETUNE_LR = 0.0001
#: Calibration images for the demo's INT8 candidates.
CALIB_SIZE = 120
#: The gate recall a line would require; the threshold is chosen on the validation split.
TARGET_RECALL = 0.95
#: Seed of the demo's data: neither the reference's training (0) nor its held-out test set (7) used it.
SEED = 11


def _stage(title: str) -> float:
    click.secho(f"\n== {title}", bold=True)
    return time.perf_counter()


def make_data(out: Path, images: int, seed: int) -> Path:
    """Stage 1: a synthetic fabric set (44 % normal, like the real one, with the benign
    irregularities of real cloth), reduced size, half train and half test. The train split
    is the validation split of the reference (it never saw these images): the fine-tune,
    INT8 calibration and the gate's threshold use it; the test split is only measured."""
    t0 = _stage(f"1. synthetic fabric data: {images} images (seed {seed}) -> {out}")
    params = SynthParams("fabric", images=images, normal_share=0.44, seed=seed, size=(612, 250), test_share=0.5)
    generate(params, KINDS["fabric"], out)
    click.echo(f"   generated in {time.perf_counter() - t0:.1f} s")
    return out


def show_statistics(data: Path) -> None:
    """Stage 2: load both splits with the COCO loader and print their statistics."""
    _stage("2. data statistics (COCO loader)")
    for split in ("train", "test"):
        click.echo(format_statistics(split, split_statistics(load_split(data, split))))


def check_reference(reference: Path) -> Path:
    """The reference run folder, its weights' SHA-256 checked (a changed file fails here with
    the fix), or a ConfigError that says how to get it."""
    if not (reference / "run.json").is_file():
        raise ConfigError(f"no reference model at {reference}: restore it with `git checkout -- models/` (it is "
                          "committed), or train one with `python benchmarks/campaign.py --out runs/reference` and "
                          "pass --reference runs/reference/reference-const")
    source = load_source(reference)
    click.echo(f"   {reference}: DefectNet-{source.variant}, weights SHA-256 checked "
               f"({', '.join(h[:12] for h in source.weights.values())})")
    return reference


def fine_tune(data: Path, reference: Path, out: Path) -> Path:
    """Stage 3: the training path end to end, short: DefectNet-const fine-tuned from the
    reference (``defectnet-train --init``) for one epoch on the train split. The
    stages after it use the reference itself: an epoch on two cores cannot train a model."""
    t0 = _stage(f"3. train: DefectNet-const from the reference, {FINETUNE_EPOCHS} epoch at {SCALE[0]}x{SCALE[1]} "
                "(the training path end to end; the later stages use the reference)")
    cfg = TrainConfig(variant=Variant.CONST, epochs=FINETUNE_EPOCHS, batch_size=4, lr=FINETUNE_LR, scale=SCALE,
                      backbone="resnet18", model_preset="compact", init_from=str(reference))
    shutil.rmtree(out, ignore_errors=True)  # the demo owns --out: always a fresh run on fresh data
    run = train(cfg, data, out, progress=False, log=lambda m: click.echo(f"   {m}"))
    click.echo(f"   trained in {time.perf_counter() - t0:.0f} s -> {run}")
    return run


def export_reference(data: Path, reference: Path, out: Path) -> Path:
    """Stage 4: gate.onnx + detector.onnx of the reference, with the parity check against PyTorch."""
    t0 = _stage("4. export the reference to ONNX (gate + detector graphs), parity check against PyTorch")
    shutil.rmtree(out, ignore_errors=True)
    manifest = export_engine(load_source(reference), out, images=dataset_images(data),
                             image_source=f"{data} (test split)")
    for r in manifest.verification.runs if manifest.verification is not None else ():
        click.echo(f"   parity {r['input_size'][0]}x{r['input_size'][1]} batch {r['batch']}: |dP| "
                   f"{r['p_max_abs_diff']:.1e}, matched {r['matched']} of {r['torch']}, |dbox| "
                   f"{r['box_max_abs_diff']:.1e} px")
    trt = manifest.tensorrt_check
    state = "not run" if trt is None else "all supported" if trt.supported else "PROBLEMS"
    click.echo(f"   TensorRT {trt.tensorrt_version if trt else ''} parser operator check: {state}; exported in "
               f"{time.perf_counter() - t0:.0f} s -> {out}")
    return out


def build_fastest(data: Path, engine: Path) -> Path:
    """Stage 5: ``defectnet-build-engine --backend auto`` (the default on CPU): every installed
    runtime and precision (ONNX Runtime fp32/INT8, OpenVINO fp32/INT8/bf16-or-fp16) per graph,
    INT8 calibrated once on the train split, timed side by side here; the fastest that passes
    the accuracy gate against float32 PyTorch on the test split is kept."""
    out = default_out(engine, None, BackendName.AUTO)
    t0 = _stage(f"5. build the fastest CPU engine (--backend auto: ONNX Runtime / OpenVINO, fp32 / INT8 / half) -> "
                f"{out}")
    options = BuildOptions(precision=None, backend=BackendName.AUTO, data_dir=data, calib_size=CALIB_SIZE,
                           log=lambda m: click.echo(f"   {m}"))
    shutil.rmtree(out, ignore_errors=True)
    manifest = build_engine(engine, out, options)
    chosen = ", ".join(f"{g} {e.backend} {e.precision}" for g, e in manifest.graphs.items())
    click.echo(f"   chose {chosen}; built in {time.perf_counter() - t0:.0f} s")
    return out


def choose_threshold(data: Path, engine: Path) -> float:
    """Stage 6: the gate's operating point: a P(defective) threshold that keeps gate recall
    >= TARGET_RECALL on the validation (train) split (with a margin to the boundary image:
    :func:`~defectnet.engine_build.gate_calibration.threshold_for_recall`), written into the manifest."""
    _stage(f"6. gate threshold for recall >= {TARGET_RECALL} on the validation split (defectnet-calibrate-gate)")
    point = calibrate_gate(engine, data, split="train", target_recall=TARGET_RECALL, progress=False)
    click.echo(f"   threshold {point.threshold:.4f}: recall {point.recall:.3f} of {point.defective} defective, "
               f"normal images passed to the detector {point.normal_pass_rate or 0:.1%}")
    return point.threshold


def infer_folder(data: Path, engine: Path, out: Path) -> None:
    """Stage 7: ``defectnet-infer`` on the test images: one JSON line per image, annotated
    images for review and a contact sheet of OK/NG results, batches of 4."""
    _stage(f"7. defectnet-infer on the test images (batch 4) -> {out}")
    test = load_split(data, "test")
    inputs = [test.image_dir / test.image_info(i)[1] for i in range(len(test))]
    pipeline = Pipeline.from_engine(engine)
    summary = run_inference(pipeline, inputs, out / "results.jsonl", batch=4, save_images=out / "annotated",
                            progress=False, overwrite=True)  # the demo owns --out: always a fresh file
    for line in summary.text().splitlines():
        click.echo(f"   {line}")
    click.echo(f"   contact sheet: {write_results_sheet(out / 'results.jsonl', out / 'contact_sheet.png')}")


def bench(data: Path, engine: Path, out: Path) -> BenchResult:
    """Stage 8: ``defectnet-bench --engine E --target-recall 0.95``: the reference on PyTorch
    (its source checkpoint), ONNX Runtime, OpenVINO and the built engine, each with the gate on
    (threshold chosen per backend on the validation split) and off, measured side by side."""
    _stage(f"8. defectnet-bench: gate on vs gate off on every backend, at recall >= {TARGET_RECALL} -> {out}")
    settings = BenchSettings(data=str(data), engines=(str(engine),),
                             backends=(BackendName.TORCH, BackendName.ONNXRUNTIME, BackendName.OPENVINO,
                                       BackendName.AUTO),
                             repeat=1, warmup=2, batch=4, target_recall=TARGET_RECALL, val_data=str(data),
                             val_split="train")
    result = run_benchmark(settings, progress=False)
    result.command = shlex.join(settings.command_line(out))
    write_outputs(result, out)
    click.echo(markdown_report(result))
    return result


@dataclass(frozen=True)
class GateEffect:
    """What the gate buys on one backend: the gate-on case's numbers and the ATT (ms) of the
    same graphs with the detector forced on every image. skip_ceiling: the largest share of
    normal test images any threshold could skip at gate recall >= the target on these test
    images (the threshold picked on them, so the validated threshold cannot do better there)."""

    backend: str
    mAP: float
    F1: float
    gate_recall: float | None
    normal_skipped: float | None
    threshold: float | None
    att_gate_on_ms: float
    att_gate_off_ms: float
    skip_ceiling: float | None = None

    @property
    def speedup(self) -> float:
        return self.att_gate_off_ms / self.att_gate_on_ms


def gate_effects(result: BenchResult) -> list[GateEffect]:
    """One :class:`GateEffect` per backend that has a gate-on and a gate-off case, fastest first."""
    effects = []
    for c in result.cases:
        twin = result.gate_off_twin(c)
        if twin is None:
            continue
        effects.append(GateEffect(c.label, c.metrics.mAP, c.metrics.F1, c.metrics.gate_recall, c.normal_skipped,
                                  (c.operating_point or {}).get("threshold"), c.metrics.att_ms,
                                  twin.metrics.att_ms, _skip_ceiling(c.per_image)))
    return sorted(effects, key=lambda e: e.att_gate_on_ms)


def _skip_ceiling(per_image: dict[str, list[Any]]) -> float | None:
    """1 - the normal pass rate of the threshold that keeps recall >= TARGET_RECALL on these images."""
    try:
        point = threshold_for_recall(per_image["p_defective"], per_image["defective"], TARGET_RECALL)
    except (KeyError, DefectNetError):  # no per-image P, or no defective image
        return None
    return None if point.normal_pass_rate is None else 1.0 - point.normal_pass_rate


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1%}"


def summarise(result: BenchResult, out: Path) -> dict[str, Any]:
    """Stage 9: the plain summary (also ``OUT/summary.json``): per backend, the gate-on case's
    mAP, F1, gate recall and share of normal images skipped, and its ATT against the same
    graphs with the gate off; the fastest backend first."""
    _stage("9. summary")
    effects = gate_effects(result)
    summary = {"target_recall": TARGET_RECALL, "test_images": result.images,
               "backends": [{**asdict(e), "gate_speedup": e.speedup} for e in effects],
               "gate_on_faster_on_every_backend": bool(effects) and all(e.speedup > 1 for e in effects)}
    atomic_write_json(out / "summary.json", summary)
    if not effects:
        click.echo("   no backend had both a gate-on and a gate-off case; see the bench table above")
    for k, e in enumerate(effects):
        threshold = "n/a" if e.threshold is None else f"{e.threshold:.4f}"
        click.echo(f"   {e.backend}{' (the fastest here)' if k == 0 else ''}: mAP {e.mAP:.3f}, F1 {e.F1:.3f}, "
                   f"gate recall {_pct(e.gate_recall)} at threshold {threshold}, normal images skipped "
                   f"{_pct(e.normal_skipped)}; ATT gate off {e.att_gate_off_ms:.1f} ms -> gate on "
                   f"{e.att_gate_on_ms:.1f} ms ({e.speedup:.2f}x); at gate recall >= {TARGET_RECALL:.0%} no "
                   f"threshold could skip more than {_pct(e.skip_ceiling)} of these normal images")
    click.echo(f"   thresholds chosen for gate recall >= {TARGET_RECALL} on the validation split; -> "
               f"{out / 'summary.json'}")
    return summary


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", default=Path("runs/demo"), show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the data set, runs, engines and reports.")
@click.option("--reference", default=REFERENCE, show_default=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="The DefectNet-const run folder every stage after training uses.")
@click.option("--images", default=400, show_default=True, type=click.IntRange(min=20),
              help="Synthetic images to generate (half train = validation, half test).")
@click.option("--seed", default=SEED, show_default=True, type=int)
def main(out: Path, reference: Path, images: int, seed: int) -> None:
    """Run DefectNet's main job on CPU: synthetic data -> statistics -> a short training run ->
    the reference model exported (parity-checked) -> the fastest CPU engine -> the gate's
    threshold for recall 0.95 -> defectnet-infer with a contact sheet -> gate on vs gate off on
    every backend, side by side -> a summary."""
    start = time.perf_counter()
    try:
        _stage("0. the reference model")
        reference = check_reference(reference)
        data = make_data(out / "data", images, seed)
        show_statistics(data)
        fine_tune(data, reference, out / "runs" / "const-finetune")
        engine = export_reference(data, reference, out / "engines" / "reference-const")
        built = build_fastest(data, engine)
        choose_threshold(data, built)
        infer_folder(data, built, out / "infer")
        result = bench(data, engine, out / "bench")
        summarise(result, out / "bench")
    except DefectNetError as err:
        raise click.ClickException(str(err)) from err
    click.secho(f"\ndemo finished in {time.perf_counter() - start:.0f} s; outputs under {out}", bold=True)


if __name__ == "__main__":
    main()
