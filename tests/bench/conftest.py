"""Session fixtures of the bench tests: synthetic fabric data and two tiny run folders
(one-model and defectnet_const) exported to ``RUN/engine``, plus a real ``engine-int8``
sibling of the const model (calibrated on the tiny train split by ``defectnet-build-engine``'s
library call, with loose accuracy tolerances: a random-init model's accuracy means nothing),
so the bench's INT8 path runs real Q/DQ graphs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from defectnet.data.coco import load_split
from defectnet.data.synthetic import KINDS, SynthParams, generate
from defectnet.engine_build import BuildOptions, Tolerances, build_engine
from defectnet.export import export_engine
from defectnet.model import ModelConfig, build_model
from defectnet.model_source import load_source
from defectnet.train.checkpoint import CheckpointMeta, default_model_io, save_checkpoint, write_run_json

SCALE = (192, 96)


@pytest.fixture(scope="session")
def bench_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 synthetic fabric images, half of them test images (2 normal, 4 defective)."""
    out = tmp_path_factory.mktemp("bench") / "data"
    generate(SynthParams("fabric", images=12, normal_share=0.5, seed=0, size=SCALE, test_share=0.5),
             KINDS["fabric"], out)
    return out


def _write_run(run: Path, variant: str, with_gate: bool, data: Path) -> None:
    ds = load_split(data, "test")
    torch.manual_seed(0)
    cfg = ModelConfig.preset("compact", num_classes=len(ds.class_names), backbone="resnet18", fpn_channels=16,
                             representation_size=32, with_gate=with_gate)
    model = build_model(cfg).eval()
    meta = CheckpointMeta(kind="detector", variant=variant, epoch=1, iteration=1, model_config=model.config.to_dict(),
                          train_config={"scale": list(SCALE), "backbone": "resnet18"},
                          class_names=list(ds.class_names), label_to_category_id=dict(ds.label_to_category_id))
    final = save_checkpoint(run, model, {}, meta, default_model_io())
    write_run_json(run, {"kind": "detector", "variant": variant, "final_checkpoint": str(final.relative_to(run))})
    export_engine(load_source(run), run / "engine", verify=False)


@pytest.fixture(scope="session")
def bench_runs(bench_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``RUNS/one-model`` and ``RUNS/const`` (each with ``engine/``; const also ``engine-int8/``)."""
    torch.set_num_threads(1)
    runs = tmp_path_factory.mktemp("bench") / "runs"
    _write_run(runs / "one-model", "one-model", False, bench_data)
    _write_run(runs / "const", "const", True, bench_data)
    build_engine(runs / "const" / "engine", runs / "const" / "engine-int8",
                 BuildOptions(precision="int8", data_dir=bench_data, calib_size=6, threads=1,
                              tolerances=Tolerances(1.0, 1.0, 1.0, 1.0), log=lambda _: None))
    return runs
