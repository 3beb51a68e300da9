from collections.abc import Callable
from pathlib import Path

from defectnet.data.coco import CocoDataset
from defectnet.data.stats import format_statistics, split_statistics


def test_statistics_count_normal_and_boxes(make_coco: Callable[..., Path]) -> None:
    ds = CocoDataset(make_coco(background_box=True, images=5))
    s = split_statistics(ds)
    assert (s.images, s.normal, s.defective, s.boxes) == (5, 3, 2, 2)
    assert s.boxes_per_class == {"spot": 2, "thread": 0}
    assert s.box_width_px == (30.0, 30.0, 30.0) and s.aspect_ratio_w_over_h == (1.5, 1.5)
    assert s.image_sizes == {"96x64": 5}
    text = format_statistics("train", s)
    assert "3 normal / 2 defective" in text and "normal share 0.60" in text


def test_stats_cli_on_synthetic_data(tmp_path) -> None:
    from click.testing import CliRunner

    from defectnet.data.cli import stats_main, synth_main

    runner = CliRunner()
    out = tmp_path / "fabric"
    result = runner.invoke(synth_main, ["fabric", "--out", str(out), "--images", "20", "--normal-share", "0.5",
                                        "--seed", "3", "--size", "306x125"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(stats_main, [str(out)])
    assert result.exit_code == 0, result.output
    assert "train: 16 images" in result.output and "test: 4 images" in result.output
    missing = runner.invoke(stats_main, [str(tmp_path / "nothing")])
    assert missing.exit_code != 0 and "does not exist" in missing.output
