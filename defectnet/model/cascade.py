"""Cascade R-CNN RoI heads (mmdetection 1.x ``CascadeRCNN`` with ``SharedFCBBoxHead``).

Three stages with rising IoU thresholds. Each stage pools 7x7 RoI features from P2..P5,
runs two shared FC layers and predicts class logits (K + 1, index 0 = background) and
one *class-agnostic* box delta per RoI.

Training, per stage: add the ground-truth boxes to the proposals, match at the stage's
IoU, sample 512 RoIs per image with up to 25% positives, CE + SmoothL1 (beta 1) losses,
then the stage's detached regression refines the sampled RoIs (minus the added GT boxes)
into the next stage's proposals.

Test: every stage refines the boxes of the previous one; the class logits of all stages
are averaged, then softmaxed; boxes come from the last stage's regression; per class
score > score_thresh, NMS per image and class (never across images), top-N per image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler, BoxCoder, Matcher
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign, batched_nms, box_iou
from torchvision.ops.poolers import initLevelMapper

from defectnet.model.config import ModelConfig

#: FPN levels the RoIs are pooled from, and their strides.
ROI_LEVELS: tuple[str, ...] = ("p2", "p3", "p4", "p5")
ROI_STRIDES: tuple[int, ...] = (4, 8, 16, 32)


class BoxHead(nn.Module):
    """Two shared FCs, then class logits and a class-agnostic box delta.

    forward: RoI features ``[N, C, S, S]`` -> (logits ``[N, K + 1]``, deltas ``[N, 4]``).
    Initialised as mmdetection: FCs Xavier-uniform, cls N(0, 0.01), reg N(0, 0.001).
    """

    def __init__(self, in_features: int, representation_size: int, num_classes: int) -> None:
        super().__init__()
        self.mlp = TwoMLPHead(in_features, representation_size)
        self.cls_score = nn.Linear(representation_size, num_classes + 1)
        self.bbox_pred = nn.Linear(representation_size, 4)
        for fc in (self.mlp.fc6, self.mlp.fc7):
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.mlp(x)
        return self.cls_score(h), self.bbox_pred(h)


def clip_to_sizes(boxes: Tensor, sizes: Tensor) -> Tensor:
    """Clip xyxy ``[N, 4]`` boxes to per-box image sizes ``[N, 2]`` (h, w). Tensor ops only."""
    hw = sizes.to(boxes.dtype)
    limit = torch.stack([hw[:, 1], hw[:, 0], hw[:, 1], hw[:, 0]], dim=1)
    return torch.minimum(boxes.clamp(min=0), limit)


class CascadeRoIHeads(nn.Module):
    """The cascade stages: ``losses`` for training, ``inference`` for test."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        s = config.roi_output_size
        self.roi_align = MultiScaleRoIAlign(list(ROI_LEVELS), s, config.roi_sampling_ratio)
        # Known strides: set the scales instead of letting torchvision infer them from the
        # first batch it sees.
        self.roi_align.scales = [1.0 / st for st in ROI_STRIDES]
        self.roi_align.map_levels = initLevelMapper(2, 5)
        self.heads = nn.ModuleList(
            BoxHead(config.fpn_channels * s * s, config.representation_size, config.num_classes)
            for _ in range(config.num_stages)
        )
        self.box_coders = [BoxCoder(weights=tuple(1.0 / v for v in stds)) for stds in config.stage_target_stds]
        self.matchers = [Matcher(iou, iou, allow_low_quality_matches=False) for iou in config.stage_iou_thresholds]
        self.sampler = BalancedPositiveNegativeSampler(config.roi_batch_size_per_image, config.roi_positive_fraction)

    def _pool(self, features: dict[str, Tensor], boxes: list[Tensor]) -> Tensor:
        """``[N, C, S, S]`` RoI features of the per-image boxes (input-pixel xyxy)."""
        shapes = [(0, 0)] * len(boxes)  # unused: scales are fixed above
        out: Tensor = self.roi_align(features, boxes, shapes)
        return out

    # ------------------------------------------------------------------ training
    def _sample(self, stage: int, proposals: Tensor, gt_boxes: Tensor, gt_labels: Tensor
                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Sample the RoIs of one image for ``stage``.

        proposals ``[P, 4]``, gt_boxes ``[G, 4]`` (G >= 1), gt_labels ``[G]`` in 1..K.
        Returns rois ``[R, 4]``, labels ``[R]`` (0 = background), regression targets
        ``[R, 4]`` (zero for negatives) and is_gt ``[R]`` bool (the RoI is an added GT box).
        """
        boxes = torch.cat([proposals, gt_boxes])
        is_gt = torch.cat([torch.zeros(len(proposals), dtype=torch.bool, device=boxes.device),
                           torch.ones(len(gt_boxes), dtype=torch.bool, device=boxes.device)])
        matched = self.matchers[stage](box_iou(gt_boxes, boxes))  # [P + G], -1 = below threshold
        labels = gt_labels[matched.clamp(min=0)].clone()
        labels[matched < 0] = 0
        pos_masks, neg_masks = self.sampler([labels])
        pos = torch.where(pos_masks[0])[0]
        neg = torch.where(neg_masks[0])[0]
        keep = torch.cat([pos, neg])
        rois = boxes[keep]
        targets = torch.zeros_like(rois)
        if len(pos):
            targets[: len(pos)] = self.box_coders[stage].encode_single(gt_boxes[matched[pos]], boxes[pos])
        return rois, labels[keep], targets, is_gt[keep]

    def losses(self, features: dict[str, Tensor], proposals: list[Tensor], gt_boxes: list[Tensor],
               gt_labels: list[Tensor], image_sizes: Tensor) -> dict[str, Tensor]:
        """Stage losses ``loss_s{i}_cls`` / ``loss_s{i}_box`` (already times the stage weight).

        features: ``{"p2".."p5"}`` ``[B, C, h, w]``; proposals: ``[P_i, 4]`` per image;
        gt_boxes / gt_labels: per image, every image with at least one box;
        image_sizes: int64 ``[B, 2]`` (h, w).
        """
        losses: dict[str, Tensor] = {}
        for stage, head in enumerate(self.heads):
            sampled = [self._sample(stage, p, b, lab) for p, b, lab in zip(proposals, gt_boxes, gt_labels)]
            rois = [s[0] for s in sampled]
            labels = torch.cat([s[1] for s in sampled])
            targets = torch.cat([s[2] for s in sampled])
            logits, deltas = head(self._pool(features, rois))
            pos = labels > 0
            loss_cls = F.cross_entropy(logits, labels)
            loss_box = F.smooth_l1_loss(deltas[pos], targets[pos], beta=1.0, reduction="sum") / max(len(labels), 1)
            weight = self.config.stage_loss_weights[stage]
            losses[f"loss_s{stage + 1}_cls"] = loss_cls * weight
            losses[f"loss_s{stage + 1}_box"] = loss_box * weight
            if stage + 1 < len(self.heads):
                with torch.no_grad():
                    refined = self.box_coders[stage].decode_single(deltas.detach(), torch.cat(rois))
                    per_image = refined.split([len(r) for r in rois])
                    proposals = [
                        clip_to_sizes(b[~s[3]], image_sizes[i].expand(int((~s[3]).sum()), 2))
                        for i, (b, s) in enumerate(zip(per_image, sampled))
                    ]
        return losses

    # ------------------------------------------------------------------ inference
    def inference(self, features: dict[str, Tensor], proposals: list[Tensor], image_sizes: Tensor
                  ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Cascade test path for a batch.

        proposals: ``[P_i, 4]`` per image; image_sizes: int64 ``[B, 2]`` (h, w).
        Returns flat (boxes ``[D, 4]``, scores ``[D]``, labels ``[D]`` in 1..K,
        image index ``[D]``), grouped by image, each image's rows sorted by falling score
        and at most ``detections_per_img`` per image.
        """
        counts = [len(p) for p in proposals]
        image_index = torch.cat([torch.full((n,), i, dtype=torch.int64, device=image_sizes.device)
                                 for i, n in enumerate(counts)])
        box_sizes = image_sizes[image_index]
        boxes = torch.cat(proposals)
        logits_sum: Tensor | None = None
        for stage, head in enumerate(self.heads):
            logits, deltas = head(self._pool(features, list(boxes.split(counts))))
            logits_sum = logits if logits_sum is None else logits_sum + logits
            boxes = clip_to_sizes(self.box_coders[stage].decode_single(deltas, boxes), box_sizes)
        assert logits_sum is not None
        probs = F.softmax(logits_sum / len(self.heads), dim=1)
        return self.postprocess(boxes, probs, image_index)

    def postprocess(self, boxes: Tensor, probs: Tensor, image_index: Tensor
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Score threshold, NMS per (image, class), top-N per image.

        boxes ``[N, 4]`` (class-agnostic), probs ``[N, K + 1]``, image_index ``[N]``.
        """
        num_classes = probs.shape[1] - 1
        n = boxes.shape[0]
        scores = probs[:, 1:].reshape(-1)
        labels = torch.arange(1, num_classes + 1, device=boxes.device).repeat(n)
        flat_boxes = boxes.repeat_interleave(num_classes, dim=0)
        flat_index = image_index.repeat_interleave(num_classes)
        keep = torch.where(scores > self.config.score_thresh)[0]
        flat_boxes, scores, labels, flat_index = flat_boxes[keep], scores[keep], labels[keep], flat_index[keep]
        # One NMS group per (image, class): boxes of different images never suppress each other.
        keep = batched_nms(flat_boxes, scores, flat_index * num_classes + (labels - 1), self.config.nms_thresh)
        # keep is sorted by falling score; a stable sort by image keeps that order per image.
        order = torch.sort(flat_index[keep], stable=True)[1]
        keep = keep[order]
        kept_index = flat_index[keep]
        rank = torch.arange(len(keep), device=keep.device) - torch.searchsorted(kept_index, kept_index)
        keep = keep[rank < self.config.detections_per_img]
        return flat_boxes[keep], scores[keep], labels[keep], flat_index[keep]
