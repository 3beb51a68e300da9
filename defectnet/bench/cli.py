"""``defectnet-bench``: the seed's ATT tables across backends, side by side, with plots.

A thin layer over :func:`defectnet.bench.benchmark.run_benchmark` and
:func:`~defectnet.bench.benchmark.write_outputs`.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from defectnet.bench.benchmark import BenchSettings, default_out_dir, run_benchmark, write_outputs
from defectnet.bench.scenario import BACKENDS, parse_backends
from defectnet.bench.writers import markdown_report
from defectnet.errors import DefectNetError

_DIR = click.Path(file_okay=False, path_type=Path)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--engine", "engines", multiple=True, type=_DIR,
              help="Engine folder (repeatable); its DIR-* siblings (DIR-int8, ...) come along.")
@click.option("--checkpoint", "checkpoints", multiple=True, type=_DIR,
              help="Finished run folder (repeatable); its engine/ and engine-*/ folders come along.")
@click.option("--runs-dir", type=_DIR, default=None, help="Every run folder (and engine folder) directly under DIR.")
@click.option("--data", "data", required=True, type=_DIR, help="Data folder (annotations/{split}.json + images/).")
@click.option("--split", default="test", show_default=True, type=click.Choice(["train", "test"]))
@click.option("--out", type=_DIR, default=None, help="Output folder [default: bench-results/<timestamp>].")
@click.option("--normal-share", type=float, default=None,
              help="Resample the images to this share of normal images (0..1, deterministic with --seed).")
@click.option("--repeat", type=click.IntRange(min=1), default=None,
              help="Interleaved repetitions; ATT = median over them [default: 5; --quick: 1].")
@click.option("--warmup", type=click.IntRange(min=0), default=None,
              help="Untimed calls per case before timing [default: 3; --quick: 1].")
@click.option("--batch", type=click.IntRange(min=1), default=4, show_default=True,
              help="Batch size of the throughput pass (1 = batch 1 only).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch and ONNX Runtime intra-op threads [default: the libraries' own].")
@click.option("--max-images", type=click.IntRange(min=1), default=None,
              help="At most this many images, keeping the normal share [--quick: 40].")
@click.option("--quick", is_flag=True, help="1 repetition, 1 warm-up call, at most 40 images.")
@click.option("--backends", default=",".join(BACKENDS), show_default=True,
              help="Comma-separated backends; precisions come from the engine folders' manifests.")
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda"]),
              help="Device of torch and ONNX Runtime (TensorRT always uses CUDA).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the image resampling.")
@click.option("--gate-threshold", type=float, default=None,
              help="P(defective) at which gated rows run the detector, on every backend [default: each model's "
              "own; e.g. from defectnet-calibrate-gate --split train].")
@click.option("--target-recall", type=float, default=None,
              help="Run each gated case at the largest gate threshold that keeps this gate recall (e.g. 0.95) on "
              "the validation images (--val-split, --val-data), chosen with the case's own gate graph.")
@click.option("--val-split", type=click.Choice(["train", "test"]), default=None,
              help="Split of the validation images for --target-recall (of --val-data, default --data; never the "
              "measured split of the measured data).")
@click.option("--val-data", type=_DIR, default=None,
              help="Data folder of the validation images for --target-recall [default: --data].")
@click.option("--scale", default=None,
              help="Test scale LONGxSHORT for every case [default: each model's own], e.g. 1344x576 for the seed's.")
@click.option("--no-gate-off", is_flag=True,
              help="Do not measure the gate-off twin (detector on every image) of each gated case.")
@click.option("--no-plots", is_flag=True, help="Write no PNG plots.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def main(engines: tuple[Path, ...], checkpoints: tuple[Path, ...], runs_dir: Path | None, data: Path, split: str,
         out: Path | None, normal_share: float | None, repeat: int | None, warmup: int | None, batch: int,
         threads: int | None, max_images: int | None, quick: bool, backends: str, device: str, seed: int,
         gate_threshold: float | None, target_recall: float | None, val_split: str | None, val_data: Path | None,
         scale: str | None, no_gate_off: bool, no_plots: bool, no_progress: bool) -> None:
    """Benchmark every model row on every backend on the same images: the seed's table (mAP,
    F1, ATT, ATT_normal, ATT_defective) per backend, speed-ups against the PyTorch one-model
    row of the same run, end-to-end time, p50/p99, throughput, gate recall, ATT_ideal, and
    plots. Every gated case is also measured with its gate off (what the gate buys on each
    backend, with one engine alone); --target-recall R runs the gated cases at a threshold
    validated for recall R. Writes tables.md, results.json, results.csv, detections.json and
    plots/ under --out."""
    from defectnet.train.cli import parse_scale

    try:
        settings = BenchSettings(
            data=str(data), split=split, engines=tuple(map(str, engines)), checkpoints=tuple(map(str, checkpoints)),
            runs_dir=str(runs_dir) if runs_dir else None, backends=tuple(parse_backends(backends)),
            normal_share=normal_share, max_images=max_images, repeat=repeat, warmup=warmup, batch=batch,
            threads=threads, device=device, seed=seed, quick=quick, gate_threshold=gate_threshold,
            gate_off=not no_gate_off, target_recall=target_recall, val_split=val_split,
            val_data=str(val_data) if val_data else None, scale=parse_scale(scale) if scale else None)
        out_dir = out or default_out_dir()
        result = run_benchmark(settings, progress=not no_progress, log=lambda m: click.echo(m, err=True))
        result.command = shlex.join(settings.command_line(out_dir))
        files = write_outputs(result, out_dir, plots=not no_plots)
    except DefectNetError as err:
        raise click.ClickException(str(err)) from err
    click.echo(markdown_report(result))
    click.echo(f"wrote {files['tables']}, {files['json']}, {files['csv']}"
               + (f" and {len(files['plots'])} plots under {out_dir / 'plots'}" if files.get("plots") else ""),
               err=True)


if __name__ == "__main__":
    main()
