"""The deployable graphs as ``nn.Module``s that reuse a trained model's modules and weights.

* :class:`GateGraph`: ``(images uint8 [B, 3, H, W], image_sizes int64 [B, 2]) ->
  (p_defective [B], c2, c3, c4, c5)``. Normalisation happens inside (the model's own
  ``Normalize``); resize/pad and box rescaling stay outside (a traced resize freezes the
  export size, see ``docs/architecture.md``, "Export"). For a model without a gate (the one-model
  baseline and the two-model's detector) it is the backbone with ``p = 1`` for every image.
* :class:`ClassifierGraph`: the two-model baseline's classifier, ``-> p_defective [B]``.
* :class:`DetectorGraph`: ``(c2..c5, image_sizes) -> (boxes [B, M, 4], scores [B, M],
  labels [B, M], count [B])``, padded to ``M = detections_per_img``; rows past ``count``
  are zero. A vectorised rewrite of ``DefectNet.detect`` with the same numbers:

  - FPN and RPN head: the model's modules;
  - anchors per level from the model's cell anchors and fixed strides (tensor ops only);
  - pre-NMS top-k per level with a *constant* K: each level's objectness is padded with
    K entries of -inf, so TopK never asks for more than it has and K stays an initializer;
  - clip, min-size and score filters as masks; per-level NMS as ONE ``NonMaxSuppression``
    over ``[B, N, 4]`` boxes with the levels as classes (never across images);
  - the top ``post_nms_top_n`` proposals per image (fixed count, a validity mask marks
    the padding), then the cascade stages on ``B * post_nms_top_n`` RoIs with multi-level
    ``RoiAlign`` whose level mapping is tensor ops (NonZero + ScatterND per level);
  - class scores > ``score_thresh``, NMS per (image, class), top ``detections_per_img``.

  In eager PyTorch it runs too (NMS falls back to torchvision per image), which is what
  :mod:`defectnet.export.verify` compares against ``DefectNet.inference``.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from defectnet.export.nms import batched_nms
from defectnet.model import DefectNet, ImageClassifier
from defectnet.model.cascade import ROI_LEVELS, clip_to_sizes

#: Input / output names of the graphs (the runtime binds by name).
GATE_INPUTS = ("images", "image_sizes")
GATE_OUTPUTS = ("p_defective", "c2", "c3", "c4", "c5")
CLASSIFIER_OUTPUTS = ("p_defective",)
FEATURE_NAMES = ("c2", "c3", "c4", "c5")
DETECTOR_INPUTS = (*FEATURE_NAMES, "image_sizes")
DETECTOR_OUTPUTS = ("boxes", "scores", "labels", "count")

_INVALID = -1.0  # score of a masked entry (real scores are probabilities >= 0)


class GateGraph(nn.Module):
    """Backbone + gate of ``model`` (see the module docstring)."""

    def __init__(self, model: DefectNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor, image_sizes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        if self.model.gate is not None:
            p, feats = self.model.features(images, image_sizes)
        else:
            feats = self.model.backbone(images)
            # P = 1 for every image, written so the graph keeps its image_sizes input.
            p = torch.ones_like(image_sizes[:, 0], dtype=torch.float32)
        return p, feats["c2"], feats["c3"], feats["c4"], feats["c5"]


class ClassifierGraph(nn.Module):
    """The two-model baseline's classifier: ``(images, image_sizes) -> p_defective [B]``."""

    def __init__(self, classifier: ImageClassifier) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, images: Tensor, image_sizes: Tensor) -> Tensor:
        return self.classifier.p_defective(images, image_sizes)


