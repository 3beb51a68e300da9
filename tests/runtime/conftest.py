"""Engine folders of tiny models for the runtime tests (exported once per session, no parity
check here: tests/export covers it)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from runtime_helpers import CLASSES, SCALE, tiny_model

from defectnet.export import export_engine
from defectnet.model import ClassifierConfig, TwoModel, build_classifier
from defectnet.model_source import ModelSource, load_source
from defectnet.train.checkpoint import CheckpointMeta, default_model_io, save_checkpoint, write_run_json


@pytest.fixture(scope="session")
def run_engine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DefectNet run folder (as defectnet-train writes it) exported to RUN/engine."""
    torch.set_num_threads(2)
    run = tmp_path_factory.mktemp("runs") / "const"
    model = tiny_model()
    meta = CheckpointMeta(kind="detector", variant="const", epoch=1, iteration=1, model_config=model.config.to_dict(),
                          train_config={"scale": list(SCALE)}, class_names=CLASSES,
                          label_to_category_id={1: 1, 2: 2})
    final = save_checkpoint(run, model, {}, meta, default_model_io())
    write_run_json(run, {"kind": "detector", "variant": "const", "final_checkpoint": str(final.relative_to(run))})
    export_engine(load_source(run), run / "engine", verify=False)
    return run / "engine"


@pytest.fixture(scope="session")
def two_model_engine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TwoModel]:
    torch.manual_seed(1)
    classifier = build_classifier(ClassifierConfig(backbone="resnet18", input_size=64)).eval()
    with torch.no_grad():
        classifier.fc.weight.normal_(0, 0.01)
    model = TwoModel(classifier, tiny_model(1, with_gate=False)).eval()
    out = tmp_path_factory.mktemp("two") / "engine"
    export_engine(ModelSource(model, CLASSES, scale=SCALE), out, verify=False)
    return out, model
