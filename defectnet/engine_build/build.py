"""Build a deployable engine folder from an exported float32 engine folder.

::

    exported folder (defectnet-export: gate.onnx, detector.onnx, manifest.json, float32)
      -> ORT basic graph optimisation (defectnet.calibration.prepare)
      -> precision: fp32 | int8 (calibrate once, two Q/DQ flavours) | fp16 (float32 islands)
      -> backend:  onnxruntime (the graphs) | tensorrt (+ serialized plans with provenance)
                   | openvino, auto: per-graph builds (:mod:`.per_graph`: the graphs' candidates
                   on ONNX Runtime and OpenVINO timed side by side, the fastest that passes)
      -> manifest.json (same schema as the export + precision, backend, build, quantization/fp16,
         tensorrt, accuracy) -> accuracy gate on the test split -> final manifest.json

The result loads with ``Pipeline.from_engine`` / ``defectnet-infer --engine`` /
``evaluate_engine`` like an exported folder. A build that fails the accuracy gate leaves
the folder without ``manifest.json`` (``manifest.rejected.json`` keeps the numbers).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from defectnet.calibration.cache import CalibrationCache
from defectnet.calibration.calibrate import recommended_settings
from defectnet.calibration.dataset import DEFAULT_CALIB_SIZE
from defectnet.calibration.int8 import CalibrationSettings
from defectnet.engine_build.accuracy import Tolerances
from defectnet.engine_build.tensorrt import DEFAULT_WORKSPACE_GB, ShapeProfile
from defectnet.errors import ConfigError, EngineError
from defectnet.runtime.engine import GRAPH_FILES, MANIFEST_FILE, Engine, load_engine, sha256_file
from defectnet.runtime.manifest import (
    Accuracy,
    BuildInfo,
    GraphEntry,
    Manifest,
    Quantization,
    TensorRtCheck,
    TensorRtPlans,
    write_manifest,
)
from defectnet.runtime.types import BackendName, Precision

log = logging.getLogger(__name__)

#: The precisions a build can be asked for (bf16 / mixed are what a CPU --fp16 / auto build records).
PRECISIONS: tuple[Precision, ...] = (Precision.FP32, Precision.FP16, Precision.INT8)
#: The backends an engine folder is built for (torch runs the checkpoint, not a build);
#: openvino and auto are per-graph builds (:mod:`defectnet.engine_build.per_graph`).
ENGINE_BACKENDS: tuple[BackendName, ...] = (BackendName.ONNXRUNTIME, BackendName.TENSORRT, BackendName.OPENVINO,
                                            BackendName.AUTO)
PER_GRAPH_BACKENDS: tuple[BackendName, ...] = (BackendName.OPENVINO, BackendName.AUTO)
REJECTED_MANIFEST = "manifest.rejected.json"
BUILD_TOOL = "defectnet-build-engine"


@dataclass
class BuildOptions:
    """Everything :func:`build_engine` needs besides the folders.

    data_dir: COCO folder; its train split calibrates (int8), its test split feeds the
    accuracy gate (required for int8/fp16; without it an fp32 build records the gate as
    skipped). cache_dir: calibration cache folder (None: no cache). profile / timing_cache
    / workspace_gb: TensorRT only (None profile: :func:`default_profile` of the engine's
    scale and the data's most common padded size). calibration: one setting for every
    graph, or per graph name (default :func:`recommended_settings`: MinMax for the gate,
    percentile 99.99 for the detector). precision None: every precision competes (``auto``
    only). timings / timing_repeat / cpu_capabilities: per-graph builds only -- injected
    candidate timings (graph -> candidate name -> ms; deterministic choice, for tests),
    interleaved repetitions when measuring, and the OpenVINO CPU capabilities to assume
    (None = this CPU's) when choosing what ``--fp16`` means.
    """

    precision: Precision | None = Precision.FP32
    backend: BackendName = BackendName.ONNXRUNTIME
    data_dir: Path | None = None
    calib_size: int = DEFAULT_CALIB_SIZE
    calibration: CalibrationSettings | Mapping[str, CalibrationSettings] = field(
        default_factory=recommended_settings)
    seed: int = 0
    cache_dir: Path | None = None
    tolerances: Tolerances = field(default_factory=Tolerances)
    profile: ShapeProfile | None = None
    timing_cache: Path | None = None
    workspace_gb: float = DEFAULT_WORKSPACE_GB
    threads: int = 0
    progress: bool = False
    log: Callable[[str], None] = field(default=log.info)
    timings: Mapping[str, Mapping[str, Sequence[float]]] | None = None
    timing_repeat: int = 9
    cpu_capabilities: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r}; use one of {', '.join(PRECISIONS)}")
        if self.backend not in ENGINE_BACKENDS:
            raise ConfigError(f"unknown backend {self.backend!r}; use one of {', '.join(ENGINE_BACKENDS)}")
        if isinstance(self.timing_repeat, bool) or not isinstance(self.timing_repeat, int) or self.timing_repeat < 1:
            raise ConfigError(f"timing_repeat must be an integer >= 1, got {self.timing_repeat!r}")
        self.precision = None if self.precision is None else Precision(self.precision)
        self.backend = BackendName(self.backend)
        if self.cpu_capabilities is not None:
            self.cpu_capabilities = tuple(str(c) for c in self.cpu_capabilities)

    @property
    def per_graph(self) -> bool:
        """A per-graph build (:mod:`defectnet.engine_build.per_graph`): openvino or auto."""
        return self.backend in PER_GRAPH_BACKENDS

    def validate(self) -> None:
        """The combinations a build cannot make (the values themselves are checked on creation)."""
        if self.precision is None and self.backend != BackendName.AUTO:
            raise ConfigError(f"name a precision (--fp32, --int8 or --fp16) for --backend {self.backend}; only "
                              "--backend auto lets every precision compete")
        if self.precision == Precision.FP16 and self.backend == BackendName.ONNXRUNTIME:
            raise ConfigError("--fp16 --backend onnxruntime: ONNX Runtime's CPU provider has few FP16 kernels. On a "
                              "CPU, --fp16 runs on OpenVINO (bf16 where the CPU has it, else fp16 weights): use "
                              "--backend openvino or auto (the CPU default); on an NVIDIA GPU, --backend tensorrt")
        if self.timings is not None and not self.per_graph:
            raise ConfigError("injected timings are for per-graph builds (--backend auto or openvino)")
        if self.precision in (Precision.INT8, Precision.FP16) and self.data_dir is None:
            raise ConfigError(f"--{self.precision} needs --data DIR: the train split calibrates, the test split "
                              "feeds the accuracy gate")


def default_out(source: Path, precision: Precision | str | None, backend: BackendName | str) -> Path:
    """``<exported>-<precision>`` beside the exported folder, ``-tensorrt`` / ``-openvino`` /
    ``-auto`` appended for those backends (``<exported>-auto`` when auto chooses every precision)."""
    if precision is None:
        return source.parent / f"{source.name}-{backend}"
    suffix = "" if backend == BackendName.ONNXRUNTIME else f"-{backend}"
    return source.parent / f"{source.name}-{precision}{suffix}"


def _graph_entry(path: Path, old: GraphEntry) -> GraphEntry:
    return replace(old, file=path.name, sha256=sha256_file(path), size=path.stat().st_size)


def _install(src: Path, dst: Path) -> Path:
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    return dst


def _common_padded_size(data_dir: Path, engine: Engine) -> tuple[int, int] | None:
    from defectnet.calibration.dataset import padded_input_size
    from defectnet.data.coco import load_split

    try:
        ds = load_split(data_dir, "test", scale=engine.preprocessor.scale, train=False)
    except Exception:  # noqa: BLE001 - only a default; the build validates data later
        return None
    counts: dict[tuple[int, int], int] = {}
    for i in range(len(ds)):
        _, _, w, h = ds.image_info(i)
        size = padded_input_size(h, w, engine.preprocessor.scale, engine.preprocessor.size_divisor)
        counts[size] = counts.get(size, 0) + 1
    return max(counts, key=lambda k: (counts[k], k)) if counts else None


# ----------------------------------------------------------------------------- precisions
def _int8(src: Engine, prepared: dict[str, Path], options: BuildOptions, tmp: Path
          ) -> tuple[dict[str, dict[str, Path]], dict[str, Any]]:
    """Calibrate once, write both flavours: ({flavour: {graph: path}}, manifest block)."""
    import onnx

    from defectnet.calibration.calibrate import calibrate_engine
    from defectnet.calibration.dataset import select_calibration_set
    from defectnet.calibration.int8 import (
        check_flavour,
        onnxruntime_flavour,
        quantize_graph,
        tensorrt_flavour,
    )

    assert options.data_dir is not None
    calib = select_calibration_set(options.data_dir, options.calib_size, scale=src.preprocessor.scale,
                                   size_divisor=src.preprocessor.size_divisor, seed=options.seed)
    for note in calib.notes:
        options.log(f"note: {note}")
    flavours = [tensorrt_flavour(), onnxruntime_flavour()]
    sources = {g: src.manifest.graphs[g].sha256 for g in prepared}
    cal = calibrate_engine(prepared, sources, calib, options.calibration, flavours,
                           gate_threshold=src.gate_threshold, cache=CalibrationCache(options.cache_dir),
                           workdir=tmp, threads=options.threads, log_fn=options.log)
    files: dict[str, dict[str, Path]] = {}
    block: dict[str, Any] = {"calibration": cal.provenance, "flavours": {}, "float_regions": {}}
    for flav in flavours:
        files[flav.name] = {}
        entry = flav.to_dict()
        entry["graphs"] = {}
        for g, path in prepared.items():
            out = tmp / f"{g}.int8-{flav.name}.onnx"
            q = quantize_graph(path, cal.ranges[g], flav, out, graph=g)
            problems = check_flavour(onnx.load(str(out)), flav, g)
            if problems:
                raise EngineError(f"the {flav.name} INT8 {g} graph is not valid for its runtime: "
                                  f"{'; '.join(problems[:5])}; this is a quantization bug -- report it")
            files[flav.name][g] = out
            entry["graphs"][g] = {"dequantize_nodes": q.quantized_nodes}
            block["float_regions"][g] = q.float_regions  # same split for both flavours
        block["flavours"][flav.name] = entry
    return files, block


def _fp16(src: Engine, prepared: dict[str, Path], options: BuildOptions, tmp: Path
          ) -> tuple[dict[str, Path], dict[str, Any]]:
    from defectnet.calibration.fp16 import convert_graph_fp16

    files: dict[str, Path] = {}
    block: dict[str, Any] = {"converter": "onnxruntime.transformers.float16.convert_float_to_float16 "
                                          "(keep_io_types) + float32-island cast round-trip removal",
                             "graphs": {}}
    for g, path in prepared.items():
        r = convert_graph_fp16(path, tmp / f"{g}.fp16.onnx", graph=g)
        files[g] = r.path
        block["graphs"][g] = {"fp16_nodes": r.fp16_nodes, "added_casts": r.casts,
                              "float32_islands": r.float32_islands}
    block["cpu_check"] = fp16_cpu_check(prepared, files, src, options)
    return files, block


def fp16_cpu_check(fp32: dict[str, Path], fp16: dict[str, Path], src: Engine, options: BuildOptions,
                   images: int = 2) -> dict[str, Any]:
    """Gate outputs of the FP16 vs float32 graphs on ONNX Runtime's CPU provider for a few
    test images (TensorRT's numbers come from the accuracy gate on the GPU)."""
    import onnxruntime as ort

    from defectnet.calibration.dataset import select_calibration_set
    from defectnet.calibration.fp16 import compare_outputs
    from defectnet.runtime.engine import GATE, GATE_OUTPUTS

    assert options.data_dir is not None
    calib = select_calibration_set(options.data_dir, images, scale=src.preprocessor.scale,
                                   size_divisor=src.preprocessor.size_divisor, split="test")
    a = ort.InferenceSession(str(fp32[GATE]), providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(str(fp16[GATE]), providers=["CPUExecutionProvider"])
    worst: dict[str, float] = {}
    for _im, x, s in calib.batches():
        feed = {"images": x, "image_sizes": s}
        diff = compare_outputs(dict(zip(GATE_OUTPUTS, a.run(None, feed))), dict(zip(GATE_OUTPUTS, b.run(None, feed))),
                               GATE_OUTPUTS)
        worst = {k: max(v, worst.get(k, 0.0)) for k, v in diff.items()}
    return {"runtime": f"onnxruntime {ort.__version__} CPUExecutionProvider", "images": len(calib),
            "gate_max_diff": worst}


# ----------------------------------------------------------------------------- TensorRT
def _tensorrt_plans(src: Engine, out: Path, graph_files: dict[str, Path], precision: Precision,
                    options: BuildOptions) -> TensorRtPlans:
    from defectnet.calibration.cache import default_cache_dir
    from defectnet.engine_build.tensorrt import build_plan, default_profile, timing_cache_path
    from defectnet.runtime.backends.trt import PLAN_SUFFIX, platform_info

    profile = options.profile
    if profile is None:
        opt = _common_padded_size(options.data_dir, src) if options.data_dir else None
        profile = default_profile(src.preprocessor.scale, src.preprocessor.size_divisor, opt_size=opt)
    profile.validate(src.preprocessor.size_divisor)
    platform = platform_info()
    timing = options.timing_cache or timing_cache_path(platform, default_cache_dir().parent)
    engines: dict[str, Any] = {}
    for g, onnx_path in graph_files.items():
        plan = out / f"{g}{PLAN_SUFFIX}"
        header = build_plan(onnx_path, plan, graph=g, profile=profile, precision=precision,
                            onnx_sha256=sha256_file(onnx_path), timing_cache=timing,
                            workspace_gb=options.workspace_gb, log=options.log)
        engines[g] = {"file": plan.name, "sha256": sha256_file(plan), "bytes": plan.stat().st_size,
                      "header": header}
    return TensorRtPlans.from_json({
        "engines": engines, "platform": platform, "profile": profile.to_dict(), "timing_cache": str(timing),
        "network": "strongly typed (NetworkDefinitionCreationFlag.STRONGLY_TYPED); precision from the graph"})


# ----------------------------------------------------------------------------- the build
def check_source(src: Engine, out: Path, options: BuildOptions) -> None:
    """ConfigError when ``src`` is not an exported float32 folder or ``out`` is ``src`` itself."""
    if src.manifest.is_built:
        origin = src.manifest.build.source_engine if src.manifest.build else "defectnet-export --out DIR"
        raise ConfigError(f"{src.root} is already a built engine ({src.manifest.precision}, "
                          f"{src.manifest.backend}); build from the exported float32 folder ({origin})")
    if out.resolve() == src.root.resolve():
        raise ConfigError(f"--out {out} is the exported folder itself; pick another folder (default: "
                          f"{default_out(src.root, options.precision, options.backend)})")


def prepare_out(out: Path) -> Path:
    """Create ``out`` and remove what would make it look like a finished engine before the
    accuracy gate passes (its manifest), and artefacts of an earlier build into it."""
    out.mkdir(parents=True, exist_ok=True)
    for stale in (MANIFEST_FILE, REJECTED_MANIFEST):
        (out / stale).unlink(missing_ok=True)  # not a valid engine until the gate passes
    for leftover in [*out.glob("*.int8-*.onnx"), *out.glob("*.plan")]:
        leftover.unlink()  # artefacts of an earlier build into this folder
    return out


@contextlib.contextmanager
def staged_build(source: str | os.PathLike[str], out: str | os.PathLike[str], options: BuildOptions
                 ) -> Iterator[tuple[Engine, Path, Path, dict[str, Path]]]:
    """What every build starts with: the exported float32 folder loaded and checked, ``out``
    prepared, and a temporary folder inside it holding the float32 graphs optimised at
    onnxruntime's basic level. Yields (source engine, out, temporary folder, graph -> path)."""
    from defectnet.calibration.prepare import optimize_basic

    src = load_engine(source)
    check_source(src, Path(out), options)
    out_dir = prepare_out(Path(out))
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".build-") as tmp_name:
        tmp = Path(tmp_name)
        options.log(f"optimising the float32 graphs of {src.root} (onnxruntime basic level) ...")
        prepared = {g: optimize_basic(p, tmp / f"{g}.fp32.onnx") for g, p in src.graphs.items()}
        yield src, out_dir, tmp, prepared


def build_engine(source: str | os.PathLike[str], out: str | os.PathLike[str], options: BuildOptions
                 ) -> Manifest:
    """Build ``out`` from the exported float32 folder ``source`` (module docstring); returns
    the manifest. Raises EngineError when the accuracy gate fails."""
    from defectnet.calibration.prepare import GRAPH_OPTIMIZATION
    from defectnet.export.exporter import library_versions
    from defectnet.export.trt_ops import check_graphs
    from defectnet.io import sha256_file as file_sha

    options.validate()
    if options.per_graph:
        from defectnet.engine_build.per_graph import build_per_graph

        return build_per_graph(source, out, options)
    assert options.precision is not None  # validate(): only auto builds leave it open
    if options.backend == BackendName.TENSORRT:  # fail before any work on a machine without TensorRT
        from defectnet.runtime.backends.trt import import_tensorrt, require_cuda

        import_tensorrt()
        require_cuda()
    with staged_build(source, out, options) as (src, out, tmp, prepared):
        block: dict[str, Any] = {}
        extra_files: dict[str, Path] = {}
        if options.precision == Precision.INT8:
            flavour_files, block = _int8(src, prepared, options, tmp)
            main = options.backend  # the flavour the main graphs get
            other = BackendName.TENSORRT if main == BackendName.ONNXRUNTIME else BackendName.ONNXRUNTIME
            graph_files = flavour_files[main]
            extra_files = dict(flavour_files[other])
            block["flavour"] = main
            for g, p in extra_files.items():
                name = f"{Path(GRAPH_FILES[g]).stem}.int8-{other}.onnx"
                dst = _install(p, out / name)
                block["flavours"][other]["graphs"][g].update(file=name, sha256=file_sha(dst))
        elif options.precision == Precision.FP16:
            graph_files, block = _fp16(src, prepared, options, tmp)
        else:
            graph_files = prepared
        graphs = dict(src.manifest.graphs)
        for g, p in graph_files.items():
            dst = _install(p, out / GRAPH_FILES[g])
            graphs[g] = _graph_entry(dst, graphs[g])
            if options.precision == Precision.INT8:
                entry = block["flavours"][block["flavour"]]["graphs"][g]
                entry.update(file=dst.name, sha256=graphs[g].sha256)
        trt_inputs = ({g: out / block["flavours"][BackendName.TENSORRT]["graphs"][g]["file"] for g in graph_files}
                      if options.precision == Precision.INT8 else {g: out / GRAPH_FILES[g] for g in graph_files})
        trt_check = TensorRtCheck.from_json(check_graphs(trt_inputs))
        if options.backend == BackendName.TENSORRT and not trt_check.supported:
            raise EngineError(f"TensorRT's ONNX parser will not take these graphs: "
                              f"{'; '.join(trt_check.problems[:5])}; "
                              "re-export with defectnet-export (the exporter avoids these patterns)")
        extra = {**src.manifest.extra, "versions": library_versions()}
        if options.precision == Precision.FP16:
            extra["fp16"] = block
        manifest = replace(
            src.manifest, graphs=graphs, precision=options.precision, backend=options.backend, verification=None,
            created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), tensorrt_check=trt_check,
            build=BuildInfo(BUILD_TOOL, str(src.root.resolve()), {g: src.manifest.graphs[g].sha256 for g in src.graphs},
                            src.manifest.verification is not None and src.manifest.verification.passed,
                            {"graph_optimization": GRAPH_OPTIMIZATION,
                             "calibration_threads": options.threads or "onnxruntime default"}),
            quantization=Quantization.from_json(block) if options.precision == Precision.INT8 else None,
            tensorrt=(_tensorrt_plans(src, out, {g: out / GRAPH_FILES[g] for g in graph_files}, options.precision,
                                      options) if options.backend == BackendName.TENSORRT else None),
            extra=extra)
    return _accuracy_gate(src, out, manifest, options)


def _accuracy_gate(src: Engine, out: Path, manifest: Manifest, options: BuildOptions) -> Manifest:
    from defectnet.engine_build.accuracy import compare, gate_error, reference_result
    from defectnet.evaluation.evaluate import evaluate_engine

    if options.data_dir is None:
        manifest = replace(manifest, accuracy=Accuracy(None, skipped="no --data: the accuracy gate needs a test split"))
        options.log("warning: no --data, so the accuracy gate was skipped (the manifest records it)")
        write_manifest(out, manifest)
        return manifest
    write_manifest(out, manifest)  # evaluate_engine loads the folder
    try:
        options.log(f"accuracy gate: evaluating the float32 reference on the test split of {options.data_dir} ...")
        reference, described = reference_result(src.root, options.data_dir, progress=options.progress)
        options.log(f"accuracy gate: evaluating the {options.precision} engine ({options.backend}) ...")
        candidate = evaluate_engine(out, options.data_dir, backend=options.backend, progress=options.progress)
    except BaseException:
        (out / MANIFEST_FILE).unlink(missing_ok=True)
        raise
    report = compare(reference, candidate, options.tolerances)
    report["reference_source"] = described
    manifest = replace(manifest, accuracy=Accuracy.from_json(report))
    if not report["passed"]:
        write_manifest(out, manifest, REJECTED_MANIFEST)
        (out / MANIFEST_FILE).unlink(missing_ok=True)
        hint = ("Try another --calib-method (minmax, entropy, percentile; the best one differs between models), "
                "a larger --calib-size, or loosen the tolerance "
                "(--max-map-drop / --max-ap50-drop / --max-f1-drop / --max-recall-drop)"
                if options.precision == Precision.INT8 else "Report the numbers; loosen the tolerance only knowingly")
        raise gate_error(report, out, str(options.precision), hint)
    write_manifest(out, manifest)
    for line in report["summary"]:
        options.log(f"  {line}")
    return manifest


__all__ = ["BuildOptions", "ENGINE_BACKENDS", "PER_GRAPH_BACKENDS", "PRECISIONS", "build_engine", "check_source",
           "default_out", "prepare_out"]
