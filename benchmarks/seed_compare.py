"""The seed README's tables beside ours: all seven rows, as ratios to each table's one-model row.

    python benchmarks/seed_compare.py --dataset fabric --eval OUT/eval_holdout_argmax.json \\
        --eval-recall OUT/eval_holdout_const_recall0.95.json ... [--bench BENCH_DIR] \\
        [--missing two-model_large="not trained yet"] --out TABLE.md --json TABLE.json

Absolute times on the seed's GTX 2080Ti (ResNet-50, 1344x576) and on this project's 2 CPU
cores (ResNet-18 compact, 640x256) cannot be compared, so each row is compared through its
ratio to the one-model row of the same table: mAP ratio (row / one-model), F1 difference
(row - one-model) and ATT ratio (row / one-model; below 1 is faster). The seed's own ratios
are computed the same way from its published numbers (:data:`SEED`).

Inputs: ``--eval`` ``defectnet-eval`` JSONs with the rows at argmax (the campaign's
``eval_holdout_ROW_argmax.json``, one per row); ``--eval-recall`` per gated row the ``defectnet-eval`` JSON at
the threshold chosen on validation images for gate recall 0.95; ``--bench`` optionally a
``defectnet-bench`` folder (the campaign's ``bench`` stage): per row its PyTorch fp32 ATT and
ratio to the one-model's, and its fastest CPU engine's ATT and speed-up, timed side by side on
an idle machine (the eval ATT of the main table is one sequential pass per row).
A seed row that the inputs lack is still printed, with the reason from ``--missing`` (or
"no run in the inputs"), so a table never silently drops a row.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from defectnet.io import atomic_write_json, atomic_write_text

ROWS = ("one-model", "two-model_small", "two-model_large", "defectnet_const", "defectnet_linear",
        "defectnet_inverse", "defectnet_exponential")

#: The seed README's "Results" (li-phone/DefectNet), row -> (mAP, F1, ATT ms). The bottle
#: tables were measured with Cascade R-CNN R50-FPN 1x; ATT on a GTX 2080Ti (fabric, bottle)
#: and a GTX 1080Ti (bottle-1080ti, whose table has no ATT_normal/defective columns).
SEED: dict[str, dict[str, tuple[float, float, float]]] = {
    "fabric": {
        "one-model": (0.198, 0.859, 67.768), "two-model_small": (0.168, 0.841, 40.769),
        "two-model_large": (0.194, 0.892, 61.225), "defectnet_const": (0.214, 0.931, 47.979),
        "defectnet_linear": (0.152, 0.879, 43.660), "defectnet_inverse": (0.190, 0.925, 47.855),
        "defectnet_exponential": (0.191, 0.926, 47.500)},
    "bottle": {
        "one-model": (0.487, 0.872, 76.509), "two-model_small": (0.479, 0.890, 65.913),
        "two-model_large": (0.481, 0.924, 82.801), "defectnet_const": (0.491, 0.930, 63.625),
        "defectnet_linear": (0.472, 0.918, 64.025), "defectnet_inverse": (0.487, 0.934, 63.463),
        "defectnet_exponential": (0.486, 0.930, 62.860)},
    "bottle-1080ti": {
        "one-model": (0.490, 0.870, 81.186), "two-model_small": (0.483, 0.872, 65.079),
        "two-model_large": (0.485, 0.917, 94.617), "defectnet_const": (0.491, 0.938, 65.646),
        "defectnet_linear": (0.471, 0.926, 68.651), "defectnet_inverse": (0.495, 0.942, 67.850),
        "defectnet_exponential": (0.489, 0.934, 67.889)},
}


@dataclass
class Ratios:
    """A row against its table's one-model row (None where a value is missing)."""

    mAP_ratio: float | None = None
    F1_diff: float | None = None
    ATT_ratio: float | None = None

    @classmethod
    def of(cls, row: tuple[float | None, float | None, float | None],
           one: tuple[float | None, float | None, float | None]) -> Ratios:
        (m, f, t), (m1, f1, t1) = row, one
        return cls(m / m1 if m is not None and m1 else None, f - f1 if f is not None and f1 is not None else None,
                   t / t1 if t is not None and t1 else None)


@dataclass
class Row:
    """One of the seven rows: our numbers (argmax and, for gated rows, at the validated
    operating point), their ratios, the seed's ratios, or why the row has no numbers."""

    model: str
    mAP: float | None = None
    F1: float | None = None
    att_ms: float | None = None
    att_normal_ms: float | None = None
    att_defective_ms: float | None = None
    gate_recall: float | None = None
    remark: str = ""
    ours: Ratios = field(default_factory=Ratios)
    seed: Ratios = field(default_factory=Ratios)
    operating_point: dict[str, Any] | None = None  # at the validated threshold
    bench: dict[str, Any] | None = None            # ATT per backend label from --bench
    missing: str | None = None


def _results(path: Path) -> list[dict[str, Any]]:
    data = json.loads(path.read_text())
    if "results" not in data:
        sys.exit(f"{path} is not a defectnet-eval JSON (no 'results'); pass the file defectnet-eval --out wrote")
    return list(data["results"])


