"""Where a number was measured: the machine and the library versions, for results files.

Used by ``defectnet-eval`` and ``defectnet-bench`` alike (``machine`` / ``libraries`` in
their JSON files).
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


def _cpuinfo(path: str = "/proc/cpuinfo") -> tuple[str | None, int | None]:
    """(CPU model name, physical cores) from /proc/cpuinfo (None where unknown)."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None, None
    model, cores, phys = None, set(), None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "model name" and model is None:
            model = value
        elif key == "physical id":
            phys = value
        elif key == "core id":
            cores.add((phys, value))
    return model, (len(cores) or None)


def _meminfo_gb(path: str = "/proc/meminfo") -> float | None:
    try:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 ** 2, 1)
    except (OSError, ValueError, IndexError):
        return None
    return None


def machine_info() -> dict[str, Any]:
    """CPU model, cores (logical, physical, usable by this process), memory, GPUs, OS."""
    import torch

    model, physical = _cpuinfo()
    usable: int | None
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        usable = os.cpu_count()
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append({"name": p.name, "compute_capability": f"{p.major}.{p.minor}",
                         "memory_gb": round(p.total_memory / 1024 ** 3, 1)})
    return {"cpu": model or platform.processor() or platform.machine(), "logical_cores": os.cpu_count(),
            "physical_cores": physical, "usable_cores": usable, "memory_gb": _meminfo_gb(), "gpus": gpus,
            "os": platform.platform(), "python": platform.python_version(),
            "torch_threads": torch.get_num_threads()}


def library_versions() -> dict[str, Any]:
    """torch, torchvision, onnx, onnxruntime (+ its providers), numpy, defectnet; tensorrt
    only when the real library imports (the type-stub package does not count); CUDA/cuDNN of
    the torch build."""
    import numpy
    import torch
    import torchvision

    import defectnet

    out: dict[str, Any] = {"defectnet": defectnet.__version__, "torch": torch.__version__,
                           "torchvision": torchvision.__version__, "numpy": numpy.__version__,
                           "torch_cuda": torch.version.cuda,
                           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}
    try:
        import onnx

        out["onnx"] = onnx.__version__
    except ImportError:  # pragma: no cover - a dependency
        out["onnx"] = None
    try:
        import onnxruntime

        out["onnxruntime"] = onnxruntime.__version__
        out["onnxruntime_providers"] = list(onnxruntime.get_available_providers())
    except ImportError:  # pragma: no cover - a dependency
        out["onnxruntime"] = None
    try:
        import openvino

        out["openvino"] = str(openvino.__version__)
    except ImportError:
        out["openvino"] = None
    try:
        import tensorrt

        out["tensorrt"] = str(tensorrt.__version__) if hasattr(tensorrt, "Builder") else None
    except ImportError:
        out["tensorrt"] = None
    return out
