"""What to benchmark: model rows x backends, on which images, with which settings.

A **row** is one model of the seed's table (``one-model``, ``two-model_small``,
``two-model_large``, ``defectnet_const`` / ``_linear`` / ``_inverse`` / ``_exponential``).
It is found from a finished run folder (``--checkpoint RUN``, or every run under
``--runs-dir``) and/or from engine folders (``--engine DIR``). A run folder's ``engine/``
and every sibling ``engine-*/`` (``engine-int8/``, ``engine-fp16/`` ...) with a
``manifest.json`` belong to the row, as do the ``DIR-*`` siblings of an ``--engine DIR``.
Engines and runs are matched through the checkpoint the engine records as its source.

A **case** is one (row, backend, precision): ``torch fp32`` (PyTorch eager, the reference;
needs the run folder or the engine's recorded source checkpoint), ``onnxruntime P`` for
each engine folder built for ONNX Runtime (P = the manifest's ``precision``, ``fp32`` when
absent; a folder whose manifest ``backend`` is ``tensorrt`` -- ``defectnet-build-engine
--backend tensorrt`` output -- is left to TensorRT), ``openvino P`` for each engine folder
built for OpenVINO (``--backend openvino``, or an ``auto`` build whose every graph chose
OpenVINO), ``auto: gate B P, detector B P`` for each per-graph engine whose graphs run on
different backends (``--backend auto``; the label names each graph's choice) and
``tensorrt P`` for each engine folder whose manifest lists TensorRT plans. A case that
cannot run here (no engine folder, no TensorRT, no GPU) becomes a :class:`Skip` with the
reason, and the benchmark goes on without it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from defectnet.errors import ConfigError, DefectNetError
from defectnet.runtime.types import BackendName, EngineKind, Precision
from defectnet.train.config import Variant

TORCH, ONNXRUNTIME, TENSORRT = BackendName.TORCH, BackendName.ONNXRUNTIME, BackendName.TENSORRT
OPENVINO, AUTO = BackendName.OPENVINO, BackendName.AUTO
#: Column order: the reference first.
BACKENDS: tuple[BackendName, ...] = (TORCH, ONNXRUNTIME, OPENVINO, AUTO, TENSORRT)
PRECISIONS: tuple[Precision, ...] = tuple(Precision)
#: The seed table's row order.
ROW_ORDER: tuple[str, ...] = tuple(v.table_name for v in Variant)
ENGINE_GLOB = "engine*"


@dataclass(frozen=True)
class EngineRef:
    """An engine folder as far as the benchmark needs it (manifest only, no hashing yet).

    precision: ``fp32`` | ``int8`` | ``fp16`` (manifest ``precision``; ``fp32`` when absent).
    flavour: the INT8 Q/DQ flavour of the main graphs when the manifest names one. target: the
    backend the folder was built for (manifest ``backend``; None for a plain export, which
    serves both). tensorrt: the manifest lists TensorRT plans (a ``tensorrt.engines`` section).
    per_graph: ``graph backend precision`` of each graph of a per-graph (``auto``) engine.
    """

    path: Path
    kind: EngineKind
    variant: str
    precision: Precision
    source_checkpoint: Path | None
    flavour: BackendName | None = None
    target: BackendName | None = None
    tensorrt: bool = False
    per_graph: tuple[str, ...] = ()


@dataclass(eq=False)
class ModelRow:
    """One model of the table. run_dir: its finished run folder (None for an engine-only
    row); engines: its engine folders, fp32 first."""

    name: str
    variant: str
    kind: str
    run_dir: Path | None = None
    engines: list[EngineRef] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def is_one_model(self) -> bool:
        return self.kind == EngineKind.ONE_MODEL


@dataclass(frozen=True, eq=False)
class Case:
    """One measurement: ``row`` on ``backend`` at ``precision`` (``engine`` None for torch
    from a run folder). label: the column name, e.g. ``onnxruntime int8``."""

    row: ModelRow
    backend: str
    precision: str
    engine: EngineRef | None
    label: str

    @property
    def key(self) -> str:
        return f"{self.row.name} | {self.label}"


@dataclass(frozen=True)
class Skip:
    """A case that was not measured, and why."""

    row: str
    backend: str
    precision: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"row": self.row, "backend": self.backend, "precision": self.precision, "reason": self.reason}


def table_name(variant: str, fallback: str) -> str:
    try:
        return Variant(variant).table_name
    except ValueError:
        return variant or fallback


def kind_of_variant(variant: str) -> EngineKind | None:
    try:
        v = Variant(variant)
    except ValueError:
        return None
    return (EngineKind.ONE_MODEL if v is Variant.ONE_MODEL else EngineKind.TWO_MODEL if v.is_two_model
            else EngineKind.DEFECTNET)


def read_engine_ref(path: str | os.PathLike[str]) -> EngineRef:
    """Parse an engine folder's manifest (schema-checked by the runtime; graphs hashed later,
    when the case loads)."""
    from defectnet.runtime.engine import read_manifest

    root = Path(path)
    m = read_manifest(root)
    ckpt = m.source.checkpoint if m.source is not None else None
    per_graph = tuple(f"{g} {m.graph_backend(g)} {m.graph_precision(g)}" for g in m.required_graphs()) \
        if m.backend == AUTO else ()
    return EngineRef(root, m.kind, m.variant, m.precision, Path(ckpt) if ckpt else None,
                     m.quantization.flavour if m.quantization is not None else None, m.backend,
                     m.has_tensorrt_plans, per_graph)


def _is_engine(path: Path) -> bool:
    return path.is_dir() and (path / "manifest.json").is_file()


def _is_run(path: Path) -> bool:
    return path.is_dir() and (path / "run.json").is_file()


def _resolve(p: Path) -> Path:
    return Path(os.path.realpath(p))


def engines_of_run(run_dir: Path) -> list[Path]:
    """``RUN/engine`` and its ``RUN/engine-*`` siblings that hold a manifest, sorted."""
    return sorted(p for p in run_dir.glob(ENGINE_GLOB) if _is_engine(p))


def engine_siblings(engine_dir: Path) -> list[Path]:
    """``DIR`` plus the ``DIR-*`` folders beside it that hold a manifest."""
    return [engine_dir, *sorted(p for p in engine_dir.parent.glob(f"{engine_dir.name}-*") if _is_engine(p))]


class _Rows:
    """Accumulates rows keyed by the resolved run folder / source checkpoint / engine."""

    def __init__(self) -> None:
        self.rows: dict[Path, ModelRow] = {}
        self.seen: set[Path] = set()

    def add_run(self, run_dir: Path, *, explicit: bool) -> ModelRow | None:
        from defectnet.train.checkpoint import read_run_json

        key = _resolve(run_dir)
        if key in self.rows:
            return self.rows[key]
        raw = read_run_json(run_dir)
        if raw.get("kind") == "classifier":
            if explicit:
                raise ConfigError(f"{run_dir} is the classifier stage of a two-model run; pass the two-model run "
                                  f"folder ({run_dir.parent}) instead")
            return None
        variant = str(raw.get("variant", ""))
        kind = kind_of_variant(variant) or (EngineKind.TWO_MODEL if raw.get("kind") == EngineKind.TWO_MODEL
                                            else EngineKind.DEFECTNET)
        row = ModelRow(table_name(variant, run_dir.name), variant, kind, run_dir=run_dir)
        self.rows[key] = row
        for e in engines_of_run(run_dir):
            self.add_engine(e, row=row)
        return row

    def add_engine(self, engine_dir: Path, row: ModelRow | None = None) -> None:
        key = _resolve(engine_dir)
        if key in self.seen:
            return
        ref = read_engine_ref(engine_dir)
        self.seen.add(key)
        if row is None:
            if _is_run(engine_dir.parent):
                row = self.add_run(engine_dir.parent, explicit=False)
            elif ref.source_checkpoint is not None and _is_run(ref.source_checkpoint):
                row = self.add_run(ref.source_checkpoint, explicit=False)
        if row is None:
            src = _resolve(ref.source_checkpoint) if ref.source_checkpoint is not None else key
            row = self.rows.get(src)
            if row is None:
                kind = ref.kind or kind_of_variant(ref.variant) or EngineKind.DEFECTNET
                row = ModelRow(table_name(ref.variant, engine_dir.name), ref.variant, kind)
                self.rows[src] = row
        if ref.kind and ref.kind != row.kind:
            row.notes.append(f"engine {engine_dir} is a {ref.kind} engine but the row is {row.kind}; left out")
            return
        row.engines.append(ref)


def discover_rows(*, engines: Sequence[str | os.PathLike[str]] = (), checkpoints: Sequence[str | os.PathLike[str]] = (),
                  runs_dir: str | os.PathLike[str] | None = None) -> list[ModelRow]:
    """The rows to benchmark (see the module docstring), in the seed table's order; rows of
    the same name get their folder name appended so every row name is unique."""
    acc = _Rows()
    for ckpt in checkpoints:
        acc.add_run(Path(ckpt), explicit=True)
    if runs_dir is not None:
        root = Path(runs_dir)
        if not root.is_dir():
            raise ConfigError(f"--runs-dir {root} is not a folder; pass the folder that holds the run folders")
        for child in sorted(root.iterdir()):
            if _is_run(child):
                acc.add_run(child, explicit=False)
            elif _is_engine(child):
                acc.add_engine(child)
    for e in engines:
        path = Path(e)
        if not _is_engine(path):
            raise ConfigError(f"--engine {path} is not an engine folder (no manifest.json); export one with "
                              "defectnet-export --checkpoint RUN --out DIR")
        for sibling in engine_siblings(path):
            acc.add_engine(sibling)
    rows = list(acc.rows.values())
    if not rows:
        raise ConfigError("nothing to benchmark: pass --engine DIR, --checkpoint RUN or --runs-dir DIR")
    for row in rows:
        row.engines.sort(key=lambda r: (PRECISIONS.index(r.precision) if r.precision in PRECISIONS else 99,
                                        r.path.name))
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.name] = counts.get(row.name, 0) + 1
    for row in rows:
        if counts[row.name] > 1:
            where = row.run_dir or (row.engines[0].path.parent if row.engines else None)
            row.name = f"{row.name} ({where.name if where else '?'})"
    rows.sort(key=lambda r: (ROW_ORDER.index(r.name.split(" ")[0]) if r.name.split(" ")[0] in ROW_ORDER else 99,
                             r.name))
    return rows


def parse_backends(text: str) -> list[str]:
    """``torch,onnxruntime,tensorrt`` -> the list (validated, order kept, duplicates dropped)."""
    names = [b.strip().lower() for b in text.split(",") if b.strip()]
    unknown = [b for b in names if b not in BACKENDS]
    if unknown or not names:
        raise ConfigError(f"unknown backend(s) {', '.join(unknown) or '(none)'}; use a comma-separated list of "
                          f"{', '.join(BACKENDS)}")
    return list(dict.fromkeys(names))


def label_order(label: str) -> tuple[int, int, str]:
    """Sort key of a column label: backend order, then precision order."""
    backend, _, rest = label.partition(" ")
    precision = rest.split(" ")[0]
    return (BACKENDS.index(backend) if backend in BACKENDS else 99,
            PRECISIONS.index(precision) if precision in PRECISIONS else 99, label)


def plan_cases(rows: Sequence[ModelRow], backends: Sequence[str], *,
               tensorrt_unavailable: str | None = None) -> tuple[list[Case], list[Skip]]:
    """Every (row, backend, precision) to measure, and the skipped ones with the reason.

    ONNX Runtime runs every engine folder built for it (manifest ``backend`` absent or
    ``onnxruntime``); OpenVINO every folder built for it; ``auto`` every per-graph folder;
    TensorRT every folder whose manifest lists TensorRT plans.
    tensorrt_unavailable: why TensorRT cannot run on this machine (None = it can): then the
    TensorRT cases become one skip line.
    """
    cases: list[Case] = []
    skips: list[Skip] = []
    if TENSORRT in backends and tensorrt_unavailable is not None:
        skips.append(Skip("(all rows)", TENSORRT, "-", tensorrt_unavailable))
    for row in rows:
        for note in row.notes:
            skips.append(Skip(row.name, "-", "-", note))
        for backend in backends:
            if backend == TORCH:
                has_source = row.run_dir is not None or any(e.source_checkpoint for e in row.engines)
                if has_source:
                    fp32 = next((e for e in row.engines if e.precision == Precision.FP32), None)
                    engine = None if row.run_dir is not None else (fp32 or row.engines[0])
                    cases.append(Case(row, TORCH, Precision.FP32, engine, "torch fp32"))
                else:
                    skips.append(Skip(row.name, TORCH, Precision.FP32, "no run folder or source checkpoint recorded in the "
                                                               "engine manifest, so there is no PyTorch model"))
                continue
            if backend == TENSORRT and tensorrt_unavailable is not None:
                continue
            if backend == ONNXRUNTIME:
                engines = [e for e in row.engines if e.target in (None, ONNXRUNTIME)]
                for e in row.engines:
                    if e not in engines:
                        skips.append(Skip(row.name, backend, e.precision, f"{e.path.name} was built for {e.target} "
                                                                          "(manifest 'backend')"))
            elif backend in (OPENVINO, AUTO):
                engines = [e for e in row.engines if e.target == backend]
                if not engines:
                    continue  # nothing built for it: no skip line (the onnxruntime column names those folders)
            else:
                engines = [e for e in row.engines if e.tensorrt]
            if not engines:
                hint = ("no engine folder; export one with defectnet-export --checkpoint RUN --out RUN/engine"
                        if backend == ONNXRUNTIME else
                        f"no TensorRT plans in {', '.join(e.path.name for e in row.engines) or 'any engine folder'}; "
                        "build them with defectnet-build-engine --backend tensorrt --engine DIR")
                skips.append(Skip(row.name, backend, "-", hint))
                continue
            def base_label(e: EngineRef, backend: str = backend) -> str:
                return f"{backend}: {', '.join(e.per_graph)}" if e.per_graph else f"{backend} {e.precision}"

            per_label: dict[str, int] = {}
            for e in engines:
                per_label[base_label(e)] = per_label.get(base_label(e), 0) + 1
            for e in engines:
                label = base_label(e)
                if per_label[label] > 1:
                    label += f" [{e.path.name}]"
                cases.append(Case(row, backend, e.precision, e, label))
    return cases, skips


def tensorrt_unavailable_reason() -> str | None:
    """None when real TensorRT and a CUDA device are usable here, else why not."""
    try:
        from defectnet.runtime.backends.trt import import_tensorrt, require_cuda
    except ImportError:
        return "this defectnet has no TensorRT backend"
    try:
        import_tensorrt()
        require_cuda()
    except DefectNetError as e:
        return str(e)
    return None
