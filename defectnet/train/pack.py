"""Pack a finished run into a small, inference-only run folder that can live in git.

    defectnet-pack-run runs/reference/stage2-const --out models/reference-const

The packed folder is a normal run folder (every CLI takes it like any run: ``defectnet-eval``,
``defectnet-export --checkpoint``, ``defectnet-train --init``)::

    OUT/run.json                                  kind, variant, final checkpoint, provenance
    OUT/checkpoints/epoch_NNNN/model.safetensors  weights in float16 (config in its metadata)
    OUT/checkpoints/epoch_NNNN/checkpoint.json    the source checkpoint's JSON; files = the
                                                  weights' SHA-256 only (no training state)

Loading checks the weights' SHA-256 like any checkpoint; a changed file fails with an error
that says to restore it or pack it again. Float16 halves the file (ResNet-18 compact: ~25 MB);
the model loads back into float32, and the packing itself reports how far the float16 round
trip moved the weights.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import click
import torch

from defectnet.errors import CheckpointError
from defectnet.io import atomic_write_json, sha256_file
from defectnet.train.checkpoint import (
    META_FILE,
    WEIGHTS_FILE,
    CheckpointMeta,
    checkpoint_dir,
    default_model_io,
    load_run,
    read_checkpoint,
    write_run_json,
)

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def pack_run(run_dir: str | os.PathLike[str], out: str | os.PathLike[str], *, dtype: str = "float16",
             overwrite: bool = False) -> dict[str, Any]:
    """Write the packed folder ``out`` from the finished detector run ``run_dir`` (one-model
    or DefectNet; see the module docstring) and return its ``run.json`` content."""
    from defectnet.model import load_weights, save_weights

    if dtype not in DTYPES:
        raise CheckpointError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    run_dir, out = Path(run_dir), Path(out)
    model, info = load_run(run_dir)  # verifies the source's hashes
    if info.kind != "detector":
        raise CheckpointError(f"{run_dir} is a {info.kind} run; only detector runs (one-model, DefectNet "
                              "variants) can be packed")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise CheckpointError(f"{out} is not empty; pass --overwrite to replace it")
        shutil.rmtree(out)
    meta = read_checkpoint(info.checkpoint, verify=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        ckpt = checkpoint_dir(tmp, info.epoch)
        ckpt.mkdir(parents=True)
        save_weights(model, ckpt / WEIGHTS_FILE, dtype=DTYPES[dtype])
        weights_sha = sha256_file(ckpt / WEIGHTS_FILE)
        packed = CheckpointMeta(**{**meta.__dict__, "files": {WEIGHTS_FILE: weights_sha}})
        atomic_write_json(ckpt / META_FILE, packed.to_dict())
        # how far the float16 round trip moved the weights (reported, and checked by the tests)
        restored = default_model_io().build_detector(dict(meta.model_config))
        load_weights(restored, ckpt / WEIGHTS_FILE)
        src, back = model.state_dict(), restored.state_dict()
        max_rel = max(float((back[k] - v).abs().max() / v.abs().max().clamp(min=1e-12))
                      for k, v in src.items() if v.is_floating_point() and v.numel())
        content = {
            "kind": info.kind, "variant": info.variant,
            "final_checkpoint": str(ckpt.relative_to(tmp)),
            "packed": {"source_run": str(run_dir.resolve()), "source_checkpoint": str(info.checkpoint.resolve()),
                       "source_epoch": info.epoch, "source_weights_sha256": meta.files.get(WEIGHTS_FILE),
                       "dtype": dtype, "weights_sha256": weights_sha,
                       "weights_bytes": (ckpt / WEIGHTS_FILE).stat().st_size,
                       "max_relative_weight_change": max_rel},
        }
        write_run_json(tmp, content)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return content


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The packed run folder to write (e.g. models/reference-const).")
@click.option("--dtype", type=click.Choice(sorted(DTYPES)), default="float16", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace a non-empty --out.")
def main(run_dir: Path, out: Path, dtype: str, overwrite: bool) -> None:
    """Pack the finished detector run RUN_DIR into a small inference-only run folder."""
    try:
        content = pack_run(run_dir, out, dtype=dtype, overwrite=overwrite)
    except CheckpointError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    click.echo(json.dumps(content["packed"], indent=2))


__all__ = ["DTYPES", "main", "pack_run"]
