"""Benchmark outputs: markdown tables, ``results.json``, ``results.csv``, machine + library info.

Tables (``tables.md``, also printed):

* one table per backend column (``torch fp32``, ``onnxruntime int8`` ...) in the seed
  README's layout (:func:`defectnet.evaluation.report.seed_table`; its ATT_normal /
  ATT_defective columns hold the ground-truth-normal / -defective means — the seed's own
  table had them swapped, see :mod:`defectnet.evaluation.report`);
* ATT side by side: rows x backend columns, with the speed-up against the PyTorch one-model
  row measured in the same run;
* with ``--target-recall``, the headline at the validated operating point: threshold,
  validation and test recall, normal images skipped, mAP, F1, ATT, speed-ups;
* gate on vs gate off per backend (:func:`gate_table`) and what each step buys
  (:func:`effects_table`: backend, quantization, gate, together);
* the deployment table: accuracy, gate recall, ATT, speed-up, ATT_ideal, model p50/p99,
  end-to-end time and p99, throughput at batch 1 and at ``--batch``;
* the per-stage breakdown (ms per image at batch 1);
* the skipped cases with the reason.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from defectnet.bench.results import BenchResult, CaseResult
from defectnet.bench.runner import STAGES
from defectnet.bench.scenario import label_order
from defectnet.evaluation.environment import (  # noqa: F401  (re-exported: machine/library info moved there)
    _cpuinfo,
    _meminfo_gb,
    library_versions,
    machine_info,
)
from defectnet.evaluation.report import seed_table
from defectnet.io import atomic_write_json, atomic_write_text

TABLES_FILE, JSON_FILE, CSV_FILE, DETECTIONS_FILE = "tables.md", "results.json", "results.csv", "detections.json"


# ----------------------------------------------------------------------------- tables
def _num(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def ordered_labels(result: BenchResult) -> list[str]:
    return sorted(result.labels, key=label_order)


def _by_label(result: BenchResult, label: str) -> list[CaseResult]:
    return [c for c in result.cases if c.label == label]


def seed_tables(result: BenchResult) -> str:
    """One seed-layout table per backend column."""
    parts = []
    for label in ordered_labels(result):
        cases = _by_label(result, label)
        device = cases[0].metrics.device if cases else "?"
        parts.append(f"### {label} ({device})\n\n{seed_table([c.metrics for c in cases])}")
    return "\n\n".join(parts)


def side_by_side_table(result: BenchResult) -> str:
    """ATT (ms) of each row on each backend column, with the speed-up vs the baseline."""
    labels = ordered_labels(result)
    rows = list(dict.fromkeys(c.row for c in result.cases))
    cell = {(c.row, c.label): c for c in result.cases}
    lines = ["| Model | " + " | ".join(labels) + " |", "|---|" + "|".join(":---:" for _ in labels) + "|"]
    for row in rows:
        cells = []
        for label in labels:
            c = cell.get((row, label))
            cells.append("-" if c is None else f"{_num(c.metrics.att_ms)} ({_x(c.speedup_att)})"
                         if c.speedup_att is not None else _num(c.metrics.att_ms))
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


DEPLOY_HEADER = ("| Model | Backend | mAP | F1 | gate recall | ATT(MS) | speed-up | ATT_ideal(MS) | p50(MS) | "
                 "p99(MS) | E2E(MS) | E2E p99(MS) | E2E speed-up | img/s b1 | img/s b{batch} |\n"
                 "|---|---|:---:|:---:|:---:|:---:|:---:|:---:|:---:|:---:|:---:|:---:|:---:|:---:|:---:|")


def deployment_table(result: BenchResult) -> str:
    """What a deployment needs, one line per case (rows grouped, backends in column order)."""
    batch = result.settings.get("batch", "N")
    lines = [DEPLOY_HEADER.format(batch=batch)]
    for c in _ordered_cases(result):
        m = c.metrics
        lines.append(f"| {c.row} | {c.label} | {_num(m.mAP)} | {_num(m.F1)} | {_num(m.gate_recall)} | "
                     f"{_num(m.att_ms)} | {_x(c.speedup_att)} | {_num(m.att_ideal_ms)} | {_num(m.att_p50_ms)} | "
                     f"{_num(m.att_p99_ms)} | {_num(c.e2e_ms)} | {_num(c.e2e_p99_ms)} | {_x(c.speedup_e2e)} | "
                     f"{_num(c.throughput_b1, 2)} | {_num(c.throughput_batch, 2)} |")
    return "\n".join(lines)


GATE_HEADER = ("| Model | Backend | gate | ATT(MS) | ATT_normal(MS) | ATT_defective(MS) | mAP | F1 | gate recall | "
               "normal skipped | gate buys | speed-up vs PyTorch one-model |\n"
               "|---|---|---|:---:|:---:|:---:|:---:|:---:|:---:|:---:|:---:|:---:|")


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f} %"


def gate_table(result: BenchResult) -> str:
    """Each gated case next to its gate-off twin (same graphs, detector on every image):
    ATT, ATT_normal, ATT_defective, mAP, F1, gate recall, the share of normal images that
    skip the detector, what the gate buys (gate-off ATT / gate-on ATT) and the speed-up
    against the PyTorch one-model where one was measured. Empty without gate-off cases."""
    pairs = [(c, twin) for c in _ordered_cases(result) if (twin := result.gate_off_twin(c)) is not None]
    if not pairs:
        return ""
    lines = [GATE_HEADER]
    for on, off in pairs:
        for c, gate in ((off, "off"), (on, f"on (P >= {on.metrics.effective_gate_threshold:.4g})"
                                       if on.metrics.effective_gate_threshold is not None else "on")):
            m = c.metrics
            lines.append(f"| {on.row} | {c.label} | {gate} | {_num(m.att_ms)} | {_num(m.att_normal_ms)} | "
                         f"{_num(m.att_defective_ms)} | {_num(m.mAP)} | {_num(m.F1)} | {_num(m.gate_recall)} | "
                         f"{_pct(c.normal_skipped)} | {_x(c.speedup_gate) if c is on else '1.00x'} | "
                         f"{_x(c.speedup_att)} |")
    return "\n".join(lines)


def _gate_off_lookup(result: BenchResult) -> dict[tuple[str, str, str], CaseResult]:
    """(model row, backend, precision) -> its gate-off case (the plainly labelled one first)."""
    out: dict[tuple[str, str, str], CaseResult] = {}
    for c in sorted((c for c in result.cases if c.gate_off), key=lambda c: c.label != f"{c.backend} {c.precision}"):
        out.setdefault((c.model_row, c.backend, c.precision), c)
    return out


EFFECTS_HEADER = ("| Model | Backend | backend (gate off, vs PyTorch fp32) | quantization (gate off, vs the "
                  "backend's fp32) | gate (off -> on) | together (vs PyTorch fp32, gate off) |\n"
                  "|---|---|:---:|:---:|:---:|:---:|")


def effects(result: BenchResult) -> list[dict[str, Any]]:
    """What each step buys, per gated case, all ratios of ATTs from this run:
    ``backend`` = gate-off ATT in PyTorch fp32 / gate-off ATT on this backend in fp32,
    ``quantization`` = that / gate-off ATT at this case's precision, ``gate`` = gate-off /
    gate-on ATT at this precision, ``together`` = gate-off PyTorch fp32 / this case (= the
    product of the three). None where a needed case was not measured."""
    off = _gate_off_lookup(result)
    out = []
    for c in _ordered_cases(result):
        twin = result.gate_off_twin(c)
        if twin is None:
            continue
        torch32 = off.get((c.model_row or c.row, "torch", "fp32"))
        same32 = off.get((c.model_row or c.row, c.backend, "fp32"))

        def ratio(a: CaseResult | None, b: CaseResult | None) -> float | None:
            return a.metrics.att_ms / b.metrics.att_ms if a is not None and b is not None and b.metrics.att_ms > 0 \
                else None

        out.append({"row": c.row, "label": c.label, "backend": ratio(torch32, same32),
                    "quantization": ratio(same32, twin), "gate": ratio(twin, c), "together": ratio(torch32, c)})
    return out


def effects_table(result: BenchResult) -> str:
    """:func:`effects` as a table plus one sentence per case; empty without gate-off cases."""
    rows = effects(result)
    if not rows:
        return ""
    lines = [EFFECTS_HEADER]
    sentences = []
    for e in rows:
        lines.append(f"| {e['row']} | {e['label']} | {_x(e['backend'])} | {_x(e['quantization'])} | "
                     f"{_x(e['gate'])} | {_x(e['together'])} |")
        parts = []
        if e["quantization"] is not None and abs(e["quantization"] - 1.0) > 1e-12:
            parts.append(f"quantization buys {_x(e['quantization'])}")
        parts.append(f"the gate buys {_x(e['gate'])}")
        if e["quantization"] is not None and len(parts) > 1:
            parts.append(f"together {_x(e['quantization'] * e['gate'])}")
        if e["backend"] is not None and e["together"] is not None and e["label"] != "torch fp32":
            parts.append(f"with the backend's {_x(e['backend'])} over PyTorch: {_x(e['together'])} against "
                         "PyTorch fp32 with the gate off")
        sentences.append(f"- {e['row']}, {e['label']}: " + ", ".join(parts))
    return "\n".join(lines) + "\n\n" + "\n".join(sentences)


OPERATING_HEADER = ("| Model | Backend | threshold | validation recall | gate recall | normal skipped | mAP | F1 | "
                    "ATT(MS) | speed-up vs PyTorch one-model | gate buys |\n"
                    "|---|---|:---:|:---:|:---:|:---:|:---:|:---:|:---:|:---:|:---:|")


def operating_table(result: BenchResult) -> str:
    """The headline at the validated recall (``--target-recall``): every one-model case and
    every gated case at its threshold chosen on the validation images; empty otherwise."""
    if result.settings.get("target_recall") is None:
        return ""
    lines = [OPERATING_HEADER]
    for c in _ordered_cases(result):
        if c.gate_off:
            continue
        m, op = c.metrics, c.operating_point or {}
        if m.has_gate and not op:
            continue
        lines.append(f"| {c.row} | {c.label} | {_num(op.get('threshold'), 4) if op else '-'} | "
                     f"{_num(op.get('recall')) if op else '-'} | {_num(m.gate_recall) if m.has_gate else '-'} | "
                     f"{_pct(c.normal_skipped) if m.has_gate else '-'} | {_num(m.mAP)} | {_num(m.F1)} | "
                     f"{_num(m.att_ms)} | {_x(c.speedup_att)} | {_x(c.speedup_gate)} |")
    return "\n".join(lines)


#: Column titles of the stage table (``gate`` is the gate graph: backbone + gate head; the
#: one-model's gate graph is its backbone alone).
STAGE_TITLES = {"gate": "backbone+gate", "select": "select", "other": "other model", "postprocess": "box mapping"}


def stage_table(result: BenchResult) -> str:
    """Mean ms per image of each stage at batch 1 (median over repetitions)."""
    lines = ["| Model | Backend | " + " | ".join(STAGE_TITLES.get(s, s) for s in STAGES) + " |",
             "|---|---|" + "|".join(":---:" for _ in STAGES) + "|"]
    for c in _ordered_cases(result):
        lines.append(f"| {c.row} | {c.label} | " + " | ".join(_num(c.stages_ms.get(s)) for s in STAGES) + " |")
    return "\n".join(lines)


def _ordered_cases(result: BenchResult) -> list[CaseResult]:
    rows = list(dict.fromkeys(c.row for c in result.cases))
    return sorted(result.cases, key=lambda c: (rows.index(c.row), label_order(c.label)))


NO_BASELINE = "none (no PyTorch one-model row: no speed-up against it; the gate-off rows show what the gate buys)"


def _header(result: BenchResult) -> str:
    m, lib, s, im = result.machine, result.libraries, result.settings, result.images
    gpus = ", ".join(g.get("name", "?") for g in m.get("gpus", [])) or "none"
    libs = ", ".join(f"{k} {v}" for k, v in lib.items() if k in ("torch", "torchvision", "onnxruntime", "onnx",
                                                                   "tensorrt") and v)
    share = im.get("normal_share")
    lines = [
        f"# DefectNet benchmark{' — ' + result.created if result.created else ''}",
        "",
        f"- machine: {m.get('cpu', '?')} ({m.get('usable_cores', '?')} usable cores), GPU: {gpus}",
        f"- libraries: {libs}",
        f"- images: {im.get('num_images')} of {im.get('data', '?')} / {im.get('split', '?')} "
        f"({im.get('num_normal')} normal, share {_num(share, 2)}; {im.get('how', '?')}"
        + (f", drawn with replacement: {', '.join(im['with_replacement'])}" if im.get("with_replacement") else "")
        + ")",
        f"- protocol: batch 1 model part timed between device synchronisations (the seed's ATT), "
        f"{s.get('repeat')} interleaved repetition(s) (medians), warm-up {s.get('warmup')} call(s) excluded, "
        f"threads {s.get('threads') or 'default'} ({_threads_text(result)}), device {s.get('device', 'cpu')}",
        f"- baseline: {result.baseline or NO_BASELINE}",
    ]
    if s.get("target_recall") is not None:
        val = s.get("val_data") or im.get("data", "?")
        lines.append(f"- gate thresholds: each gated case's own, for gate recall >= {s['target_recall']} on "
                     f"{val} / {s.get('val_split')} (validation images, not the measured ones)")
    if result.command:
        lines.append(f"- command: `{result.command}`")
    return "\n".join(lines)


def _threads_text(result: BenchResult) -> str:
    """The thread counts the cases actually ran with, e.g. ``torch 2, onnxruntime 2``."""
    seen: dict[str, Any] = {}
    for c in result.cases:
        t = c.threads
        if "torch" in t:
            seen.setdefault("torch", t["torch"])
        if t.get("backend") and t.get("backend") != "torch" and "backend_threads" in t:
            value = t["backend_threads"]
            seen.setdefault(str(t["backend"]), value if value else "library default")
    return ", ".join(f"{k} {v}" for k, v in seen.items()) or "not recorded"


def markdown_report(result: BenchResult) -> str:
    """The whole ``tables.md``."""
    parts = [_header(result),
             "## Seed layout per backend\n\nATT_normal / ATT_defective: mean over ground-truth normal / defective "
             "images (correctly labelled; the seed's own table swapped them).\n\n" + seed_tables(result),
             "## ATT side by side (ms, speed-up vs the PyTorch one-model row)\n\n" + side_by_side_table(result)]
    if op := operating_table(result):
        parts.append(f"## At the validated operating point (gate recall >= {result.settings['target_recall']} on "
                     "the validation images)\n\n" + op + "\n\nThe speed-recall curve (plots/speed_recall.png) "
                     "shows the speed-up at every other threshold.")
    if gate := gate_table(result):
        parts.append("## Gate on vs gate off (same graphs; gate off = detector on every image)\n\n" + gate)
    if eff := effects_table(result):
        parts.append("## What each step buys (ratios of ATT, this run)\n\n" + eff)
    parts += ["## Deployment\n\n" + deployment_table(result),
              "## Stages (ms per image, batch 1)\n\n" + stage_table(result)]
    if result.skipped:
        parts.append("## Skipped\n\n" + "\n".join(
            f"- {s['row']} / {s['backend']}{'' if s['precision'] == '-' else ' ' + s['precision']}: {s['reason']}"
            for s in result.skipped))
    notes = [f"- {c.key}: {n}" for c in result.cases for n in c.notes if not n.startswith("att_one_ms from")]
    notes += [f"- {n}" for n in result.notes]
    if notes:
        parts.append("## Notes\n\n" + "\n".join(notes))
    return "\n\n".join(parts) + "\n"


# ----------------------------------------------------------------------------- CSV / JSON
CSV_COLUMNS: tuple[tuple[str, Callable[[CaseResult], Any]], ...] = (
    ("row", lambda c: c.row), ("backend", lambda c: c.backend), ("precision", lambda c: c.precision),
    ("label", lambda c: c.label), ("kind", lambda c: c.kind), ("mAP", lambda c: c.metrics.mAP),
    ("AP50", lambda c: c.metrics.AP50), ("F1", lambda c: c.metrics.F1),
    ("gate_recall", lambda c: c.metrics.gate_recall), ("gate_precision", lambda c: c.metrics.gate_precision),
    ("att_ms", lambda c: c.metrics.att_ms), ("att_normal_ms", lambda c: c.metrics.att_normal_ms),
    ("att_defective_ms", lambda c: c.metrics.att_defective_ms), ("att_ideal_ms", lambda c: c.metrics.att_ideal_ms),
    ("att_p50_ms", lambda c: c.metrics.att_p50_ms), ("att_p99_ms", lambda c: c.metrics.att_p99_ms),
    ("speedup_att", lambda c: c.speedup_att), ("e2e_ms", lambda c: c.e2e_ms), ("e2e_p50_ms", lambda c: c.e2e_p50_ms),
    ("e2e_p99_ms", lambda c: c.e2e_p99_ms), ("speedup_e2e", lambda c: c.speedup_e2e),
    ("throughput_b1", lambda c: c.throughput_b1), ("batch", lambda c: c.batch),
    ("throughput_batch", lambda c: c.throughput_batch), ("att_batch_ms", lambda c: c.att_batch_ms),
    *((f"stage_{s}_ms", (lambda c, s=s: c.stages_ms.get(s))) for s in STAGES),
    ("num_images", lambda c: c.metrics.num_images), ("num_normal", lambda c: c.metrics.num_normal),
    ("num_defective", lambda c: c.metrics.num_defective), ("detector_runs", lambda c: c.metrics.num_detector_runs),
    ("device", lambda c: c.metrics.device), ("engine_dir", lambda c: c.engine_dir), ("run_dir", lambda c: c.run_dir),
    ("remark", lambda c: c.metrics.remark), ("gate_off", lambda c: c.gate_off),
    ("model_row", lambda c: c.model_row or c.row), ("gate_threshold", lambda c: c.metrics.effective_gate_threshold),
    ("speedup_gate", lambda c: c.speedup_gate), ("normal_skipped", lambda c: c.normal_skipped),
    ("gate_roc_auc", lambda c: c.metrics.gate_roc_auc),
    ("gate_average_precision", lambda c: c.metrics.gate_average_precision),
)


def _csv_value(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


#: Run-wide columns repeated on every line, so CSV files of several runs can be concatenated.
RUN_COLUMNS: tuple[tuple[str, Callable[[BenchResult], Any]], ...] = (
    ("created", lambda r: r.created), ("cpu", lambda r: r.machine.get("cpu")),
    ("gpu", lambda r: ", ".join(g.get("name", "?") for g in r.machine.get("gpus", [])) or None),
    ("torch", lambda r: r.libraries.get("torch")), ("onnxruntime", lambda r: r.libraries.get("onnxruntime")),
    ("tensorrt", lambda r: r.libraries.get("tensorrt")), ("repeat", lambda r: r.settings.get("repeat")),
    ("warmup", lambda r: r.settings.get("warmup")), ("threads", lambda r: r.settings.get("threads")),
    ("normal_share", lambda r: r.images.get("normal_share")),
)


def results_csv(result: BenchResult) -> str:
    """One line per case (rows grouped, backends in column order), the per-case columns then
    the run-wide ones (machine, libraries, settings); empty cells where undefined."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([name for name, _ in CSV_COLUMNS] + [name for name, _ in RUN_COLUMNS])
    run = [_csv_value(get(result)) for _, get in RUN_COLUMNS]
    for c in _ordered_cases(result):
        writer.writerow([_csv_value(get(c)) for _, get in CSV_COLUMNS] + run)
    return buf.getvalue()


