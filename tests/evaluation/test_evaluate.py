"""evaluate() end to end on a fake model, a fake data set and a fake clock; the report table."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch
from pycocotools.coco import COCO
from torch import Tensor

from defectnet.data.coco import Sample
from defectnet.errors import DataError
from defectnet.evaluation.evaluate import EvalResult, evaluate, warmup_indices
from defectnet.evaluation.report import SEED_HEADER, deployment_table, seed_table
from defectnet.structures import Detections

# image index -> (ground truth defective, gate runs the detector, detection score, model seconds)
PLAN = [
    (True, True, 0.9, 0.050),
    (True, True, 0.04, 0.060),   # detector ran but found nothing above 0.05
    (True, False, None, 0.010),  # escaped the gate: fast, but ground truth says defective
    (False, False, None, 0.008),
    (False, True, 0.3, 0.055),   # normal image sent to the detector: false positive
    (False, False, None, 0.012),
]
BOX = [8.0, 8.0, 24.0, 24.0]  # original coordinates; model input is 2x larger


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class FakeData:
    label_to_category_id = {1: 4}
    class_names = ["hole"]

    def __len__(self) -> int:
        return len(PLAN)

    def is_defective(self, i: int) -> bool:
        return PLAN[i][0]

    def __getitem__(self, i: int) -> Sample:
        image = torch.full((3, 64, 64), i, dtype=torch.uint8)  # the fake model reads i from the pixels
        boxes = torch.tensor([BOX]) * 2 if PLAN[i][0] else torch.zeros((0, 4))
        labels = torch.ones(len(boxes), dtype=torch.int64)
        return Sample(image, {"boxes": boxes, "labels": labels, "image_id": i + 1}, (2.0, 2.0), (32, 32), i + 1,
                      f"{i}.jpg")

    def coco_gt(self) -> COCO:
        coco = COCO()
        coco.dataset = {
            "images": [{"id": i + 1, "width": 32, "height": 32, "file_name": f"{i}.jpg"} for i in range(len(PLAN))],
            "annotations": [{"id": i + 1, "image_id": i + 1, "category_id": 4, "iscrowd": 0, "area": 256,
                             "bbox": [BOX[0], BOX[1], BOX[2] - BOX[0], BOX[3] - BOX[1]]}
                            for i, p in enumerate(PLAN) if p[0]],
            "categories": [{"id": 4, "name": "hole"}],
        }
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        return coco


class FakeModel:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.calls: list[int] = []

    def eval(self) -> FakeModel:
        return self

    def inference(self, images: Tensor, image_sizes: list[tuple[int, int]],
                  gate_threshold: float | None = None) -> list[Detections]:
        assert images.dtype == torch.float32 and images.shape[0] == 1
        i = int(images[0, 0, 0, 0])
        self.calls.append(i)
        _, ran, score, seconds = PLAN[i]
        self.clock.t += seconds
        if not ran:
            return [Detections.empty(0.1, ran_detector=False)]
        return [Detections(torch.tensor([BOX]) * 2, torch.tensor([score]), torch.tensor([1]), 0.9, True)]


def test_evaluate_end_to_end() -> None:
    clock = Clock()
    model = FakeModel(clock)
    r = evaluate(model, FakeData(), name="defectnet_const", warmup=2, clock=clock, progress=False,
                 att_one_ms=60.0)
    assert model.calls == [0, 3, 0, 1, 2, 3, 4, 5]  # warm-up: a defective and a normal image, then all once
    # ATT split by ground truth (image 2 escaped the gate but counts as defective)
    assert r.att_ms == pytest.approx(1000 * sum(p[3] for p in PLAN) / 6)
    assert r.att_defective_ms == pytest.approx(1000 * (0.050 + 0.060 + 0.010) / 3)
    assert r.att_normal_ms == pytest.approx(1000 * (0.008 + 0.055 + 0.012) / 3)
    beta = r.att_normal_ms / r.att_defective_ms
    assert r.att_ideal_ms == pytest.approx(60.0 * (1 - 0.5 * (1 - beta)))
    # F1: predicted defective = images 0 and 4 -> defective tp=1 fp=1 fn=2 ; normal tp=2 fp=2 fn=1
    assert r.confusion == {"tp": 1, "fp": 1, "fn": 2, "tn": 2}
    assert r.F1 == pytest.approx((2 / 5 + 4 / 7) / 2)
    # gate: passed images 0, 1, 4 -> recall 2/3, precision 2/3
    assert r.gate_recall == pytest.approx(2 / 3) and r.gate_precision == pytest.approx(2 / 3)
    assert r.num_detector_runs == 3 and (r.num_normal, r.num_defective) == (3, 3)
    # mAP: two true positives (0.9, 0.04) of 3 GT boxes plus a false positive at 0.3 on a normal image
    assert 0 < r.mAP < 1 and r.per_class_AP["hole"] == pytest.approx(r.mAP)
    d = json.loads(json.dumps(r.to_dict()))  # what an eval JSON file holds
    assert EvalResult.from_dict(d) == r  # every field survives the file, with its value


def test_warmup_indices_alternate_defective_and_normal() -> None:
    assert warmup_indices(FakeData(), 3) == [0, 3, 1]
    assert warmup_indices(FakeData(), 0) == []
    assert sorted(warmup_indices(FakeData(), 10)) == list(range(6))


def test_evaluate_without_gate_and_without_att_one() -> None:
    clock = Clock()
    r = evaluate(FakeModel(clock), FakeData(), warmup=0, clock=clock, progress=False, has_gate=False)
    assert r.gate_recall is None and r.gate_precision is None
    assert r.att_one_source == "own_att_defective" and r.notes


def _result(name: str, att_n: float, att_d: float) -> EvalResult:
    clock = Clock()
    r = evaluate(FakeModel(clock), FakeData(), name=name, warmup=0, clock=clock, progress=False)
    r.att_normal_ms, r.att_defective_ms, r.remark = att_n, att_d, "cascade_rcnn_r50_fpn_12e"
    return r


def test_seed_table_layout_and_labels() -> None:
    table = seed_table([_result("one-model", 68.0, 67.0), _result("defectnet_const", 26.513, 65.573)])
    lines = table.splitlines()
    assert lines[0] == SEED_HEADER.splitlines()[0]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["Model", "mAP", "F1-score", "ATT(MS)", "ATT_normal(MS)", "ATT_defective(MS)", "Remark"]
    row = [c.strip() for c in lines[3].strip("|").split("|")]
    assert row[0] == "defectnet_const"
    assert row[header.index("ATT_normal(MS)")] == "26.513"  # the fast one is the normal-image time
    assert row[header.index("ATT_defective(MS)")] == "65.573"
    assert row[-1] == "cascade_rcnn_r50_fpn_12e"
    assert "gate recall" in deployment_table([_result("x", 1.0, 2.0)])


def test_per_image_records_recompute_every_number() -> None:
    """The records in the result give back its mAP, AP50, F1 and gate numbers (no model call),
    and the gate's ROC AUC / average precision come from the same P(defective) values."""
    from defectnet.evaluation.records import recompute
    from defectnet.evaluation.timing import thread_counts

    clock = Clock()
    r = evaluate(FakeModel(clock), FakeData(), name="defectnet_const", warmup=0, clock=clock, progress=False)
    rec = r.per_image
    assert rec["defective"] == [p[0] for p in PLAN] and rec["ran_detector"] == [p[1] for p in PLAN]
    assert rec["image_id"] == [1, 2, 3, 4, 5, 6] and rec["p_defective"] == [0.9, 0.9, 0.1, 0.1, 0.9, 0.1]
    assert rec["model_ms"] == pytest.approx([1000 * p[3] for p in PLAN])
    assert [len(d) for d in rec["detections"]] == [1, 1, 0, 0, 1, 0]
    assert rec["detections"][0] == [[8.0, 8.0, 16.0, 16.0, 0.9, 4]]  # original pixels, COCO xywh, category id
    # P ranks defective over normal in 6 of 9 pairs (ties count 1/2)
    assert r.gate_roc_auc == pytest.approx(6 / 9) and r.gate_average_precision is not None
    assert r.effective_gate_threshold is None  # the fake model has no threshold of its own
    assert r.threads == thread_counts()
    again = recompute(rec, rec["detections"], FakeData().coco_gt(), [4])
    assert (again.mAP, again.AP50, again.F1) == pytest.approx((r.mAP, r.AP50, r.F1))
    assert (again.gate_recall, again.gate_precision, again.detector_runs) == (
        r.gate_recall, r.gate_precision, r.num_detector_runs)
    # re-gated above every P: nothing runs, nothing is found, every normal image is skipped
    closed = recompute(rec, rec["detections"], FakeData().coco_gt(), [4], threshold=0.95)
    assert (closed.mAP, closed.gate_recall, closed.detector_runs, closed.normal_skipped) == (0.0, 0.0, 0, 1.0)
    with pytest.raises(DataError, match="did not run the detector"):  # P 0.1 images were never detected
        recompute(rec, rec["detections"], FakeData().coco_gt(), [4], threshold=0.05)
