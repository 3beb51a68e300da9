"""ResNet body with in-model normalisation, and the DefectNet gate head.

The body is a torchvision ResNet (``weights=None``; ImageNet weights only from a local
file) with every BatchNorm as :class:`~torchvision.ops.FrozenBatchNorm2d` (BN in eval
mode, as the original; trainable BN on request) and the stem + first ``frozen_stages`` stages
frozen (-1: nothing frozen).

The gate pools C5 over each image's *valid* (unpadded) region only, so P(defective) of an
image does not depend on how much padding the batch added. The pool is written with
tensor ops only (no Python loop over images), so it exports to ONNX.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops import FrozenBatchNorm2d

from defectnet.data.transforms import PIXEL_MEAN, PIXEL_STD
from defectnet.errors import CheckpointError, ConfigError
from defectnet.model.config import RESNET_CHANNELS

#: Total stride of C5 (and the padding multiple the model needs).
C5_STRIDE = 32

ImageSizes = Tensor | Sequence[tuple[int, int]]


def image_sizes_tensor(image_sizes: ImageSizes, batch: int, device: torch.device) -> Tensor:
    """``(h, w)`` per image as an int64 ``[B, 2]`` tensor on ``device``.

    Accepts a list of ``(h, w)`` tuples or an integer ``[B, 2]`` tensor (the form an
    exported graph takes).
    """
    if isinstance(image_sizes, Tensor):
        sizes = image_sizes.to(device=device, dtype=torch.int64)
    else:
        if len(image_sizes) != batch:
            raise ValueError(f"got {len(image_sizes)} image sizes for a batch of {batch} images")
        sizes = torch.tensor([[int(h), int(w)] for h, w in image_sizes], dtype=torch.int64, device=device)
    if sizes.dim() != 2 or sizes.shape[1] != 2:
        raise ValueError(f"image_sizes must be [B, 2] (h, w), got shape {tuple(sizes.shape)}")
    return sizes


def load_resnet(name: str, weights_path: str | None, *, frozen_bn: bool = True) -> torchvision.models.ResNet:
    """A torchvision ResNet ``name`` with random init, or weights from a local state_dict.

    weights_path: a torchvision ImageNet checkpoint (``.pth``/``.pt`` via ``torch.load`` with
    ``weights_only=True``, or ``.safetensors``). Nothing is downloaded.
    """
    if name not in RESNET_CHANNELS:
        raise ConfigError(f"backbone {name!r} is unknown; use one of {sorted(RESNET_CHANNELS)}")
    norm_layer = FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d
    model: torchvision.models.ResNet = getattr(torchvision.models, name)(weights=None, norm_layer=norm_layer)
    if weights_path is None:
        return model
    path = Path(weights_path)
    fix = (f"pass the path of a torchvision {name} ImageNet state_dict (e.g. the file "
           f"torchvision.models.{name}(weights='DEFAULT') downloads on a machine with internet), "
           "or backbone_weights=None for random init")
    if not path.is_file():
        raise CheckpointError(f"backbone weights file {str(path)!r} does not exist; {fix}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any read failure means an unusable file
        raise CheckpointError(f"cannot read backbone weights {str(path)!r} ({err}); {fix}") from err
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"backbone weights {str(path)!r} hold a {type(state).__name__}, not a state_dict; {fix}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"backbone weights {str(path)!r} do not fit {name}: {err}; {fix}") from err
    return model


class Normalize(nn.Module):
    """``(x - PIXEL_MEAN) / PIXEL_STD`` in float32: ``[B, 3, H, W]`` RGB 0..255 (float or
    uint8) -> float32 of the same shape. Inside the model, so every runtime shares it."""

    mean: Tensor
    std: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        return (images.to(self.mean.dtype) - self.mean) / self.std


class ResNetBody(nn.Module):
    """Normalise, then ResNet stem + layer1..layer4.

    Input: images ``[B, 3, H, W]`` RGB on the 0..255 scale (float32 or uint8), H and W
    multiples of 32. Output: ``{"c2": [B, C2, H/4, W/4], "c3": .../8, "c4": .../16,
    "c5": [B, C5, H/32, W/32]}``. Submodule names equal torchvision's (``conv1``,
    ``layer1``...), so torchvision checkpoints map one to one.
    """

    def __init__(self, name: str, weights_path: str | None = None, frozen_stages: int = 1,
                 frozen_bn: bool = True) -> None:
        super().__init__()
        resnet = load_resnet(name, weights_path, frozen_bn=frozen_bn)
        self.body = IntermediateLayerGetter(
            resnet, return_layers={"layer1": "c2", "layer2": "c3", "layer3": "c4", "layer4": "c5"}
        )
        self.out_channels: tuple[int, int, int, int] = RESNET_CHANNELS[name]
        self.normalize = Normalize()
        frozen: list[nn.Module] = [self.body.conv1, self.body.bn1] if frozen_stages >= 0 else []
        frozen += [getattr(self.body, f"layer{i}") for i in range(1, frozen_stages + 1)]
        for module in frozen:
            for p in module.parameters():
                p.requires_grad_(False)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        out: dict[str, Tensor] = self.body(self.normalize(images))
        return out


def valid_mask(feature: Tensor, image_sizes: Tensor, stride: int) -> Tensor:
    """1.0 where a feature cell covers the image, 0.0 on padding-only cells.

    feature: ``[B, C, h, w]`` at ``stride``; image_sizes: int64 ``[B, 2]`` (h, w) in input
    pixels. A cell is valid when its index is below ``ceil(size / stride)``.
    Returns float ``[B, 1, h, w]``. Tensor ops only (exportable).
    """
    valid_hw = torch.div(image_sizes + (stride - 1), stride, rounding_mode="floor")  # [B, 2]
    rows = torch.arange(feature.shape[-2], device=feature.device).view(1, -1, 1)
    cols = torch.arange(feature.shape[-1], device=feature.device).view(1, 1, -1)
    mask = (rows < valid_hw[:, 0].view(-1, 1, 1)) & (cols < valid_hw[:, 1].view(-1, 1, 1))
    return mask.unsqueeze(1).to(feature.dtype)


def masked_average_pool(feature: Tensor, image_sizes: Tensor, stride: int) -> Tensor:
    """Average of ``feature [B, C, h, w]`` over each image's valid cells -> ``[B, C]``.

    Equals ``AdaptiveAvgPool2d(1)`` on the unpadded feature map when the image fills the
    canvas.
    """
    mask = valid_mask(feature, image_sizes, stride)
    total = (feature * mask).sum(dim=(2, 3))
    count = mask.sum(dim=(2, 3)).clamp(min=1.0)
    return total / count


class GateHead(nn.Module):
    """The defect-finding network: masked global average pool of C5 -> Linear(C5, 2).

    forward: c5 ``[B, C, H/32, W/32]``, image_sizes int64 ``[B, 2]`` -> logits ``[B, 2]``
    (index 1 = defective).
    """

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_channels, 2)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, c5: Tensor, image_sizes: Tensor) -> Tensor:
        logits: Tensor = self.fc(masked_average_pool(c5, image_sizes, C5_STRIDE))
        return logits


def p_defective_from_logits(logits: Tensor) -> Tensor:
    """``[B, 2]`` gate logits -> P(defective) ``[B]`` (softmax, class 1)."""
    return F.softmax(logits, dim=1)[:, 1]
