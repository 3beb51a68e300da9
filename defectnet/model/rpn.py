"""Region proposal network: torchvision's RPN, wired for DefectNet.

Two small changes to :class:`torchvision.models.detection.rpn.RegionProposalNetwork`:

* anchors use the FPN's *fixed* strides 4..64. torchvision derives strides as
  ``padded_size // feature_size``, which gives e.g. 61 instead of 64 on P6 for an
  800-pixel side (800/32 = 25 cells -> 13 cells on P6).
* the proposal counts (training 2000 / test 1000) follow whether losses are asked for,
  not ``nn.Module.training``, so inference behaves the same in train and eval mode.

Everything else (head, box coding, matching, sampling, losses, per-level NMS) is
torchvision's and matches mmdetection 1.x: BCE objectness, SmoothL1 (beta 1/9) on deltas,
both averaged over the sampled anchors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead, concat_box_prediction_layers

from defectnet.model.config import ModelConfig


class FixedStrideAnchorGenerator(AnchorGenerator):
    """torchvision's anchor generator with one known stride per level.

    ``anchors(features)`` -> ``[A, 4]`` xyxy anchors of all levels (the same for every
    image of a batch), A = sum over levels of ``h_l * w_l * len(ratios)``.
    """

    def __init__(self, sizes: Sequence[int], ratios: Sequence[float], strides: Sequence[int]) -> None:
        super().__init__(sizes=tuple((int(s),) for s in sizes),
                         aspect_ratios=tuple(tuple(float(r) for r in ratios) for _ in sizes))
        self.strides = tuple(int(s) for s in strides)

    def anchors(self, features: list[Tensor]) -> Tensor:
        device, dtype = features[0].device, features[0].dtype
        grid_sizes = [list(f.shape[-2:]) for f in features]
        strides = [[torch.tensor(s, dtype=torch.int64, device=device)] * 2 for s in self.strides]
        self.set_cell_anchors(dtype, device)
        return torch.cat(self.grid_anchors(grid_sizes, strides))


class RPN(RegionProposalNetwork):
    """Proposals (and, given targets, losses) from FPN levels P2..P6.

    forward(features, image_sizes, gt_boxes=None):
      features: ``[B, C, H/s, W/s]`` for s = 4, 8, 16, 32, 64;
      image_sizes: ``(h, w)`` of each image (proposals are clipped to it);
      gt_boxes: float32 ``[G_i, 4]`` per image, or None at test time.
    Returns (proposals: ``[P_i, 4]`` per image, sorted by objectness, and
    ``{"loss_rpn_cls", "loss_rpn_box"}`` when gt_boxes is given, else ``{}``).
    """

    anchor_generator: FixedStrideAnchorGenerator

    def __init__(self, config: ModelConfig) -> None:
        anchor_generator = FixedStrideAnchorGenerator(config.anchor_sizes, config.anchor_ratios,
                                                      config.anchor_strides)
        head = RPNHead(config.fpn_channels, anchor_generator.num_anchors_per_location()[0])
        super().__init__(
            anchor_generator,
            head,
            fg_iou_thresh=config.rpn_fg_iou_thresh,
            bg_iou_thresh=config.rpn_bg_iou_thresh,
            batch_size_per_image=config.rpn_batch_size_per_image,
            positive_fraction=config.rpn_positive_fraction,
            pre_nms_top_n={"training": config.rpn_pre_nms_top_n_train, "testing": config.rpn_pre_nms_top_n_test},
            post_nms_top_n={"training": config.rpn_post_nms_top_n_train,
                            "testing": config.rpn_post_nms_top_n_test},
            nms_thresh=config.rpn_nms_thresh,
        )
        self._training_counts = False

    def pre_nms_top_n(self) -> int:
        return self._pre_nms_top_n["training" if self._training_counts else "testing"]

    def post_nms_top_n(self) -> int:
        return self._post_nms_top_n["training" if self._training_counts else "testing"]

    def forward(self, features: list[Tensor], image_sizes: list[tuple[int, int]],  # type: ignore[override]
                gt_boxes: list[Tensor] | None = None) -> tuple[list[Tensor], dict[str, Tensor]]:
        num_images = features[0].shape[0]
        objectness_levels, deltas_levels = self.head(features)
        anchors = self.anchor_generator.anchors(features)
        anchors_per_image = [anchors] * num_images
        num_anchors_per_level = [int(o.shape[1] * o.shape[2] * o.shape[3]) for o in objectness_levels]
        objectness, deltas = concat_box_prediction_layers(objectness_levels, deltas_levels)
        # Proposals do not backpropagate into the RPN (as Faster/Cascade R-CNN).
        proposals = self.box_coder.decode(deltas.detach(), anchors_per_image).view(num_images, -1, 4)
        self._training_counts = gt_boxes is not None
        boxes, _scores = self.filter_proposals(proposals, objectness, list(image_sizes), num_anchors_per_level)
        if gt_boxes is None:
            return boxes, {}
        labels, matched_gt = self.assign_targets_to_anchors(anchors_per_image, [{"boxes": b} for b in gt_boxes])
        regression_targets = self.box_coder.encode(matched_gt, anchors_per_image)
        loss_cls, loss_box = self.compute_loss(objectness, deltas, labels, regression_targets)
        return boxes, {"loss_rpn_cls": loss_cls, "loss_rpn_box": loss_box}
