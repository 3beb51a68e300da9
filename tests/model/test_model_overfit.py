"""A tiny DefectNet learns two synthetic images: the losses and the cascade are wired right."""

from __future__ import annotations

import torch
from model_testing import noise_image, target, tiny_config
from torchvision.ops import box_iou

from defectnet.model import build_model

STEPS = 60
H, W = 96, 160


def test_tiny_model_overfits_two_images() -> None:
    torch.manual_seed(0)
    gts = [[(20, 30, 70, 80)], [(90, 10, 150, 50), (30, 55, 60, 90)]]
    images = torch.stack([noise_image(i, H, W, boxes=b) for i, b in enumerate(gts)])
    targets = [target(b, image_id=i) for i, b in enumerate(gts)]
    sizes = [(H, W)] * 2
    # Cheaper than the recipe so a step takes ~0.2 s on two CPU cores: fewer proposals and
    # RoIs, and only layer4 of the backbone trains (still shared by the gate and the detector).
    model = build_model(tiny_config(num_classes=1, frozen_stages=3, roi_batch_size_per_image=128, rpn_pre_nms_top_n_train=500,
                                    rpn_post_nms_top_n_train=500, rpn_pre_nms_top_n_test=300,
                                    rpn_post_nms_top_n_test=300))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    totals = []
    for _ in range(STEPS):
        losses = model.losses(images, targets, sizes, gate_weight=1.0)
        total = torch.stack(list(losses.values())).sum()
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        totals.append(total.item())
    first, last = totals[0], sum(totals[-5:]) / 5
    assert last < 0.5 * first, totals

    model.eval()
    results = model.inference(images, sizes, gate_threshold=0.0)
    for det, t in zip(results, targets):
        assert det.boxes.shape[0] > 0
        best = det.boxes[det.scores.argmax()][None]
        assert float(box_iou(best, t["boxes"]).max()) > 0.5, (det.boxes[:3], det.scores[:3])
    # the gate learned "defective" for both images
    assert all(r.p_defective > 0.9 for r in results)
