"""DefectNet bench: the seed's ATT tables across backends, side by side, with plots.

Public API::

    run_benchmark(BenchSettings(data=..., checkpoints=[...], engines=[...])) -> BenchResult
    write_outputs(result, out_dir)            tables.md, results.json, results.csv, plots/*.png
    discover_rows(...), plan_cases(...)       what gets measured (rows x backends x precisions)
    resample_indices(truth, share, n, seed)   exact-share, deterministic image resampling
    normal_share_curve(times, truth, pred)    ATT / F1 vs normal share from measured times

Command line: ``defectnet-bench`` (:mod:`defectnet.bench.cli`). Protocol and definitions:
:mod:`defectnet.bench.runner` (interleaved measurement) and :mod:`defectnet.bench.results`.
"""

from defectnet.bench.benchmark import BenchSettings, default_out_dir, run_benchmark, write_outputs
from defectnet.bench.resample import CURVE_SHARES, CurvePoint, Resample, normal_share_curve, resample_indices
from defectnet.bench.results import BenchResult, CaseResult
from defectnet.bench.scenario import Case, ModelRow, Skip, discover_rows, plan_cases

__all__ = [
    "CURVE_SHARES", "BenchResult", "BenchSettings", "Case", "CaseResult", "CurvePoint", "ModelRow", "Resample",
    "Skip", "default_out_dir", "discover_rows", "normal_share_curve", "plan_cases", "resample_indices",
    "run_benchmark", "write_outputs",
]
