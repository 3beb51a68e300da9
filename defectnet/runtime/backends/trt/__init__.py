"""TensorRT: the typed API subset (:mod:`.api`), the plan file format (:mod:`.plan`) and the
backend (:mod:`.backend`). Nothing here imports ``tensorrt`` until it is used."""

from defectnet.runtime.backends.trt.api import INSTALL_HINT, import_tensorrt, require_cuda, tensorrt_available
from defectnet.runtime.backends.trt.backend import TensorRtBackend
from defectnet.runtime.backends.trt.plan import (
    PLAN_MAGIC,
    PLAN_SUFFIX,
    check_plan,
    plan_header,
    platform_info,
    read_plan,
    read_plan_header,
    rebuild_hint,
    write_plan,
)

__all__ = ["INSTALL_HINT", "PLAN_MAGIC", "PLAN_SUFFIX", "TensorRtBackend", "check_plan", "import_tensorrt", "plan_header",
           "platform_info", "read_plan", "read_plan_header", "rebuild_hint", "require_cuda", "tensorrt_available",
           "write_plan"]
