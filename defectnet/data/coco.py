"""COCO-format detection data set with DefectNet's notion of *normal* images.

A normal image is one with no annotations, or whose annotations all belong to a
background category (the original DefectNet marked normal images with a dummy box of COCO
category 0, "背景"; both conventions load the same way). Background annotations and
categories are removed; the remaining categories get contiguous labels ``1..K`` in
ascending COCO id order. Every image keeps its COCO id.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pycocotools.coco import COCO
from torch import Tensor
from torch.utils.data import Dataset

from defectnet.data.image_io import read_image
from defectnet.data.transforms import DEFAULT_SCALE, SIZE_DIVISOR, hflip, pad_batch, resize
from defectnet.errors import ConfigError, DataError
from defectnet.structures import ImageBatch, Target

log = logging.getLogger(__name__)

#: The original's background category: COCO id 0, named "背景" ("background").
DEFAULT_BACKGROUND_IDS: tuple[int, ...] = (0,)
SPLITS = ("train", "test")


@dataclass
class Sample:
    """One loaded image. image: uint8 ``[3, h, w]`` resized (not padded); target boxes are
    in the resized image's coordinates; scale_factor ``(sx, sy)`` maps original to resized."""

    image: Tensor
    target: Target
    scale_factor: tuple[float, float]
    original_size: tuple[int, int]
    image_id: int
    file_name: str


@dataclass(frozen=True)
class _Record:
    image_id: int
    file_name: str
    width: int
    height: int
    boxes: tuple[tuple[float, float, float, float], ...]  # xyxy, original coordinates
    labels: tuple[int, ...]


def _fail(ann_file: Path, problem: str) -> DataError:
    return DataError(f"annotation file {ann_file}: {problem}")


