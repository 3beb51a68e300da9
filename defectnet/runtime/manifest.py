"""The engine manifest (``ENGINE_DIR/manifest.json``) as typed, validated, frozen dataclasses.

Every writer (``defectnet-export``, ``defectnet-build-engine``, ``defectnet-calibrate-gate``)
builds a :class:`Manifest` and saves it with :func:`write_manifest`; every reader gets one
from :func:`defectnet.runtime.engine.read_manifest` or ``Engine.manifest``. Nothing else
reads or assembles the JSON. :meth:`Manifest.from_json` validates and raises an
:class:`~defectnet.errors.EngineError` naming the field and the fix;
:meth:`Manifest.to_json` gives back exactly what the writers write (same keys and values).

JSON layout, schema 1::

    format "defectnet-engine", schema_version 1, kind, variant, created
    graphs             {name: {file, sha256, bytes, inputs, outputs}}
    class_names, gate_threshold, detections_per_img, score_thresh
    preprocessing      {scale, size_divisor, + descriptive keys}
    source             {checkpoint, weights_sha256, variant, model_config}
    verification       parity report | null;   tensorrt_check {supported, tensorrt_version, graphs}
    built folders:     precision, backend, build {tool, source_engine, ...},
                       quantization {flavour, flavours, calibration, float_regions} (INT8),
                       tensorrt {engines: {name: {file, sha256, bytes, header}}, ...}, accuracy {...}
    per-graph folders: backend "auto" or "openvino", precision (or "mixed"), and per graph
                       graphs.NAME {backend, precision, inference_precision};
                       selection {chosen, candidates, ...}: what --backend auto measured and chose
    gate_calibration   the operating point defectnet-calibrate-gate chose
    anything else      (gate, exporter, versions, fp16, ...): Manifest.extra, kept as written

The schema version changes only when an older defectnet could not read a new folder
correctly; fields old readers ignore (the typed blocks above were all written by schema 1)
keep it. An older or newer ``schema_version`` fails with the fix (re-export, or upgrade).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from defectnet.data.transforms import Preprocessor
from defectnet.errors import ConfigError, EngineError
from defectnet.io import atomic_write_json
from defectnet.runtime.types import BackendName, EngineKind, Precision

ENGINE_FORMAT = "defectnet-engine"
SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"

GATE, DETECTOR, CLASSIFIER = "gate", "detector", "classifier"
#: Graph file names, and which graphs each kind needs.
GRAPH_FILES: dict[str, str] = {GATE: "gate.onnx", DETECTOR: "detector.onnx", CLASSIFIER: "classifier.onnx"}
REQUIRED_GRAPHS: dict[EngineKind, tuple[str, ...]] = {
    EngineKind.DEFECTNET: (GATE, DETECTOR),
    EngineKind.ONE_MODEL: (GATE, DETECTOR),
    EngineKind.TWO_MODEL: (CLASSIFIER, GATE, DETECTOR),
}
GATE_CALIBRATION_KEY = "gate_calibration"


def reexport_hint(root: str | os.PathLike[str] | None) -> str:
    """How to replace a broken or outdated exported folder."""
    return f"re-export it with defectnet-export --model NAME --out {root or 'DIR'}"


def rebuild_hint(root: str | os.PathLike[str] | None, source_engine: str | None = None) -> str:
    """How to replace a broken built folder (``defectnet-build-engine`` output)."""
    return f"rebuild it with defectnet-build-engine --engine {source_engine or 'EXPORTED_DIR'} --out {root or 'DIR'}"


class ManifestError(EngineError):
    """A manifest field is missing or invalid. ``problem`` says which and why;
    :meth:`Manifest.from_json` adds the folder and the fix."""

    def __init__(self, problem: str) -> None:
        self.problem = problem
        super().__init__(f"invalid engine manifest: {problem}; {reexport_hint(None)}")


# ----------------------------------------------------------------------------- JSON reading
_E = TypeVar("_E", bound=StrEnum)
_MISSING: Any = object()


def _plain(value: Any) -> Any:
    """A deep copy in plain JSON types (dict / list); enum members become their strings."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, StrEnum):
        return value.value
    return value


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def parse_enum(enum: type[_E], value: Any, what: str) -> _E:
    """``value`` as a member of ``enum``; ManifestError naming the known values otherwise."""
    if isinstance(value, str):
        for candidate in (value, value.lower()):
            try:
                return enum(candidate)
            except ValueError:
                pass
    raise ManifestError(f"unknown {what} {value!r} (known: {', '.join(m.value for m in enum)})")


