"""Plots are written: PNG files exist and are non-empty."""

from __future__ import annotations

from pathlib import Path

from bench_helpers import hand_result

from defectnet.bench.plots import slug, write_plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_write_plots(tmp_path: Path) -> None:
    files = write_plots(hand_result(), tmp_path)
    names = sorted(str(p.relative_to(tmp_path / "plots")) for p in files)
    assert names == ["att_stages.png", "latency/defectnet_const__onnxruntime_int8.png",
                     "latency/defectnet_const__torch_fp32.png", "latency/one-model__torch_fp32.png",
                     "normal_share_onnxruntime_int8.png", "normal_share_torch_fp32.png"]
    for p in files:
        data = p.read_bytes()
        assert len(data) > 1000 and data.startswith(PNG_MAGIC)
    assert not list((tmp_path / "plots").glob(".*"))  # no temporary files left


def test_slug() -> None:
    assert slug("onnxruntime int8 [engine-int8]") == "onnxruntime_int8_engine-int8"
    assert slug("defectnet_const (run a)") == "defectnet_const_run_a"


def test_speed_recall_plot(tmp_path: Path) -> None:
    """One curve per backend from the gate-off cases; none without curves."""
    from bench_helpers import hand_result_gated

    from defectnet.bench.plots import plot_speed_recall

    r = hand_result_gated()
    assert plot_speed_recall(r, tmp_path / "none.png") is None
    for c in r.cases:
        if c.gate_off:
            c.speed_recall = [{"threshold": t, "gate_recall": rec, "normal_skipped": 1 - rec, "att_ms": 10 * rec,
                               "speedup": 1 / max(rec, 0.1), "f1": 0.9} for t, rec in ((0.0, 1.0), (0.4, 0.8),
                                                                                       (0.9, 0.3))]
    path = plot_speed_recall(r, tmp_path / "speed_recall.png")
    assert path is not None and path.read_bytes().startswith(PNG_MAGIC) and path.stat().st_size > 1000
    assert "speed_recall.png" in [p.name for p in write_plots(r, tmp_path / "all")]