class DetectorGraph(nn.Module):
    """Export-friendly, batched ``DefectNet.detect`` (see the module docstring)."""

    anchor_cells: Tensor

    def __init__(self, model: DefectNet) -> None:
        super().__init__()
        cfg = model.config
        self.fpn = model.fpn
        self.rpn_head = model.rpn.head
        self.heads = model.roi_heads.heads
        self.rpn_box_coder = model.rpn.box_coder
        self.stage_box_coders = list(model.roi_heads.box_coders)
        generator = model.rpn.anchor_generator
        generator.set_cell_anchors(torch.float32, torch.device("cpu"))
        cells = [c.to(torch.float32) for c in generator.cell_anchors]
        if len({c.shape[0] for c in cells}) != 1:
            raise ValueError("every FPN level needs the same number of anchors per location")
        self.register_buffer("anchor_cells", torch.stack(cells), persistent=False)  # [L, A, 4]
        self.strides = tuple(float(s) for s in generator.strides)
        self.pre_nms_top_n = int(cfg.rpn_pre_nms_top_n_test)
        self.post_nms_top_n = min(int(cfg.rpn_post_nms_top_n_test), len(self.strides) * self.pre_nms_top_n)
        self.rpn_nms_thresh = float(cfg.rpn_nms_thresh)
        self.rpn_min_size = float(model.rpn.min_size)
        self.rpn_score_thresh = float(model.rpn.score_thresh)
        pooler = model.roi_heads.roi_align
        self.map_levels = pooler.map_levels
        self.roi_scales = tuple(float(s) for s in pooler.scales)
        self.roi_output_size = int(cfg.roi_output_size)
        self.roi_sampling_ratio = int(cfg.roi_sampling_ratio)
        self.num_classes = int(cfg.num_classes)
        self.score_thresh = float(cfg.score_thresh)
        self.nms_thresh = float(cfg.nms_thresh)
        self.detections_per_img = int(cfg.detections_per_img)

    # ------------------------------------------------------------------ RPN
    def _level_candidates(self, level: int, objectness: Tensor, deltas: Tensor, sizes: Tensor
                          ) -> tuple[Tensor, Tensor, Tensor]:
        """Top ``pre_nms_top_n`` decoded, clipped proposals of one level.

        objectness ``[B, A, h, w]``, deltas ``[B, 4A, h, w]``, sizes float ``[B, 2]`` (h, w).
        Returns boxes ``[B, K, 4]``, probabilities ``[B, K]``, valid ``[B, K]`` (K constant).
        """
        b = objectness.shape[0]
        h, w = objectness.shape[-2], objectness.shape[-1]
        cells = self.anchor_cells[level]  # [A, 4]
        a = cells.shape[0]
        k = self.pre_nms_top_n
        # torchvision's layout: (h, w, anchor) order for scores, deltas and anchors.
        scores = objectness.permute(0, 2, 3, 1).reshape(b, -1)
        codes = deltas.reshape(b, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, 4)
        stride = self.strides[level]
        sy = (torch.arange(h, device=scores.device, dtype=torch.float32) * stride).view(-1, 1).expand(h, w)
        sx = (torch.arange(w, device=scores.device, dtype=torch.float32) * stride).view(1, -1).expand(h, w)
        sy, sx = sy.reshape(-1), sx.reshape(-1)
        shifts = torch.stack([sx, sy, sx, sy], dim=1)  # [h*w, 4]
        anchors = (shifts.view(-1, 1, 4) + cells.view(1, -1, 4)).reshape(-1, 4)
        # Pad with K entries (score -inf, zero anchor) so a constant K always fits.
        scores = torch.cat([scores, torch.full_like(scores[:, :1], float("-inf")).expand(-1, k)], dim=1)
        codes = torch.cat([codes, torch.zeros_like(codes[:, :1]).expand(-1, k, -1)], dim=1)
        anchors = torch.cat([anchors, torch.zeros_like(anchors[:1]).expand(k, -1)], dim=0)
        top, idx = scores.topk(k, dim=1)
        codes = torch.gather(codes, 1, idx.unsqueeze(-1).expand(-1, -1, 4))
        boxes = self.rpn_box_coder.decode_single(codes.reshape(-1, 4), anchors[idx.reshape(-1)]).reshape(b, k, 4)
        boxes = _clip(boxes, sizes)
        prob = torch.sigmoid(top)
        wh = boxes[..., 2:] - boxes[..., :2]
        valid = (top > float("-inf")) & (wh[..., 0] >= self.rpn_min_size) & (wh[..., 1] >= self.rpn_min_size)
        valid = valid & (prob >= self.rpn_score_thresh)
        return boxes, prob, valid

    def proposals(self, pyramid: list[Tensor], sizes: Tensor) -> tuple[Tensor, Tensor]:
        """RPN on P2..P6 -> (proposals ``[B, P, 4]``, valid ``[B, P]``), P = post_nms_top_n."""
        objectness, deltas = self.rpn_head(pyramid)
        per_level = [self._level_candidates(i, o, d, sizes) for i, (o, d) in enumerate(zip(objectness, deltas))]
        boxes = torch.cat([c[0] for c in per_level], dim=1)  # [B, N, 4], N = L * K
        prob = torch.cat([c[1] for c in per_level], dim=1)
        valid = torch.cat([c[2] for c in per_level], dim=1)
        num_levels, k = len(per_level), self.pre_nms_top_n
        n = num_levels * k
        level_of = torch.arange(n, device=boxes.device) // k
        onehot = level_of.view(1, 1, -1) == torch.arange(num_levels, device=boxes.device).view(1, -1, 1)
        nms_scores = torch.where(onehot & valid.unsqueeze(1), prob.unsqueeze(1), _INVALID)  # [B, L, N]
        selected = batched_nms(boxes, nms_scores, self.post_nms_top_n, self.rpn_nms_thresh, _INVALID / 2)
        flat = selected[:, 0] * n + selected[:, 2]
        kept = torch.zeros_like(prob.reshape(-1)).scatter(0, flat, torch.ones_like(flat, dtype=prob.dtype))
        kept_prob = torch.where(kept.view_as(prob) > 0.5, prob, _INVALID)
        top, idx = kept_prob.topk(self.post_nms_top_n, dim=1)
        proposals = torch.gather(boxes, 1, idx.unsqueeze(-1).expand(-1, -1, 4))
        return proposals, top > _INVALID / 2

    # ------------------------------------------------------------------ RoI heads
    def _pool(self, pyramid: dict[str, Tensor], boxes: Tensor, image_index: Tensor) -> Tensor:
        """Multi-level RoIAlign of ``boxes [R, 4]`` (image ``image_index [R]``) -> ``[R, C, S, S]``."""
        levels = self.map_levels([boxes])
        rois = torch.cat([image_index.to(boxes.dtype).unsqueeze(1), boxes], dim=1)
        s = self.roi_output_size
        first = pyramid[ROI_LEVELS[0]]
        result = torch.zeros_like(first[:1, :, :1, :1]).expand(boxes.shape[0], -1, s, s).contiguous()
        for i, name in enumerate(ROI_LEVELS):
            # NonZero on a float mask: TensorRT's parser lists NonZero for FP32/FP16 inputs.
            idx = torch.nonzero((levels == i).to(torch.float32)).squeeze(1)
            pooled = roi_align(pyramid[name], rois[idx], output_size=(s, s), spatial_scale=self.roi_scales[i],
                               sampling_ratio=self.roi_sampling_ratio, aligned=False)
            result = result.index_put((idx,), pooled)
        return result

    def forward(self, c2: Tensor, c3: Tensor, c4: Tensor, c5: Tensor, image_sizes: Tensor
                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        sizes = image_sizes.to(torch.float32)
        fpn = self.fpn(OrderedDict([("c2", c2), ("c3", c3), ("c4", c4), ("c5", c5)]))
        pyramid = {"p2": fpn["c2"], "p3": fpn["c3"], "p4": fpn["c4"], "p5": fpn["c5"], "p6": fpn["pool"]}
        proposals, valid = self.proposals(list(pyramid.values()), sizes)
        b, p = proposals.shape[0], self.post_nms_top_n
        image_index = torch.arange(b, device=c2.device).view(-1, 1).expand(-1, p).reshape(-1)
        box_sizes = image_sizes.view(-1, 1, 2).expand(-1, p, -1).reshape(-1, 2)
        boxes = proposals.reshape(-1, 4)
        logits_sum: Tensor | None = None
        for stage, head in enumerate(self.heads):
            logits, deltas = head(self._pool(pyramid, boxes, image_index))
            logits_sum = logits if logits_sum is None else logits_sum + logits
            boxes = clip_to_sizes(self.stage_box_coders[stage].decode_single(deltas, boxes), box_sizes)
        assert logits_sum is not None
        probs = F.softmax(logits_sum / len(self.heads), dim=1)
        return self._postprocess(boxes.reshape(b, p, 4), probs.reshape(b, p, -1), valid)

    def _postprocess(self, boxes: Tensor, probs: Tensor, valid: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """boxes ``[B, P, 4]``, probs ``[B, P, K + 1]``, valid ``[B, P]`` -> padded detections."""
        b, p, k = boxes.shape[0], self.post_nms_top_n, self.num_classes
        scores = probs[:, :, 1:].permute(0, 2, 1)  # [B, K, P]
        scores = torch.where(valid.unsqueeze(1), scores, _INVALID)
        selected = batched_nms(boxes, scores, self.detections_per_img, self.nms_thresh, self.score_thresh)
        flat = selected[:, 0] * (k * p) + selected[:, 1] * p + selected[:, 2]
        dense = torch.full_like(scores.reshape(-1), _INVALID)
        dense = dense.scatter(0, flat, scores.reshape(-1)[flat]).view(b, k * p)
        m = min(self.detections_per_img, k * p)
        top, idx = dense.topk(m, dim=1)
        keep = top > _INVALID / 2
        label_index = torch.div(idx, p, rounding_mode="trunc")  # idx >= 0: trunc == floor, one Div
        box_index = idx - label_index * p
        out_boxes = torch.gather(boxes, 1, box_index.unsqueeze(-1).expand(-1, -1, 4))
        out_boxes = torch.where(keep.unsqueeze(-1), out_boxes, 0.0)
        out_scores = torch.where(keep, top, 0.0)
        out_labels = torch.where(keep, label_index + 1, 0)
        count = keep.to(torch.int64).sum(dim=1)
        return out_boxes, out_scores, out_labels, count


def _clip(boxes: Tensor, sizes: Tensor) -> Tensor:
    """Clip xyxy ``[B, K, 4]`` boxes to per-image float sizes ``[B, 2]`` (h, w)."""
    limit = torch.stack([sizes[:, 1], sizes[:, 0], sizes[:, 1], sizes[:, 0]], dim=1).unsqueeze(1)
    return torch.minimum(boxes.clamp(min=0), limit)
