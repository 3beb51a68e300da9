"""Tiny fakes of the model interface and of the COCO data set, so trainer tests run in seconds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from defectnet.data.coco import Sample, collate
from defectnet.structures import Detections, Target, is_defective
from defectnet.train.checkpoint import ModelIO


class FakeDetector(nn.Module):
    """A conv + linear "detector" with the DefectNet training/inference interface.

    Records the image ids and gate weights it was trained with (not part of its state)."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.config = config
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.gate = nn.Linear(4, 2) if config["with_gate"] else None
        self.head = nn.Linear(4, 1)
        self.seen_ids: list[int] = []
        self.gate_weights: list[float] = []

    def _feat(self, images: Tensor) -> Tensor:
        return self.conv(images / 255.0).mean(dim=(2, 3))

    def losses(self, images: Tensor, targets: list[Target], image_sizes: list[tuple[int, int]],
               gate_weight: float) -> dict[str, Tensor]:
        assert images.dtype == torch.float32
        self.seen_ids.extend(int(t["image_id"]) for t in targets)
        self.gate_weights.append(gate_weight)
        f = self._feat(images)
        out: dict[str, Tensor] = {}
        labels = torch.tensor([int(is_defective(t)) for t in targets])
        if self.gate is not None:
            out["loss_gate"] = F.cross_entropy(self.gate(f), labels) * gate_weight
        d = labels.bool()
        out["loss_rpn_cls"] = (self.head(f[d]) - 1).pow(2).mean() if d.any() else self.head.weight.sum() * 0.0
        return out

    @torch.no_grad()
    def inference(self, images: Tensor, image_sizes: list[tuple[int, int]],
                  gate_threshold: float | None = None) -> list[Detections]:
        f = self._feat(images)
        out = []
        for i, (h, w) in enumerate(image_sizes):
            p = float(self.gate(f[i:i + 1]).softmax(-1)[0, 1]) if self.gate is not None else 1.0
            if p < (gate_threshold if gate_threshold is not None else 0.5):
                out.append(Detections.empty(p, ran_detector=False))
                continue
            score = torch.sigmoid(self.head(f[i:i + 1]))[0]
            out.append(Detections(torch.tensor([[0.0, 0.0, w / 2, h / 2]]), score, torch.tensor([1]), p, True))
        return out


class FakeClassifier(nn.Module):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.config = config
        self.fc = nn.Linear(3, 2)

    def forward(self, images: Tensor, image_sizes: list[tuple[int, int]]) -> Tensor:
        return self.fc(images.mean(dim=(2, 3)) / 255.0)

    def p_defective(self, images: Tensor, image_sizes: list[tuple[int, int]]) -> Tensor:
        return self(images, image_sizes).softmax(-1)[:, 1]


class FakeTwoModel(nn.Module):
    def __init__(self, classifier: FakeClassifier, detector: FakeDetector, threshold: float) -> None:
        super().__init__()
        self.classifier, self.detector, self.threshold = classifier, detector, threshold

    def inference(self, images: Tensor, image_sizes: list[tuple[int, int]],
                  gate_threshold: float | None = None) -> list[Detections]:
        p = self.classifier.p_defective(images, image_sizes)
        thr = self.threshold if gate_threshold is None else gate_threshold
        return [self.detector.inference(images[i:i + 1], [image_sizes[i]])[0] if float(p[i]) >= thr
                else Detections.empty(float(p[i])) for i in range(len(image_sizes))]


def _save(model: nn.Module, path: Path) -> None:
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path))


def _load(model: nn.Module, path: Path) -> None:
    model.load_state_dict(load_file(str(path)))


FAKE_IO = ModelIO(
    detector_config=lambda kw: dict(kw),
    classifier_config=lambda kw: dict(kw),
    build_detector=FakeDetector,
    build_classifier=FakeClassifier,
    save_weights=_save,
    load_weights=_load,
    two_model=FakeTwoModel,  # type: ignore[arg-type]
)


class FakeDataset(torch.utils.data.Dataset):
    """``n`` random 3x32x48 images; image i is defective iff i % 3 != 0 (ids 100 + i)."""

    def __init__(self, n: int = 9) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = [torch.randint(0, 256, (3, 32, 48), dtype=torch.uint8, generator=g) for _ in range(n)]
        self.class_names = ["spot", "thread"]
        self.label_to_category_id = {1: 5, 2: 9}
        self.num_classes = 2

    def __len__(self) -> int:
        return len(self.images)

    def is_defective(self, i: int) -> bool:
        return i % 3 != 0

    def __getitem__(self, i: int) -> Sample:
        boxes = torch.tensor([[2.0, 3.0, 20.0, 30.0]]) if self.is_defective(i) else torch.zeros((0, 4))
        labels = torch.tensor([1 + i % 2]) if self.is_defective(i) else torch.zeros((0,), dtype=torch.int64)
        img = self.images[i]
        if float(torch.rand(())) < 0.5:  # a "flip" that consumes the global RNG like the real loader
            img = img.flip(-1)
        return Sample(img, {"boxes": boxes, "labels": labels, "image_id": 100 + i}, (1.0, 1.0), (32, 48), 100 + i,
                      f"{i}.png")


@pytest.fixture
def fake_io() -> ModelIO:
    return FAKE_IO


@pytest.fixture
def fake_data() -> FakeDataset:
    return FakeDataset()


@pytest.fixture
def fake_collate() -> Any:
    return collate
