"""The manifest's blocks (graphs, preprocessing, source, verification, build, quantization,
TensorRT plans, accuracy, gate calibration, per-graph selection), each a frozen dataclass
with ``from_json`` (validating, via :mod:`.reading`) and ``to_json`` (what the writers write)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from defectnet.data.transforms import Preprocessor
from defectnet.errors import ConfigError
from defectnet.runtime.manifest.layout import INFERENCE_PRECISIONS
from defectnet.runtime.manifest.reading import (
    MISSING,
    JsonObject,
    ManifestError,
    as_object,
    file_name,
    parse_enum,
    plain,
    with_extra,
)
from defectnet.runtime.types import BackendName, Precision


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
        file_name(self.file, "graph")
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
        o = as_object(data, path)
        backend = o.text("backend", required=False, null=True)
        precision = o.text("precision", required=False, null=True)
        return cls(o.text("file") or "", o.text("sha256") or "", o.integer("bytes", required=False),
                   o.texts("inputs", required=False), o.texts("outputs", required=False),
                   backend=None if backend is None else parse_enum(BackendName, backend, f"{o.name('backend')}"),
                   precision=None if precision is None else parse_enum(Precision, precision, f"{o.name('precision')}"),
                   inference_precision=o.text("inference_precision", required=False, null=True), extra=o.rest())

    def to_json(self) -> dict[str, Any]:
        return with_extra(self.extra, file=self.file, sha256=self.sha256, bytes=self.size, inputs=self.inputs,
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
        o = as_object(data, path)
        scale = o.get("scale", True)
        if not (isinstance(scale, list) and len(scale) == 2
                and all(isinstance(s, int) and not isinstance(s, bool) for s in scale)):
            raise ManifestError(f"field {o.name('scale')!r} must be two integers (long, short side), got {scale!r}")
        return cls((scale[0], scale[1]), o.integer("size_divisor") or 0, o.rest())

    def to_json(self) -> dict[str, Any]:
        return with_extra(self.extra, scale=list(self.scale), size_divisor=self.size_divisor)


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
        o = as_object(data, path)
        return cls(o.text("checkpoint", required=False, null=True), o.text_map("weights_sha256", required=False) or {},
                   o.text("variant", required=False) or "", o.mapping("model_config", required=False) or {}, o.rest())

    def to_json(self) -> dict[str, Any]:
        return {**plain(self.extra), "checkpoint": self.checkpoint, "weights_sha256": dict(self.weights_sha256),
                "variant": self.variant, "model_config": plain(self.model_config)}


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
        o = as_object(data, path)
        runs = o.get("runs", False)
        if runs is not MISSING and not (isinstance(runs, list) and all(isinstance(r, dict) for r in runs)):
            raise o._wrong("runs", "a list of objects", runs)
        return cls(bool(o.flag("passed")), o.texts("failures", required=False) or (),
                   tuple(plain(r) for r in runs) if runs is not MISSING else (), o.rest())

    def to_json(self) -> dict[str, Any]:
        return with_extra(self.extra, passed=self.passed, failures=self.failures, runs=self.runs)


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
        o = as_object(data, path)
        return cls(bool(o.flag("supported")), o.text("tensorrt_version", required=False, null=True),
                   o.mapping("graphs", required=False) or {}, o.rest())

    def to_json(self) -> dict[str, Any]:
        return with_extra(self.extra, supported=self.supported, tensorrt_version=self.tensorrt_version,
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
        o = as_object(data, path)
        return cls(o.text("tool") or "", o.text("source_engine") or "",
                   o.text_map("source_graphs_sha256", required=False) or {},
                   bool(o.flag("source_verified", required=False)), o.rest())

    def to_json(self) -> dict[str, Any]:
        return with_extra(self.extra, tool=self.tool, source_engine=self.source_engine,
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
        o = as_object(data, path)
        flavour = o.text("flavour", required=False, null=True)
        return cls(None if flavour is None else parse_enum(BackendName, flavour, f"{o.name('flavour')}"),
                   o.mapping("flavours", required=False) or {}, o.rest())

    def to_json(self) -> dict[str, Any]:
        return with_extra(self.extra, flavour=self.flavour, flavours=self.flavours)


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
        file_name(self.file, "TensorRT plan")

    @classmethod
    def from_json(cls, data: Any, path: str = "tensorrt.engines.NAME") -> PlanEntry:
        """Validate the ``tensorrt.engines.NAME`` JSON object."""
        o = as_object(data, path)
        return cls(o.text("file") or "", o.text("sha256", required=False), o.integer("bytes", required=False),
                   o.mapping("header", required=False), o.rest())

    def to_json(self) -> dict[str, Any]:
        return with_extra(self.extra, file=self.file, sha256=self.sha256, bytes=self.size, header=self.header)


@dataclass(frozen=True)
class TensorRtPlans:
    """A TensorRT build: graph name -> plan; extra: platform, profile, timing cache, network."""

    engines: Mapping[str, PlanEntry] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any, path: str = "tensorrt") -> TensorRtPlans:
        """Validate the ``tensorrt`` JSON object."""
        o = as_object(data, path)
        engines = o.obj("engines") or JsonObject({}, o.name("engines"))
        plans = {}
        for name in engines.data:
            entry = engines.obj(name, required=True)
            assert entry is not None
            plans[name] = PlanEntry.from_json(entry)
        return cls(plans, o.rest())

    def to_json(self) -> dict[str, Any]:
        return {**plain(self.extra), "engines": {n: p.to_json() for n, p in self.engines.items()}}


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
        o = as_object(data, path)
        return cls(o.flag("passed", null=True), o.text("skipped", required=False),
                   o.mapping("engine", required=False) or {}, o.mapping("reference", required=False) or {},
                   o.texts("summary", required=False) or (), o.texts("failed", required=False) or (), o.rest())

    def to_json(self) -> dict[str, Any]:
        if self.skipped is not None:  # no report: why the gate did not run
            return {**plain(self.extra), "passed": self.passed, "skipped": self.skipped}
        return {**with_extra(self.extra, engine=self.engine, reference=self.reference, summary=self.summary,
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
        o = as_object(data, path)
        return cls(o.number("threshold") or 0.0, o.number("target_recall") or 0.0, o.number("recall") or 0.0,
                   o.number("pass_rate") or 0.0, o.text("split", required=False),
                   o.number("previous_threshold", required=False, null=True), o.rest())

    def to_json(self) -> dict[str, Any]:
        return {**with_extra(self.extra, threshold=self.threshold, target_recall=self.target_recall, recall=self.recall,
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
        o = as_object(data, path)
        raw = o.mapping("candidates", required=False) or {}
        for name, items in raw.items():
            if not (isinstance(items, list) and all(isinstance(c, dict) for c in items)):
                raise ManifestError(f"field {o.name('candidates')}.{name} must be a list of objects")
        return cls(o.text_map("chosen", required=False) or {},
                   {name: tuple(items) for name, items in raw.items()}, o.rest())

    def to_json(self) -> dict[str, Any]:
        return {**plain(self.extra), "chosen": dict(self.chosen),
                "candidates": {name: plain(items) for name, items in self.candidates.items()}}

