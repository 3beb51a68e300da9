import torch

from defectnet.evaluation.compute import path_cost
from defectnet.model import ModelConfig, build_model


def test_normal_path_costs_less_than_the_full_path() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig.preset("compact", num_classes=3, backbone="resnet18", fpn_channels=16,
                                           representation_size=32))
    image = torch.rand(1, 3, 128, 192) * 255
    cost = path_cost(model, image, (120, 190), repeats=1, warmup=0)
    # ResNet-18 body: 1.81 G multiply-adds at 224x224 (torchvision's figure) = 3.6 GFLOPs;
    # scaled by the pixel count to 128x192: ~1.78 GFLOPs
    assert 1.6 < cost.gflops_normal < 1.9
    assert cost.gflops_full > cost.gflops_normal
    assert 0 < cost.share_flops < 1 and cost.ms_normal > 0 and cost.ms_full > 0
    assert cost.to_dict()["input_size"] == (128, 192)
