"""Session fixtures of the export tests: one exported + verified tiny DefectNet."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from export_helpers import CLASSES, SCALE, tiny_model

from defectnet.export import export_engine
from defectnet.model_source import ModelSource
from defectnet.runtime.manifest import Manifest


@pytest.fixture(scope="session")
def defectnet_engine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ModelSource, Manifest]:
    torch.set_num_threads(2)
    source = ModelSource(tiny_model(), CLASSES, scale=SCALE)
    out = tmp_path_factory.mktemp("engine") / "const"
    manifest = export_engine(source, out)
    return out, source, manifest