class _Obj:
    """One JSON object of a manifest being read: typed reads that name the field on failure;
    :meth:`rest` returns the keys nobody read (kept as ``extra``)."""

    def __init__(self, data: Any, path: str) -> None:
        if not isinstance(data, dict):
            raise ManifestError(f"{path or 'the manifest'} must be a JSON object, got {_type_name(data)}")
        self.data: dict[str, Any] = data
        self.path = path
        self.used: set[str] = set()

    def name(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str, required: bool) -> Any:
        self.used.add(key)
        if key not in self.data:
            if required:
                raise ManifestError(f"field {self.name(key)!r} is missing")
            return _MISSING
        return self.data[key]

    def _wrong(self, key: str, expected: str, value: Any) -> ManifestError:
        return ManifestError(f"field {self.name(key)!r} must be {expected}, got {_type_name(value)} ({value!r:.80})")

    def text(self, key: str, *, required: bool = True, null: bool = False) -> str | None:
        v = self.get(key, required)
        if v is _MISSING or (v is None and null):
            return None
        if not isinstance(v, str):
            raise self._wrong(key, "a string", v)
        return v

    def integer(self, key: str, *, required: bool = True) -> int | None:
        v = self.get(key, required)
        if v is _MISSING:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            raise self._wrong(key, "an integer", v)
        return v

    def number(self, key: str, *, required: bool = True, null: bool = False) -> float | None:
        v = self.get(key, required)
        if v is _MISSING or (v is None and null):
            return None
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise self._wrong(key, "a finite number", v)
        return float(v)

    def flag(self, key: str, *, required: bool = True, null: bool = False) -> bool | None:
        v = self.get(key, required)
        if v is _MISSING or (v is None and null):
            return None
        if not isinstance(v, bool):
            raise self._wrong(key, "true or false", v)
        return v

    def texts(self, key: str, *, required: bool = True) -> tuple[str, ...] | None:
        v = self.get(key, required)
        if v is _MISSING:
            return None
        if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
            raise self._wrong(key, "a list of strings", v)
        return tuple(v)

    def text_map(self, key: str, *, required: bool = True) -> dict[str, str] | None:
        v = self.get(key, required)
        if v is _MISSING:
            return None
        if not isinstance(v, dict) or not all(isinstance(s, str) for s in v.values()):
            raise self._wrong(key, "an object of strings", v)
        return dict(v)

    def mapping(self, key: str, *, required: bool = True) -> dict[str, Any] | None:
        v = self.get(key, required)
        if v is _MISSING:
            return None
        if not isinstance(v, dict):
            raise self._wrong(key, "an object", v)
        return _plain(v)  # type: ignore[no-any-return]

    def obj(self, key: str, *, required: bool = False) -> _Obj | None:
        """A nested object; None when absent or null (and not required)."""
        v = self.get(key, required)
        if v is _MISSING or (v is None and not required):
            return None
        if not isinstance(v, dict):
            raise self._wrong(key, "an object", v)
        return _Obj(v, self.name(key))

    def rest(self) -> dict[str, Any]:
        return {k: _plain(v) for k, v in self.data.items() if k not in self.used}


def _obj(data: Any, path: str) -> _Obj:
    return data if isinstance(data, _Obj) else _Obj(data, path)


def _file_name(name: str, what: str) -> str:
    if not name or Path(name).name != name or name in (".", ".."):
        raise ManifestError(f"{what} file name {name!r} must be a plain file name inside the folder")
    return name


def _with(extra: Mapping[str, Any], **fields: Any) -> dict[str, Any]:
    """``extra`` plus the typed fields (None ones left out), in plain JSON types."""
    return {**_plain(extra), **{k: _plain(v) for k, v in fields.items() if v is not None}}


# ----------------------------------------------------------------------------- blocks
#: OpenVINO's ``INFERENCE_PRECISION_HINT`` values a graph entry may name.
INFERENCE_PRECISIONS: tuple[str, ...] = ("f32", "bf16", "f16")


