"""Shared parts of the synthetic generators: parameters, per-image RNG, normal/split
assignment and COCO writing.

Determinism contract: image ``index`` (0-based; COCO id ``index + 1``, file
``{kind}_{id:06d}.jpg``) is rendered from ``np.random.default_rng([seed, index])`` and its
normal/defective flag only, so the pixels of image ``i`` do not depend on the number of
images ``N`` (the flag does: exactly ``round(N * normal_share)`` images are normal, chosen by
a seeded shuffle). The same arguments give byte-identical images and annotation files.
Benign (unannotated) irregularities are drawn from a child stream of the image's generator
(:func:`benign_rng`), so they never shift the draws of the background or the defects.
"""

from __future__ import annotations

import io
import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from defectnet import __version__
from defectnet.errors import ConfigError, DataError
from defectnet.io import atomic_write_json

GENERATOR_NAME = "defectnet.data.synthetic"
#: Bump when the pixels or boxes produced for the same arguments change (history: docs/data.md).
GENERATOR_VERSION = "2"
#: Default ``benign_rate``: 1.0 draws each kind's documented mean number of benign irregularities.
DEFAULT_BENIGN_RATE = 1.0
#: Largest accepted ``benign_rate`` (5x the documented means already crowds a 612x250 image).
MAX_BENIGN_RATE = 5.0
JPEG_QUALITY = 95
KIND_NAMES: tuple[str, ...] = ("fabric", "bottle")
MIN_SIZE: tuple[int, int] = (96, 64)
MAX_SIZE: tuple[int, int] = (8192, 8192)
#: RNG stream tags for the data-set level shuffles (image streams use ``[seed, index]``).
_NORMAL_STREAM = 0x4E4F524D  # "NORM"
_SPLIT_STREAM = 0x53504C54  # "SPLT"

#: A box in COCO convention: ``(x, y, w, h)`` float pixels.
BBox = tuple[float, float, float, float]


@dataclass(frozen=True)
class Defect:
    """One painted defect: ``category`` is the 1-based class id, ``bbox`` its tight COCO box."""

    category: int
    bbox: BBox


class RenderFn(Protocol):
    """``render(rng, (width, height), defective, benign_rate) -> (uint8 [H, W, 3] RGB, defects)``.

    ``benign_rate`` scales the expected number of benign, unannotated irregularities (0 = none).
    """

    def __call__(self, rng: np.random.Generator, size: tuple[int, int], defective: bool,
                 benign_rate: float = DEFAULT_BENIGN_RATE) -> tuple[np.ndarray, list[Defect]]: ...


def benign_rng(rng: np.random.Generator) -> np.random.Generator:
    """The stream for an image's benign irregularities: a child of ``rng``'s seed sequence
    (``Generator.spawn``), which leaves ``rng``'s own state untouched. So the background and
    defect draws are the same whatever ``benign_rate`` is, and the normal and defective
    renders of one index get the same benign irregularities. Call it once per image ``rng``
    (each call spawns the next child)."""
    try:
        return rng.spawn(1)[0]
    except TypeError as err:  # a Generator built from a bare bit-generator state has no seed sequence
        raise ConfigError("the image generator has no seed sequence to spawn the benign stream from; create it "
                          "with image_rng(seed, index) or np.random.default_rng(seed)") from err


@dataclass(frozen=True)
class KindSpec:
    """What a generator kind provides: its classes (index ``i`` has COCO id ``i + 1``),
    defaults that imitate the real data set, and its renderer."""

    name: str
    classes: tuple[str, ...]
    default_size: tuple[int, int]
    default_normal_share: float
    render: RenderFn
    #: Mean number per image of each benign (unannotated) irregularity at ``benign_rate`` 1.
    benign_means: tuple[tuple[str, float], ...] = ()


def retry(paint_fn: Callable[..., BBox], *args: Any, tries: int = 10) -> BBox:
    """Call a defect painter until it finds room (it raises ValueError, before painting
    anything, when its random shape or position does not fit); never drops a defect."""
    for _ in range(tries - 1):
        try:
            return paint_fn(*args)
        except ValueError:
            continue
    return paint_fn(*args)


