"""The main job, end to end on CPU with synthetic data (``make demo`` / ``defectnet-demo``).

Reads top to bottom, one stage per function; each stage calls the library, not a
subprocess, and prints what it measured. Artefacts land under ``--out``.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from defectnet.data.coco import load_split
from defectnet.data.stats import format_statistics, split_statistics
from defectnet.data.synthetic import KINDS, SynthParams, generate
from defectnet.errors import DefectNetError


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


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", default=Path("runs/demo"), show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the data set, runs, engines and reports.")
@click.option("--images", default=300, show_default=True, type=click.IntRange(min=20),
              help="Synthetic images to generate (80% train, 20% test).")
@click.option("--seed", default=0, show_default=True, type=int)
def main(out: Path, images: int, seed: int) -> None:
    """Run DefectNet's main job on CPU: data -> statistics (more stages as they land)."""
    start = time.perf_counter()
    try:
        data = make_data(out / "data", images, seed)
        show_statistics(data)
    except DefectNetError as err:
        raise click.ClickException(str(err)) from err
    click.secho(f"\ndemo finished in {time.perf_counter() - start:.0f} s; outputs under {out}", bold=True)


if __name__ == "__main__":
    main()
