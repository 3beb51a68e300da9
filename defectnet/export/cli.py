"""``defectnet-export``: a trained model -> an engine folder (ONNX graphs + manifest).

Examples::

    defectnet-export --model const                      # runs/const -> runs/const/engine
    defectnet-export --checkpoint runs/const --out engines/const --data data/fabric
    defectnet-export --verify-only --engine engines/const --data data/fabric

Every export ends with the parity check against PyTorch (``--data``'s test images, or
synthetic ones) and fails with a non-zero exit when it does not pass.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import click

from defectnet.errors import DefectNetError, ExportError

if TYPE_CHECKING:
    from defectnet.runtime.manifest import Manifest


def _source_path(model: str | None, runs_dir: Path, checkpoint: Path | None) -> Path | None:
    if model and checkpoint:
        raise click.UsageError("pass --model NAME or --checkpoint PATH, not both")
    if checkpoint:
        return checkpoint
    if model:
        path = runs_dir / model
        if not path.exists():
            found = sorted(p.name for p in runs_dir.iterdir() if (p / "run.json").is_file()) if runs_dir.is_dir() else []
            hint = f"runs there: {', '.join(found)}" if found else f"{runs_dir} holds no finished runs"
            raise ExportError(f"no run {model!r} in {runs_dir} ({hint}); train it with defectnet-train --out "
                              f"{path}, or pass --runs-dir / --checkpoint")
        return path
    return None


def _print_report(manifest: Manifest) -> None:
    runs = manifest.verification.runs if manifest.verification is not None else ()
    for r in runs:
        click.echo(f"  parity at {r['input_size'][0]}x{r['input_size'][1]} (batch {r['batch']}): "
                   f"|dP| {r['p_max_abs_diff']:.2g}, detections torch {r['torch']} / onnx {r['onnx']}, "
                   f"matched {r['matched']}, |dscore| {r['score_max_abs_diff']:.2g}, "
                   f"|dbox| {r['box_max_abs_diff']:.2g} px")
    trt = manifest.tensorrt_check
    if trt is not None:
        state = "all ops supported" if trt.supported else "PROBLEMS"
        click.echo(f"  TensorRT {trt.tensorrt_version} parser check: {state}")
        for problem in trt.problems:
            click.echo(f"    {problem}")


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--model", "model", default=None, help="Run name: exports RUNS_DIR/NAME.")
@click.option("--runs-dir", type=click.Path(path_type=Path), default=Path("runs"), show_default=True)
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
              help="A run folder, an epoch checkpoint folder or a DefectNet .safetensors file.")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Engine folder [default: the run folder's engine/].")
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data folder whose test split feeds the parity check [default: synthetic images].")
@click.option("--opset", default=17, show_default=True, type=int)
@click.option("--no-verify", is_flag=True, help="Skip the parity check (the manifest records that).")
@click.option("--verify-only", is_flag=True, help="Only re-run the parity check of --engine.")
@click.option("--engine", "engine_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Engine folder for --verify-only.")
def main(model: str | None, runs_dir: Path, checkpoint: Path | None, out: Path | None, data_dir: Path | None,
         opset: int, no_verify: bool, verify_only: bool, engine_dir: Path | None) -> None:
    """Export a trained DefectNet (or a baseline) to ONNX graphs for the runtime."""
    try:
        _main(model, runs_dir, checkpoint, out, data_dir, opset, no_verify, verify_only, engine_dir)
    except DefectNetError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)


def _main(model: str | None, runs_dir: Path, checkpoint: Path | None, out: Path | None, data_dir: Path | None,
          opset: int, no_verify: bool, verify_only: bool, engine_dir: Path | None) -> None:
    from defectnet.export.exporter import export_engine
    from defectnet.export.verify import dataset_images, verify_engine_dir
    from defectnet.model_source import load_source, load_source_from_manifest
    from defectnet.runtime.engine import MANIFEST_FILE, load_engine
    from defectnet.runtime.manifest import Verification, write_manifest

    path = _source_path(model, runs_dir, checkpoint)
    images = dataset_images(data_dir) if data_dir else None
    image_source = f"{data_dir} (test split)" if data_dir else "synthetic"
    if verify_only:
        if engine_dir is None:
            raise click.UsageError("--verify-only needs --engine DIR")
        engine = load_engine(engine_dir)
        source = load_source(path) if path else load_source_from_manifest(engine.manifest, engine.root)
        source.scale = tuple(engine.preprocessor.scale)  # type: ignore[assignment]
        source.size_divisor = engine.preprocessor.size_divisor
        click.echo(f"verifying {engine_dir} against {source.checkpoint} ...")
        report = verify_engine_dir(engine_dir, engine.manifest, source, images=images, image_source=image_source)
        manifest = replace(engine.manifest, verification=Verification.from_json(report))
        write_manifest(engine_dir, manifest)
        _print_report(manifest)
        click.echo("parity check passed")
        return
    if engine_dir is not None:
        raise click.UsageError("--engine is for --verify-only; use --out for the export folder")
    if path is None:
        raise click.UsageError("pass --model NAME (a run under --runs-dir) or --checkpoint PATH")
    source = load_source(path)
    if out is None:
        out = (path if path.is_dir() else path.parent) / "engine"
    click.echo(f"exporting {source.kind} from {path} to {out} (opset {opset}) ...")
    manifest = export_engine(source, out, opset=opset, verify=not no_verify, images=images,
                             image_source=image_source)
    _print_report(manifest)
    click.echo(f"wrote {out} ({', '.join(g.file for g in manifest.graphs.values())}, {MANIFEST_FILE})")