def _normal_skipped(r: Mapping[str, Any]) -> float | None:
    """The share of ground-truth normal images that skipped the detector, from the per-image
    records (``per_image``: column name -> one value per image)."""
    records = r.get("per_image") or {}
    if "defective" not in records or "ran_detector" not in records:
        return None
    ran = [bool(x) for d, x in zip(records["defective"], records["ran_detector"]) if not d]
    return sum(not x for x in ran) / len(ran) if ran else None


def _bench_att(bench_dir: Path) -> dict[str, dict[str, Any]]:
    """row name -> its bench numbers (gate-on cases only; gated rows at the bench's operating
    point): PyTorch fp32 ATT and its ratio to the one-model's, and the fastest other engine
    with its ATT and speed-up against PyTorch one-model (all timed side by side in one run)."""
    data = json.loads((bench_dir / "results.json").read_text())
    cases = [c for c in data["cases"] if not c.get("gate_off")]
    torch_att = {c["metrics"]["model"]: float(c["metrics"]["att_ms"]) for c in cases if c["label"] == "torch fp32"}
    one = torch_att.get("one-model")
    out: dict[str, dict[str, Any]] = {}
    for c in cases:
        m = c["metrics"]
        if (row := out.get(m["model"])) is None:
            att = torch_att.get(m["model"])
            row = out[m["model"]] = {"torch_att_ms": att, "torch_att_ratio": att / one if one and att is not None else None,
                                     "fastest": None, "fastest_att_ms": None, "fastest_speedup": None,
                                     "gate_recall": None, "normal_skipped": None}
        if c["label"] != "torch fp32" and (row["fastest_att_ms"] is None or m["att_ms"] < row["fastest_att_ms"]):
            gated = m.get("gate_recall") is not None
            row.update(fastest=c["label"], fastest_att_ms=float(m["att_ms"]),
                       fastest_speedup=one / float(m["att_ms"]) if one else None, gate_recall=m.get("gate_recall"),
                       normal_skipped=c.get("normal_skipped") if gated else None)
    return out


def build_rows(dataset: str, argmax: Sequence[Mapping[str, Any]], at_recall: Sequence[Mapping[str, Any]] = (),
               bench: Mapping[str, Mapping[str, Any]] | None = None,
               missing: Mapping[str, str] | None = None) -> list[Row]:
    """The seven rows of ``dataset``'s seed table, filled from eval results (dicts as in
    ``defectnet-eval``'s JSON ``results``)."""
    if dataset not in SEED:
        raise SystemExit(f"unknown dataset {dataset!r}; use one of {sorted(SEED)}")
    by_model = {r["model"]: r for r in argmax}
    if len(by_model) != len(argmax):
        raise SystemExit(f"the argmax evals hold a row twice ({[r['model'] for r in argmax]}); pass each row once")
    unknown = sorted(set(by_model) - set(ROWS))
    if unknown:
        raise SystemExit(f"eval rows {unknown} are not seed rows {ROWS}")
    recall_by_model = {r["model"]: r for r in at_recall}
    seed = SEED[dataset]
    one = by_model.get("one-model")
    one_vals = (one["mAP"], one["F1"], one["att_ms"]) if one else (None, None, None)
    rows = []
    for name in ROWS:
        row = Row(name, seed=Ratios.of(seed[name], seed["one-model"]))
        r = by_model.get(name)
        if r is None:
            row.missing = (missing or {}).get(name, "no run in the inputs")
            rows.append(row)
            continue
        row.mAP, row.F1, row.att_ms = r["mAP"], r["F1"], r["att_ms"]
        row.att_normal_ms, row.att_defective_ms = r.get("att_normal_ms"), r.get("att_defective_ms")
        row.gate_recall, row.remark = r.get("gate_recall"), r.get("remark", "")
        row.ours = Ratios.of((row.mAP, row.F1, row.att_ms), one_vals)
        if (p := recall_by_model.get(name)) is not None:
            row.operating_point = {
                "threshold": p.get("effective_gate_threshold"), "gate_recall": p.get("gate_recall"),
                "normal_skipped": _normal_skipped(p), "mAP": p["mAP"], "F1": p["F1"], "att_ms": p["att_ms"],
                # the one-model ATT of the argmax file: the same images, timed in the campaign's eval step
                "ratios": asdict(Ratios.of((p["mAP"], p["F1"], p["att_ms"]), one_vals))}
        if bench is not None and name in bench:
            row.bench = dict(bench[name])
        rows.append(row)
    return rows


def _f(v: float | None, fmt: str = ".3f") -> str:
    return "-" if v is None else format(v, fmt)


