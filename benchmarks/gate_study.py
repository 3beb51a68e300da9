"""How far a gate is from an operating point: the share of normal images it skips at a gate
recall a line requires, from ``defectnet-eval`` JSONs (their per-image P(defective)).

    python benchmarks/gate_study.py --target-recall 0.95 --out study.md --json study.json \\
        reference=eval_reference.json round1=eval_round1.json ...

Per gated result (the first one of each file, or ``NAME=FILE#MODEL`` for another):

* at the eval's own threshold (chosen on a validation split, as a line would): test gate recall
  and the share of normal test images skipped;
* ROC AUC of P(defective) (threshold-free);
* the **ceiling** at the target recall: the threshold ``threshold_for_recall`` picks on the
  *test* images themselves, so the most normal images any threshold could skip there while
  keeping the target recall. No validation-chosen threshold can beat it on that set, which is
  what makes it the right number for "can this gate reach X % skipped at recall R at all?";
* mAP and image-level F1 of the same eval, to show what the detector did meanwhile.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from defectnet.engine_build.gate_calibration import threshold_for_recall
from defectnet.evaluation.ranking import roc_auc
from defectnet.io import atomic_write_json, atomic_write_text


@dataclass(frozen=True)
class GateRow:
    """One gated eval result, seen as an operating point (shares in [0, 1])."""

    name: str
    source: str
    threshold: float
    recall: float
    normal_skipped: float
    roc_auc: float
    ceiling_threshold: float
    ceiling_recall: float
    ceiling_normal_skipped: float
    defective: int
    normal: int
    mAP: float
    F1: float


def _result(path: Path, model: str | None) -> dict[str, Any]:
    results = json.loads(path.read_text())["results"]
    gated = [r for r in results if r.get("has_gate") and (model is None or r["model"] == model)]
    if not gated:
        raise SystemExit(f"{path} has no gated result{f' named {model!r}' if model else ''} with per-image records; "
                         "pass a defectnet-eval JSON of a DefectNet run (NAME=FILE#MODEL picks one)")
    return gated[0]


def study(name: str, source: Path, target_recall: float, model: str | None = None) -> GateRow:
    """The operating point of ``source``'s gated result at its threshold and at the ceiling."""
    r = _result(source, model)
    pi = r["per_image"]
    p = np.asarray(pi["p_defective"], dtype=np.float64)
    d = np.asarray(pi["defective"], dtype=bool)
    ran = np.asarray(pi["ran_detector"], dtype=bool)
    ceiling = threshold_for_recall(p, d, target_recall)
    auc = roc_auc(p.tolist(), d.tolist())
    if auc is None or not (~d).any():
        raise SystemExit(f"{source}: needs normal and defective images to place a gate")
    return GateRow(name=name, source=str(source), threshold=float(r["effective_gate_threshold"]),
                   recall=float(ran[d].mean()), normal_skipped=float((~ran[~d]).mean()), roc_auc=auc,
                   ceiling_threshold=ceiling.threshold, ceiling_recall=ceiling.recall,
                   ceiling_normal_skipped=1.0 - float(ceiling.normal_pass_rate or 0.0),
                   defective=int(d.sum()), normal=int((~d).sum()), mAP=float(r["mAP"]), F1=float(r["F1"]))


def markdown(rows: Sequence[GateRow], target_recall: float) -> str:
    lines = [f"| model | threshold | gate recall | normal images skipped | ROC AUC | ceiling at recall >= "
             f"{target_recall:g}: normal images skipped | mAP | F1 | images (defective / normal) |",
             "|---|:-:|:-:|:-:|:-:|:-:|:-:|:-:|:-:|"]
    for r in rows:
        lines.append(f"| {r.name} | {r.threshold:.4f} | {r.recall:.3f} | {r.normal_skipped:.1%} | {r.roc_auc:.3f} | "
                     f"{r.ceiling_normal_skipped:.1%} (recall {r.ceiling_recall:.3f}) | {r.mAP:.3f} | {r.F1:.3f} | "
                     f"{r.defective} / {r.normal} |")
    return "\n".join(lines) + "\n"


def _parse(spec: str) -> tuple[str, Path, str | None]:
    name, sep, rest = spec.partition("=")
    if not sep or not name or not rest:
        raise SystemExit(f"expected NAME=FILE[#MODEL], got {spec!r}")
    file, _, model = rest.partition("#")
    return name, Path(file), model or None


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("evals", nargs="+", metavar="NAME=FILE[#MODEL]")
    parser.add_argument("--target-recall", type=float, default=0.95)
    parser.add_argument("--out", type=Path, help="markdown table")
    parser.add_argument("--json", type=Path, help="the rows and the command")
    args = parser.parse_args(argv)
    rows = [study(name, path, args.target_recall, model) for name, path, model in map(_parse, args.evals)]
    table = markdown(rows, args.target_recall)
    print(table, end="")
    if args.out:
        atomic_write_text(args.out, table)
    if args.json:
        command = shlex.join(["python", "benchmarks/gate_study.py", *(argv if argv is not None else sys.argv[1:])])
        atomic_write_json(args.json, {"command": command, "target_recall": args.target_recall,
                                      "rows": [asdict(r) for r in rows]})


if __name__ == "__main__":
    main()
