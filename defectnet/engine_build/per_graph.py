"""Per-graph engine builds: ``defectnet-build-engine --backend auto`` and ``--backend openvino``.

::

    exported float32 folder -> ORT basic optimisation (the float32 starting graph)
      -> candidates per graph: every (backend, precision) the installed runtimes offer
           onnxruntime  fp32 | int8 (U8S8 Q/DQ)
           openvino     fp32 | int8 (U8S8 Q/DQ, and the symmetric S8S8 Q/DQ) | bf16 or fp16 (see .openvino)
         (INT8: the project's one calibration, both Q/DQ flavours written from the same ranges)
      -> each graph's candidates timed side by side on this machine (interleaved, batch 1,
         real test images; medians): the detector on the float32 gate's features
      -> per graph, ranked by median time; a reduced precision that is not faster than the
         graph's fastest fp32 candidate is dropped ("never slower than fp32")
      -> combinations in order of total time through the accuracy gate (the whole engine on
         the test split against float32 PyTorch); a failing combination is narrowed down to
         the graph(s) that fail with the other graph at fp32, which are then dropped
      -> the first combination that passes: its graph files, the manifest (per graph:
         backend, precision, inference_precision) and the ``selection`` block with every
         candidate's times and status and every accuracy evaluation.

``--backend openvino`` is the same with only OpenVINO candidates of the requested precision
(one per graph, so nothing is timed). With ``--backend auto`` and an explicit precision
(``--int8``, ``--fp16``) only candidates of that precision compete (the fp32 ones are timed
for the record, and a warning says when the requested precision is the slower one); with no
precision, every precision competes. Without ``--data`` only fp32 candidates can be built
(INT8 needs calibration, and bf16 / fp16 need the accuracy gate) and the gate is skipped.

The timings can be injected (``BuildOptions.timings``): the choice is then deterministic,
which the tests use.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import os
import shutil
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from defectnet.errors import ConfigError, EngineError
from defectnet.runtime.engine import (
    CLASSIFIER,
    DETECTOR,
    GATE,
    GRAPH_FILES,
    Engine,
    sha256_file,
)
from defectnet.runtime.manifest import (
    Accuracy,
    BuildInfo,
    Manifest,
    Quantization,
    Selection,
    write_manifest,
)
from defectnet.runtime.types import BackendName, Precision

if TYPE_CHECKING:
    from defectnet.engine_build.build import BuildOptions
    from defectnet.engine_build.openvino import HalfMode
    from defectnet.runtime.backends import Backend

#: Timing defaults: untimed calls per candidate, interleaved repetitions, test images per repetition.
TIMING_WARMUP = 2
TIMING_REPEAT = 9
TIMING_IMAGES = 2
#: At most this many accuracy evaluations (each is the whole test split) before giving up.
MAX_EVALUATIONS = 8

#: Candidate status values recorded in the manifest's ``selection`` block.
CHOSEN, SLOWER, SLOWER_THAN_FP32, FAILED, NOT_REQUESTED, REFERENCE = (
    "chosen", "slower", "slower than fp32", "failed the accuracy gate", "not requested", "fp32 reference")


@dataclass(frozen=True)
class Candidate:
    """One way to run one graph: a backend, a precision and the ONNX file.

    inference_precision: OpenVINO's hint (None on ONNX Runtime); flavour: the INT8 Q/DQ
    flavour of the file (None for float graphs); compressed_weights: float16 weight storage.
    """

    graph: str
    backend: BackendName
    precision: Precision
    file: Path
    inference_precision: str | None = None
    flavour: BackendName | None = None
    compressed_weights: bool = False

    @property
    def name(self) -> str:
        """``<backend> <precision>`` plus what distinguishes it (``openvino int8 (tensorrt Q/DQ)``)."""
        base = f"{self.backend} {self.precision}"
        if self.flavour is not None and self.flavour != self.backend:
            base += f" ({self.flavour} Q/DQ)"
        if self.compressed_weights:
            base += " (fp16 weights, f32 inference)"
        return base

    @property
    def is_fp32(self) -> bool:
        return self.precision == Precision.FP32

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "backend": self.backend.value, "precision": self.precision.value}
        if self.inference_precision is not None:
            out["inference_precision"] = self.inference_precision
        if self.flavour is not None:
            out["qdq_flavour"] = self.flavour.value
        if self.compressed_weights:
            out["compressed_weights"] = True
        return out


@dataclass
class Evaluation:
    """One accuracy evaluation of a combination (graph -> candidate name)."""

    combination: dict[str, str]
    passed: bool
    report: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"graphs": dict(self.combination), "passed": self.passed}
        if self.report is not None:
            out["summary"] = list(self.report.get("summary", []))
            out["att_ms"] = self.report.get("engine", {}).get("att_ms")
        return out


@dataclass
class Choice:
    """The chosen candidate per graph, every evaluation made, and the candidates dropped
    for failing the accuracy gate (with the other graphs at fp32)."""

    chosen: dict[str, Candidate]
    evaluations: list[Evaluation] = field(default_factory=list)
    failed: set[str] = field(default_factory=set)  # "graph|candidate name"
    passed: Evaluation | None = None  # the chosen combination's evaluation (None: no accuracy gate)


# ----------------------------------------------------------------------------- candidates
def requested_precisions(options: BuildOptions) -> tuple[Precision, ...]:
    """The precisions that compete: the requested one, or (``--backend auto`` without a
    precision) fp32, plus int8 and half precision when there is ``--data``."""
    if options.precision is not None:
        return (Precision(options.precision),)
    if options.data_dir is None:
        return (Precision.FP32,)
    return (Precision.FP32, Precision.INT8, Precision.FP16)


def candidate_backends(options: BuildOptions) -> tuple[BackendName, ...]:
    """The runtimes whose candidates are built: the requested backend, or every installed
    CPU runtime for ``auto`` (ONNX Runtime always; OpenVINO when it is installed)."""
    from defectnet.runtime.backends.openvino import import_openvino, openvino_available

    if options.backend == BackendName.OPENVINO:
        import_openvino()  # fail with the install hint
        return (BackendName.OPENVINO,)
    if options.backend == BackendName.AUTO:
        return (BackendName.ONNXRUNTIME, *((BackendName.OPENVINO,) if openvino_available() else ()))
    raise ConfigError(f"per-graph builds are for --backend auto or openvino, not {options.backend}")


def current_half_mode(options: BuildOptions) -> HalfMode:
    """:func:`~defectnet.engine_build.openvino.half_mode` of this CPU (or the capabilities
    given in ``options.cpu_capabilities``)."""
    from defectnet.engine_build.openvino import half_mode
    from defectnet.runtime.backends.openvino import cpu_capabilities

    caps = options.cpu_capabilities if options.cpu_capabilities is not None else cpu_capabilities()
    return half_mode(caps)


def make_candidates(src: Engine, prepared: Mapping[str, Path], options: BuildOptions, tmp: Path
                    ) -> tuple[dict[str, list[Candidate]], dict[str, Any]]:
    """Every candidate of every graph (fp32 ones always: they are the floor and the
    reference), and the blocks the manifest keeps (``quantization``, ``openvino``)."""
    from defectnet.engine_build.build import _int8
    from defectnet.engine_build.openvino import compress_weights_fp16

    backends = candidate_backends(options)
    precisions = requested_precisions(options)
    out: dict[str, list[Candidate]] = {g: [] for g in prepared}
    blocks: dict[str, Any] = {}
    for g, path in prepared.items():
        for b in backends:
            out[g].append(Candidate(g, b, Precision.FP32, path, "f32" if b == BackendName.OPENVINO else None))
    if Precision.INT8 in precisions:
        flavour_files, block = _int8(src, dict(prepared), options, tmp)
        blocks["quantization"] = block
        for g in prepared:
            if BackendName.ONNXRUNTIME in backends:
                out[g].append(Candidate(g, BackendName.ONNXRUNTIME, Precision.INT8,
                                        flavour_files[BackendName.ONNXRUNTIME][g], flavour=BackendName.ONNXRUNTIME))
            if BackendName.OPENVINO in backends:
                for flav in (BackendName.ONNXRUNTIME, BackendName.TENSORRT):
                    out[g].append(Candidate(g, BackendName.OPENVINO, Precision.INT8, flavour_files[flav][g], "f32",
                                            flavour=flav))
    if Precision.FP16 in precisions:
        if BackendName.OPENVINO not in backends:
            raise ConfigError("--fp16 on a CPU runs on OpenVINO (bf16 where the CPU has it, else fp16 weights), "
                              f"which is not installed here; pip install '{_openvino_requirement()}', or use "
                              "--fp16 --backend tensorrt on an NVIDIA GPU")
        mode = current_half_mode(options)
        blocks["half_mode"] = mode.to_dict()
        # An explicit --fp16 on a CPU with half arithmetic also gets the fp16-weights form as
        # the fallback for a graph whose bf16/fp16 arithmetic fails the accuracy gate
        # (:func:`choose_half`); --backend auto never picks it (it is not faster than fp32).
        weights_fallback = not mode.compressed_weights and options.precision == Precision.FP16
        for g, path in prepared.items():
            if mode.compressed_weights or weights_fallback:
                file = tmp / f"{g}.fp16-weights.onnx"
                compress_weights_fp16(path, file)
                out[g].append(Candidate(g, BackendName.OPENVINO, Precision.FP16, file, "f32", compressed_weights=True))
            if not mode.compressed_weights:
                out[g].append(Candidate(g, BackendName.OPENVINO, mode.precision, path, mode.inference_precision))
    return out, blocks


def _openvino_requirement() -> str:
    from defectnet.runtime.backends.openvino import OPENVINO_REQUIREMENT

    return OPENVINO_REQUIREMENT


# ----------------------------------------------------------------------------- timing
def timing_inputs(src: Engine, options: BuildOptions, count: int = TIMING_IMAGES
                  ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(images uint8 [1, 3, H, W], image_sizes int64 [1, 2])`` to time the graphs on: the
    test split's images when there is ``--data`` (preprocessed as at run time), else random
    images of the engine's full scale."""
    if options.data_dir is not None:
        from defectnet.calibration.dataset import select_calibration_set

        calib = select_calibration_set(options.data_dir, count, scale=src.preprocessor.scale,
                                       size_divisor=src.preprocessor.size_divisor, seed=options.seed, split="test")
        return [(torch.from_numpy(x), torch.from_numpy(s)) for _im, x, s in calib.batches()]
    long, short = src.preprocessor.scale
    d = src.preprocessor.size_divisor
    h, w = -(-short // d) * d, -(-long // d) * d
    g = torch.Generator().manual_seed(options.seed)
    return [(torch.randint(0, 256, (1, 3, h, w), dtype=torch.uint8, generator=g),
             torch.tensor([[short, long]], dtype=torch.int64)) for _ in range(count)]


def candidate_engine(src: Engine, candidate: Candidate) -> Engine:
    """``src`` restricted to the candidate's graph, with its file, backend and precision."""
    entry = replace(src.manifest.graphs[candidate.graph], file=candidate.file.name, backend=candidate.backend,
                    precision=candidate.precision, inference_precision=candidate.inference_precision)
    manifest = replace(src.manifest, graphs={**src.manifest.graphs, candidate.graph: entry})
    return replace(src, graphs={candidate.graph: candidate.file}, manifest=manifest)


def candidate_backend(src: Engine, candidate: Candidate, threads: int) -> Backend:
    """The runtime backend that runs the candidate (the same class the engine will use)."""
    from defectnet.runtime.backends import BackendOptions, make_backend

    backend = make_backend(candidate_engine(src, candidate), candidate.backend, BackendOptions(threads=threads))
    backend.load()
    return backend


def _reference_features(src: Engine, prepared: Mapping[str, Path], inputs: Sequence[tuple[torch.Tensor, torch.Tensor]],
                        threads: int) -> list[Any]:
    """Host C2..C5 of each timing input from the float32 gate on ONNX Runtime."""
    gate = Candidate(GATE, BackendName.ONNXRUNTIME, Precision.FP32, prepared[GATE])
    backend = candidate_backend(src, gate, threads)
    return [backend.features_to_host(backend.run_gate(x, s)[1]) for x, s in inputs]


def time_candidates(src: Engine, prepared: Mapping[str, Path], candidates: Mapping[str, Sequence[Candidate]],
                    inputs: Sequence[tuple[torch.Tensor, torch.Tensor]], *, threads: int = 0,
                    repeat: int = TIMING_REPEAT, warmup: int = TIMING_WARMUP,
                    clock: Callable[[], float] = time.perf_counter, log: Callable[[str], None] = lambda _: None
                    ) -> dict[str, dict[str, list[float]]]:
    """Milliseconds of every call of every candidate: graph -> candidate name -> times.

    Per graph, the candidates' backends are loaded together and take turns (round-robin,
    the starting candidate rotating each repetition), one call per input each turn, after
    ``warmup`` untimed calls each. The gate (and classifier) run on the images; the
    detector on the float32 gate's features of the same images, handed to it as at run
    time (``features_from_host``)."""
    if repeat < 1 or warmup < 0:
        raise ConfigError(f"timing needs repeat >= 1 and warmup >= 0, got {repeat} and {warmup}")
    feats = _reference_features(src, prepared, inputs, threads) if DETECTOR in candidates else []
    out: dict[str, dict[str, list[float]]] = {}
    for graph, cands in candidates.items():
        log(f"timing {len(cands)} candidates of the {graph} graph ({repeat} interleaved repetitions) ...")
        backends = [candidate_backend(src, c, threads) for c in cands]

        def call(backend: Backend, k: int, graph: str = graph) -> None:
            x, s = inputs[k]
            if graph == DETECTOR:
                backend.run_detector(backend.features_from_host(feats[k]), s)
            elif graph == CLASSIFIER:
                backend.run_classifier(x, s)
            else:
                backend.run_gate(x, s)

        with torch.no_grad():
            for backend in backends:
                for i in range(warmup):
                    call(backend, i % len(inputs))
            times: list[list[float]] = [[] for _ in cands]
            for r in range(repeat):
                for j in range(len(cands)):
                    i = (r + j) % len(cands)
                    for k in range(len(inputs)):
                        t0 = clock()
                        call(backends[i], k)
                        times[i].append((clock() - t0) * 1e3)
        out[graph] = {c.name: t for c, t in zip(cands, times)}
        del backends
    return out


# ----------------------------------------------------------------------------- choosing
def median_ms(times: Mapping[str, Sequence[float]], name: str) -> float:
    return float(statistics.median(times[name]))


def rank_graph(candidates: Sequence[Candidate], times: Mapping[str, Sequence[float]],
               precisions: Sequence[Precision], *, open_choice: bool
               ) -> tuple[list[Candidate], dict[str, str], Candidate]:
    """(eligible candidates fastest first, status per dropped candidate, the fastest fp32).

    Eligible: the requested precision(s) (``half`` = bf16 or fp16); with ``open_choice``
    (no precision requested) a reduced precision must be strictly faster than the fastest
    fp32 candidate. Ties break by name, so the order is deterministic."""
    def key(c: Candidate) -> tuple[float, str]:
        return median_ms(times, c.name), c.name

    fp32 = sorted((c for c in candidates if c.is_fp32), key=key)
    if not fp32:
        raise ConfigError("every graph needs an fp32 candidate (the floor and the accuracy reference)")
    best_fp32 = fp32[0]
    wanted = _wanted(precisions)
    status: dict[str, str] = {}
    eligible = []
    for c in sorted(candidates, key=key):
        if c.precision not in wanted:
            status[c.name] = REFERENCE if c.is_fp32 else NOT_REQUESTED
        elif open_choice and not c.is_fp32 and key(c)[0] >= key(best_fp32)[0]:
            status[c.name] = SLOWER_THAN_FP32
        else:
            eligible.append(c)
    return eligible, status, best_fp32


def choose(ranked: Mapping[str, Sequence[Candidate]], fallback: Mapping[str, Candidate],
           times: Mapping[str, Mapping[str, Sequence[float]]],
           evaluate: Callable[[dict[str, Candidate]], Evaluation] | None, *,
           max_evaluations: int = MAX_EVALUATIONS) -> Choice:
    """The fastest combination of per-graph candidates that passes ``evaluate`` (the
    accuracy gate; None = no gate: the fastest of each graph).

    Combinations are tried in order of total median time. When one fails, each of its
    non-fp32 members is evaluated with every other graph at its fastest fp32 candidate
    (``fallback``); a member that fails there is dropped for good. Raises EngineError when
    no combination passes (or ``max_evaluations`` is spent): the error carries the
    evaluations."""
    graphs = list(ranked)
    if any(not ranked[g] for g in graphs):
        empty = [g for g in graphs if not ranked[g]]
        raise EngineError(f"no candidate is left for the {', '.join(empty)} graph")
    if evaluate is None:
        return Choice({g: ranked[g][0] for g in graphs})
    cache: dict[tuple[str, ...], Evaluation] = {}
    evaluations: list[Evaluation] = []
    failed: set[str] = set()

    def run(combo: dict[str, Candidate]) -> Evaluation:
        key = tuple(combo[g].name for g in graphs)
        if key not in cache:
            if len(evaluations) >= max_evaluations:
                raise _Exhausted
            cache[key] = evaluate(combo)
            evaluations.append(cache[key])
        return cache[key]

    def total(combo: tuple[Candidate, ...]) -> tuple[float, tuple[int, ...]]:
        ms = sum(median_ms(times[c.graph], c.name) for c in combo)
        return ms, tuple(ranked[c.graph].index(c) for c in combo)

    combos = sorted(itertools.product(*(ranked[g] for g in graphs)), key=total)
    try:
        for combo_t in combos:
            combo = dict(zip(graphs, combo_t))
            if any(f"{g}|{c.name}" in failed for g, c in combo.items()):
                continue
            result = run(combo)
            if result.passed:
                return Choice(combo, evaluations, failed, result)
            reduced = [g for g, c in combo.items() if not c.is_fp32]
            if len(reduced) <= 1:  # the culprit is known (or nothing reduced failed: fp32 fails)
                failed.update(f"{g}|{combo[g].name}" for g in reduced)
                if not reduced:
                    failed.update(f"{g}|{c.name}" for g, c in combo.items())
                continue
            for g in reduced:
                alone = {h: (combo[h] if h == g else fallback[h]) for h in graphs}
                if not run(alone).passed:
                    failed.add(f"{g}|{combo[g].name}")
    except _Exhausted:
        pass
    err = EngineError("no combination of the candidates passes the accuracy gate"
                      + (f" within {max_evaluations} evaluations" if len(evaluations) >= max_evaluations else ""))
    err.evaluations = evaluations  # type: ignore[attr-defined]
    err.failed = failed  # type: ignore[attr-defined]
    raise err


def choose_half(ranked: Mapping[str, Sequence[Candidate]], fallback: Mapping[str, Candidate],
                times: Mapping[str, Mapping[str, Sequence[float]]],
                evaluate: Callable[[dict[str, Candidate]], Evaluation] | None, *,
                max_evaluations: int = MAX_EVALUATIONS) -> Choice:
    """:func:`choose` that prefers half-precision arithmetic over the fp16-weights form
    (float32 arithmetic), whatever their speed, in three rounds: bf16/fp16 everywhere; fp16
    weights for the graphs whose bf16/fp16 failed the accuracy gate; fp16 weights everywhere.
    Without fp16-weights candidates (or without half arithmetic) this is :func:`choose`."""
    native = {g: [c for c in cs if not c.compressed_weights] for g, cs in ranked.items()}
    weights = {g: [c for c in cs if c.compressed_weights] for g, cs in ranked.items()}
    if not all(native.values()) or not all(weights.values()):
        return choose(ranked, fallback, times, evaluate, max_evaluations=max_evaluations)
    evaluations: list[Evaluation] = []
    failed: set[str] = set()
    rounds: list[Callable[[], dict[str, list[Candidate]]]] = [
        lambda: native,
        lambda: {g: [c for c in native[g] if f"{g}|{c.name}" not in failed] or weights[g] for g in ranked},
        lambda: weights,
    ]
    last: EngineError | None = None
    tried: list[dict[str, list[Candidate]]] = []
    for make in rounds:
        ranked_round = make()
        if ranked_round in tried:  # round 2 is round 3 when every graph's bf16/fp16 failed
            continue
        tried.append(ranked_round)
        try:
            choice = choose(ranked_round, fallback, times, evaluate, max_evaluations=max_evaluations - len(evaluations))
        except EngineError as e:
            evaluations += getattr(e, "evaluations", [])
            failed |= getattr(e, "failed", set())
            last = e
            if evaluate is None or len(evaluations) >= max_evaluations:
                break
            continue
        return Choice(choice.chosen, evaluations + choice.evaluations, failed | choice.failed, choice.passed)
    assert last is not None
    last.evaluations = evaluations  # type: ignore[attr-defined]
    last.failed = failed  # type: ignore[attr-defined]
    raise last


class _Exhausted(Exception):
    """The evaluation budget is spent."""


# ----------------------------------------------------------------------------- assembling
def _common(values: Sequence[Any], mixed: Any) -> Any:
    return values[0] if len(set(values)) == 1 else mixed


def assemble_manifest(src: Engine, chosen: Mapping[str, Candidate], files: Mapping[str, Path], options: BuildOptions,
                      blocks: Mapping[str, Any], selection: Selection | None) -> Manifest:
    """The manifest of a folder holding ``files`` (graph -> installed path) for ``chosen``."""
    from defectnet.calibration.prepare import GRAPH_OPTIMIZATION
    from defectnet.engine_build.build import BUILD_TOOL
    from defectnet.export.exporter import library_versions
    from defectnet.runtime.backends.openvino import openvino_version

    graphs = dict(src.manifest.graphs)
    for g, cand in chosen.items():
        path = files[g]
        graphs[g] = replace(graphs[g], file=path.name, sha256=sha256_file(path), size=path.stat().st_size,
                            backend=cand.backend, precision=cand.precision,
                            inference_precision=cand.inference_precision)
    backends = [c.backend for c in chosen.values()]
    precisions = [c.precision for c in chosen.values()]
    quantization = None
    int8 = {g: c for g, c in chosen.items() if c.precision == Precision.INT8}
    if int8 and "quantization" in blocks:
        block = _plain_copy(blocks["quantization"])
        for g, c in int8.items():
            assert c.flavour is not None
            block["flavours"][c.flavour]["graphs"][g].update(file=files[g].name, sha256=graphs[g].sha256)
        block["flavour"] = _common([c.flavour for c in int8.values()], None)
        quantization = Quantization.from_json(block)
    versions = library_versions()
    ov_version = openvino_version()
    extra: dict[str, Any] = {**src.manifest.extra, "versions": {**versions, **({"openvino": ov_version}
                                                                              if ov_version else {})}}
    if BackendName.OPENVINO in backends:
        extra["openvino"] = {"version": ov_version, "device": "CPU",
                             **({"half_mode": blocks["half_mode"]} if "half_mode" in blocks else {})}
    requested = options.precision.value if options.precision is not None else "all"
    return replace(
        src.manifest, graphs=graphs, precision=_common(precisions, Precision.MIXED),
        backend=_common(backends, BackendName.AUTO), verification=None, tensorrt_check=None,
        created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        build=BuildInfo(BUILD_TOOL, str(src.root.resolve()), {g: src.manifest.graphs[g].sha256 for g in src.graphs},
                        src.manifest.verification is not None and src.manifest.verification.passed,
                        {"graph_optimization": GRAPH_OPTIMIZATION, "requested_backend": options.backend.value,
                         "requested_precision": requested,
                         "calibration_threads": options.threads or "onnxruntime default"}),
        quantization=quantization, tensorrt=None, accuracy=None, selection=selection, extra=extra)


def _plain_copy(value: Any) -> Any:
    import copy

    return copy.deepcopy(value)


def _link_or_copy(src: Path, dst: Path) -> Path:
    tmp = dst.with_name(f".{dst.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    return dst


def write_folder(folder: Path, src: Engine, chosen: Mapping[str, Candidate], options: BuildOptions,
                 blocks: Mapping[str, Any], selection: Selection | None, accuracy: Accuracy | None = None
                 ) -> Manifest:
    """Install the chosen graph files into ``folder`` (``gate.onnx``, ``detector.onnx`` ...),
    then write its manifest (last: its presence marks a complete engine)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {g: _link_or_copy(c.file, folder / GRAPH_FILES[g]) for g, c in chosen.items()}
    manifest = replace(assemble_manifest(src, chosen, files, options, blocks, selection), accuracy=accuracy)
    write_manifest(folder, manifest)
    return manifest


def selection_block(candidates: Mapping[str, Sequence[Candidate]], times: Mapping[str, Mapping[str, Sequence[float]]],
                    statuses: Mapping[str, Mapping[str, str]], choice: Choice | None, failed: set[str],
                    settings: Mapping[str, Any], evaluations: Sequence[Evaluation]) -> Selection:
    """The manifest's ``selection`` block (see :class:`~defectnet.runtime.manifest.Selection`)."""
    table: dict[str, tuple[dict[str, Any], ...]] = {}
    for g, cands in candidates.items():
        rows = []
        for c in sorted(cands, key=lambda c: (median_ms(times[g], c.name), c.name)):
            if choice is not None and choice.chosen[g].name == c.name:
                status = CHOSEN
            elif f"{g}|{c.name}" in failed:
                status = FAILED
            else:
                status = statuses[g].get(c.name, SLOWER)
            ts = times[g][c.name]
            rows.append({**c.to_dict(), "median_ms": round(median_ms(times[g], c.name), 3),
                         "times_ms": [round(t, 3) for t in ts], "status": status})
        table[g] = tuple(rows)
    chosen = {g: c.name for g, c in choice.chosen.items()} if choice is not None else {}
    return Selection(chosen, table, {**settings, "evaluations": [e.to_dict() for e in evaluations]})


# ----------------------------------------------------------------------------- the build
def build_per_graph(source: str | os.PathLike[str], out: str | os.PathLike[str], options: BuildOptions) -> Manifest:
    """Build ``out`` from the exported float32 folder ``source`` with per-graph candidates
    (module docstring); returns the manifest. EngineError when nothing passes the gate."""
    import platform

    from defectnet.engine_build.accuracy import compare, gate_error, reference_result
    from defectnet.engine_build.build import REJECTED_MANIFEST, staged_build
    from defectnet.evaluation.evaluate import evaluate_engine

    options.validate()
    with staged_build(source, out, options) as (src, out, tmp, prepared):
        candidates, blocks = make_candidates(src, prepared, options, tmp)
        precisions = requested_precisions(options)
        open_choice = options.precision is None
        single = all(sum(c.precision in _wanted(precisions) for c in cands) <= 1 for cands in candidates.values())
        timed = True
        if options.timings is not None:
            times = {g: {name: list(ts) for name, ts in options.timings[g].items()} for g in candidates}
            missing = [f"{g}: {c.name}" for g, cs in candidates.items() for c in cs if c.name not in times[g]]
            if missing:
                raise ConfigError(f"the injected timings lack {', '.join(missing)}")
            timing_note = "injected (BuildOptions.timings)"
        elif single and options.backend == BackendName.OPENVINO:
            times = {g: {c.name: [0.0] for c in cs} for g, cs in candidates.items()}
            timed = False
            timing_note = "not timed: one candidate per graph (--backend openvino)"
        else:
            inputs = timing_inputs(src, options)
            times = time_candidates(src, prepared, candidates, inputs, threads=options.threads,
                                    repeat=options.timing_repeat, log=options.log)
            timing_note = "measured"
        settings = {"timings": timing_note, "threads": options.threads or "library default",
                    "repeat": options.timing_repeat, "warmup": TIMING_WARMUP, "images": TIMING_IMAGES,
                    "input": "test split, batch 1" if options.data_dir else "random images at the engine scale",
                    "machine": {"cpu": _cpu_name(), "cores": os.cpu_count(), "python": platform.python_version()},
                    "rule": "per graph the fastest candidate that passes the accuracy gate; with no precision "
                            "requested, a reduced precision must be faster than the graph's fastest fp32"}
        ranked: dict[str, list[Candidate]] = {}
        statuses: dict[str, dict[str, str]] = {}
        fallback: dict[str, Candidate] = {}
        for g, cands in candidates.items():
            ranked[g], statuses[g], fallback[g] = rank_graph(cands, times[g], precisions, open_choice=open_choice)
            for c in cands:
                shown = f"{median_ms(times[g], c.name):9.2f} ms" if timed else "not timed"
                options.log(f"  {g:<9} {c.name:<44} {shown}"
                            + (f"  ({statuses[g][c.name]})" if c.name in statuses[g] else ""))
            if not open_choice and ranked[g] and median_ms(times[g], ranked[g][0].name) >= median_ms(
                    times[g], fallback[g].name) and not ranked[g][0].is_fp32 and timed:
                options.log(f"warning: the {g} graph is not faster at {ranked[g][0].precision} "
                            f"({ranked[g][0].name}) than at fp32 ({fallback[g].name}) on this machine")

        reference: list[Any] = []
        counter = itertools.count()

        def evaluate(combo: dict[str, Candidate]) -> Evaluation:
            assert options.data_dir is not None
            names = {g: c.name for g, c in combo.items()}
            folder = tmp / f"eval-{next(counter)}"
            write_folder(folder, src, combo, options, blocks, None)
            if not reference:
                options.log(f"accuracy gate: evaluating the float32 reference on the test split of "
                            f"{options.data_dir} ...")
                reference.append(reference_result(src.root, options.data_dir, progress=options.progress))
            options.log("accuracy gate: " + ", ".join(f"{g} {n}" for g, n in names.items()) + " ...")
            result = evaluate_engine(folder, options.data_dir, backend=BackendName.AUTO, progress=options.progress)
            report = compare(reference[0][0], result, options.tolerances)
            report["reference_source"] = reference[0][1]
            for line in report["summary"]:
                options.log(f"    {line}")
            shutil.rmtree(folder, ignore_errors=True)
            return Evaluation(names, bool(report["passed"]), report)

        try:
            choice = choose_half(ranked, fallback, times, evaluate if options.data_dir is not None else None)
        except EngineError as e:
            evaluations = getattr(e, "evaluations", [])
            if not evaluations or evaluations[-1].report is None:
                raise
            first = {g: ranked[g][0] for g in ranked}
            sel = selection_block(candidates, times, statuses, None, getattr(e, "failed", set()), settings,
                                  evaluations)
            manifest = assemble_manifest(src, first, {g: c.file for g, c in first.items()}, options, blocks, sel)
            report = evaluations[0].report
            assert report is not None
            write_manifest(out, replace(manifest, accuracy=Accuracy.from_json(report)), REJECTED_MANIFEST)
            raise gate_error(report, out, "per-graph" if open_choice else str(options.precision),
                             f"{e}; every evaluation is in {REJECTED_MANIFEST} (selection.evaluations). Try "
                             "another --calib-method, a larger --calib-size, or loosen the tolerance knowingly"
                             ) from None
        sel = selection_block(candidates, times, statuses, choice, choice.failed, settings, choice.evaluations)
        if choice.passed is not None:
            assert choice.passed.report is not None
            accuracy = Accuracy.from_json(choice.passed.report)
        else:
            accuracy = Accuracy(None, skipped="no --data: the accuracy gate needs a test split")
            options.log("warning: no --data, so the accuracy gate was skipped (the manifest records it)")
        manifest = write_folder(out, src, choice.chosen, options, blocks, sel, accuracy)
    for g, c in choice.chosen.items():
        options.log(f"  chose {g}: {c.name}" + (f" ({median_ms(times[g], c.name):.2f} ms)" if timed else ""))
        if c.compressed_weights and not blocks.get("half_mode", {}).get("compressed_weights", True):
            options.log(f"warning: {g} at {blocks['half_mode']['precision']} failed the accuracy gate; it keeps "
                        "fp16-compressed weights with float32 arithmetic (half the file, about fp32's speed)")
    return manifest


def _wanted(precisions: Sequence[Precision]) -> set[Precision]:
    return set(precisions) | ({Precision.BF16} if Precision.FP16 in precisions else set())


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


__all__ = ["Candidate", "Choice", "Evaluation", "assemble_manifest", "build_per_graph", "choose", "make_candidates",
           "rank_graph", "requested_precisions", "time_candidates", "timing_inputs"]