def split_detections(result: BenchResult) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """``result.to_dict()`` with every case's ``per_image["detections"]`` moved out (its
    ``detections_file`` pointing at the entry), and the entries for :data:`DETECTIONS_FILE`."""
    data = result.to_dict()
    entries: dict[str, dict[str, Any]] = {}
    for c in data["cases"]:
        dets = c["per_image"].pop("detections", None)
        if dets is None:
            continue
        key = f"{c['row']} | {c['label']}"
        entries[key] = {"image_id": list(c["per_image"].get("image_id", [])),
                        "result_id": list(range(1, len(dets) + 1)), "detections": dets}
        c["detections_file"] = f"{DETECTIONS_FILE}#{key}"
    return data, entries


def write_results(result: BenchResult, out: str | os.PathLike[str]) -> dict[str, Path]:
    """``tables.md``, ``results.json``, ``results.csv`` and (when the cases hold detections)
    ``detections.json`` under ``out`` (atomic writes)."""
    from defectnet.evaluation.records import write_detections

    root = Path(out)
    data, entries = split_detections(result)
    files = {"tables": atomic_write_text(root / TABLES_FILE, markdown_report(result)),
             "json": atomic_write_json(root / JSON_FILE, data),
             "csv": atomic_write_text(root / CSV_FILE, results_csv(result))}
    if entries:
        files["detections"] = write_detections(root / DETECTIONS_FILE, entries)
    return files