@dataclass(frozen=True)
class GraphEntry:
    """One ONNX graph of the folder: its plain file name and SHA-256 (checked at load), its
    size in bytes and the input / output names the runtime binds.

    Per-graph engines (``defectnet-build-engine --backend auto``, and every OpenVINO build)
    also name, per graph: ``backend`` (the backend that runs it; None = the manifest's
    ``backend``), ``precision`` (None = the manifest's ``precision``) and, for OpenVINO,
    ``inference_precision`` (its ``INFERENCE_PRECISION_HINT``: ``f32``, ``bf16`` or ``f16``;
    OpenVINO's own default on a bf16 CPU is bf16, so the runtime always sets it)."""

    file: str
    sha256: str
    size: int | None = None
    inputs: tuple[str, ...] | None = None
    outputs: tuple[str, ...] | None = None
    backend: BackendName | None = None
    precision: Precision | None = None
    inference_precision: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _file_name(self.file, "graph")
        if self.backend is not None:
            backend = parse_enum(BackendName, self.backend, "graph backend")
            if backend in (BackendName.TORCH, BackendName.AUTO):
                raise ManifestError(f"graph {self.file} names backend {backend!r}; a graph runs on onnxruntime, "
                                    "openvino or tensorrt")
            object.__setattr__(self, "backend", backend)
        if self.precision is not None:
            precision = parse_enum(Precision, self.precision, "graph precision")
            if precision == Precision.MIXED:
                raise ManifestError(f"graph {self.file} has precision 'mixed'; one graph has one precision")
            object.__setattr__(self, "precision", precision)
        if self.inference_precision is not None and self.inference_precision not in INFERENCE_PRECISIONS:
            raise ManifestError(f"graph {self.file}: inference_precision {self.inference_precision!r} is not one of "
                                f"{', '.join(INFERENCE_PRECISIONS)}")

    @classmethod
    def from_json(cls, data: Any, path: str = "graphs.NAME") -> GraphEntry:
        """Validate the ``graphs.NAME`` JSON object."""
        o = _obj(data, path)
        backend = o.text("backend", required=False, null=True)
        precision = o.text("precision", required=False, null=True)
        return cls(o.text("file") or "", o.text("sha256") or "", o.integer("bytes", required=False),
                   o.texts("inputs", required=False), o.texts("outputs", required=False),
                   backend=None if backend is None else parse_enum(BackendName, backend, f"{o.name('backend')}"),
                   precision=None if precision is None else parse_enum(Precision, precision, f"{o.name('precision')}"),
                   inference_precision=o.text("inference_precision", required=False, null=True), extra=o.rest())

    def to_json(self) -> dict[str, Any]:
        return _with(self.extra, file=self.file, sha256=self.sha256, bytes=self.size, inputs=self.inputs,
                     outputs=self.outputs, backend=self.backend, precision=self.precision,
                     inference_precision=self.inference_precision)


@dataclass(frozen=True)
class Preprocessing:
    """What a runtime does before the gate graph: keep-ratio resize to ``scale`` (long, short),
    pad to multiples of ``size_divisor``. extra: the descriptive keys (pad value, the
    normalisation inside the graph, ...)."""

    scale: tuple[int, int]
    size_divisor: int
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            self.preprocessor()
        except ConfigError as e:
            raise ManifestError(f"the preprocessing block (scale {list(self.scale)}, size_divisor "
                                f"{self.size_divisor}) is invalid ({e})") from None

    def preprocessor(self) -> Preprocessor:
        return Preprocessor(scale=self.scale, size_divisor=self.size_divisor)

    @classmethod
    def from_json(cls, data: Any, path: str = "preprocessing") -> Preprocessing:
        """Validate the ``preprocessing`` JSON object."""
        o = _obj(data, path)
        scale = o.get("scale", True)
        if not (isinstance(scale, list) and len(scale) == 2
                and all(isinstance(s, int) and not isinstance(s, bool) for s in scale)):
            raise ManifestError(f"field {o.name('scale')!r} must be two integers (long, short side), got {scale!r}")
        return cls((scale[0], scale[1]), o.integer("size_divisor") or 0, o.rest())

    def to_json(self) -> dict[str, Any]:
        return _with(self.extra, scale=list(self.scale), size_divisor=self.size_divisor)


