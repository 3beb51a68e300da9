"""read_input_file: the file half of the input rule (for clients that send bytes to a service)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from defectnet.runtime.inspection.validation import InputError, Reason, read_input_file, to_image


def test_same_reasons_as_to_image(tmp_path: Path) -> None:
    good = tmp_path / "a.png"
    Image.fromarray(np.full((20, 30, 3), 7, np.uint8)).save(good)
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "dir.png").mkdir()
    data = read_input_file(good)
    assert data == good.read_bytes()
    assert torch.equal(to_image(data), to_image(good))
    for name, reason in (("missing.png", Reason.NOT_FOUND), ("empty.png", Reason.EMPTY),
                         ("dir.png", Reason.UNREADABLE)):
        with pytest.raises(InputError) as read_error:
            read_input_file(tmp_path / name)
        with pytest.raises(InputError) as decode_error:
            to_image(tmp_path / name)
        assert read_error.value.reason == decode_error.value.reason == reason
        assert str(read_error.value) == str(decode_error.value)
