"""How to build a backend: :class:`BackendOptions`, validated on creation.

One options object for every backend; each backend uses the fields that apply to it::

    field           onnxruntime                    torch                      tensorrt                     openvino
    threads         intra_op_num_threads/session   must equal the process's   -                            INFERENCE_NUM_THREADS
                                                   torch.get_num_threads()                                 per graph
    device          - (providers decide)           cpu / cuda / cuda:N        cuda / cuda:N (cpu -> cuda)  cpu only
    providers       cpu / auto / provider names    -                          -                            -
    allow_spinning  intra-op threads busy-wait     -                          -                            -

``auto`` (a per-graph engine) passes the same options to the backend of each graph.

**Threads and PyTorch.** ONNX Runtime gives every session its own intra-op pool, so
``threads`` is a per-backend setting there. PyTorch has one intra-op pool per *process*
(``torch.set_num_threads``): two torch backends cannot have different counts, and the count
also applies to preprocessing and to every other torch op in the process. The factory
therefore never changes it behind the caller's back: a torch backend asked for
``threads=n`` requires that the process already runs ``n`` torch threads (set it once at
start-up, as ``defectnet-bench --threads`` does) and raises a :class:`ConfigError` otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from defectnet.errors import ConfigError

#: ``cpu``, ``cuda`` or ``cuda:N``.
DEVICE_PATTERN = re.compile(r"^(cpu|cuda(:\d+)?)$")
_PROVIDER = re.compile(r"^[A-Za-z][A-Za-z0-9]*ExecutionProvider$")

def _providers(value: object) -> str | tuple[str, ...]:
    """``cpu``/``auto`` as is; a comma-separated string or a sequence -> a tuple of provider names."""
    if value is None:
        return "cpu"
    if value in ("cpu", "auto"):
        return str(value)
    if isinstance(value, str):
        names: Sequence[object] = [v.strip() for v in value.split(",")]
    elif isinstance(value, Sequence):
        names = list(value)
    else:
        names = [value]
    if not names or not all(isinstance(n, str) and _PROVIDER.match(n) for n in names):
        raise ConfigError(f"providers must be 'cpu', 'auto' or ONNX Runtime provider names such as "
                          f"'CUDAExecutionProvider,CPUExecutionProvider', got {value!r}")
    return tuple(str(n) for n in names)


@dataclass(frozen=True)
class BackendOptions:
    """Options of :func:`~defectnet.runtime.backends.make_backend` (see the module docstring).

    threads: intra-op threads, 0 = the library's default (>= 0). device: ``cpu``, ``cuda`` or
    ``cuda:N`` (the torch and TensorRT backends; TensorRT runs on ``cuda`` when it is
    ``cpu``). providers: ONNX Runtime execution providers: ``"cpu"`` (default), ``"auto"``
    (TensorRT/CUDA when this onnxruntime has them, then CPU), or provider names (a list or a
    comma-separated string; stored as a tuple). allow_spinning: let ONNX Runtime's intra-op
    threads busy-wait after a run (off: spinning threads slowed the in-process PyTorch
    preprocessing ~10x on 2 cores).
    """

    threads: int = 0
    device: str = "cpu"
    providers: str | Sequence[str] | None = "cpu"
    allow_spinning: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 0:
            raise ConfigError(f"threads must be an integer >= 0 (0 = the library's default), got {self.threads!r}")
        if not isinstance(self.device, str) or not DEVICE_PATTERN.match(self.device):
            raise ConfigError(f"device must be 'cpu', 'cuda' or 'cuda:N' (N = a GPU index), got {self.device!r}")
        if not isinstance(self.allow_spinning, bool):
            raise ConfigError(f"allow_spinning must be True or False, got {self.allow_spinning!r}")
        object.__setattr__(self, "providers", _providers(self.providers))

    @property
    def provider_list(self) -> str | list[str]:
        """``providers`` in the form :func:`~defectnet.runtime.backends.resolve_providers` takes
        (``"cpu"``, ``"auto"`` or a list of names)."""
        return self.providers if isinstance(self.providers, str) else list(self.providers or ())


__all__ = ["DEVICE_PATTERN", "BackendOptions"]
