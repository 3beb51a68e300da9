"""The calibration set: images of the TRAIN split, stratified by label and by input size.

INT8 ranges are only as good as the images they were measured on. Two pain points of
other toolkits shape the selection (``docs/architecture.md``, "Precision"): calibration that only sees one
input shape, and INT8 that loses the defects. So the train split is divided into strata
``(normal|defective, padded input size H x W)`` -- the size the gate graph really sees
after the keep-ratio resize and padding of the engine's preprocessing -- and every
stratum gets its proportional share of ``size`` images (largest-remainder rounding, at
least one image per stratum when ``size`` allows). Within a stratum the images are a
seeded random sample, so the same data, size and seed always give the same set.

The test split is never used: it is what the accuracy gate measures on.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from defectnet.data.transforms import SIZE_DIVISOR, Preprocessor, rescale_size
from defectnet.errors import ConfigError, DataError

DEFAULT_CALIB_SIZE = 300
#: Below this many images the ranges get noisy (a warning, not an error).
MIN_RECOMMENDED = 100
CALIBRATION_SPLIT = "train"


@dataclass(frozen=True)
class CalibrationImage:
    """One selected image: its index in the split, identity, label and padded input size."""

    index: int
    image_id: int
    file_name: str
    defective: bool
    padded_size: tuple[int, int]

    @property
    def stratum(self) -> str:
        return stratum_name(self.defective, self.padded_size)


def stratum_name(defective: bool, padded_size: tuple[int, int]) -> str:
    return f"{'defective' if defective else 'normal'}@{padded_size[0]}x{padded_size[1]}"


def padded_input_size(height: int, width: int, scale: tuple[int, int], divisor: int = SIZE_DIVISOR
                      ) -> tuple[int, int]:
    """(H, W) of the gate graph's input for an original ``height x width`` image."""
    h, w = rescale_size(height, width, scale)
    return -(-h // divisor) * divisor, -(-w // divisor) * divisor


@dataclass
class CalibrationSet:
    """The selected images plus what the engine manifest records about them."""

    data_dir: Path
    image_dir: Path
    split: str
    scale: tuple[int, int]
    size_divisor: int
    requested: int
    seed: int
    images: tuple[CalibrationImage, ...]
    strata: dict[str, dict[str, int]]
    notes: list[str] = field(default_factory=list)
    _digest: str | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def preprocessor(self) -> Preprocessor:
        return Preprocessor(scale=self.scale, size_divisor=self.size_divisor)

    def digest(self) -> str:
        """SHA-256 over the selection (file names in order, each file's SHA-256) and the
        preprocessing: any changed image, selection or scale changes it."""
        if self._digest is None:
            from defectnet.io import sha256_file

            h = hashlib.sha256()
            h.update(json.dumps({"scale": list(self.scale), "size_divisor": self.size_divisor}).encode())
            for im in self.images:
                path = self.image_dir / im.file_name
                try:
                    content = sha256_file(path)
                except OSError as e:
                    raise DataError(f"calibration image {path} cannot be read ({e}); check --data") from None
                h.update(f"{im.file_name}\0{content}\n".encode())
            self._digest = h.hexdigest()
        return self._digest

    def provenance(self) -> dict[str, Any]:
        return {"data_dir": str(self.data_dir), "split": self.split, "requested": self.requested,
                "selected": len(self.images), "seed": self.seed, "scale": list(self.scale),
                "size_divisor": self.size_divisor, "stratified_by": ["label (normal/defective)", "padded input size"],
                "strata": self.strata, "images_sha256": self.digest(),
                "image_ids": [im.image_id for im in self.images], "notes": list(self.notes)}

    def load(self, image: CalibrationImage) -> tuple[np.ndarray, np.ndarray]:
        """``(images uint8 [1, 3, H, W], image_sizes int64 [1, 2])`` of one selected image,
        preprocessed exactly as the runtime does (:class:`Preprocessor`)."""
        from defectnet.data.image_io import read_image

        batch = self.preprocessor([read_image(self.image_dir / image.file_name)])
        return batch.images.numpy(), np.asarray(batch.image_sizes, dtype=np.int64)

    def batches(self) -> Iterator[tuple[CalibrationImage, np.ndarray, np.ndarray]]:
        """``(image, images, image_sizes)`` for every selected image, in order (see :meth:`load`)."""
        for im in self.images:
            yield (im, *self.load(im))


def _allocate(sizes: dict[str, int], k: int) -> dict[str, int]:
    """Largest-remainder allocation of ``k`` over strata of ``sizes`` (at least one each when
    ``k`` >= the number of strata); deterministic tie-break by stratum name."""
    n = sum(sizes.values())
    names = sorted(sizes)
    floor_one = k >= len(names)
    quota = {s: k * sizes[s] / n for s in names}
    alloc = {s: min(sizes[s], max(1 if floor_one else 0, math.floor(quota[s]))) for s in names}
    floor = 1 if floor_one else 0
    while sum(alloc.values()) > k:  # the at-least-one rule overshot: trim the most over-served share
        s = max((x for x in names if alloc[x] > floor), key=lambda x: (alloc[x] - quota[x], alloc[x], x))
        alloc[s] -= 1
    while sum(alloc.values()) < k:
        room = [s for s in names if alloc[s] < sizes[s]]
        s = max(room, key=lambda x: (quota[x] - alloc[x], sizes[x], x))
        alloc[s] += 1
    return alloc


def select_calibration_set(data_dir: str | os.PathLike[str], size: int = DEFAULT_CALIB_SIZE, *,
                           scale: tuple[int, int], size_divisor: int = SIZE_DIVISOR, seed: int = 0,
                           split: str = CALIBRATION_SPLIT,
                           background_category_ids: tuple[int, ...] = (0,)) -> CalibrationSet:
    """Select ``size`` images of ``data_dir``'s ``split`` (see the module docstring).

    Uses the whole split when it has fewer images; below :data:`MIN_RECOMMENDED` images the
    ranges get noisy. Both go into ``notes`` (the builder prints them). No image is decoded here.
    """
    from defectnet.data.coco import load_split

    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ConfigError(f"--calib-size must be a positive number of images, got {size!r}")
    dataset = load_split(Path(data_dir), split, scale=scale, train=False,
                         background_category_ids=background_category_ids)
    if len(dataset) == 0:
        raise DataError(f"the {split} split of {data_dir} has no images; calibration needs the train split "
                        "(create it with defectnet-synth or point --data at a COCO folder)")
    candidates: dict[str, list[CalibrationImage]] = {}
    for i in range(len(dataset)):
        image_id, file_name, w, h = dataset.image_info(i)
        im = CalibrationImage(i, int(image_id), file_name, bool(dataset.is_defective(i)),
                              padded_input_size(h, w, scale, size_divisor))
        candidates.setdefault(im.stratum, []).append(im)
    notes: list[str] = []
    total = len(dataset)
    if size >= total:
        k = total
        if size > total:
            notes.append(f"the {split} split has only {total} images, fewer than --calib-size {size}: all are used")
    else:
        k = size
    if k < MIN_RECOMMENDED:
        notes.append(f"calibrating on {k} images (< {MIN_RECOMMENDED}) gives noisy INT8 ranges; use "
                     f"--calib-size {DEFAULT_CALIB_SIZE} (the default) on a train split of that size")
    alloc = _allocate({s: len(v) for s, v in candidates.items()}, k)
    rng = np.random.default_rng(seed)
    chosen: list[CalibrationImage] = []
    for s in sorted(candidates):
        pool = candidates[s]
        order = rng.permutation(len(pool))
        chosen.extend(pool[j] for j in sorted(int(x) for x in order[: alloc[s]]))
    chosen.sort(key=lambda im: (im.padded_size, im.index))
    strata = {s: {"available": len(candidates[s]), "selected": alloc[s]} for s in sorted(candidates)}
    return CalibrationSet(Path(data_dir), dataset.image_dir, split, (int(scale[0]), int(scale[1])), size_divisor,
                          size, seed, tuple(chosen), strata, notes)