def parse_size(text: str) -> tuple[int, int]:
    """Parse ``"WxH"`` (e.g. ``"612x250"``) into ``(width, height)``; raise ConfigError."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if m is None:
        raise ConfigError(f"size {text!r} is not WIDTHxHEIGHT; write it like 612x250 (fabric) or 658x492 (bottle)")
    return int(m.group(1)), int(m.group(2))


def round_half_up(x: float) -> int:
    """``round()`` as people mean it (0.5 goes up), robust to tiny float error."""
    return int(math.floor(x + 0.5 + 1e-9))


@dataclass(frozen=True)
class SynthParams:
    """All generation parameters; every field goes into the COCO ``info`` block.

    size is ``(width, height)``; normal_share and test_share are fractions of ``images``.
    """

    kind: str
    images: int
    normal_share: float
    seed: int
    size: tuple[int, int]
    test_share: float = 0.2
    benign_rate: float = DEFAULT_BENIGN_RATE

    def __post_init__(self) -> None:
        if self.kind not in KIND_NAMES:
            raise ConfigError(f"unknown data set kind {self.kind!r}; use one of {', '.join(KIND_NAMES)}")
        if isinstance(self.images, bool) or not isinstance(self.images, int) or self.images < 1:
            raise ConfigError(f"images must be a positive integer, got {self.images!r}")
        for name in ("normal_share", "test_share"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or not 0.0 <= v <= 1.0:
                flag = "--" + name.replace("_", "-")
                raise ConfigError(f"{name} ({flag}) must be a fraction in [0, 1] (e.g. 0.44), got {v!r}")
        b = self.benign_rate
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b) \
                or not 0.0 <= b <= MAX_BENIGN_RATE:
            raise ConfigError(f"benign_rate (--benign-rate) must be in [0, {MAX_BENIGN_RATE:g}] (1 = the documented "
                              f"means, 0 = no benign irregularities), got {b!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed!r}")
        w, h = self.size
        if not (MIN_SIZE[0] <= w <= MAX_SIZE[0] and MIN_SIZE[1] <= h <= MAX_SIZE[1]):
            raise ConfigError(
                f"size {w}x{h} is out of range; width must be in {MIN_SIZE[0]}..{MAX_SIZE[0]} and height in "
                f"{MIN_SIZE[1]}..{MAX_SIZE[1]} pixels")

    @property
    def n_normal(self) -> int:
        return round_half_up(self.images * self.normal_share)

    @property
    def n_test(self) -> int:
        return round_half_up(self.images * self.test_share)


def image_rng(seed: int, index: int) -> np.random.Generator:
    """The generator that renders image ``index`` (0-based): independent of ``N``."""
    return np.random.default_rng([seed, index])


def normal_flags(params: SynthParams) -> np.ndarray:
    """bool ``[N]``: True for the exactly ``round(N * normal_share)`` normal images."""
    order = np.random.default_rng([params.seed, _NORMAL_STREAM]).permutation(params.images)
    flags = np.zeros(params.images, dtype=bool)
    flags[order[: params.n_normal]] = True
    return flags


def split_is_test(params: SynthParams) -> np.ndarray:
    """bool ``[N]``: True for the ``round(N * test_share)`` test images (random by image,
    not stratified, like the original's 80/20 split)."""
    order = np.random.default_rng([params.seed, _SPLIT_STREAM]).permutation(params.images)
    flags = np.zeros(params.images, dtype=bool)
    flags[order[: params.n_test]] = True
    return flags


def file_name(kind: str, image_id: int) -> str:
    return f"{kind}_{image_id:06d}.jpg"


def encode_jpeg(image: np.ndarray) -> bytes:
    """uint8 ``[H, W, 3]`` RGB -> JPEG bytes (quality 95, no subsampling metadata surprises)."""
    buf = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


@dataclass
class ImageRecord:
    """One generated image as it goes into the COCO file."""

    image_id: int
    file_name: str
    width: int
    height: int
    defects: list[Defect]
    test: bool


@dataclass
class Summary:
    """Counts printed by the CLI: ``images``/``normal`` per split and boxes per class name."""

    images: dict[str, int] = field(default_factory=dict)
    normal: dict[str, int] = field(default_factory=dict)
    boxes: dict[str, int] = field(default_factory=dict)

    def format(self, params: SynthParams) -> str:
        lines = [f"{params.kind}: {params.images} images {params.size[0]}x{params.size[1]}, seed {params.seed}"]
        for split in ("train", "test"):
            n, k = self.images.get(split, 0), self.normal.get(split, 0)
            share = k / n if n else 0.0
            lines.append(f"  {split:5s}: {n:6d} images, {k:6d} normal ({share:.3f})")
        total_n = sum(self.images.values())
        total_k = sum(self.normal.values())
        lines.append(f"  normal share {total_k / max(total_n, 1):.3f} (requested {params.normal_share:.3f})")
        lines.append("  boxes per class: " + ", ".join(f"{c} {n}" for c, n in self.boxes.items()))
        return "\n".join(lines)


def coco_dict(params: SynthParams, spec: KindSpec, records: list[ImageRecord], split: str) -> dict[str, Any]:
    """The COCO dict of one split (``records`` already filtered to it, in id order)."""
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for rec in records:
        images.append({"id": rec.image_id, "file_name": rec.file_name, "width": rec.width, "height": rec.height})
        for d in rec.defects:
            x, y, w, h = (float(v) for v in d.bbox)
            # Annotation ids are assigned later, globally, so they are unique across splits.
            annotations.append({"image_id": rec.image_id, "category_id": d.category, "bbox": [x, y, w, h],
                                "area": w * h, "iscrowd": 0})
    categories = [{"id": i + 1, "name": n, "supercategory": "defect"} for i, n in enumerate(spec.classes)]
    info = {
        "description": f"synthetic {spec.name} defect data imitating the DefectNet data sets",
        "generator": GENERATOR_NAME,
        "generator_version": GENERATOR_VERSION,
        "version": __version__,
        "split": split,
        "parameters": {
            "kind": params.kind, "seed": params.seed, "size": [params.size[0], params.size[1]],
            "images": params.images, "normal_share": params.normal_share, "test_share": params.test_share,
            "classes": list(spec.classes), "jpeg_quality": JPEG_QUALITY,
            "benign_rate": params.benign_rate, "benign_means": dict(spec.benign_means),
        },
    }
    return {"info": info, "images": images, "annotations": annotations, "categories": categories,
            "licenses": []}


def _check_defects(defects: list[Defect], size: tuple[int, int], n_classes: int, index: int) -> None:
    w, h = size
    for d in defects:
        x, y, bw, bh = d.bbox
        if not (1 <= d.category <= n_classes and bw > 0 and bh > 0 and x >= 0 and y >= 0
                and x + bw <= w and y + bh <= h):
            raise DataError(f"generator bug: image index {index} produced an invalid defect {d} for a {w}x{h} "
                            "image; please report it with the command line used")


def generate(params: SynthParams, spec: KindSpec, out: str | Path, *,
             progress: Callable[[int], None] | None = None) -> Summary:
    """Render all images into ``out/images`` and write ``out/annotations/{train,test}.json``.

    The annotation files are written last, so their presence marks a complete data set.
    ``progress(k)`` is called after each image (k = images done).
    """
    if params.kind != spec.name:
        raise ConfigError(f"parameters are for kind {params.kind!r} but the generator is {spec.name!r}")
    out = Path(out)
    img_dir = out / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    normal = normal_flags(params)
    is_test = split_is_test(params)
    records: list[ImageRecord] = []
    for index in range(params.images):
        rgb, defects = spec.render(image_rng(params.seed, index), params.size, not bool(normal[index]),
                                   params.benign_rate)
        if rgb.shape != (params.size[1], params.size[0], 3) or rgb.dtype != np.uint8:
            raise DataError(f"generator bug: image index {index} has shape {rgb.shape} {rgb.dtype}")
        _check_defects(defects, params.size, len(spec.classes), index)
        image_id = index + 1
        name = file_name(spec.name, image_id)
        (img_dir / name).write_bytes(encode_jpeg(rgb))
        records.append(ImageRecord(image_id, name, params.size[0], params.size[1], defects, bool(is_test[index])))
        if progress is not None:
            progress(index + 1)
    summary = Summary(boxes=dict.fromkeys(spec.classes, 0))
    next_ann = 1
    for split in ("train", "test"):
        split_records = [r for r in records if r.test == (split == "test")]
        data = coco_dict(params, spec, split_records, split)
        for ann in data["annotations"]:
            ann["id"] = next_ann
            next_ann += 1
        counts = Counter(spec.classes[a["category_id"] - 1] for a in data["annotations"])
        for c, n in counts.items():
            summary.boxes[c] += n
        summary.images[split] = len(split_records)
        summary.normal[split] = sum(1 for r in split_records if not r.defects)
        atomic_write_json(out / "annotations" / f"{split}.json", data)
    return summary
