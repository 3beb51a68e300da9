"""Tables, CSV and JSON of a hand-made result (golden strings), machine/library info."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from bench_helpers import hand_result

from defectnet.bench import writers
from defectnet.bench.results import BenchResult

SIDE_BY_SIDE = """\
| Model | torch fp32 | onnxruntime int8 |
|---|:---:|:---:|
| one-model | 60.000 (1.00x) | - |
| defectnet_const | 40.000 (1.50x) | 20.000 (3.00x) |"""

DEPLOYMENT = """\
| Model | Backend | mAP | F1 | gate recall | ATT(MS) | speed-up | ATT_ideal(MS) | p50(MS) | p99(MS) | E2E(MS) \
| E2E p99(MS) | E2E speed-up | img/s b1 | img/s b4 |
|---|---|:---:|:---:|:---:|:---:|:---:|:---:|:---:|:---:|:---:|:---:|:---:|:---:|:---:|
| one-model | torch fp32 | 0.200 | 0.900 | - | 60.000 | 1.00x | 59.000 | 59.500 | 65.000 | 63.250 | 69.000 | 0.90x \
| 15.81 | 23.72 |
| defectnet_const | torch fp32 | 0.200 | 0.900 | 0.950 | 40.000 | 1.50x | 39.000 | 39.500 | 45.000 | 43.250 \
| 49.000 | 1.35x | 23.12 | 34.68 |
| defectnet_const | onnxruntime int8 | 0.200 | 0.900 | 0.950 | 20.000 | 3.00x | 19.000 | 19.500 | 25.000 \
| 23.250 | 29.000 | 2.70x | 43.01 | 64.52 |"""

STAGES = """\
| Model | Backend | decode | preprocess | classifier | backbone+gate | select | detector | other model | box mapping |
|---|---|:---:|:---:|:---:|:---:|:---:|:---:|:---:|:---:|
| one-model | torch fp32 | 1.000 | 2.000 | 0.000 | 30.000 | 0.100 | 29.400 | 0.500 | 0.250 |
| defectnet_const | torch fp32 | 1.000 | 2.000 | 0.000 | 20.000 | 0.100 | 19.400 | 0.500 | 0.250 |
| defectnet_const | onnxruntime int8 | 1.000 | 2.000 | 0.000 | 10.000 | 0.100 | 9.400 | 0.500 | 0.250 |"""

SEED_INT8 = """\
### onnxruntime int8 (cpu)

