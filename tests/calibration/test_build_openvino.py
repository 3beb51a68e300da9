"""Per-graph engine builds (defectnet-build-engine --backend auto / openvino, --fp16 on a CPU):
the choice rule on injected timings (deterministic), a mixed ONNX Runtime + OpenVINO INT8
engine built, recorded and run end to end, OpenVINO's INT8 on the project's Q/DQ graphs
against ONNX Runtime's, and half precision (bf16, or fp16 weights) under the accuracy gate."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from calibration_helpers import SCALE, Quantized
from click.testing import CliRunner

from defectnet.engine_build import BuildOptions, Tolerances, build_engine
from defectnet.engine_build.per_graph import (
    CHOSEN,
    FAILED,
    SLOWER_THAN_FP32,
    Candidate,
    Evaluation,
    choose,
    choose_half,
    rank_graph,
)
from defectnet.errors import ConfigError, EngineError
from defectnet.runtime import Engine, Pipeline, load_engine
from defectnet.runtime.backends import make_backend
from defectnet.runtime.backends.openvino import openvino_available
from defectnet.runtime.backends.per_graph import PerGraphBackend
from defectnet.runtime.engine import MANIFEST_FILE
from defectnet.runtime.types import BackendName, Precision

needs_openvino = pytest.mark.skipif(not openvino_available(), reason="openvino is not installed")
LOOSE = Tolerances(1.0, 1.0, 1.0, 1.0)  # a random-init model: the mechanics are what is tested
BF16_CPU = ("FP32", "BF16", "INT8")  # assumed CPU capabilities: the candidate names are then fixed
ORT, OV = BackendName.ONNXRUNTIME, BackendName.OPENVINO


# ----------------------------------------------------------------------------- the rule (pure)
def _cand(graph: str, backend: BackendName, precision: Precision) -> Candidate:
    return Candidate(graph, backend, precision, Path(f"{graph}.onnx"))


def _graph_cands(graph: str) -> list[Candidate]:
    return [_cand(graph, ORT, Precision.FP32), _cand(graph, OV, Precision.FP32), _cand(graph, ORT, Precision.INT8),
            _cand(graph, OV, Precision.INT8), _cand(graph, OV, Precision.BF16)]


TIMES = {  # ms per call (three calls each: the median is the middle one)
    "gate": {"onnxruntime fp32": [25, 26, 27], "openvino fp32": [28, 28, 29], "onnxruntime int8": [9, 9.6, 10],
             "openvino int8": [10, 10.5, 11], "openvino bf16": [17, 17.1, 18]},
    "detector": {"onnxruntime fp32": [27, 27, 28], "openvino fp32": [19, 19.3, 20], "onnxruntime int8": [30, 31, 32],
                 "openvino int8": [14, 14.8, 15], "openvino bf16": [16, 17, 18]},
}


def _ranked(open_choice: bool = True) -> tuple[dict[str, list[Candidate]], dict[str, dict[str, str]],
                                               dict[str, Candidate]]:
    precisions = (Precision.FP32, Precision.INT8, Precision.FP16) if open_choice else (Precision.INT8,)
    ranked, status, fallback = {}, {}, {}
    for g in ("gate", "detector"):
        ranked[g], status[g], fallback[g] = rank_graph(_graph_cands(g), TIMES[g], precisions, open_choice=open_choice)
    return ranked, status, fallback


def test_rank_orders_by_median_and_drops_reduced_precisions_slower_than_fp32() -> None:
    ranked, status, fallback = _ranked()
    assert [c.name for c in ranked["gate"]] == ["onnxruntime int8", "openvino int8", "openvino bf16",
                                                "onnxruntime fp32", "openvino fp32"]
    # ONNX Runtime's INT8 detector (RoiAlign has no integer kernel) is slower than the fp32 ones
    assert status["detector"] == {"onnxruntime int8": SLOWER_THAN_FP32}
    assert [c.name for c in ranked["detector"]][:2] == ["openvino int8", "openvino bf16"]
    assert fallback == {"gate": ranked["gate"][3], "detector": next(c for c in ranked["detector"]
                                                                     if c.name == "openvino fp32")}
    # an explicit precision: only that precision competes, even when slower (the fp32 ones are the record)
    ranked, status, _ = _ranked(open_choice=False)
    assert [c.name for c in ranked["detector"]] == ["openvino int8", "onnxruntime int8"]
    assert status["detector"]["openvino fp32"] == "fp32 reference"


def test_choose_takes_the_fastest_passing_and_blames_the_failing_graph() -> None:
    ranked, _, fallback = _ranked()
    calls: list[dict[str, str]] = []

    def evaluate(combo: dict[str, Candidate]) -> Evaluation:
        names = {g: c.name for g, c in combo.items()}
        calls.append(names)
        ok = names["detector"] != "openvino int8"  # OpenVINO's INT8 detector loses accuracy here
        return Evaluation(names, ok, {"summary": [], "engine": {}})

    choice = choose(ranked, fallback, TIMES, evaluate)
    assert {g: c.name for g, c in choice.chosen.items()} == {"gate": "onnxruntime int8", "detector": "openvino bf16"}
    assert calls == [  # the fastest pair, the culprit search (each reduced graph with the other at fp32), the next
        {"gate": "onnxruntime int8", "detector": "openvino int8"},
        {"gate": "onnxruntime int8", "detector": "openvino fp32"},
        {"gate": "onnxruntime fp32", "detector": "openvino int8"},
        {"gate": "onnxruntime int8", "detector": "openvino bf16"},
    ]
    assert choice.failed == {"detector|openvino int8"} and choice.passed is not None and choice.passed.passed
    assert choose(ranked, fallback, TIMES, evaluate).chosen == choice.chosen  # deterministic
    # no accuracy gate (no --data): the fastest of each graph
    assert {g: c.name for g, c in choose(ranked, fallback, TIMES, None).chosen.items()} == {
        "gate": "onnxruntime int8", "detector": "openvino int8"}
    with pytest.raises(EngineError, match="no combination .* passes the accuracy gate within 2 evaluations"):
        choose(ranked, fallback, TIMES, lambda c: Evaluation({}, False), max_evaluations=2)


def test_explicit_fp16_prefers_bf16_and_falls_back_to_fp16_weights_per_failing_graph() -> None:
    """--fp16 on a bf16 CPU: bf16 arithmetic first, even where the fp16-weights form (float32
    arithmetic) times faster; a graph whose bf16 fails the accuracy gate keeps fp16 weights."""
    def half_cands(g: str) -> list[Candidate]:
        return [_cand(g, OV, Precision.FP32), _cand(g, OV, Precision.BF16),
                Candidate(g, OV, Precision.FP16, Path(f"{g}.fp16-weights.onnx"), "f32", compressed_weights=True)]

    fp16w = "openvino fp16 (fp16 weights, f32 inference)"
    times = {g: {"openvino fp32": [20.0], "openvino bf16": [15.0], fp16w: [14.0]} for g in ("gate", "detector")}
    ranked, fallback = {}, {}
    for g in ("gate", "detector"):
        ranked[g], _, fallback[g] = rank_graph(half_cands(g), times[g], (Precision.FP16,), open_choice=False)
    assert [c.name for c in ranked["gate"]] == [fp16w, "openvino bf16"]  # by speed ...

    def evaluate(bad: set[str]) -> Callable[[dict[str, Candidate]], Evaluation]:
        def run(combo: dict[str, Candidate]) -> Evaluation:
            names = {g: c.name for g, c in combo.items()}
            return Evaluation(names, not any(names[g] == "openvino bf16" for g in bad), {"summary": [], "engine": {}})
        return run

    ok = choose_half(ranked, fallback, times, evaluate(set()))  # ... but bf16 wins while it passes
    assert {g: c.name for g, c in ok.chosen.items()} == {"gate": "openvino bf16", "detector": "openvino bf16"}
    assert len(ok.evaluations) == 1
    det_bad = choose_half(ranked, fallback, times, evaluate({"detector"}))
    assert {g: c.name for g, c in det_bad.chosen.items()} == {"gate": "openvino bf16", "detector": fp16w}
    assert "detector|openvino bf16" in det_bad.failed and det_bad.passed is not None
    both_bad = choose_half(ranked, fallback, times, evaluate({"gate", "detector"}))
    assert {g: c.name for g, c in both_bad.chosen.items()} == {"gate": fp16w, "detector": fp16w}
    assert [e.passed for e in both_bad.evaluations][-1] is True
    names = [tuple(sorted(e.combination.items())) for e in both_bad.evaluations]
    assert len(names) == len(set(names))  # no combination evaluated twice
    with pytest.raises(EngineError, match="passes the accuracy gate"):  # nothing passes: every evaluation kept
        choose_half(ranked, fallback, times, lambda c: Evaluation({g: x.name for g, x in c.items()}, False))


# ----------------------------------------------------------------------------- builds
def _times_for(engine_candidates: dict[str, list[str]], fast: dict[str, str]) -> dict[str, dict[str, list[float]]]:
    """Injected timings: ``fast[graph]`` at 1 ms, the rest at 5-9 ms (fp32 the slowest)."""
    out = {}
    for g, names in engine_candidates.items():
        out[g] = {n: [1.0] if n == fast[g] else [9.0 if "fp32" in n else 5.0 + i * 0.1] for i, n in enumerate(names)}
    return out


CANDIDATES = ["onnxruntime fp32", "openvino fp32", "onnxruntime int8", "openvino int8 (onnxruntime Q/DQ)",
              "openvino int8 (tensorrt Q/DQ)", "openvino bf16"]


@pytest.fixture(scope="module")
def mixed_engine(tiny_engine: Engine, tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("auto") / "engine-auto"
    timings = _times_for({"gate": CANDIDATES, "detector": CANDIDATES},
                         {"gate": "onnxruntime int8", "detector": "openvino int8 (onnxruntime Q/DQ)"})
    timings["gate"]["openvino bf16"] = [10.0]  # slower than the fp32 ones (9 ms): never chosen
    build_engine(tiny_engine.root, out, BuildOptions(precision=None, backend="auto", data_dir=tiny_data, calib_size=8,
                                                     tolerances=LOOSE, threads=2, timings=timings,
                                                     cpu_capabilities=BF16_CPU, log=lambda _: None))
    return out


@needs_openvino
def test_auto_build_records_the_choice_and_every_alternative(mixed_engine: Path) -> None:
    engine = load_engine(mixed_engine)
    m = engine.manifest
    assert json.loads((mixed_engine / MANIFEST_FILE).read_text()) == m.to_json()
    assert (m.backend, m.precision) == (BackendName.AUTO, Precision.INT8)
    gate, det = m.graphs["gate"], m.graphs["detector"]
    assert (gate.backend, gate.precision, gate.inference_precision) == (ORT, Precision.INT8, None)
    assert (det.backend, det.precision, det.inference_precision) == (OV, Precision.INT8, "f32")
    sel = m.selection
    assert sel is not None
    assert sel.chosen == {"gate": "onnxruntime int8", "detector": "openvino int8 (onnxruntime Q/DQ)"}
    for g in ("gate", "detector"):
        rows = {r["name"]: r for r in sel.candidates[g]}
        assert set(rows) == set(CANDIDATES) and rows[sel.chosen[g]]["status"] == CHOSEN
        assert all("median_ms" in r and r["times_ms"] for r in rows.values())
    assert {r["name"]: r["status"] for r in sel.candidates["gate"]}["openvino bf16"] == SLOWER_THAN_FP32
    assert sel.extra["timings"].startswith("injected") and sel.extra["evaluations"][0]["passed"] is True
    q = m.quantization
    assert q is not None and q.extra["calibration"]["set"]["selected"] == 8  # the project's one calibration
    assert q.flavours["onnxruntime"]["graphs"]["gate"]["file"] == "gate.onnx"
    assert m.accuracy is not None and m.accuracy.passed and "PyTorch" in m.accuracy.extra["reference_source"]
    # the int8 files are the onnxruntime (U8S8) Q/DQ graphs
    for g in ("gate", "detector"):
        model = onnx.load(str(engine.graphs[g]))
        assert any(n.op_type == "QuantizeLinear" for n in model.graph.node)


@needs_openvino
def test_mixed_engine_runs_in_the_pipeline(mixed_engine: Path, tiny_data: Path) -> None:
    from defectnet.data.image_io import read_image

    engine = load_engine(mixed_engine)
    backend = make_backend(engine, "auto")
    assert isinstance(backend, PerGraphBackend) and backend.describe() == {"gate": "onnxruntime",
                                                                           "detector": "openvino"}
    ims = [read_image(p) for p in sorted((tiny_data / "images").iterdir())[:3]]
    results = Pipeline.from_engine(engine, "auto", gate_threshold=0.0).run(ims)
    ref = Pipeline.from_engine(engine, "onnxruntime", gate_threshold=0.0).run(ims)  # the same graphs on ORT only
    assert len(results) == 3 and all(r.ran_detector for r in results)
    for a, b in zip(results, ref):
        assert abs(a.p_defective - b.p_defective) < 1e-6  # the gate is ORT in both
        assert len(a.scores) > 0 and abs(len(a.scores) - len(b.scores)) <= 2


@needs_openvino
def test_fp16_on_cpu_builds_openvino_half_precision(tiny_engine: Engine, tiny_data: Path, tmp_path: Path) -> None:
    """The CLI's --fp16 on a CPU-only machine (default backend auto): OpenVINO bf16 where the
    CPU has it (else fp16 weights), through the default accuracy gate."""
    from defectnet.engine_build.cli import main

    out = tmp_path / "engine-fp16"
    r = CliRunner().invoke(main, ["--fp16", "--engine", str(tiny_engine.root), "--data", str(tiny_data),
                                  "--out", str(out), "--timing-repeat", "1", "--threads", "2"])
    assert r.exit_code == 0, r.output
    m = load_engine(out).manifest
    assert m.backend == OV and m.accuracy is not None and m.accuracy.passed
    mode = m.extra["openvino"]["half_mode"]
    assert m.precision == mode["precision"] and m.precision in (Precision.BF16, Precision.FP16)
    for entry in m.graphs.values():
        assert entry.backend == OV and entry.inference_precision == mode["inference_precision"]
    assert "accuracy gate passed" in r.output and "per graph: gate openvino" in r.output


@needs_openvino
def test_fp16_weights_where_the_cpu_has_no_half_arithmetic(tiny_engine: Engine, tiny_data: Path,
                                                          tmp_path: Path) -> None:
    out = tmp_path / "engine-fp16w"
    lines: list[str] = []
    m = build_engine(tiny_engine.root, out, BuildOptions(precision="fp16", backend="openvino", data_dir=tiny_data,
                                                         tolerances=LOOSE, cpu_capabilities=("FP32", "INT8"),
                                                         log=lines.append))
    assert (m.precision, m.backend) == (Precision.FP16, OV)
    # one candidate per graph is not timed, and the log says so instead of printing 0.00 ms
    assert not any(" ms" in line for line in lines if line.lstrip().startswith(("gate ", "detector "))), lines
    assert any(line.rstrip().endswith("not timed") for line in lines), lines
    assert m.extra["openvino"]["half_mode"]["compressed_weights"] is True
    assert all(e.inference_precision == "f32" and e.precision == Precision.FP16 for e in m.graphs.values())
    assert m.selection is not None and m.selection.extra["timings"].startswith("not timed")
    model = onnx.load(str(out / "gate.onnx"))
    halves = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    assert halves and sum(n.op_type == "Cast" and n.name.startswith("/fp16_weights/") for n in model.graph.node) \
        == len(halves)
    assert (out / "gate.onnx").stat().st_size < 0.6 * tiny_engine.graphs["gate"].stat().st_size
    # fp16 weights, float32 arithmetic: P close to the float32 graph's
    from defectnet.data.image_io import read_image

    ims = [read_image(p) for p in sorted((tiny_data / "images").iterdir())[:2]]
    a = Pipeline.from_engine(out, "openvino").run(ims)
    b = Pipeline.from_engine(tiny_engine, "onnxruntime").run(ims)
    assert all(abs(x.p_defective - y.p_defective) < 1e-2 for x, y in zip(a, b))


def test_per_graph_option_errors(tiny_engine: Engine, tiny_data: Path) -> None:
    with pytest.raises(ConfigError, match="only --backend auto lets every precision compete"):
        BuildOptions(precision=None, backend="openvino").validate()
    with pytest.raises(ConfigError, match="injected timings are for per-graph builds"):
        BuildOptions(backend="onnxruntime", timings={}).validate()
    with pytest.raises(ConfigError, match="timing_repeat"):
        BuildOptions(timing_repeat=0)


@needs_openvino
@pytest.mark.parametrize("flavour", ["onnxruntime", "tensorrt"], ids=["u8s8-qdq", "s8s8-qdq"])  # not a TensorRT test
def test_openvino_int8_runs_the_projects_qdq_graphs_like_onnxruntime(quantized: Quantized, tiny_data: Path,
                                                                     prepared: dict[str, Path], flavour: str) -> None:
    """OpenVINO reads the project's Q/DQ graphs (one calibration) and stays within what the
    INT8 tests allow ONNX Runtime: P within 0.02 of ONNX Runtime's on the same graph, and the
    float detector's most confident boxes found (same class, IoU >= 0.7, score within 0.05)."""
    import onnxruntime as ort
    from torchvision.ops import box_iou

    from defectnet.calibration import select_calibration_set
    from defectnet.runtime.backends.openvino import compile_graph, import_openvino

    calib = select_calibration_set(tiny_data, 2, scale=SCALE, split="test")
    core = import_openvino().Core()
    gate_ov = compile_graph(core, quantized.files[flavour]["gate"], threads=2)
    det_ov = compile_graph(core, quantized.files[flavour]["detector"], threads=2)
    gate_ort = ort.InferenceSession(str(quantized.files[flavour]["gate"]), providers=["CPUExecutionProvider"])
    gate_f = ort.InferenceSession(str(prepared["gate"]), providers=["CPUExecutionProvider"])
    det_f = ort.InferenceSession(str(prepared["detector"]), providers=["CPUExecutionProvider"])
    for _im, x, s in calib.batches():
        feed = {"images": x, "image_sizes": s}
        p_ort = float(gate_ort.run(None, feed)[0][0])
        p_ov = float(gate_ov(feed)["p_defective"][0])
        assert abs(p_ov - p_ort) < 0.02, (flavour, p_ov, p_ort)
        ref = gate_f.run(None, feed)
        feats = {**dict(zip(["c2", "c3", "c4", "c5"], ref[1:])), "image_sizes": s}
        fdet = det_f.run(None, feats)
        got = det_ov(feats)
        n_ref, n_got = int(fdet[3][0]), int(got["count"][0])
        keep = fdet[1][0, :n_ref] >= 0.9 * fdet[1][0, :n_ref].max(initial=0.0)
        assert n_ref and keep.any()
        rb, rs, rl = (torch.from_numpy(np.asarray(a[0, :n_ref][keep])) for a in fdet[:3])
        gb, gs, gl = (torch.from_numpy(np.asarray(got[k][0, :n_got])) for k in ("boxes", "scores", "labels"))
        iou = box_iou(rb.float(), gb.float()) if n_got else torch.zeros(len(rb), 0)
        for i in range(len(rb)):
            ok = (iou[i] >= 0.7) & (gl == rl[i]) & ((gs - rs[i]).abs() <= 0.05)
            assert bool(ok.any()), (flavour, i, float(iou[i].max()) if n_got else 0.0)


