"""Benchmark plots (matplotlib, Agg backend: no display needed), written as PNG files.

* ``att_stages.png``: one stacked bar per (row, backend): classifier, backbone + gate,
  sub-batch selection, detector and the rest of the model part (their sum is the ATT,
  batch 1), topped by hatched decode / preprocess / box-mapping segments (the sum of all is
  the end-to-end time per image);
* ``normal_share_<backend>.png``: the paper-style normal-proportion figure for one
  backend column: ATT (solid), ATT_normal (dotted) and ATT_defective (dashed) of every row,
  and the image-level macro F1, as the normal share goes from 0 to 0.99 (resampled from the
  measured per-image times and detections, :func:`defectnet.bench.resample.normal_share_curve`);
* ``speed_recall.png`` (when gate-off cases were measured): ATT speed-up against gate
  recall as the gate threshold sweeps, one curve per backend column, resampled from the
  gate-off case's per-image records (:func:`defectnet.bench.resample.speed_recall_curve`);
  the reference (PyTorch one-model, else the gate off) at 1.0, the measured gate-on cases as
  dots and the validated operating points (``--target-recall``) as stars; one panel per
  gated model;
* ``latency/<row>__<backend>.png``: histogram of the per-image model-part latency of one
  case (each image's median over the repetitions), normal and defective images stacked,
  with the p50 / p99 of all timed calls as lines.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after selecting the backend)

from defectnet.bench.results import BenchResult, CaseResult  # noqa: E402
from defectnet.bench.scenario import label_order  # noqa: E402

MODEL_SEGMENTS: tuple[tuple[str, str, str], ...] = (
    ("classifier", "classifier (two-model)", "#8c564b"),
    ("gate", "backbone + gate", "#1f77b4"),
    ("select", "sub-batch selection", "#17becf"),
    ("detector", "detector (FPN, RPN, cascade, NMS)", "#ff7f0e"),
    ("other", "rest of the model part", "#7f7f7f"),
)
HOST_SEGMENTS: tuple[tuple[str, str, str], ...] = (
    ("decode", "decode", "#bcbd22"),
    ("preprocess", "resize + pad", "#2ca02c"),
    ("postprocess", "boxes to original", "#9467bd"),
)


def slug(text: str) -> str:
    """A file-name-safe version of ``text``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _ordered(result: BenchResult) -> list[CaseResult]:
    rows = list(dict.fromkeys(c.row for c in result.cases))
    return sorted(result.cases, key=lambda c: (rows.index(c.row), label_order(c.label)))