@dataclass(frozen=True)
class SourceInfo:
    """Where the graphs came from: the checkpoint (run folder, epoch folder or weights file;
    None for an in-memory model), its weights' SHA-256 per file, the training variant and the
    model config. The torch backend loads the checkpoint and checks the hashes."""

    checkpoint: str | None = None
    weights_sha256: Mapping[str, str] = field(default_factory=dict)
    variant: str = ""
    model_config: Mapping[str, Any] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any, path: str = "source") -> SourceInfo:
        """Validate the ``source`` JSON object."""
        o = _obj(data, path)
        return cls(o.text("checkpoint", required=False, null=True), o.text_map("weights_sha256", required=False) or {},
                   o.text("variant", required=False) or "", o.mapping("model_config", required=False) or {}, o.rest())

    def to_json(self) -> dict[str, Any]:
        return {**_plain(self.extra), "checkpoint": self.checkpoint, "weights_sha256": dict(self.weights_sha256),
                "variant": self.variant, "model_config": _plain(self.model_config)}


@dataclass(frozen=True)
class Verification:
    """The export's parity report (ONNX Runtime vs PyTorch). runs: one entry per input size
    (``input_size``, ``batch``, ``p_max_abs_diff``, ``matched`` ...)."""

    passed: bool
    failures: tuple[str, ...] = ()
    runs: tuple[Mapping[str, Any], ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any, path: str = "verification") -> Verification:
        """Validate the ``verification`` JSON object."""
        o = _obj(data, path)
        runs = o.get("runs", False)
        if runs is not _MISSING and not (isinstance(runs, list) and all(isinstance(r, dict) for r in runs)):
            raise o._wrong("runs", "a list of objects", runs)
        return cls(bool(o.flag("passed")), o.texts("failures", required=False) or (),
                   tuple(_plain(r) for r in runs) if runs is not _MISSING else (), o.rest())

    def to_json(self) -> dict[str, Any]:
        return _with(self.extra, passed=self.passed, failures=self.failures, runs=self.runs)


@dataclass(frozen=True)
class TensorRtCheck:
    """TensorRT's ONNX operator check of the graphs: supported, the TensorRT version checked
    against, and the per-graph reports (``problems``, ``notes``, ``ops``)."""

    supported: bool
    tensorrt_version: str | None = None
    graphs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def problems(self) -> list[str]:
        """``"graph: problem"`` for every problem of every graph."""
        return [f"{name}: {p}" for name, report in self.graphs.items() for p in report.get("problems", [])]

    @classmethod
    def from_json(cls, data: Any, path: str = "tensorrt_check") -> TensorRtCheck:
        """Validate the ``tensorrt_check`` JSON object."""
        o = _obj(data, path)
        return cls(bool(o.flag("supported")), o.text("tensorrt_version", required=False, null=True),
                   o.mapping("graphs", required=False) or {}, o.rest())

    def to_json(self) -> dict[str, Any]:
        return _with(self.extra, supported=self.supported, tensorrt_version=self.tensorrt_version,
                     graphs=self.graphs)


@dataclass(frozen=True)
class BuildInfo:
    """How ``defectnet-build-engine`` made the folder: the tool, the exported folder it was
    built from and its graphs' SHA-256, whether that export had passed its parity check."""

    tool: str
    source_engine: str
    source_graphs_sha256: Mapping[str, str] = field(default_factory=dict)
    source_verified: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any, path: str = "build") -> BuildInfo:
        """Validate the ``build`` JSON object."""
        o = _obj(data, path)
        return cls(o.text("tool") or "", o.text("source_engine") or "",
                   o.text_map("source_graphs_sha256", required=False) or {},
                   bool(o.flag("source_verified", required=False)), o.rest())

    def to_json(self) -> dict[str, Any]:
        return _with(self.extra, tool=self.tool, source_engine=self.source_engine,
                     source_graphs_sha256=self.source_graphs_sha256, source_verified=self.source_verified)


