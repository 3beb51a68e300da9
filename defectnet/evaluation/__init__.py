"""DefectNet evaluation: COCO mAP, image-level macro F1, gate recall, ATT timing, tables.

Public API: :func:`evaluate`, :func:`evaluate_run`, :class:`EvalResult`, :func:`coco_map`,
:func:`image_f1`, :func:`summarize_times`, :func:`seed_table`.
"""

from defectnet.evaluation.coco_map import MapResult, coco_map, detections_to_coco
from defectnet.evaluation.evaluate import EvalResult, evaluate, evaluate_run
from defectnet.evaluation.f1 import F1Result, gate_metrics, image_f1, predicted_defective
from defectnet.evaluation.report import deployment_table, seed_table
from defectnet.evaluation.timing import LatencyTimer, TimingSummary, att_ideal, summarize_times

__all__ = [
    "EvalResult", "F1Result", "LatencyTimer", "MapResult", "TimingSummary", "att_ideal", "coco_map",
    "deployment_table", "detections_to_coco", "evaluate", "evaluate_run", "gate_metrics", "image_f1",
    "predicted_defective", "seed_table", "summarize_times",
]
