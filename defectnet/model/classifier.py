"""The two-model baseline's image classifier: a plain ResNet deciding normal vs defective.

Two input modes, as the seed's baselines:

* ``input_size=224`` ("two-model_small"): each image's valid (unpadded) region is resized
  to 224x224 inside the model, with :func:`torchvision.ops.roi_align` (an area-averaging
  bilinear resize that is batched and exports as ONNX ``RoiAlign``).
* ``input_size=None`` ("two-model_large"): the full padded detector input, with the
  average pool restricted to each image's valid region (as DefectNet's gate).

Normalisation (ImageNet mean/std) happens inside, as in :class:`DefectNet`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops import roi_align

from defectnet.model.backbone import (
    C5_STRIDE,
    ImageSizes,
    Normalize,
    image_sizes_tensor,
    load_resnet,
    masked_average_pool,
    p_defective_from_logits,
)
from defectnet.model.config import RESNET_CHANNELS, ClassifierConfig


def resize_valid_regions(images: Tensor, image_sizes: Tensor, size: int) -> Tensor:
    """Resize the top-left ``(h, w)`` region of each image to ``size x size``.

    images: float ``[B, C, H, W]``; image_sizes: int64 ``[B, 2]``. Returns ``[B, C, size, size]``.
    Each output pixel averages an adaptive grid of bilinear samples (antialiased downscale).
    """
    b = images.shape[0]
    hw = image_sizes.to(images.dtype)
    zeros = torch.zeros(b, 1, dtype=images.dtype, device=images.device)
    index = torch.arange(b, dtype=images.dtype, device=images.device).view(-1, 1)
    rois = torch.cat([index, zeros, zeros, hw[:, 1:2], hw[:, 0:1]], dim=1)  # (idx, x1, y1, x2, y2)
    return roi_align(images, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=0, aligned=True)


class ImageClassifier(nn.Module):
    """ResNet -> (masked) global average pool -> Linear(C5, 2); class 1 = defective.

    forward(images, image_sizes) -> logits ``[B, 2]``; images ``[B, 3, H, W]`` RGB 0..255
    (float32 or uint8) padded at the bottom/right, image_sizes the unpadded ``(h, w)``
    (list of tuples or int ``[B, 2]`` tensor).
    """

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = config
        resnet = load_resnet(config.backbone, config.backbone_weights, frozen_bn=config.frozen_bn)
        self.body = IntermediateLayerGetter(resnet, return_layers={"layer4": "c5"})
        self.fc = nn.Linear(RESNET_CHANNELS[config.backbone][-1], 2)
        self.normalize = Normalize()

    def forward(self, images: Tensor, image_sizes: ImageSizes) -> Tensor:
        x = self.normalize(images)  # affine per channel: commutes with the resize below
        sizes = image_sizes_tensor(image_sizes, images.shape[0], images.device)
        if self.config.input_size is not None:
            c5 = self.body(resize_valid_regions(x, sizes, self.config.input_size))["c5"]
            pooled = c5.mean(dim=(2, 3))
        else:
            c5 = self.body(x)["c5"]
            pooled = masked_average_pool(c5, sizes, C5_STRIDE)
        logits: Tensor = self.fc(pooled)
        return logits

    def p_defective(self, images: Tensor, image_sizes: ImageSizes) -> Tensor:
        """P(defective) float32 ``[B]``."""
        return p_defective_from_logits(self(images, image_sizes))