def plot_att_stages(result: BenchResult, path: Path) -> Path:
    """Stacked bars of the per-stage time per image (see the module docstring)."""
    cases = _ordered(result)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(cases) + 2.5), 5.0))
    x = list(range(len(cases)))
    bottom = [0.0] * len(cases)
    for key, name, colour in MODEL_SEGMENTS:
        vals = [c.stages_ms.get(key, 0.0) for c in cases]
        if key == "other":  # so the model part adds up to the median ATT exactly
            vals = [max(c.metrics.att_ms - sum(c.stages_ms.get(k, 0.0) for k, _, _ in MODEL_SEGMENTS[:-1]), 0.0)
                    for c in cases]
        if any(vals):
            ax.bar(x, vals, bottom=bottom, color=colour, label=name, width=0.7)
            bottom = [b + v for b, v in zip(bottom, vals)]
    for key, name, colour in HOST_SEGMENTS:
        vals = [c.stages_ms.get(key, 0.0) for c in cases]
        if any(vals):
            ax.bar(x, vals, bottom=bottom, color=colour, label=name, width=0.7, hatch="//", alpha=0.55)
            bottom = [b + v for b, v in zip(bottom, vals)]
    for i, c in enumerate(cases):
        ax.text(i, bottom[i], f"{c.metrics.att_ms:.1f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, [f"{c.row}\n{c.label}" for c in cases], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("ms per image (batch 1)")
    ax.set_title("ATT by stage (solid = model part = ATT, hatched = host work; label = ATT)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_normal_share(result: BenchResult, label: str, path: Path) -> Path:
    """The normal-proportion figure of one backend column (see the module docstring)."""
    cases = [c for c in _ordered(result) if c.label == label]
    fig, (ax_t, ax_f) = plt.subplots(1, 2, figsize=(12.0, 4.6))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, c in enumerate(cases):
        colour = colours[i % len(colours)]
        share = [p.share for p in c.curve]
        for attr, style, suffix in (("att_ms", "-", "ATT"), ("att_normal_ms", ":", "ATT_normal"),
                                    ("att_defective_ms", "--", "ATT_defective")):
            ys = [getattr(p, attr) for p in c.curve]
            ax_t.plot(share, [float("nan") if y is None else y for y in ys], style, color=colour,
                      label=f"{c.row} {suffix}", linewidth=1.6 if suffix == "ATT" else 1.0)
        ax_f.plot(share, [float("nan") if p.f1 is None else p.f1 for p in c.curve], "-o", color=colour,
                  markersize=3, label=c.row)
    measured = result.images.get("normal_share")
    for ax in (ax_t, ax_f):
        ax.set_xlabel("share of normal images")
        ax.set_xlim(0, 1)
        ax.grid(alpha=0.3)
        if measured is not None:
            ax.axvline(float(measured), color="k", alpha=0.3, linewidth=0.8)
    ax_t.set_ylabel("ms per image (batch 1)")
    ax_t.set_title(f"ATT vs normal share — {label}")
    ax_t.legend(fontsize=7, ncol=1 + len(cases) // 4)
    ax_f.set_ylabel("macro F1 (image level)")
    ax_f.set_title("F1 vs normal share (resampled)")
    ax_f.set_ylim(0, 1.02)
    ax_f.legend(fontsize=7)
    return _save(fig, path)


def plot_latency_histogram(case: CaseResult, path: Path, bins: int = 30) -> Path:
    """Per-image model-part latency of one case (per-image medians over repetitions)."""
    times, truth = case.per_image.get("model_ms", []), case.per_image.get("defective", [])
    normal = [t for t, d in zip(times, truth) if not d]
    defective = [t for t, d in zip(times, truth) if d]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    data = [xs for xs in (normal, defective) if xs]
    names = [n for n, xs in (("normal", normal), ("defective", defective)) if xs]
    colours = [c for c, xs in (("#2ca02c", normal), ("#d62728", defective)) if xs]
    if data:
        ax.hist(data, bins=bins, stacked=True, label=names, color=colours)
    for value, style, name in ((case.metrics.att_p50_ms, "-", "p50"), (case.metrics.att_p99_ms, "--", "p99")):
        ax.axvline(value, color="k", linestyle=style, linewidth=1.0, label=f"{name} {value:.1f} ms")
    ax.set_xlabel("model-part latency per image, batch 1 (ms)")
    ax.set_ylabel("images")
    ax.set_title(f"{case.row} — {case.label}", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_speed_recall(result: BenchResult, path: Path) -> Path | None:
    """The speed-recall figure (see the module docstring); None without gate-off curves."""
    curves = [c for c in _ordered(result) if c.gate_off and c.speed_recall]
    if not curves:
        return None
    models = list(dict.fromkeys(c.model_row for c in curves))
    fig, axes = plt.subplots(1, len(models), figsize=(6.4 * len(models), 4.8), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    labels = sorted({c.label for c in curves}, key=label_order)
    reference = f"{result.baseline} (1.0)" if result.baseline else "gate off, same backend (1.0)"
    for ax, model in zip(axes[0], models):
        for c in (c for c in curves if c.model_row == model):
            colour = colours[labels.index(c.label) % len(colours)]
            pts = sorted(c.speed_recall, key=lambda p: (p["gate_recall"], -p["threshold"]))
            ax.step([p["gate_recall"] for p in pts], [p["speedup"] or float("nan") for p in pts], where="post",
                    color=colour, label=c.label, linewidth=1.5)
            on = next((o for o in result.cases if o.gate_off_key == c.key), None)
            if on is not None and on.metrics.gate_recall is not None:
                y = on.speedup_att if result.baseline else on.speedup_gate
                if y is not None:
                    marker = "*" if on.operating_point else "o"
                    ax.plot([on.metrics.gate_recall], [y], marker, color=colour, markersize=12 if marker == "*" else 6,
                            markeredgecolor="k")
        ax.axhline(1.0, color="k", linewidth=0.9, linestyle="--", label=reference)
        target = result.settings.get("target_recall")
        if target is not None:
            ax.axvline(float(target), color="grey", linewidth=0.8, linestyle=":", label=f"target recall {target}")
        ax.set_xlabel("gate recall (share of defective images that run the detector)")
        ax.set_ylabel("ATT speed-up" + (" vs PyTorch one-model" if result.baseline else " vs gate off"))
        ax.set_title(f"{model}: speed-up vs recall (dot = measured, star = validated threshold)", fontsize=9)
        ax.set_xlim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def write_plots(result: BenchResult, out: str | os.PathLike[str]) -> list[Path]:
    """Every plot of the module docstring under ``out/plots``; returns the files written."""
    root = Path(out) / "plots"
    if not result.cases:
        return []
    files = [plot_att_stages(result, root / "att_stages.png")]
    if (speed := plot_speed_recall(result, root / "speed_recall.png")) is not None:
        files.append(speed)
    for label in sorted(result.labels, key=label_order):
        files.append(plot_normal_share(result, label, root / f"normal_share_{slug(label)}.png"))
    for c in result.cases:
        files.append(plot_latency_histogram(c, root / "latency" / f"{slug(c.row)}__{slug(c.label)}.png"))
    return files
