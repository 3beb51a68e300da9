"""The runtime never imports the exporter or the trainer: not when ``defectnet.runtime`` is
imported and not when an engine runs on ONNX Runtime (docs/architecture.md, "Packages and what
each may import"). Checked in a fresh interpreter, where nothing else has imported them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

FORBIDDEN = ("defectnet.export", "defectnet.train")


def _imported_after(code: str) -> list[str]:
    probe = code + (
        "\nimport json, sys\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.startswith({FORBIDDEN!r}))))\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=100, check=True)
    return list(json.loads(out.stdout.strip().splitlines()[-1]))


def test_importing_the_runtime_imports_neither_exporter_nor_trainer() -> None:
    assert _imported_after("import defectnet.runtime, defectnet.runtime.inspection, defectnet.runtime.cli") == []


def test_running_an_engine_on_onnxruntime_imports_neither(run_engine: Path) -> None:
    code = (
        "import torch\n"
        "from defectnet.runtime import Inspector, Pipeline\n"
        f"p = Pipeline.from_engine({str(run_engine)!r})\n"
        "p.run([torch.zeros(3, 64, 96, dtype=torch.uint8)])\n"
        f"with Inspector.from_engine({str(run_engine)!r}) as insp:\n"
        "    assert insp.inspect(torch.zeros(3, 64, 96, dtype=torch.uint8)).ok\n")
    assert _imported_after(code) == []


def test_the_probe_sees_an_import_when_there_is_one() -> None:
    """The check above can fail: importing the exporter shows up."""
    assert "defectnet.export" in _imported_after("import defectnet.export")
