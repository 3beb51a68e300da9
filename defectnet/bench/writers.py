"""Benchmark outputs: markdown tables, ``results.json``, ``results.csv``, machine + library info.

Tables (``tables.md``, also printed):

* one table per backend column (``torch fp32``, ``onnxruntime int8`` ...) in the seed
  README's layout (:func:`defectnet.evaluation.report.seed_table`; its ATT_normal /
  ATT_defective columns hold the ground-truth-normal / -defective means — the seed's own
  table had them swapped, see :mod:`defectnet.evaluation.report`);
* ATT side by side: rows x backend columns, with the speed-up against the PyTorch one-model
  row measured in the same run;
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

TABLES_FILE, JSON_FILE, CSV_FILE = "tables.md", "results.json", "results.csv"


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
        f"threads {s.get('threads') or 'default'}, device {s.get('device', 'cpu')}",
        f"- baseline: {result.baseline or 'none (no PyTorch one-model row; speed-ups omitted)'}",
    ]
    if result.command:
        lines.append(f"- command: `{result.command}`")
    return "\n".join(lines)


def markdown_report(result: BenchResult) -> str:
    """The whole ``tables.md``."""
    parts = [_header(result),
             "## Seed layout per backend\n\nATT_normal / ATT_defective: mean over ground-truth normal / defective "
             "images (correctly labelled; the seed's own table swapped them).\n\n" + seed_tables(result),
             "## ATT side by side (ms, speed-up vs the PyTorch one-model row)\n\n" + side_by_side_table(result),
             "## Deployment\n\n" + deployment_table(result),
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
    ("remark", lambda c: c.metrics.remark),
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


def write_results(result: BenchResult, out: str | os.PathLike[str]) -> dict[str, Path]:
    """``tables.md``, ``results.json`` and ``results.csv`` under ``out`` (atomic writes)."""
    root = Path(out)
    return {"tables": atomic_write_text(root / TABLES_FILE, markdown_report(result)),
            "json": atomic_write_json(root / JSON_FILE, result.to_dict()),
            "csv": atomic_write_text(root / CSV_FILE, results_csv(result))}