def markdown(dataset: str, rows: Sequence[Row]) -> str:
    """The seed layout plus the ratio columns, and the operating-point table of gated rows."""
    head = ("| Model | mAP | F1-score | ATT(MS) | ATT_normal(MS) | ATT_defective(MS) | gate recall | "
            "mAP ratio | F1 diff | ATT ratio | seed: mAP ratio | seed: F1 diff | seed: ATT ratio |\n"
            "|---|:---:|:---:|:---:|:---:|:---:|:---:|:---:|:---:|:---:|:---:|:---:|:---:|")
    lines = [f"### {dataset}: the seed's rows, ours beside the seed's (ratios to each table's one-model)\n", head]
    for r in rows:
        seed = f"{_f(r.seed.mAP_ratio, '.2f')} | {_f(r.seed.F1_diff, '+.3f')} | {_f(r.seed.ATT_ratio, '.2f')}"
        if r.missing:
            lines.append(f"| {r.model} | {r.missing} | | | | | | | | | {seed} |")
            continue
        lines.append(f"| {r.model} | {_f(r.mAP)} | {_f(r.F1)} | {_f(r.att_ms, '.1f')} | {_f(r.att_normal_ms, '.1f')} | "
                     f"{_f(r.att_defective_ms, '.1f')} | {_f(r.gate_recall)} | {_f(r.ours.mAP_ratio, '.2f')} | "
                     f"{_f(r.ours.F1_diff, '+.3f')} | {_f(r.ours.ATT_ratio, '.2f')} | {seed} |")
    gated = [r for r in rows if r.operating_point is not None]
    if gated:
        lines += ["", "At the threshold chosen on validation images for gate recall 0.95 (test images' recall):", "",
                  "| Model | threshold | gate recall | normals skipped | mAP | F1 | ATT(MS) | mAP ratio | F1 diff | "
                  "ATT ratio |", "|---|:---:|:---:|:---:|:---:|:---:|:---:|:---:|:---:|:---:|"]
        for r in gated:
            p = r.operating_point
            assert p is not None
            q = p["ratios"]
            skipped = "-" if p["normal_skipped"] is None else f"{100 * p['normal_skipped']:.1f} %"
            lines.append(f"| {r.model} | {_f(p['threshold'], '.4g')} | {_f(p['gate_recall'])} | {skipped} | "
                         f"{_f(p['mAP'])} | {_f(p['F1'])} | {_f(p['att_ms'], '.1f')} | {_f(q['mAP_ratio'], '.2f')} | "
                         f"{_f(q['F1_diff'], '+.3f')} | {_f(q['ATT_ratio'], '.2f')} |")
    benched = [r for r in rows if r.bench]
    if benched:
        lines += ["", "Speed in one `defectnet-bench` run (every row side by side on the same images; gated rows at "
                  "the bench's validated operating point, gate on):", "",
                  "| Model | PyTorch fp32 ATT(MS) | ATT ratio | fastest CPU engine | its ATT(MS) | speed-up vs PyTorch "
                  "one-model | its gate recall | its normals skipped |", "|---|:---:|:---:|---|:---:|:---:|:---:|:---:|"]
        for r in benched:
            b = r.bench or {}
            skipped = "-" if b.get("normal_skipped") is None else f"{100 * b['normal_skipped']:.1f} %"
            speedup = "-" if b.get("fastest_speedup") is None else f"{b['fastest_speedup']:.2f}x"
            lines.append(f"| {r.model} | {_f(b.get('torch_att_ms'), '.1f')} | {_f(b.get('torch_att_ratio'), '.2f')} | "
                         f"{b.get('fastest') or '-'} | {_f(b.get('fastest_att_ms'), '.1f')} | {speedup} | "
                         f"{_f(b.get('gate_recall'))} | {skipped} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=sorted(SEED), required=True, help="which seed table")
    parser.add_argument("--eval", type=Path, nargs="+", required=True,
                        help="defectnet-eval JSONs of the rows at argmax (one file or one per row)")
    parser.add_argument("--eval-recall", type=Path, nargs="*", default=[],
                        help="defectnet-eval JSONs of gated rows at their validated threshold")
    parser.add_argument("--bench", type=Path, default=None, help="a defectnet-bench output folder")
    parser.add_argument("--missing", action="append", default=[], metavar="ROW=REASON",
                        help="why a seed row has no run (printed in its cells)")
    parser.add_argument("--out", type=Path, default=None, help="Markdown table [default: stdout]")
    parser.add_argument("--json", type=Path, default=None, help="the rows and ratios as JSON (with the command)")
    args = parser.parse_args(argv)
    missing = {}
    for item in args.missing:
        row, sep, reason = item.partition("=")
        if not sep or row not in ROWS:
            parser.error(f"--missing takes ROW=REASON with ROW one of {ROWS}, got {item!r}")
        missing[row] = reason
    rows = build_rows(args.dataset, [r for p in args.eval for r in _results(p)],
                      [r for p in args.eval_recall for r in _results(p)],
                      _bench_att(args.bench) if args.bench else None, missing)
    text = markdown(args.dataset, rows)
    if args.out is None:
        sys.stdout.write(text)
    else:
        atomic_write_text(args.out, text)
    if args.json is not None:
        command = "python benchmarks/seed_compare.py " + " ".join(sys.argv[1:] if argv is None else argv)
        atomic_write_json(args.json, {"command": command, "dataset": args.dataset, "rows": [asdict(r) for r in rows]},
                          indent=1)


if __name__ == "__main__":
    main()