@dataclass(frozen=True)
class Quantization:
    """An INT8 build: ``flavour`` is the Q/DQ flavour of the main graphs (the runtime it was
    quantised for); flavours: both flavours' settings and files; extra: the calibration
    provenance and the float regions."""

    flavour: BackendName | None = None
    flavours: Mapping[str, Any] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any, path: str = "quantization") -> Quantization:
        """Validate the ``quantization`` JSON object."""
        o = _obj(data, path)
        flavour = o.text("flavour", required=False, null=True)
        return cls(None if flavour is None else parse_enum(BackendName, flavour, f"{o.name('flavour')}"),
                   o.mapping("flavours", required=False) or {}, o.rest())

    def to_json(self) -> dict[str, Any]:
        return _with(self.extra, flavour=self.flavour, flavours=self.flavours)


@dataclass(frozen=True)
class PlanEntry:
    """One serialized TensorRT plan: file (plain name), its SHA-256, size and the header
    (the platform it was built for)."""

    file: str
    sha256: str | None = None
    size: int | None = None
    header: Mapping[str, Any] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _file_name(self.file, "TensorRT plan")

    @classmethod
    def from_json(cls, data: Any, path: str = "tensorrt.engines.NAME") -> PlanEntry:
        """Validate the ``tensorrt.engines.NAME`` JSON object."""
        o = _obj(data, path)
        return cls(o.text("file") or "", o.text("sha256", required=False), o.integer("bytes", required=False),
                   o.mapping("header", required=False), o.rest())

    def to_json(self) -> dict[str, Any]:
        return _with(self.extra, file=self.file, sha256=self.sha256, bytes=self.size, header=self.header)


@dataclass(frozen=True)
class TensorRtPlans:
    """A TensorRT build: graph name -> plan; extra: platform, profile, timing cache, network."""

    engines: Mapping[str, PlanEntry] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any, path: str = "tensorrt") -> TensorRtPlans:
        """Validate the ``tensorrt`` JSON object."""
        o = _obj(data, path)
        engines = o.obj("engines") or _Obj({}, o.name("engines"))
        plans = {}
        for name in engines.data:
            entry = engines.obj(name, required=True)
            assert entry is not None
            plans[name] = PlanEntry.from_json(entry)
        return cls(plans, o.rest())

    def to_json(self) -> dict[str, Any]:
        return {**_plain(self.extra), "engines": {n: p.to_json() for n, p in self.engines.items()}}


@dataclass(frozen=True)
class Accuracy:
    """The build's accuracy gate: passed (None when skipped, with ``skipped`` saying why), the
    engine's and the reference's metrics (``mAP``, ``F1``, ``att_ms`` ...), the summary lines."""

    passed: bool | None
    skipped: str | None = None
    engine: Mapping[str, Any] = field(default_factory=dict)
    reference: Mapping[str, Any] = field(default_factory=dict)
    summary: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def engine_att_ms(self) -> float | None:
        v = self.engine.get("att_ms")
        return float(v) if isinstance(v, int | float) else None

    @property
    def reference_att_ms(self) -> float | None:
        v = self.reference.get("att_ms")
        return float(v) if isinstance(v, int | float) else None

    @classmethod
    def from_json(cls, data: Any, path: str = "accuracy") -> Accuracy:
        """Validate the ``accuracy`` JSON object."""
        o = _obj(data, path)
        return cls(o.flag("passed", null=True), o.text("skipped", required=False),
                   o.mapping("engine", required=False) or {}, o.mapping("reference", required=False) or {},
                   o.texts("summary", required=False) or (), o.texts("failed", required=False) or (), o.rest())

    def to_json(self) -> dict[str, Any]:
        if self.skipped is not None:  # no report: why the gate did not run
            return {**_plain(self.extra), "passed": self.passed, "skipped": self.skipped}
        return {**_with(self.extra, engine=self.engine, reference=self.reference, summary=self.summary,
                        failed=self.failed), "passed": self.passed}


