"""Build serialized TensorRT engines (plans) from the engine folder's ONNX graphs.

TensorRT 10/11 Python API, explicit precision:

* ``trt.init_libnvinfer_plugins(logger, "")`` before parsing: the detector's ``RoiAlign``
  is parsed into TensorRT's built-in ``ROIAlign_TRT`` plugin;
* ``builder.create_network(1 << NetworkDefinitionCreationFlag.STRONGLY_TYPED)``: a strongly
  typed network follows the ONNX types exactly -- the FP16 graph's float16 tensors, the
  INT8 graph's Q/DQ nodes, its float32 islands. No ``BuilderFlag.FP16/INT8`` and no
  calibrator (both deprecated in TensorRT 10, removed in 11);
* ``trt.OnnxParser(network, logger).parse_from_file``;
* one optimisation profile per graph: batch and padded image size min/opt/max
  (:class:`ShapeProfile`); the detector's C2..C5 dimensions follow from the image size
  through the backbone strides 4, 8, 16, 32;
* a timing cache file (loaded before, saved after every build) so rebuilds and the second
  graph reuse kernel timings;
* ``builder.build_serialized_network`` -> a plan file with a JSON provenance header
  (:mod:`defectnet.runtime.backends.trt`).

Nothing here imports TensorRT at module import time.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from defectnet.errors import ConfigError, EngineError
from defectnet.runtime.engine import CLASSIFIER, DETECTOR, FEATURE_NAMES, GATE

#: Backbone output strides of C2..C5 (ResNet): the detector's input sizes per image size.
FEATURE_STRIDES = {"c2": 4, "c3": 8, "c4": 16, "c5": 32}
DEFAULT_WORKSPACE_GB = 4.0


@dataclass(frozen=True)
class ShapeProfile:
    """min/opt/max ``(batch, height, width)`` of the padded image batch."""

    min: tuple[int, int, int]
    opt: tuple[int, int, int]
    max: tuple[int, int, int]

    def validate(self, size_divisor: int = 32) -> ShapeProfile:
        for label, shape in (("--min-shape", self.min), ("--opt-shape", self.opt), ("--max-shape", self.max)):
            b, h, w = shape
            if b < 1 or h < size_divisor or w < size_divisor or h % size_divisor or w % size_divisor:
                raise ConfigError(f"{label} {b}x{h}x{w}: batch must be >= 1 and height/width positive multiples of "
                                  f"{size_divisor} (the padded input size)")
        for i, name in enumerate(("batch", "height", "width")):
            if not self.min[i] <= self.opt[i] <= self.max[i]:
                raise ConfigError(f"shape profile {name}: need min <= opt <= max, got {self.min[i]} / {self.opt[i]} "
                                  f"/ {self.max[i]}")
        return self

    def to_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


def parse_shape(text: str) -> tuple[int, int, int]:
    """``"BxHxW"`` (e.g. ``1x800x1344``) -> (B, H, W)."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX,]\s*(\d+)\s*[xX,]\s*(\d+)\s*", text)
    if not m:
        raise ConfigError(f"shape {text!r} must be BATCHxHEIGHTxWIDTH, e.g. 1x800x1344")
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def default_profile(scale: tuple[int, int], size_divisor: int = 32, *, opt_size: tuple[int, int] | None = None,
                    max_batch: int = 4) -> ShapeProfile:
    """max: any orientation of the preprocessing scale (long side on either axis), padded;
    opt: ``opt_size`` (e.g. the most common padded size of the data) or landscape at full
    scale; min: batch 1 at one size-divisor cell."""
    def pad(v: int) -> int:
        return -(-v // size_divisor) * size_divisor

    long_side = pad(max(scale))
    opt_h, opt_w = opt_size or (pad(min(scale)), long_side)
    return ShapeProfile((1, size_divisor, size_divisor), (1, opt_h, opt_w), (max_batch, long_side, long_side))


def input_shapes(graph: str, model: Any, bhw: tuple[int, int, int]) -> dict[str, tuple[int, ...]]:
    """Input name -> shape of ``graph`` for a padded image batch ``(B, H, W)``."""
    b, h, w = bhw
    if graph in (GATE, CLASSIFIER):
        return {"images": (b, 3, h, w), "image_sizes": (b, 2)}
    if graph == DETECTOR:
        channels = {}
        for vi in model.graph.input:
            if vi.name in FEATURE_NAMES:
                dim = vi.type.tensor_type.shape.dim[1]
                if not dim.HasField("dim_value"):
                    raise EngineError(f"detector input {vi.name} has no static channel count")
                channels[vi.name] = int(dim.dim_value)
        shapes: dict[str, tuple[int, ...]] = {n: (b, channels[n], h // s, w // s) for n, s in FEATURE_STRIDES.items()}
        shapes["image_sizes"] = (b, 2)
        return shapes
    raise ValueError(f"unknown graph {graph!r}")


def timing_cache_path(platform: dict[str, Any], cache_dir: Path) -> Path:
    """One timing cache per TensorRT version and GPU model."""
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", f"{platform['tensorrt']}-{platform['gpu']}-sm{platform['compute_capability']}")
    return cache_dir / f"tensorrt-timing-{slug}.cache"


def build_plan(onnx_path: str | os.PathLike[str], plan_path: str | os.PathLike[str], *, graph: str,
               profile: ShapeProfile, precision: str, onnx_sha256: str, timing_cache: Path | None,
               workspace_gb: float = DEFAULT_WORKSPACE_GB, log: Callable[[str], None] = lambda _: None
               ) -> dict[str, Any]:
    """Parse ``onnx_path`` into a strongly typed network, build it with ``profile`` and write
    the plan with its provenance header to ``plan_path``; returns the header."""
    import onnx

    from defectnet.io import atomic_write_bytes
    from defectnet.runtime.backends.trt import plan_header, platform_info, require_cuda, write_plan
    from defectnet.runtime.backends.trt.api import tensorrt_api

    trt = tensorrt_api()
    require_cuda()
    platform = platform_info()
    logger = trt.Logger(trt.Logger.WARNING)
    trt.init_libnvinfer_plugins(logger, "")  # before parsing: RoiAlign -> ROIAlign_TRT
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [f"{parser.get_error(i).node_name() or parser.get_error(i).node()}: {parser.get_error(i).desc()}"
                  for i in range(parser.num_errors)]
        raise EngineError(f"TensorRT {trt.__version__} cannot parse the {graph} graph {onnx_path}: "
                          f"{'; '.join(errors) or 'unknown error'}; check the manifest's tensorrt_check and "
                          "re-export with defectnet-export")
    model = onnx.load(str(onnx_path), load_external_data=False)
    shapes = {k: input_shapes(graph, model, getattr(profile, k)) for k in ("min", "opt", "max")}
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    opt_profile = builder.create_optimization_profile()
    names = [network.get_input(i).name for i in range(network.num_inputs)]
    for name in names:
        if name not in shapes["opt"]:
            raise EngineError(f"the {graph} graph has an unexpected input {name!r}; re-export with defectnet-export")
        opt_profile.set_shape(name, trt.Dims(list(shapes["min"][name])), trt.Dims(list(shapes["opt"][name])),
                              trt.Dims(list(shapes["max"][name])))
    config.add_optimization_profile(opt_profile)
    if timing_cache is not None:
        blob = timing_cache.read_bytes() if timing_cache.is_file() else b""
        cache = config.create_timing_cache(blob)
        if not config.set_timing_cache(cache, False):
            log(f"timing cache {timing_cache} does not match this GPU/TensorRT; starting a new one")
            config.set_timing_cache(config.create_timing_cache(b""), False)
    log(f"building the TensorRT {precision} {graph} engine (profile {profile.to_dict()}) ...")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"TensorRT failed to build the {graph} engine (see the TensorRT log above); try a smaller "
                          "--max-shape or a larger --workspace-gb")
    if timing_cache is not None:
        atomic_write_bytes(timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))
    header = plan_header(graph=graph, platform=platform, onnx_sha256=onnx_sha256, precision=precision,
                         profiles=[{**profile.to_dict(),
                                    "inputs": {k: {n: list(s) for n, s in v.items()} for k, v in shapes.items()}}],
                         extra={"workspace_gb": workspace_gb})
    write_plan(plan_path, header, bytes(memoryview(serialized)))
    return header
