"""``defectnet-build-engine``: an exported (or trained) model -> an optimised engine folder.

Examples::

    # on a CPU (the default --backend auto): every graph's fastest passing candidate among
    # ONNX Runtime fp32/int8 and OpenVINO fp32/int8/bf16, timed here -> runs/const/engine-auto
    defectnet-build-engine --model const --data data/fabric
    # the same, INT8 only (ONNX Runtime or OpenVINO per graph) -> runs/const/engine-int8-auto
    defectnet-build-engine --int8 --model const --data data/fabric
    # half precision on a CPU: OpenVINO bf16 (or fp16 weights where the CPU has no bf16)
    defectnet-build-engine --fp16 --model const --data data/fabric
    # ONNX Runtime INT8 (U8S8) engine from a trained run (exported first to runs/const/engine)
    defectnet-build-engine --int8 --backend onnxruntime --model const --data data/fabric
    # the float32 graphs, ORT-optimised, from an exported folder
    defectnet-build-engine --fp32 --backend onnxruntime --engine runs/const/engine --data data/fabric \
        --out engines/const-fp32
    # TensorRT FP16 on an NVIDIA GPU, batches up to 4 at 576x1344
    defectnet-build-engine --fp16 --backend tensorrt --engine runs/const/engine --data data/fabric \\
        --opt-shape 1x576x1344 --max-shape 4x576x1344

Every build ends with the accuracy gate (mAP, AP50, F1, gate recall on the test split vs
the float32 PyTorch model) and exits non-zero, leaving no manifest.json, past the
tolerances. The CLI is a thin layer over :func:`defectnet.engine_build.build_engine`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from defectnet.engine_build.build import ENGINE_BACKENDS
from defectnet.errors import DefectNetError
from defectnet.runtime.types import BackendName, Precision


def _default_backend() -> BackendName:
    """TensorRT on a machine with TensorRT and a GPU; else auto (per graph, ONNX Runtime or OpenVINO)."""
    from defectnet.runtime.backends.trt import tensorrt_available

    return BackendName.TENSORRT if tensorrt_available() else BackendName.AUTO


def _exported_source(model: str | None, runs_dir: Path, checkpoint: Path | None, engine: Path | None,
                     data_dir: Path | None) -> Path:
    """The exported float32 folder: --engine as given, or --model/--checkpoint exported
    (reusing RUN/engine when it is complete and its weights are unchanged)."""
    from defectnet.errors import EngineError
    from defectnet.export.cli import _source_path

    if engine is not None:
        return engine
    from defectnet.export import export_engine
    from defectnet.export.verify import dataset_images
    from defectnet.model_source import load_source
    from defectnet.runtime.engine import load_engine

    path = _source_path(model, runs_dir, checkpoint)
    assert path is not None
    source = load_source(path)
    target = (path if path.is_dir() else path.parent) / "engine"
    try:
        current = load_engine(target)
        recorded = current.manifest.source.weights_sha256 if current.manifest.source is not None else {}
        if sorted(recorded.values()) == sorted(source.weights.values()) and not current.manifest.is_built:
            click.echo(f"using the exported folder {target} (same weights)")
            return target
    except EngineError:
        pass
    click.echo(f"exporting {source.kind} from {path} to {target} ...")
    images = dataset_images(data_dir) if data_dir else None
    export_engine(source, target, images=images,
                  image_source=f"{data_dir} (test split)" if data_dir else "synthetic")
    return target


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--fp16", "precision", flag_value=Precision.FP16.value,
              help="Half precision: TensorRT FP16 with float32 islands; on a CPU OpenVINO bf16 (fp16 weights where "
                   "the CPU has no bf16).")
@click.option("--int8", "precision", flag_value=Precision.INT8.value, help="INT8 Q/DQ graphs from one calibration.")
@click.option("--fp32", "precision", flag_value=Precision.FP32.value,
              help="Float32, graph-optimised [default, except --backend auto: every precision competes].")
@click.option("--backend", type=click.Choice([b.value for b in ENGINE_BACKENDS]), default=None,
              help="Engine backend; auto = per graph, the fastest passing candidate of ONNX Runtime and OpenVINO, "
                   "timed on this machine [default: tensorrt when TensorRT and a GPU are available, else auto].")
@click.option("--timing-repeat", default=9, show_default=True, type=click.IntRange(min=1),
              help="--backend auto: interleaved timing repetitions per candidate.")
@click.option("--model", default=None, help="Run name under --runs-dir (exported first).")
@click.option("--runs-dir", type=click.Path(path_type=Path), default=Path("runs"), show_default=True)
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
              help="A run folder, epoch checkpoint folder or .safetensors file (exported first).")
@click.option("--engine", "engine_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="An exported float32 engine folder (defectnet-export).")
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="COCO data folder: train split calibrates, test split feeds the accuracy gate.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder [default: EXPORTED-<precision>[-tensorrt] beside the exported folder].")
@click.option("--calib-size", default=300, show_default=True, type=int, help="Calibration images (train split).")
@click.option("--calib-method", type=click.Choice(["minmax", "entropy", "percentile"]), default=None,
              help="Calibration method for every graph [default: minmax for the gate, percentile for the detector].")
@click.option("--percentile", default=99.99, show_default=True, type=float, help="For the percentile method.")
@click.option("--calib-seed", default=0, show_default=True, type=int)
@click.option("--calib-cache", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Calibration cache folder [default: ~/.cache/defectnet/calibration].")
@click.option("--no-calib-cache", is_flag=True, help="Neither read nor write the calibration cache.")
@click.option("--min-shape", default=None, help="TensorRT profile min BxHxW (padded) [default 1x32x32].")
@click.option("--opt-shape", default=None, help="TensorRT profile opt BxHxW [default: the data's common size].")
@click.option("--max-shape", default=None, help="TensorRT profile max BxHxW [default: 4 x scale, any orientation].")
@click.option("--workspace-gb", default=4.0, show_default=True, type=float, help="TensorRT builder workspace.")
@click.option("--timing-cache", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="TensorRT timing cache file [default: per GPU + TensorRT version in the cache folder].")
@click.option("--max-map-drop", default=0.01, show_default=True, type=float)
@click.option("--max-ap50-drop", default=0.01, show_default=True, type=float)
@click.option("--max-f1-drop", default=0.01, show_default=True, type=float)
@click.option("--max-recall-drop", default=0.005, show_default=True, type=float, help="Gate recall drop.")
@click.option("--threads", default=0, show_default=True, type=int,
              help="onnxruntime threads for calibration, and every runtime's threads when --backend auto times the "
                   "candidates (0: the libraries' defaults).")
def main(precision: str | None, backend: str | None, timing_repeat: int, model: str | None, runs_dir: Path, checkpoint: Path | None,
         engine_dir: Path | None, data_dir: Path | None, out: Path | None, calib_size: int, calib_method: str | None,
         percentile: float, calib_seed: int, calib_cache: Path | None, no_calib_cache: bool, min_shape: str | None,
         opt_shape: str | None, max_shape: str | None, workspace_gb: float, timing_cache: Path | None,
         max_map_drop: float, max_ap50_drop: float, max_f1_drop: float, max_recall_drop: float,
         threads: int) -> None:
    """Build an engine folder (fp32 / int8 / fp16; onnxruntime or tensorrt) with an accuracy gate."""
    try:
        _main(precision, backend, timing_repeat, model, runs_dir, checkpoint, engine_dir, data_dir, out, calib_size, calib_method,
              percentile, calib_seed, calib_cache, no_calib_cache, min_shape, opt_shape, max_shape, workspace_gb,
              timing_cache, max_map_drop, max_ap50_drop, max_f1_drop, max_recall_drop, threads)
    except DefectNetError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)


def _main(precision: str | None, backend: str | None, timing_repeat: int, model: str | None, runs_dir: Path, checkpoint: Path | None,
          engine_dir: Path | None, data_dir: Path | None, out: Path | None, calib_size: int, calib_method: str | None,
          percentile: float, calib_seed: int, calib_cache: Path | None, no_calib_cache: bool,
          min_shape: str | None, opt_shape: str | None, max_shape: str | None, workspace_gb: float,
          timing_cache: Path | None, max_map_drop: float, max_ap50_drop: float, max_f1_drop: float,
          max_recall_drop: float, threads: int) -> None:
    from defectnet.calibration.cache import default_cache_dir
    from defectnet.calibration.calibrate import recommended_settings
    from defectnet.calibration.int8 import CalibrationSettings
    from defectnet.engine_build.accuracy import Tolerances
    from defectnet.engine_build.build import BuildOptions, build_engine, default_out
    from defectnet.engine_build.tensorrt import ShapeProfile, parse_shape

    if sum(x is not None for x in (model, checkpoint, engine_dir)) != 1:
        raise click.UsageError("pass exactly one of --model NAME, --checkpoint PATH or --engine EXPORTED_DIR")
    target = BackendName(backend) if backend else _default_backend()
    if target == BackendName.TENSORRT:  # fail at once, before exporting or calibrating anything
        from defectnet.runtime.backends.trt import import_tensorrt, require_cuda

        import_tensorrt()
        require_cuda()
    profile = None
    if min_shape or opt_shape or max_shape:
        if target != BackendName.TENSORRT:
            raise click.UsageError("--min-shape/--opt-shape/--max-shape are TensorRT optimisation profiles; add "
                                   "--backend tensorrt (ONNX Runtime takes any shape)")
        if not (min_shape and opt_shape and max_shape):
            raise click.UsageError("give all three of --min-shape, --opt-shape and --max-shape (BxHxW each)")
        profile = ShapeProfile(parse_shape(min_shape), parse_shape(opt_shape), parse_shape(max_shape))
    if precision is None and target != BackendName.AUTO:
        precision = Precision.FP32.value
    options = BuildOptions(
        precision=None if precision is None else Precision(precision), backend=target, data_dir=data_dir, calib_size=calib_size,
        calibration=(CalibrationSettings(method=calib_method, percentile=percentile) if calib_method
                     else recommended_settings(percentile)), seed=calib_seed,
        cache_dir=None if no_calib_cache else (calib_cache or default_cache_dir()),
        tolerances=Tolerances(max_map_drop, max_ap50_drop, max_f1_drop, max_recall_drop), profile=profile,
        timing_cache=timing_cache, workspace_gb=workspace_gb, threads=threads, progress=sys.stderr.isatty(),
        log=click.echo, timing_repeat=timing_repeat)
    options.validate()
    source = _exported_source(model, runs_dir, checkpoint, engine_dir, data_dir)
    out = out or default_out(source, options.precision, options.backend)
    what = f"{options.precision or 'per-graph (every precision)'} {options.backend}"
    click.echo(f"building a {what} engine from {source} into {out} ...")
    manifest = build_engine(source, out, options)
    acc = manifest.accuracy
    passed = acc.passed if acc is not None else None
    gate = "passed" if passed else ("skipped" if passed is None else "failed")
    if acc is not None and acc.engine_att_ms and acc.reference_att_ms:
        click.echo(f"  ATT {acc.engine_att_ms:.1f} ms ({manifest.backend}, {manifest.precision}) vs "
                   f"{acc.reference_att_ms:.1f} ms (reference)")
    if manifest.selection is not None and manifest.selection.chosen:
        click.echo("  per graph: " + "; ".join(f"{g} {name}" for g, name in manifest.selection.chosen.items()))
    files = ", ".join(g.file for g in manifest.graphs.values())
    plans = ", ".join(e.file for e in manifest.tensorrt.engines.values()) if manifest.tensorrt else ""
    click.echo(f"wrote {out} ({files}{', ' + plans if plans else ''}, manifest.json); accuracy gate {gate}")
