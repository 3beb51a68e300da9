"""Markdown tables in the seed README's layout.

The seed's columns are ``| Model | mAP | F1-score | ATT(MS) | ATT_normal(MS) |
ATT_defective(MS) | Remark |``. Its values under ATT_normal and ATT_defective are
**swapped** relative to the headers: the one-model row prints 68.281 "normal" vs 67.142
"defective", and every DefectNet row prints ~65 ms "normal" vs ~26 ms "defective" — but the
gate makes *normal* images fast (they exit after the backbone), so ~26 ms must be the
normal-image time. The seed's ``defect_eval`` split the times correctly by ground truth; the
table transposed them. These tables keep the seed's column order and print each value under
its correct label: ATT_normal(MS) is the mean over ground-truth normal images,
ATT_defective(MS) over ground-truth defective images.

:func:`deployment_table` adds what a deployment needs and the seed did not report.
"""

from __future__ import annotations

from collections.abc import Sequence

from defectnet.evaluation.evaluate import EvalResult

SEED_HEADER = ("| Model | mAP | F1-score | ATT(MS) | ATT_normal(MS) | ATT_defective(MS) | Remark |\n"
               "|------------|:--------:|:--------:|:------------:|:-----------------|:-----------------|"
               ":-----------------|")
DEPLOY_HEADER = ("| Model | AP50 | gate recall | gate precision | gate ROC AUC | gate AP | detector runs | "
                 "ATT_ideal(MS) | p50(MS) | p99(MS) |\n|---|:---:|:---:|:---:|:---:|:---:|:---:|:---:|:---:|:---:|")


def _num(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def seed_row(r: EvalResult) -> str:
    """One row in the seed's layout (correctly labelled ATT columns)."""
    return (f"|{r.model}| {_num(r.mAP)} | {_num(r.F1)} | {_num(r.att_ms)} | {_num(r.att_normal_ms)} | "
            f"{_num(r.att_defective_ms)} |{r.remark}|")


def seed_table(results: Sequence[EvalResult]) -> str:
    """The seed README's table for ``results`` (header + one row each)."""
    return "\n".join([SEED_HEADER, *(seed_row(r) for r in results)])


def deployment_table(results: Sequence[EvalResult]) -> str:
    """AP50, the gate's recall (1 - escape rate), precision, ROC AUC and average precision
    (from the per-image P), how many images ran the detector, ATT_ideal and latency
    percentiles."""
    rows = [f"|{r.model}| {_num(r.AP50)} | {_num(r.gate_recall)} | {_num(r.gate_precision)} | "
            f"{_num(r.gate_roc_auc)} | {_num(r.gate_average_precision)} | {r.num_detector_runs}/{r.num_images} | {_num(r.att_ideal_ms)} | {_num(r.att_p50_ms)} | "
            f"{_num(r.att_p99_ms)} |" for r in results]
    return "\n".join([DEPLOY_HEADER, *rows])


def per_class_table(results: Sequence[EvalResult]) -> str:
    """Per-class AP@[.5:.95], one column per model."""
    if not results:
        return ""
    names = list(results[0].per_class_AP)
    header = "| class | " + " | ".join(r.model for r in results) + " |"
    sep = "|---|" + "|".join(":---:" for _ in results) + "|"
    rows = [f"| {n} | " + " | ".join(_num(r.per_class_AP.get(n)) for r in results) + " |" for n in names]
    return "\n".join([header, sep, *rows])