| Model | mAP | F1-score | ATT(MS) | ATT_normal(MS) | ATT_defective(MS) | Remark |
|------------|:--------:|:--------:|:------------:|:-----------------|:-----------------|:-----------------|
|defectnet_const| 0.200 | 0.900 | 20.000 | 10.000 | 30.000 |defectnet_const+cascade|"""

CSV_HEAD = (
    "row,backend,precision,label,kind,mAP,AP50,F1,gate_recall,gate_precision,att_ms,att_normal_ms,att_defective_ms,"
    "att_ideal_ms,att_p50_ms,att_p99_ms,speedup_att,e2e_ms,e2e_p50_ms,e2e_p99_ms,speedup_e2e,throughput_b1,batch,"
    "throughput_batch,att_batch_ms,stage_decode_ms,stage_preprocess_ms,stage_classifier_ms,stage_gate_ms,"
    "stage_select_ms,stage_detector_ms,stage_other_ms,stage_postprocess_ms,num_images,num_normal,num_defective,"
    "detector_runs,device,engine_dir,run_dir,remark,gate_off,model_row,gate_threshold,speedup_gate,normal_skipped,"
    "gate_roc_auc,gate_average_precision,created,cpu,gpu,torch,onnxruntime,tensorrt,repeat,warmup,threads,"
    "normal_share\n"
    "one-model,torch,fp32,torch fp32,one-model,0.2,0.4,0.9,,,60,60,60,59,59.5,65,1,63.25,63,69,0.9,15.8103,4,"
    "23.7154,48,1,2,0,30,0.1,29.4,0.5,0.25,10,5,5,10,cpu,,runs/one-model,one-model+cascade,false,one-model,,,,,,"
    "2026-01-01T00:00:00+00:00,Test CPU,,2.14.1,1.32.0,,3,3,1,0.5\n")


def test_tables_golden() -> None:
    r = hand_result()
    assert writers.side_by_side_table(r) == SIDE_BY_SIDE
    assert writers.deployment_table(r) == DEPLOYMENT
    assert writers.stage_table(r) == STAGES
    seed = writers.seed_tables(r)
    assert seed.startswith("### torch fp32 (cpu)\n\n| Model | mAP | F1-score | ATT(MS) | ATT_normal(MS) |")
    assert "|defectnet_const| 0.200 | 0.900 | 40.000 | 20.000 | 60.000 |defectnet_const+cascade|" in seed
    assert seed.endswith(SEED_INT8)


def test_markdown_report_sections() -> None:
    text = writers.markdown_report(hand_result())
    for part in ("# DefectNet benchmark — 2026-01-01T00:00:00+00:00", "- machine: Test CPU (2 usable cores), GPU: none",
                 "- baseline: one-model | torch fp32", "## Seed layout per backend", "## ATT side by side",
                 "## Deployment", "## Stages", "## Skipped\n\n- (all rows) / tensorrt: no GPU",
                 "- command: `defectnet-bench --data data`", SIDE_BY_SIDE):
        assert part in text
    assert text.endswith("\n")


def test_csv_golden() -> None:
    r = hand_result()
    text = writers.results_csv(r)
    assert text.startswith(CSV_HEAD)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [row["label"] for row in rows] == ["torch fp32", "torch fp32", "onnxruntime int8"]
    assert rows[2]["engine_dir"] == "runs/defectnet_const/engine" and rows[2]["speedup_att"] == "3"


def test_json_round_trip_and_files(tmp_path: Path) -> None:
    r = hand_result()
    files = writers.write_results(r, tmp_path / "out")
    data = json.loads(files["json"].read_text())
    assert data["schema"] == "defectnet-bench" and data["baseline"] == "one-model | torch fp32"
    assert data["cases"][1]["metrics"]["att_normal_ms"] == 20.0
    assert data["cases"][1]["curve"][0] == {"share": 0.0, "att_ms": 60.0, "att_normal_ms": None,
                                            "att_defective_ms": 60.0, "f1": 0.9}
    assert BenchResult.from_dict(data).to_dict() == data
    assert files["tables"].read_text() == writers.markdown_report(r)
    assert files["csv"].read_text().startswith(CSV_HEAD)


def test_machine_and_library_info(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Fake CPU 9000\nphysical id\t: 0\ncore id\t: 0\n\n"
                    "processor\t: 1\nmodel name\t: Fake CPU 9000\nphysical id\t: 0\ncore id\t: 1\n\n"
                    "processor\t: 2\nmodel name\t: Fake CPU 9000\nphysical id\t: 0\ncore id\t: 0\n")
    assert writers._cpuinfo(str(info)) == ("Fake CPU 9000", 2)
    assert writers._cpuinfo(str(tmp_path / "missing")) == (None, None)
    m = writers.machine_info()
    assert m["logical_cores"] >= 1 and isinstance(m["gpus"], list) and m["cpu"]
    lib = writers.library_versions()
    assert lib["torch"] and lib["onnxruntime"] and lib["onnx"] and "tensorrt" in lib
    assert lib["tensorrt"] is None or isinstance(lib["tensorrt"], str)


GATE = """\
| Model | Backend | gate | ATT(MS) | ATT_normal(MS) | ATT_defective(MS) | mAP | F1 | gate recall | normal skipped \
| gate buys | speed-up vs PyTorch one-model |
|---|---|---|:---:|:---:|:---:|:---:|:---:|:---:|:---:|:---:|:---:|
| defectnet_const | torch fp32 | off | 64.000 | 32.000 | 96.000 | 0.200 | 0.900 | 0.950 | 0.0 % | 1.00x | 0.94x |
| defectnet_const | torch fp32 | on (P >= 0.25) | 40.000 | 20.000 | 60.000 | 0.200 | 0.900 | 0.950 | 60.0 % | 1.60x \
| 1.50x |
| defectnet_const | onnxruntime fp32 | off | 48.000 | 24.000 | 72.000 | 0.200 | 0.900 | 0.950 | 0.0 % | 1.00x | 1.25x |
| defectnet_const | onnxruntime fp32 | on (P >= 0.25) | 30.000 | 15.000 | 45.000 | 0.200 | 0.900 | 0.950 | 60.0 % \
| 1.60x | 2.00x |
| defectnet_const | onnxruntime int8 | off | 24.000 | 12.000 | 36.000 | 0.200 | 0.900 | 0.950 | 0.0 % | 1.00x | 2.50x |
| defectnet_const | onnxruntime int8 | on (P >= 0.25) | 16.000 | 8.000 | 24.000 | 0.200 | 0.900 | 0.950 | 60.0 % \
| 1.50x | 3.75x |"""

EFFECTS = """\
| Model | Backend | backend (gate off, vs PyTorch fp32) | quantization (gate off, vs the backend's fp32) \
| gate (off -> on) | together (vs PyTorch fp32, gate off) |
|---|---|:---:|:---:|:---:|:---:|
| defectnet_const | torch fp32 | 1.00x | 1.00x | 1.60x | 1.60x |
| defectnet_const | onnxruntime fp32 | 1.33x | 1.00x | 1.60x | 2.13x |
| defectnet_const | onnxruntime int8 | 1.33x | 2.00x | 1.50x | 4.00x |

- defectnet_const, torch fp32: the gate buys 1.60x
- defectnet_const, onnxruntime fp32: the gate buys 1.60x, with the backend's 1.33x over PyTorch: 2.13x against \
PyTorch fp32 with the gate off
- defectnet_const, onnxruntime int8: quantization buys 2.00x, the gate buys 1.50x, together 3.00x, with the \
backend's 1.33x over PyTorch: 4.00x against PyTorch fp32 with the gate off"""


def test_gate_and_effects_tables_golden() -> None:
    """Gate on next to gate off per backend, and backend x quantization x gate = together."""
    from bench_helpers import hand_result_gated

    r = hand_result_gated()
    assert writers.gate_table(r) == GATE
    assert writers.effects_table(r) == EFFECTS
    for e in writers.effects(r):
        assert e["backend"] * e["quantization"] * e["gate"] == pytest.approx(e["together"])
    text = writers.markdown_report(r)
    assert "## Gate on vs gate off" in text and "## What each step buys" in text
    assert "## At the validated operating point" not in text  # no --target-recall
    assert writers.gate_table(hand_result()) == "" and writers.effects_table(hand_result()) == ""
