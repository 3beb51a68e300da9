"""DefectNet: one ResNet backbone shared by a defect gate and a Cascade R-CNN detector.

Reads top to bottom like torchvision's ``GeneralizedRCNN``::

    images -> ResNetBody -> C2..C5 --(C5)--> GateHead -> P(defective)
                              |
                              +-- only for images with P >= threshold -->
                                  FPN (P2..P6) -> RPN -> CascadeRoIHeads -> Detections

The two halves are the two deployable graphs (``features`` and ``detect``). Images the
gate calls normal exit after the backbone: no FPN, RPN, RoI heads or NMS run for them.
With ``with_gate=False`` the model is the one-model baseline (plain Cascade R-CNN).
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from defectnet.errors import DataError
from defectnet.model.backbone import (
    C5_STRIDE,
    GateHead,
    ImageSizes,
    ResNetBody,
    image_sizes_tensor,
    p_defective_from_logits,
)
from defectnet.model.cascade import CascadeRoIHeads
from defectnet.model.config import ModelConfig
from defectnet.model.rpn import RPN
from defectnet.structures import Detections, Target, is_defective

BACKBONE_LEVELS: tuple[str, ...] = ("c2", "c3", "c4", "c5")


def check_image_batch(images: Tensor, image_sizes: ImageSizes) -> None:
    """Raise ValueError unless images is [B, 3, H, W] with H, W multiples of 32 and B sizes."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [B, 3, H, W], got shape {tuple(images.shape)}")
    h, w = int(images.shape[-2]), int(images.shape[-1])
    if h % C5_STRIDE or w % C5_STRIDE:
        raise ValueError(f"image batch is {h}x{w}; pad H and W to multiples of {C5_STRIDE} "
                         "(defectnet.data.transforms.pad_batch does)")
    if len(image_sizes) != images.shape[0]:
        raise ValueError(f"got {len(image_sizes)} image sizes for {images.shape[0]} images")


