"""Measure the normal-path (backbone + gate) share of the full path for a trained run.

    python benchmarks/backbone_share.py RUN_DIR --data DATA_DIR [--out FILE.json]

Prints GFLOPs and median CPU times of both paths (interleaved) on the first test image at the run's
train scale and at the seed's test scale (1333x800 keep-ratio), and writes them as JSON.
"""

from __future__ import annotations

import json
import platform
import shlex
import sys
from pathlib import Path

import click
import torch

from defectnet.data.coco import collate, load_split
from defectnet.evaluation.compute import path_cost
from defectnet.io import atomic_write_json
from defectnet.model import DefectNet
from defectnet.train import load_run


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--repeats", default=10, show_default=True, help="Timed calls per path (interleaved).")
def main(run_dir: Path, data_dir: Path, out: Path | None, repeats: int) -> None:
    model, info = load_run(run_dir)
    if not isinstance(model, DefectNet) or model.gate is None:
        raise click.UsageError(f"{run_dir} is not a DefectNet run (no gate): the normal path needs one")
    train_scale = tuple(info.train_config.get("scale", (1333, 800)))
    rows = []
    for scale in dict.fromkeys([train_scale, (1333, 800)]):
        ds = load_split(data_dir, "test", scale=scale)
        batch, _ = collate([ds[0]])
        cost = path_cost(model, batch.images.float(), batch.image_sizes[0], repeats=repeats)
        rows.append({"scale": list(scale), **cost.to_dict()})
        click.echo(f"{info.name} input {cost.input_size[1]}x{cost.input_size[0]}: normal path "
                   f"{cost.gflops_normal:.1f} GFLOPs {cost.ms_normal:.0f} ms, full path {cost.gflops_full:.1f} "
                   f"GFLOPs {cost.ms_full:.0f} ms; share {cost.share_flops:.2f} (FLOPs), "
                   f"{cost.share_time:.2f} (time)")
    if out:
        command = shlex.join(["python", "benchmarks/backbone_share.py", *sys.argv[1:]])
        atomic_write_json(out, {"command": command, "run": str(run_dir), "torch": torch.__version__,
                                "threads": torch.get_num_threads(),
                                "machine": platform.processor() or platform.machine(), "rows": rows})
        click.echo(json.dumps({"wrote": str(out)}))


if __name__ == "__main__":
    main()
