import pytest
import torch

from defectnet.data.transforms import (
    PAD_VALUE,
    Preprocessor,
    boxes_to_original,
    hflip,
    pad_batch,
    rescale_size,
    resize,
)
from defectnet.errors import ConfigError, DataError


def test_rescale_size_follows_mmdetection_keep_ratio() -> None:
    # fabric 2446x1000 -> 1333x545; bottle 658x492 -> 1070x800 (docs/method.md, "Metrics")
    assert rescale_size(1000, 2446) == (545, 1333)
    assert rescale_size(492, 658) == (800, 1070)
    assert rescale_size(3000, 4096) == (800, 1092)


def test_rescale_rejects_empty() -> None:
    with pytest.raises(DataError, match="positive"):
        rescale_size(0, 10)


def _image_with_box(h: int, w: int, box: tuple[int, int, int, int]) -> torch.Tensor:
    im = torch.zeros(3, h, w, dtype=torch.uint8)
    x0, y0, x1, y1 = box
    im[:, y0:y1, x0:x1] = 255
    return im


def _bright_bbox(im: torch.Tensor) -> torch.Tensor:
    ys, xs = torch.nonzero(im[0] > 127, as_tuple=True)
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)


def test_resize_keeps_boxes_on_pixels() -> None:
    im = _image_with_box(100, 240, (40, 20, 120, 60))
    boxes = torch.tensor([[40.0, 20.0, 120.0, 60.0]])
    out, scaled, (sx, sy) = resize(im, boxes, (480, 200))
    assert out.shape == (3, 200, 480) and (sx, sy) == (2.0, 2.0)
    assert scaled is not None
    assert torch.allclose(scaled[0], _bright_bbox(out), atol=1.0)


def test_hflip_keeps_boxes_on_pixels() -> None:
    im = _image_with_box(50, 80, (10, 5, 30, 25))
    flipped, boxes = hflip(im, torch.tensor([[10.0, 5.0, 30.0, 25.0]]))
    assert torch.equal(boxes[0], _bright_bbox(flipped))
    assert torch.equal(boxes[0], torch.tensor([50.0, 5.0, 70.0, 25.0]))


def test_pad_batch_pads_to_multiple_of_32_with_mean_colour() -> None:
    a = torch.full((3, 40, 70), 7, dtype=torch.uint8)
    b = torch.full((3, 65, 33), 9, dtype=torch.uint8)
    out = pad_batch([a, b])
    assert out.shape == (2, 3, 96, 96)
    assert torch.equal(out[0, :, :40, :70], a) and torch.equal(out[1, :, :65, :33], b)
    assert out[0, :, 50, 80].tolist() == list(PAD_VALUE)


def test_preprocessor_round_trip_boxes_to_original() -> None:
    pre = Preprocessor(scale=(640, 256))
    im = torch.zeros(3, 250, 612, dtype=torch.uint8)
    batch = pre([im, torch.zeros(3, 492, 658, dtype=torch.uint8)])
    assert batch.image_sizes[0] == (256, 627)
    assert batch.images.shape[-2] % 32 == 0 and batch.images.shape[-1] % 32 == 0
    original = torch.tensor([[10.0, 20.0, 600.0, 240.0]])
    sx, sy = batch.scale_factors[0]
    resized = original * torch.tensor([sx, sy, sx, sy])
    back = boxes_to_original(resized, batch.scale_factors[0], batch.original_sizes[0])
    assert torch.allclose(back, original, atol=1e-4)


def test_preprocessor_validates_config() -> None:
    with pytest.raises(ConfigError, match="scale"):
        Preprocessor(scale=(16, 8))
