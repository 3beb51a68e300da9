"""A typed view of the part of the TensorRT Python API that DefectNet uses.

Why not the installed ``tensorrt-stubs`` (10.13) directly: its ``tensorrt_bindings/tensorrt.pyi``
does not parse (parameters named ``in``, a parameter without default after one with a
default), and it ships no ``py.typed`` marker, so mypy treats ``tensorrt`` as ``Any`` and
would check nothing. The protocols below transcribe the stub signatures of exactly the
members we call (``tests/runtime/test_tensorrt_backend.py`` compares the parameter names
with the installed stub text), and :func:`tensorrt_api` returns the real module typed as
:class:`TensorRT`, so every TensorRT call in the builder and the backend is type-checked
without ``type: ignore``.
"""

from __future__ import annotations

import builtins
from typing import Any, Protocol, cast

import torch

from defectnet.errors import BackendUnavailableError


class Dims(Protocol):
    def __getitem__(self, arg0: int) -> int: ...
    def __len__(self) -> int: ...


class DataType(Protocol):
    def __hash__(self) -> int: ...


class IHostMemory(Protocol):
    @property
    def nbytes(self) -> int: ...
    def __buffer__(self, flags: int) -> memoryview: ...


class ILogger(Protocol):
    pass


class ITimingCache(Protocol):
    def serialize(self) -> IHostMemory: ...


class IOptimizationProfile(Protocol):
    def set_shape(self, input: str, min: Dims, opt: Dims, max: Dims) -> None: ...


class IBuilderConfig(Protocol):
    def add_optimization_profile(self, profile: IOptimizationProfile) -> int: ...
    def create_timing_cache(self, serialized_timing_cache: bytes) -> ITimingCache: ...
    def get_timing_cache(self) -> ITimingCache: ...
    def set_memory_pool_limit(self, pool: Any, pool_size: int) -> None: ...
    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool: ...


class ITensor(Protocol):
    name: str
    shape: Dims
    dtype: DataType


class INetworkDefinition(Protocol):
    def get_input(self, index: int) -> ITensor: ...
    @property
    def num_inputs(self) -> int: ...


class Builder(Protocol):
    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> IHostMemory | None: ...
    def create_builder_config(self) -> IBuilderConfig: ...
    def create_network(self, flags: int = 0) -> INetworkDefinition: ...
    def create_optimization_profile(self) -> IOptimizationProfile: ...


class ParserError(Protocol):
    def desc(self) -> str: ...
    def node(self) -> int: ...
    def node_name(self) -> str: ...


class OnnxParser(Protocol):
    def get_error(self, index: int) -> ParserError: ...
    def parse_from_file(self, model: str) -> bool: ...
    @property
    def num_errors(self) -> int: ...


class IExecutionContext(Protocol):
    def execute_async_v3(self, stream_handle: int) -> bool: ...
    def get_tensor_shape(self, name: str) -> Dims: ...
    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool: ...
    def set_tensor_address(self, name: str, memory: int) -> bool: ...


class ICudaEngine(Protocol):
    def create_execution_context(self, strategy: Any = ...) -> IExecutionContext | None: ...
    def get_tensor_dtype(self, name: str) -> DataType: ...
    def get_tensor_mode(self, name: str) -> Any: ...
    def get_tensor_name(self, index: int) -> str: ...
    @property
    def num_io_tensors(self) -> int: ...


class Runtime(Protocol):
    def deserialize_cuda_engine(self, serialized_engine: bytes) -> ICudaEngine | None: ...


# ----------------------------------------------------------------------------- classes and enums
class _LoggerClass(Protocol):
    WARNING: Any
    ERROR: Any
    INFO: Any

    def __call__(self, min_severity: Any = ...) -> ILogger: ...


class _BuilderClass(Protocol):
    def __call__(self, logger: ILogger) -> Builder: ...


class _OnnxParserClass(Protocol):
    def __call__(self, network: INetworkDefinition, logger: ILogger) -> OnnxParser: ...


class _RuntimeClass(Protocol):
    def __call__(self, logger: ILogger) -> Runtime: ...


class _DimsClass(Protocol):
    def __call__(self, shape: list[int]) -> Dims: ...


class _CreationFlags(Protocol):
    STRONGLY_TYPED: Any


class _MemoryPools(Protocol):
    WORKSPACE: Any


class _IOModes(Protocol):
    INPUT: Any
    OUTPUT: Any


class TensorRT(Protocol):
    """The ``tensorrt`` module, as far as DefectNet uses it."""

    __version__: str
    Logger: _LoggerClass
    Builder: _BuilderClass
    OnnxParser: _OnnxParserClass
    Runtime: _RuntimeClass
    Dims: _DimsClass
    NetworkDefinitionCreationFlag: _CreationFlags
    MemoryPoolType: _MemoryPools
    TensorIOMode: _IOModes
    float32: DataType
    float16: DataType
    bfloat16: DataType
    int8: DataType
    int32: DataType
    int64: DataType
    uint8: DataType
    bool: DataType

    def init_libnvinfer_plugins(self, logger: ILogger, namespace: str) -> builtins.bool: ...


def tensorrt_api() -> TensorRT:
    """The real ``tensorrt`` module, typed; :class:`~defectnet.errors.BackendUnavailableError`
    without TensorRT (see :func:`import_tensorrt`)."""
    return cast(TensorRT, import_tensorrt())


# ----------------------------------------------------------------------------- availability
INSTALL_HINT = ("needs an NVIDIA GPU with TensorRT (pip install tensorrt, or 'pip install defectnet[tensorrt]'; "
                "TensorRT 10+ and a CUDA build of PyTorch)")


def import_tensorrt() -> Any:
    """The real ``tensorrt`` module, or :class:`BackendUnavailableError`. ``import tensorrt`` can
    succeed without TensorRT (the ``tensorrt-stubs`` type stubs install an empty namespace
    package), so availability is tested with ``hasattr(trt, "Builder")``."""
    try:
        import tensorrt as trt_module
    except ImportError:
        raise BackendUnavailableError(f"the TensorRT backend {INSTALL_HINT}: tensorrt is not installed") from None
    if not hasattr(trt_module, "Builder"):
        raise BackendUnavailableError(f"the TensorRT backend {INSTALL_HINT}: only the tensorrt type stubs are "
                                      "installed here, not TensorRT itself")
    return trt_module


def require_cuda() -> None:
    if not torch.cuda.is_available():
        raise BackendUnavailableError(f"the TensorRT backend {INSTALL_HINT}: PyTorch sees no CUDA device "
                                      f"(torch {torch.__version__}, CUDA build {torch.version.cuda})")


def tensorrt_available() -> bool:
    """True when real TensorRT and a CUDA device are usable (never raises)."""
    try:
        import_tensorrt()
        require_cuda()
    except BackendUnavailableError:
        return False
    return True