@dataclass(frozen=True)
class GateCalibration:
    """The operating point ``defectnet-calibrate-gate`` chose: the threshold, the recall it
    targets and achieves, the pass rate it costs, the split it was chosen on and the
    threshold it replaced; extra: the rest of its provenance."""

    threshold: float
    target_recall: float
    recall: float
    pass_rate: float
    split: str | None = None
    previous_threshold: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any, path: str = "gate_calibration") -> GateCalibration:
        """Validate the ``gate_calibration`` JSON object."""
        o = _obj(data, path)
        return cls(o.number("threshold") or 0.0, o.number("target_recall") or 0.0, o.number("recall") or 0.0,
                   o.number("pass_rate") or 0.0, o.text("split", required=False),
                   o.number("previous_threshold", required=False, null=True), o.rest())

    def to_json(self) -> dict[str, Any]:
        return {**_with(self.extra, threshold=self.threshold, target_recall=self.target_recall, recall=self.recall,
                        pass_rate=self.pass_rate, split=self.split),
                "previous_threshold": self.previous_threshold}


@dataclass(frozen=True)
class Selection:
    """How ``defectnet-build-engine --backend auto`` chose each graph: chosen: graph name ->
    the chosen candidate's name (e.g. ``openvino int8``); candidates: graph name -> every
    candidate it measured (``name``, ``backend``, ``precision``, ``median_ms``, ``times_ms``,
    ``status``: chosen / slower / slower than fp32 / failed the accuracy gate / not needed);
    extra: the timing settings (threads, input size, repetitions, machine) and the accuracy
    evaluations."""

    chosen: Mapping[str, str] = field(default_factory=dict)
    candidates: Mapping[str, tuple[Mapping[str, Any], ...]] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any, path: str = "selection") -> Selection:
        """Validate the ``selection`` JSON object."""
        o = _obj(data, path)
        raw = o.mapping("candidates", required=False) or {}
        for name, items in raw.items():
            if not (isinstance(items, list) and all(isinstance(c, dict) for c in items)):
                raise ManifestError(f"field {o.name('candidates')}.{name} must be a list of objects")
        return cls(o.text_map("chosen", required=False) or {},
                   {name: tuple(items) for name, items in raw.items()}, o.rest())

    def to_json(self) -> dict[str, Any]:
        return {**_plain(self.extra), "chosen": dict(self.chosen),
                "candidates": {name: _plain(items) for name, items in self.candidates.items()}}