def test_failed_gate_statuses_are_recorded() -> None:
    """selection_block marks a candidate that failed the accuracy gate."""
    from defectnet.engine_build.per_graph import Choice, selection_block

    cands = {"gate": _graph_cands("gate")[:3], "detector": _graph_cands("detector")[:3]}
    times = {g: {n: TIMES[g][n] for n in (c.name for c in cands[g])} for g in cands}
    chosen = {"gate": cands["gate"][0], "detector": cands["detector"][1]}
    sel = selection_block(cands, times, {"gate": {}, "detector": {}}, Choice(chosen), {"gate|onnxruntime int8"},
                          {"threads": 2}, [])
    statuses = {r["name"]: r["status"] for r in sel.candidates["gate"]}
    assert statuses == {"onnxruntime int8": FAILED, "onnxruntime fp32": CHOSEN, "openvino fp32": "slower"}
    assert sel.to_json()["chosen"] == {"gate": "onnxruntime fp32", "detector": "openvino fp32"}


@needs_openvino
def test_auto_build_that_fails_the_gate_leaves_a_rejected_manifest(tiny_engine: Engine, tiny_data: Path,
                                                                   tmp_path: Path) -> None:
    out = tmp_path / "rejected"
    names = ["onnxruntime fp32", "openvino fp32"]
    timings = {g: {names[0]: [2.0], names[1]: [1.0]} for g in ("gate", "detector")}
    with pytest.raises(EngineError, match=r"fp32 engine fails the accuracy gate.*F1 .*FAILED.*manifest.rejected.json"):
        build_engine(tiny_engine.root, out, BuildOptions(precision="fp32", backend="auto", data_dir=tiny_data,
                                                         tolerances=Tolerances(1.0, 1.0, -1.0, 1.0), timings=timings,
                                                         log=lambda _: None))
    assert not (out / MANIFEST_FILE).exists()
    rejected = json.loads((out / "manifest.rejected.json").read_text())
    assert rejected["accuracy"]["passed"] is False and rejected["accuracy"]["failed"] == ["F1"]
    # the fastest pair fails; with no reduced precision to blame both members are dropped,
    # which leaves the pair of the other runtime: it fails too
    assert [(e["graphs"], e["passed"]) for e in rejected["selection"]["evaluations"]] == [
        ({"gate": "openvino fp32", "detector": "openvino fp32"}, False),
        ({"gate": "onnxruntime fp32", "detector": "onnxruntime fp32"}, False)]