def _load_json(ann_file: Path) -> dict[str, Any]:
    try:
        with open(ann_file, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise DataError(f"annotation file {ann_file} does not exist; check --data or the path") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _fail(ann_file, f"is not valid JSON ({e}); regenerate or repair it") from None
    if not isinstance(data, dict):
        raise _fail(ann_file, "top level must be a JSON object with images/annotations/categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise _fail(ann_file, f"missing or non-list field {key!r}; it is not a COCO detection file")
    return data


class CocoDataset(Dataset[Sample]):
    """A COCO detection file + image folder as DefectNet training/evaluation data.

    ann_file: the COCO JSON. image_dir: folder the ``file_name`` fields are relative to
    (default: ``<ann_file>/../../images``, the layout of ``defectnet-synth``).
    scale: ``(long, short)`` keep-ratio resize limit. train: enables random horizontal flip
    with probability ``flip_prob``. background_category_ids: categories that mark normal
    images (their annotations are dropped).
    """

    def __init__(self, ann_file: str | Path, image_dir: str | Path | None = None, *,
                 scale: tuple[int, int] = DEFAULT_SCALE, train: bool = False, flip_prob: float = 0.5,
                 background_category_ids: Iterable[int] = DEFAULT_BACKGROUND_IDS) -> None:
        if not 0.0 <= flip_prob <= 1.0:
            raise ConfigError(f"flip_prob must be in [0, 1], got {flip_prob}")
        if len(scale) != 2 or min(scale) < SIZE_DIVISOR:
            raise ConfigError(f"scale must be (long, short) of at least {SIZE_DIVISOR} px, got {scale}")
        self.ann_file = Path(ann_file)
        self.image_dir = Path(image_dir) if image_dir is not None else self.ann_file.parent.parent / "images"
        self.scale = (int(scale[0]), int(scale[1]))
        self.train = train
        self.flip_prob = flip_prob
        self.background_category_ids = tuple(sorted({int(i) for i in background_category_ids}))
        self._raw = _load_json(self.ann_file)
        self._build_index()

    # -- index -----------------------------------------------------------------------------
    def _build_index(self) -> None:
        f, raw = self.ann_file, self._raw
        background = set(self.background_category_ids)
        try:
            categories = sorted((int(c["id"]), str(c["name"])) for c in raw["categories"])
            images = [(int(im["id"]), str(im["file_name"]), int(im["width"]), int(im["height"]))
                      for im in raw["images"]]
        except (KeyError, TypeError, ValueError) as e:
            raise _fail(f, f"an image or category entry lacks a valid field ({e!r})") from None
        defect_cats = [(cid, name) for cid, name in categories if cid not in background]
        if not defect_cats:
            raise _fail(f, "has no defect categories besides the background ones "
                           f"{sorted(background)}; check background_category_ids")
        self.category_ids = [cid for cid, _ in defect_cats]
        self.class_names = [name for _, name in defect_cats]
        self.label_to_category_id = {i + 1: cid for i, cid in enumerate(self.category_ids)}
        cat_to_label = {cid: lab for lab, cid in self.label_to_category_id.items()}
        known_cats = {cid for cid, _ in categories}

        per_image: dict[int, list[tuple[tuple[float, float, float, float], int]]] = {}
        sizes: dict[int, tuple[int, int]] = {}
        for image_id, _, w, h in images:
            if image_id in sizes:
                raise _fail(f, f"image id {image_id} appears twice; ids must be unique")
            if w <= 0 or h <= 0:
                raise _fail(f, f"image {image_id} has size {w}x{h}; width and height must be positive")
            sizes[image_id] = (w, h)
            per_image[image_id] = []
        skipped = 0
        for ann in raw["annotations"]:
            try:
                image_id, cid = int(ann["image_id"]), int(ann["category_id"])
                x, y, bw, bh = (float(v) for v in ann["bbox"])
            except (KeyError, TypeError, ValueError) as e:
                raise _fail(f, f"annotation {ann.get('id', '?')} lacks a valid image_id/category_id/bbox ({e!r})"
                            ) from None
            if image_id not in sizes:
                raise _fail(f, f"annotation {ann.get('id')} refers to unknown image id {image_id}")
            if cid not in known_cats:
                raise _fail(f, f"annotation {ann.get('id')} has category {cid}, which is not in categories")
            if not all(math.isfinite(v) for v in (x, y, bw, bh)) or bw < 0 or bh < 0:
                raise _fail(f, f"annotation {ann.get('id')} has invalid bbox {ann['bbox']} (need finite x,y,w>=0,h>=0)")
            if cid in background:
                continue
            if bw < 1 or bh < 1 or ann.get("iscrowd", 0):
                skipped += 1  # degenerate or crowd boxes: kept for COCO evaluation, not trained on
                continue
            per_image[image_id].append(((x, y, x + bw, y + bh), cat_to_label[cid]))
        if skipped:
            log.warning("%s: %d crowd or sub-pixel boxes are not used as training targets", f, skipped)

        self._records = [
            _Record(image_id, name, w, h, tuple(b for b, _ in per_image[image_id]),
                    tuple(lab for _, lab in per_image[image_id]))
            for image_id, name, w, h in images
        ]
        missing = [r.file_name for r in self._records if not (self.image_dir / r.file_name).is_file()]
        if missing:
            raise DataError(
                f"{len(missing)} image(s) listed in {f} are missing under {self.image_dir}, e.g. "
                f"{missing[:3]}; fix the image folder (image_dir) or the file_name fields")

    # -- queries that need no image decode ---------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    @property
    def image_ids(self) -> list[int]:
        return [r.image_id for r in self._records]

    def is_defective(self, index: int) -> bool:
        """Ground truth: the image has at least one defect box."""
        return len(self._records[index].boxes) > 0

    def image_info(self, index: int) -> tuple[int, str, int, int]:
        """``(image_id, file_name, width, height)`` of an image, without decoding it."""
        r = self._records[index]
        return r.image_id, r.file_name, r.width, r.height

    def boxes_of(self, index: int) -> tuple[Tensor, Tensor]:
        """Original-coordinate xyxy boxes ``[N, 4]`` and labels ``[N]`` of an image."""
        r = self._records[index]
        return (torch.tensor(r.boxes, dtype=torch.float32).reshape(-1, 4),
                torch.tensor(r.labels, dtype=torch.int64))

    def coco_gt(self) -> COCO:
        """A pycocotools COCO of this split: defect categories only, every image kept."""
        background = set(self.background_category_ids)
        data = {
            "images": self._raw["images"],
            "annotations": [dict(a, area=a.get("area", a["bbox"][2] * a["bbox"][3]), iscrowd=a.get("iscrowd", 0))
                            for a in self._raw["annotations"] if int(a["category_id"]) not in background],
            "categories": [c for c in self._raw["categories"] if int(c["id"]) not in background],
        }
        coco = COCO()
        coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        return coco

    # -- loading ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> Sample:
        r = self._records[index]
        path = self.image_dir / r.file_name
        image = read_image(path)
        if (image.shape[-1], image.shape[-2]) != (r.width, r.height):
            raise DataError(
                f"image {path} is {image.shape[-1]}x{image.shape[-2]} but {self.ann_file} says "
                f"{r.width}x{r.height}; fix the annotation's width/height or the image")
        boxes, labels = self.boxes_of(index)
        image, scaled, factor = resize(image, boxes, self.scale)
        assert scaled is not None
        if self.train and self.flip_prob > 0 and float(torch.rand(())) < self.flip_prob:
            image, scaled = hflip(image, scaled)
        target: Target = {"boxes": scaled, "labels": labels, "image_id": r.image_id}
        return Sample(image, target, factor, (r.height, r.width), r.image_id, r.file_name)


def load_split(data_dir: str | Path, split: str, **kwargs: Any) -> CocoDataset:
    """The ``train`` or ``test`` split of a folder laid out as ``defectnet-synth`` writes it:
    ``DIR/annotations/{split}.json`` + ``DIR/images/``. kwargs go to :class:`CocoDataset`."""
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {SPLITS}, got {split!r}")
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist; create it with defectnet-synth or point --data at it")
    return CocoDataset(root / "annotations" / f"{split}.json", root / "images", **kwargs)


def collate(samples: list[Sample]) -> tuple[ImageBatch, list[Target]]:
    """Pad a list of samples into an :class:`ImageBatch` plus their targets."""
    batch = ImageBatch(
        images=pad_batch([s.image for s in samples]),
        image_sizes=[(int(s.image.shape[-2]), int(s.image.shape[-1])) for s in samples],
        scale_factors=[s.scale_factor for s in samples],
        original_sizes=[s.original_size for s in samples],
    )
    return batch, [s.target for s in samples]