# ----------------------------------------------------------------------------- the manifest
@dataclass(frozen=True)
class Manifest:
    """A parsed, validated ``manifest.json`` (see the module docstring for the JSON).

    kind: what the graphs run. graphs: graph name -> :class:`GraphEntry` (every graph the
    kind needs is there). gate_threshold: P(defective) at or above which the detector runs.
    precision / backend: what a built folder was built as and for (a plain export: fp32,
    backend None, serving every backend; a per-graph engine: backend ``auto`` and each
    graph's entry names its backend and precision, see :meth:`graph_backend`). source: the
    checkpoint it was exported from. The
    optional blocks are None when the folder has none. extra: every other top-level field,
    as written.
    """

    kind: EngineKind
    graphs: Mapping[str, GraphEntry]
    class_names: tuple[str, ...]
    gate_threshold: float
    preprocessing: Preprocessing
    detections_per_img: int
    precision: Precision = Precision.FP32
    backend: BackendName | None = None
    variant: str = ""
    source: SourceInfo | None = None
    score_thresh: float | None = None
    created: str | None = None
    verification: Verification | None = None
    tensorrt_check: TensorRtCheck | None = None
    build: BuildInfo | None = None
    quantization: Quantization | None = None
    tensorrt: TensorRtPlans | None = None
    accuracy: Accuracy | None = None
    gate_calibration: GateCalibration | None = None
    selection: Selection | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    format: str = ENGINE_FORMAT
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise plain strings to the enums once, here
        set_(self, "kind", parse_enum(EngineKind, self.kind, "engine kind"))
        set_(self, "precision", parse_enum(Precision, self.precision, "precision"))
        if self.backend is not None:
            set_(self, "backend", parse_enum(BackendName, self.backend, "backend"))
            if self.backend == BackendName.TORCH:
                raise ManifestError("backend 'torch' is not an engine target (a built folder is for onnxruntime, "
                                    "openvino, tensorrt or auto)")
        set_(self, "class_names", tuple(self.class_names))
        set_(self, "graphs", dict(self.graphs))
        if self.format != ENGINE_FORMAT:
            raise ManifestError(f"format {self.format!r} is not {ENGINE_FORMAT!r}")
        if self.schema_version != SCHEMA_VERSION:
            raise ManifestError(f"schema_version {self.schema_version!r} is not {SCHEMA_VERSION}")
        for name in REQUIRED_GRAPHS[self.kind]:
            if name not in self.graphs:
                raise ManifestError(f"the graphs field lacks the {name} graph entry (file + sha256) that a "
                                    f"{self.kind} engine needs")
        if not all(isinstance(n, str) for n in self.class_names):
            raise ManifestError("class_names must be a list of strings")
        if not (math.isfinite(self.gate_threshold) and self.gate_threshold >= 0.0):
            raise ManifestError(f"gate_threshold must be a probability >= 0, got {self.gate_threshold!r}")
        if self.detections_per_img < 1:
            raise ManifestError(f"detections_per_img must be >= 1, got {self.detections_per_img}")

    # -- derived
    @property
    def is_built(self) -> bool:
        """Made by ``defectnet-build-engine`` (not a plain float32 export)."""
        return self.build is not None or self.backend is not None or self.precision != Precision.FP32

    @property
    def has_tensorrt_plans(self) -> bool:
        return self.tensorrt is not None and bool(self.tensorrt.engines)

    def graph_backend(self, name: str) -> BackendName:
        """The backend that runs graph ``name``: its entry's ``backend``, else the manifest's
        (``auto`` without per-graph entries, and a plain export: onnxruntime)."""
        entry = self.graphs.get(name)
        if entry is not None and entry.backend is not None:
            return entry.backend
        if self.backend is None or self.backend == BackendName.AUTO:
            return BackendName.ONNXRUNTIME
        return self.backend

    def graph_precision(self, name: str) -> Precision:
        """Graph ``name``'s precision: its entry's, else the manifest's."""
        entry = self.graphs.get(name)
        return entry.precision if entry is not None and entry.precision is not None else self.precision

    def required_graphs(self) -> tuple[str, ...]:
        return REQUIRED_GRAPHS[self.kind]

    # -- JSON
    @classmethod
    def from_json(cls, data: Any, root: str | os.PathLike[str] | None = None) -> Manifest:
        """Validate parsed ``manifest.json`` content; EngineError naming the problem and the fix
        (re-export; rebuild for a built folder; upgrade for a newer schema)."""
        where = f"engine folder {root}" if root is not None else "engine manifest"
        if not isinstance(data, dict) or data.get("format") != ENGINE_FORMAT:
            raise EngineError(f"{where}: {MANIFEST_FILE} is not a {ENGINE_FORMAT} manifest; {reexport_hint(root)}")
        version = data.get("schema_version")
        if isinstance(version, bool) or not isinstance(version, int):
            raise EngineError(f"{where}: {MANIFEST_FILE} has schema_version {version!r}, not an integer; "
                              f"{reexport_hint(root)}")
        subject = f"engine folder {root}" if root is not None else "this engine manifest"
        if version < SCHEMA_VERSION:
            raise EngineError(f"{subject} was written by an older defectnet (schema {version}; this one reads "
                              f"{SCHEMA_VERSION}); {reexport_hint(root)}")
        if version > SCHEMA_VERSION:
            raise EngineError(f"{subject} was written by a newer defectnet (schema {version}, this one reads "
                              f"{SCHEMA_VERSION}); upgrade defectnet (pip install -U defectnet) or re-export it "
                              f"with this version: defectnet-export --model NAME --out {root or 'DIR'}")
        try:
            return cls._parse(_Obj(data, ""))
        except ManifestError as e:
            build = data.get("build")
            source = build.get("source_engine") if isinstance(build, dict) else None
            fix = rebuild_hint(root, source if isinstance(source, str) else None) if isinstance(build, dict) \
                else reexport_hint(root)
            raise EngineError(f"{where}: {MANIFEST_FILE}: {e.problem}; {fix}") from None

    @classmethod
    def _parse(cls, o: _Obj) -> Manifest:
        o.get("format", True)
        o.get("schema_version", True)
        kind = parse_enum(EngineKind, o.text("kind"), "engine kind")
        graphs_obj = o.obj("graphs", required=True)
        assert graphs_obj is not None
        graphs: dict[str, GraphEntry] = {}
        for name in graphs_obj.data:
            entry = graphs_obj.data[name]
            if not (isinstance(entry, dict) and isinstance(entry.get("file"), str)
                    and isinstance(entry.get("sha256"), str)):
                raise ManifestError(f"the graphs field lacks the {name} graph entry (file + sha256)")
            graphs[name] = GraphEntry.from_json(_Obj(entry, graphs_obj.name(name)))
        precision = o.text("precision", required=False, null=True)
        backend = o.text("backend", required=False, null=True)

        def block(key: str, parse: Any) -> Any:
            sub = o.obj(key)
            return None if sub is None else parse(sub)

        pre = o.obj("preprocessing", required=True)
        assert pre is not None
        return cls(
            kind=kind, graphs=graphs, class_names=o.texts("class_names") or (),
            gate_threshold=o.number("gate_threshold") or 0.0, preprocessing=Preprocessing.from_json(pre),
            detections_per_img=o.integer("detections_per_img") or 0,
            precision=Precision.FP32 if precision is None else parse_enum(Precision, precision, "precision"),
            backend=None if backend is None else parse_enum(BackendName, backend, "backend"),
            variant=o.text("variant", required=False, null=True) or "",
            source=block("source", SourceInfo.from_json),
            score_thresh=o.number("score_thresh", required=False, null=True),
            created=o.text("created", required=False, null=True),
            verification=block("verification", Verification.from_json),
            tensorrt_check=block("tensorrt_check", TensorRtCheck.from_json),
            build=block("build", BuildInfo.from_json),
            quantization=block("quantization", Quantization.from_json),
            tensorrt=block("tensorrt", TensorRtPlans.from_json),
            accuracy=block("accuracy", Accuracy.from_json),
            gate_calibration=block(GATE_CALIBRATION_KEY, GateCalibration.from_json),
            selection=block("selection", Selection.from_json),
            extra=o.rest())

    def to_json(self) -> dict[str, Any]:
        """The ``manifest.json`` content (plain JSON types; :func:`write_manifest` saves it)."""
        out = {**_plain(self.extra), "format": self.format, "schema_version": self.schema_version,
               "kind": self.kind.value, "variant": self.variant,
               "graphs": {name: g.to_json() for name, g in self.graphs.items()},
               "class_names": list(self.class_names), "gate_threshold": self.gate_threshold,
               "detections_per_img": self.detections_per_img, "preprocessing": self.preprocessing.to_json(),
               "verification": None if self.verification is None else self.verification.to_json()}
        if self.backend is not None or self.precision != Precision.FP32:
            out["precision"] = self.precision.value
        if self.backend is not None:
            out["backend"] = self.backend.value
        for key, value in (("score_thresh", self.score_thresh), ("created", self.created)):
            if value is not None:
                out[key] = value
        blocks: dict[str, Any] = {"source": self.source, "tensorrt_check": self.tensorrt_check, "build": self.build,
                                  "quantization": self.quantization, "tensorrt": self.tensorrt,
                                  "accuracy": self.accuracy, GATE_CALIBRATION_KEY: self.gate_calibration,
                                  "selection": self.selection}
        out.update({key: b.to_json() for key, b in blocks.items() if b is not None})
        return out


def write_manifest(root: str | os.PathLike[str], manifest: Manifest, name: str = MANIFEST_FILE) -> Path:
    """Save ``manifest`` as ``root/name`` atomically (sorted keys: equal manifests, equal bytes)."""
    return atomic_write_json(Path(root) / name, manifest.to_json())


__all__ = ["Accuracy", "BuildInfo", "CLASSIFIER", "DETECTOR", "ENGINE_FORMAT", "GATE", "GATE_CALIBRATION_KEY",
           "GRAPH_FILES", "GateCalibration", "GraphEntry", "MANIFEST_FILE", "Manifest", "ManifestError", "PlanEntry",
           "INFERENCE_PRECISIONS", "Preprocessing", "Quantization", "REQUIRED_GRAPHS", "SCHEMA_VERSION", "Selection",
           "SourceInfo", "TensorRtCheck",
           "TensorRtPlans", "Verification", "parse_enum", "rebuild_hint", "reexport_hint", "write_manifest"]
