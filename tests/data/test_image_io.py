"""The image-file rule of defectnet.data.image_io: float images are 0..1, nothing is guessed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from defectnet.data.image_io import PixelValueError, read_image, unit_float_to_uint8
from defectnet.errors import DataError


def _float_tiff(path: Path, values: np.ndarray) -> Path:
    Image.fromarray(values.astype(np.float32), mode="F").save(path, format="TIFF")
    return path


def test_float_files_must_be_in_unit_range(tmp_path: Path) -> None:
    unit = np.linspace(0, 1, 16 * 12, dtype=np.float32).reshape(12, 16)
    image = read_image(_float_tiff(tmp_path / "unit.tif", unit))
    assert image.shape == (3, 12, 16) and int(image.min()) == 0 and int(image.max()) == 255
    np.testing.assert_array_equal(image[0].numpy(), np.round(unit * 255).astype(np.uint8))
    with pytest.raises(DataError, match=r"0\.\.255.*must be in 0\.\.1"):
        read_image(_float_tiff(tmp_path / "byte_scale.tif", unit * 255))  # 0..255 floats: refused, not guessed
    nan = unit.copy()
    nan[1, 1] = np.nan
    with pytest.raises(DataError, match="NaN or inf"):
        read_image(_float_tiff(tmp_path / "nan.tif", nan))


def test_unit_float_rule_names_the_problem() -> None:
    np.testing.assert_array_equal(unit_float_to_uint8(np.array([0.0, 0.5, 1.0])), [0, 128, 255])
    for values, kind in (([0.0, 2.0], "out_of_range"), ([-0.01, 0.5], "out_of_range"), ([np.inf], "non_finite")):
        with pytest.raises(PixelValueError) as info:
            unit_float_to_uint8(np.array(values), "x")
        assert info.value.kind == kind and str(info.value).startswith("x: ")
