"""Contact sheets of a generated data set."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from defectnet.data.cli import contact_sheet_main, synth_main
from defectnet.data.contact_sheet import CAPTION_HEIGHT, write_contact_sheet
from defectnet.errors import DataError


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sheet_data")
    result = CliRunner().invoke(synth_main, ["fabric", "--out", str(out), "--images", "10", "--size", "200x100",
                                             "--test-share", "0.5", "-q"])
    assert result.exit_code == 0, result.output
    return out


def test_cli_writes_png_of_expected_size(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "sheet.png"
    result = CliRunner().invoke(contact_sheet_main, [str(data_dir), "--split", "test", "--n", "5", "--cols", "2",
                                                     "--cell-width", "100", "--out", str(out)])
    assert result.exit_code == 0, result.output
    with Image.open(out) as im:
        assert im.format == "PNG"
        assert im.size == (2 * 100, 3 * (50 + CAPTION_HEIGHT))  # 5 images in 2 columns; 200x100 -> 100x50


def test_n_larger_than_split_draws_all(data_dir: Path, tmp_path: Path) -> None:
    path = write_contact_sheet(data_dir, tmp_path / "all.png", split="train", n=100, cols=4, cell_width=64)
    with Image.open(path) as im:
        assert im.size == (4 * 64, 2 * (32 + CAPTION_HEIGHT))  # 5 train images -> 2 rows


def test_missing_split_is_a_clear_error(data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="splits found"):
        write_contact_sheet(data_dir, tmp_path / "x.png", split="val")
    result = CliRunner().invoke(contact_sheet_main, [str(data_dir), "--split", "val", "--out", str(tmp_path / "y.png")])
    assert result.exit_code != 0 and "val.json" in result.output
