"""The measured image list: a test split, optionally resampled to a normal share or capped.

:class:`ImageSet` is a view of a :class:`~defectnet.data.coco.CocoDataset` through a list of
positions (which may repeat when a class was drawn with replacement). Its images are
renumbered ``1..n`` in measurement order, and :meth:`ImageSet.coco_gt` holds exactly those
images (a repeated image appears once per draw), so COCO mAP counts each measured image
once and never counts ground truth of an image that was not measured.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pycocotools.coco import COCO

from defectnet.bench.resample import Resample, resample_indices, subsample
from defectnet.errors import DataError


@dataclass
class ImageSet:
    """``indices`` into ``dataset`` in measurement order; ``selection`` records how they
    were chosen (for results.json)."""

    dataset: Any
    indices: list[int]
    selection: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.indices)

    def is_defective(self, k: int) -> bool:
        return bool(self.dataset.is_defective(self.indices[k]))

    @property
    def truth(self) -> list[bool]:
        return [self.is_defective(k) for k in range(len(self))]

    @property
    def num_normal(self) -> int:
        return sum(1 for t in self.truth if not t)

    @property
    def label_to_category_id(self) -> dict[int, int]:
        return dict(self.dataset.label_to_category_id)

    @property
    def class_names(self) -> list[str]:
        return list(self.dataset.class_names)

    def path(self, k: int) -> Path:
        _, name, _, _ = self.dataset.image_info(self.indices[k])
        return Path(self.dataset.image_dir) / name

    def image_id(self, k: int) -> int:
        """The renumbered COCO id of measured image ``k`` (``k + 1``)."""
        return k + 1

    def source_image_id(self, k: int) -> int:
        return int(self.dataset.image_info(self.indices[k])[0])

    def coco_gt(self) -> COCO:
        """Ground truth of the measured images only, renumbered ``1..n`` (see module doc)."""
        base = self.dataset.coco_gt().dataset
        images = {int(im["id"]): im for im in base["images"]}
        anns: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for a in base["annotations"]:
            anns[int(a["image_id"])].append(a)
        out_images: list[dict[str, Any]] = []
        out_anns: list[dict[str, Any]] = []
        for k in range(len(self)):
            src = self.source_image_id(k)
            out_images.append(dict(images[src], id=self.image_id(k)))
            for a in anns.get(src, []):
                out_anns.append(dict(a, id=len(out_anns) + 1, image_id=self.image_id(k)))
        coco = COCO()
        coco.dataset = {"images": out_images, "annotations": out_anns, "categories": list(base["categories"])}
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        return coco


def _describe(r: Resample, how: str, requested: float | None, source_n: int, source_normal: int) -> dict[str, Any]:
    return {"how": how, "requested_normal_share": requested, "normal_share": r.share, "num_images": len(r.indices),
            "num_normal": r.num_normal, "num_defective": r.num_defective,
            "with_replacement": list(r.replaced), "seed": r.seed, "source_images": source_n,
            "source_normal_share": source_normal / source_n if source_n else None}


def build_image_set(data_dir: str | os.PathLike[str], split: str = "test", *, normal_share: float | None = None,
                    max_images: int | None = None, seed: int = 0, dataset: Any = None) -> ImageSet:
    """The measured images of ``data_dir``'s ``split``.

    normal_share: resample to this share (:func:`resample_indices`; ``max_images`` or the
    split's size images). max_images: otherwise cap the set keeping its own share
    (:func:`subsample`). Neither: the whole split in file order. dataset: a loaded data set
    to use instead of loading ``data_dir`` (tests).
    """
    if dataset is None:
        from defectnet.data.coco import load_split

        dataset = load_split(Path(data_dir), split, train=False)
    n = len(dataset)
    if n == 0:
        raise DataError(f"the {split} split of {data_dir} has no images; check --data and --split")
    truth = [bool(dataset.is_defective(i)) for i in range(n)]
    normal = sum(1 for t in truth if not t)
    where = {"data": str(data_dir), "split": split}
    if normal_share is not None:
        size = min(n, max_images) if max_images else n
        r = resample_indices(truth, normal_share, size, seed)
        return ImageSet(dataset, list(r.indices),
                        {**where, **_describe(r, "normal-share resample", normal_share, n, normal)})
    if max_images is not None and max_images < n:
        r = subsample(truth, max_images, seed)
        return ImageSet(dataset, list(r.indices),
                        {**where, **_describe(r, "subsample keeping the share", None, n, normal)})
    share = normal / n
    return ImageSet(dataset, list(range(n)), {**where, "how": "whole split, file order", "requested_normal_share": None,
                                              "normal_share": share, "num_images": n, "num_normal": normal,
                                              "num_defective": n - normal, "with_replacement": [], "seed": None,
                                              "source_images": n, "source_normal_share": share})