class DefectNet(nn.Module):
    """The DefectNet model (see the module docstring). Build with :func:`build_model`."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = ResNetBody(config.backbone, config.backbone_weights, config.frozen_stages,
                                   frozen_bn=config.frozen_bn)
        channels = self.backbone.out_channels
        self.gate = GateHead(channels[-1]) if config.with_gate else None
        self.fpn = FeaturePyramidNetwork(list(channels), config.fpn_channels, extra_blocks=LastLevelMaxPool())
        self.rpn = RPN(config)
        self.roi_heads = CascadeRoIHeads(config)

    # ------------------------------------------------------------ graph 1: backbone + gate
    def _backbone_and_gate(self, images: Tensor, image_sizes: ImageSizes) -> tuple[Tensor | None, dict[str, Tensor]]:
        feats: dict[str, Tensor] = self.backbone(images)
        if self.gate is None:
            return None, feats
        sizes = image_sizes_tensor(image_sizes, images.shape[0], images.device)
        return self.gate(feats["c5"], sizes), feats

    def features(self, images: Tensor, image_sizes: ImageSizes) -> tuple[Tensor, dict[str, Tensor]]:
        """Backbone + gate for a batch.

        images: ``[B, 3, H, W]`` RGB 0..255 (float32 or uint8), H and W multiples of 32,
        each image at the top-left of its padded canvas. image_sizes: each image's
        unpadded ``(h, w)``, as a list of tuples or an int ``[B, 2]`` tensor (the gate pools
        C5 over the valid region only). Returns (P(defective) float32 ``[B]`` -- all ones
        when ``with_gate=False`` --, ``{"c2": [B, C2, H/4, W/4], ..., "c5": [B, C5, H/32, W/32]}``).
        """
        logits, feats = self._backbone_and_gate(images, image_sizes)
        if logits is None:
            return torch.ones(images.shape[0], dtype=torch.float32, device=images.device), feats
        return p_defective_from_logits(logits), feats

    # ------------------------------------------------------------ graph 2: the detector
    def _pyramid(self, feats: dict[str, Tensor]) -> dict[str, Tensor]:
        """C2..C5 -> ``{"p2": stride 4, ..., "p5": stride 32, "p6": stride 64}``."""
        out = self.fpn(OrderedDict((k, feats[k]) for k in BACKBONE_LEVELS))
        return {"p2": out["c2"], "p3": out["c3"], "p4": out["c4"], "p5": out["c5"], "p6": out["pool"]}

    def detect(self, feats: dict[str, Tensor], image_sizes: list[tuple[int, int]]) -> list[Detections]:
        """FPN -> RPN -> cascade -> NMS for the images whose features are given.

        feats: ``{"c2".."c5"}`` for B images (any sub-batch of :meth:`features`' output);
        image_sizes: their unpadded ``(h, w)``. Boxes are model-input pixels, clipped to
        each image; ``p_defective`` of the results is 1.0 (the caller sets the gate's).
        """
        pyramid = self._pyramid(feats)
        sizes = [(int(h), int(w)) for h, w in image_sizes]
        proposals, _ = self.rpn(list(pyramid.values()), sizes)
        sizes_t = image_sizes_tensor(sizes, len(sizes), feats["c5"].device)
        boxes, scores, labels, index = self.roi_heads.inference(pyramid, proposals, sizes_t)
        results = []
        for i in range(len(sizes)):
            mine = index == i
            results.append(Detections(boxes[mine], scores[mine], labels[mine]))
        return results

    # ------------------------------------------------------------ inference
    @torch.no_grad()
    def inference(self, images: Tensor, image_sizes: list[tuple[int, int]],
                  gate_threshold: float | None = None) -> list[Detections]:
        """Gate the whole batch; run the detector on the sub-batch with P >= threshold only.

        gate_threshold: overrides ``config.gate_threshold`` (a value above 1 runs no detector).
        With ``with_gate=False`` the detector always runs. Returns one
        :class:`Detections` per image; gated-out images get ``Detections.empty(p, ran_detector=False)``.
        """
        check_image_batch(images, image_sizes)
        p, feats = self.features(images, image_sizes)
        threshold = self.config.gate_threshold if gate_threshold is None else gate_threshold
        run = p >= threshold if self.config.with_gate else torch.ones_like(p, dtype=torch.bool)
        selected = torch.where(run)[0]
        p_host = p.tolist()
        results = [Detections.empty(p_host[i], ran_detector=False, device=images.device) for i in range(len(p_host))]
        if len(selected):
            chosen = selected.tolist()
            sub_feats = {k: v[selected] for k, v in feats.items()}
            for i, det in zip(chosen, self.detect(sub_feats, [image_sizes[i] for i in chosen])):
                results[i] = dataclasses.replace(det, p_defective=p_host[i])
        return results

    def forward(self, images: Tensor, image_sizes: list[tuple[int, int]],
                gate_threshold: float | None = None) -> list[Detections]:
        """Same as :meth:`inference` (training uses :meth:`losses`)."""
        return self.inference(images, image_sizes, gate_threshold)

    # ------------------------------------------------------------ training
    def losses(self, images: Tensor, targets: list[Target], image_sizes: list[tuple[int, int]],
               gate_weight: float) -> dict[str, Tensor]:
        """Training losses of a batch.

        Keys: ``loss_gate`` (CE of the gate times ``gate_weight``; absent without a gate),
        ``loss_rpn_cls``, ``loss_rpn_box``, ``loss_s{1,2,3}_cls``, ``loss_s{1,2,3}_box``
        (times the stage weights). Detector losses come from the defective images only; a
        batch without one gives detector losses of exactly 0 that stay connected to the
        detector's parameters (no NaN, no unused parameters).
        """
        check_image_batch(images, image_sizes)
        if len(targets) != images.shape[0]:
            raise ValueError(f"got {len(targets)} targets for {images.shape[0]} images")
        logits, feats = self._backbone_and_gate(images, image_sizes)
        defective = [i for i, t in enumerate(targets) if is_defective(t)]
        losses: dict[str, Tensor] = {}
        if logits is not None:
            image_labels = torch.zeros(len(targets), dtype=torch.int64, device=images.device)
            image_labels[defective] = 1
            losses["loss_gate"] = F.cross_entropy(logits, image_labels) * gate_weight
        if not defective:
            losses.update(self._zero_detector_losses())
            return losses
        device = images.device
        gt_boxes = [targets[i]["boxes"].to(device=device, dtype=torch.float32) for i in defective]
        gt_labels = [targets[i]["labels"].to(device=device, dtype=torch.int64) for i in defective]
        self._check_labels(gt_labels)
        sizes = [(int(image_sizes[i][0]), int(image_sizes[i][1])) for i in defective]
        index = torch.tensor(defective, device=device)
        pyramid = self._pyramid({k: feats[k][index] for k in BACKBONE_LEVELS})
        proposals, rpn_losses = self.rpn(list(pyramid.values()), sizes, gt_boxes)
        losses.update(rpn_losses)
        sizes_t = image_sizes_tensor(sizes, len(sizes), device)
        losses.update(self.roi_heads.losses(pyramid, proposals, gt_boxes, gt_labels, sizes_t))
        return losses

    def _check_labels(self, labels: list[Tensor]) -> None:
        k = self.config.num_classes
        for lab in labels:
            if len(lab) and (int(lab.min()) < 1 or int(lab.max()) > k):
                raise DataError(f"target labels must be in 1..{k} (0 is background), got {lab.tolist()}; "
                                "map the data set's categories to contiguous ids 1..K")

    def detector_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters of FPN, RPN and RoI heads."""
        modules: list[nn.Module] = [self.fpn, self.rpn, self.roi_heads]
        return [p for m in modules for p in m.parameters() if p.requires_grad]

    def _zero_detector_losses(self) -> dict[str, Tensor]:
        # "* 0.0 + 0.0": exactly +0.0 (never -0.0), still a function of every detector weight.
        zero = torch.stack([p.sum() for p in self.detector_parameters()]).sum() * 0.0 + 0.0
        keys = ["loss_rpn_cls", "loss_rpn_box"]
        for s in range(1, self.config.num_stages + 1):
            keys += [f"loss_s{s}_cls", f"loss_s{s}_box"]
        return dict.fromkeys(keys, zero)
