"""The manifest itself (:class:`Manifest`: kind, graphs, thresholds, preprocessing and the
optional blocks) and :func:`write_manifest`."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from defectnet.errors import EngineError
from defectnet.io import atomic_write_json
from defectnet.runtime.manifest.blocks import (
    Accuracy,
    BuildInfo,
    GateCalibration,
    GraphEntry,
    Preprocessing,
    Quantization,
    Selection,
    SourceInfo,
    TensorRtCheck,
    TensorRtPlans,
    Verification,
)
from defectnet.runtime.manifest.layout import (
    ENGINE_FORMAT,
    GATE_CALIBRATION_KEY,
    MANIFEST_FILE,
    REQUIRED_GRAPHS,
    SCHEMA_VERSION,
)
from defectnet.runtime.manifest.reading import (
    JsonObject,
    ManifestError,
    parse_enum,
    plain,
    rebuild_hint,
    reexport_hint,
)
from defectnet.runtime.types import BackendName, EngineKind, Precision


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
            return cls._parse(JsonObject(data, ""))
        except ManifestError as e:
            build = data.get("build")
            source = build.get("source_engine") if isinstance(build, dict) else None
            fix = rebuild_hint(root, source if isinstance(source, str) else None) if isinstance(build, dict) \
                else reexport_hint(root)
            raise EngineError(f"{where}: {MANIFEST_FILE}: {e.problem}; {fix}") from None

    @classmethod
    def _parse(cls, o: JsonObject) -> Manifest:
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
            graphs[name] = GraphEntry.from_json(JsonObject(entry, graphs_obj.name(name)))
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
        out = {**plain(self.extra), "format": self.format, "schema_version": self.schema_version,
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
