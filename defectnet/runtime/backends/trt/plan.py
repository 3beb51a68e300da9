"""The TensorRT plan file format (the builder in :mod:`defectnet.engine_build.tensorrt` writes
it, :mod:`.backend` reads it)::

    MAGIC (b"DEFECTNET-TRT-PLAN\\n") | uint32 little-endian header length | JSON header | plan bytes

The JSON header is the engine's provenance: TensorRT version, CUDA version, GPU name and
compute capability, SHA-256 of the ONNX graph it was built from, precision, optimisation
profiles, SHA-256 of the plan bytes. A TensorRT engine only runs on the TensorRT version
and GPU model it was built for, so :func:`check_plan` refuses any mismatch with an
:class:`EngineError` that says to rebuild with ``defectnet-build-engine``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from defectnet.errors import EngineError
from defectnet.runtime.backends.trt.api import import_tensorrt, require_cuda

PLAN_MAGIC = b"DEFECTNET-TRT-PLAN\n"
PLAN_FORMAT_VERSION = 1
PLAN_SUFFIX = ".plan"

def rebuild_hint(root: str | os.PathLike[str] | None) -> str:
    where = f" --out {root}" if root is not None else ""
    return (f"rebuild with defectnet-build-engine --backend tensorrt --engine EXPORTED_DIR{where} on this machine "
            "(TensorRT engines are tied to the TensorRT version and the GPU)")



def platform_info(device: int | str | torch.device = 0) -> dict[str, Any]:
    """What an engine is tied to, for this process: TensorRT, CUDA, GPU, compute capability."""
    trt_module = import_tensorrt()
    require_cuda()
    dev = torch.device(device) if not isinstance(device, int) else torch.device("cuda", device)
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    return {"tensorrt": str(trt_module.__version__), "cuda": str(torch.version.cuda),
            "gpu": torch.cuda.get_device_name(index), "compute_capability": f"{major}.{minor}"}


# ----------------------------------------------------------------------------- plan files
def write_plan(path: str | os.PathLike[str], header: Mapping[str, Any], plan: bytes) -> Path:
    """Write a plan file (atomic). ``header`` gets ``format``, ``plan_sha256``, ``plan_bytes``."""
    from defectnet.io import atomic_write

    full = {**header, "format": "defectnet-tensorrt-plan", "format_version": PLAN_FORMAT_VERSION,
            "plan_sha256": hashlib.sha256(plan).hexdigest(), "plan_bytes": len(plan)}
    blob = json.dumps(full, sort_keys=True).encode("utf-8")

    def write(f: Any) -> None:
        f.write(PLAN_MAGIC)
        f.write(struct.pack("<I", len(blob)))
        f.write(blob)
        f.write(plan)

    return atomic_write(path, write)


def read_plan_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    return _read(path, with_plan=False)[0]


def read_plan(path: str | os.PathLike[str]) -> tuple[dict[str, Any], bytes]:
    """(header, plan bytes); EngineError for a file that is not a complete plan file."""
    return _read(path, with_plan=True)


def _read(path: str | os.PathLike[str], *, with_plan: bool) -> tuple[dict[str, Any], bytes]:
    p = Path(path)
    try:
        with open(p, "rb") as f:
            magic = f.read(len(PLAN_MAGIC))
            if magic != PLAN_MAGIC:
                raise EngineError(f"{p} is not a defectnet TensorRT plan (no provenance header); {rebuild_hint(None)}")
            (n,) = struct.unpack("<I", f.read(4))
            header = json.loads(f.read(n).decode("utf-8"))
            plan = f.read() if with_plan else b""
    except (OSError, struct.error, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EngineError(f"cannot read the TensorRT plan {p} ({e}); {rebuild_hint(None)}") from None
    if not isinstance(header, dict) or header.get("format_version") != PLAN_FORMAT_VERSION:
        raise EngineError(f"{p} has an unknown plan header version; {rebuild_hint(None)}")
    if with_plan and (len(plan) != header.get("plan_bytes")
                      or hashlib.sha256(plan).hexdigest() != header.get("plan_sha256")):
        raise EngineError(f"the TensorRT plan {p} is truncated or corrupt (size/SHA-256 differ from its header); "
                          f"copy it again or {rebuild_hint(None)}")
    return header, plan


def check_plan(header: Mapping[str, Any], platform: Mapping[str, Any], *, onnx_sha256: str | None,
               root: str | os.PathLike[str] | None, name: str) -> None:
    """Refuse a plan built for another TensorRT, GPU or CUDA major version, or from another
    ONNX graph than the engine folder's (EngineError naming each difference)."""
    problems = []
    for key, label in (("tensorrt", "TensorRT"), ("gpu", "GPU"), ("compute_capability", "compute capability")):
        if str(header.get(key)) != str(platform.get(key)):
            problems.append(f"{label} {header.get(key)} (built) vs {platform.get(key)} (here)")
    built_cuda, here_cuda = str(header.get("cuda", "")), str(platform.get("cuda", ""))
    if built_cuda.split(".")[0] != here_cuda.split(".")[0]:
        problems.append(f"CUDA {built_cuda} (built) vs {here_cuda} (here)")
    if onnx_sha256 is not None and header.get("onnx_sha256") != onnx_sha256:
        problems.append("ONNX graph SHA-256 differs from the engine folder's graph")
    if problems:
        raise EngineError(f"the TensorRT {name} engine in {root} does not match this machine: "
                          f"{'; '.join(problems)}; {rebuild_hint(root)}")


def plan_header(*, graph: str, platform: Mapping[str, Any], onnx_sha256: str, precision: str,
                profiles: list[dict[str, Any]], extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    import defectnet

    return {"graph": graph, **dict(platform), "onnx_sha256": onnx_sha256, "precision": precision,
            "profiles": profiles, "strongly_typed": True, "defectnet": defectnet.__version__,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), **dict(extra or {})}


__all__ = ["PLAN_MAGIC", "PLAN_SUFFIX", "check_plan", "plan_header", "platform_info", "read_plan",
           "read_plan_header", "rebuild_hint", "write_plan"]
