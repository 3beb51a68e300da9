"""Contact sheets: a PNG grid of a COCO split's images with their boxes and class names.

Works on any ``DIR/images`` + ``DIR/annotations/{split}.json`` folder (synthetic or real).
Sheet size: ``cols * cell_width`` by ``rows * (cell_height + CAPTION_HEIGHT)`` pixels with
``rows = ceil(n_shown / cols)`` and ``cell_height = round(cell_width * max(h / w))`` over
the shown images.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from defectnet.errors import ConfigError, DataError
from defectnet.io import atomic_write_bytes

CAPTION_HEIGHT = 16
#: Box colours, cycled by category id.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (255, 64, 64), (64, 255, 64), (255, 200, 0), (0, 200, 255), (255, 64, 255),
    (255, 140, 0), (160, 255, 160), (180, 120, 255), (255, 255, 255), (0, 255, 200),
)


@dataclass(frozen=True)
class SheetImage:
    """One image to draw: boxes are COCO ``(x, y, w, h)`` with their class names. caption:
    the text under the image (None: the file name and "normal" or its box count); good: the
    caption's colour, green for True, red for False, white for None (None with the default
    caption: green for an image without boxes)."""

    path: Path
    file_name: str
    width: int
    height: int
    boxes: tuple[tuple[tuple[float, float, float, float], int, str], ...]
    caption: str | None = None
    good: bool | None = None
    draw_image: bool = True

    def caption_and_colour(self) -> tuple[str, tuple[int, int, int]]:
        good = (not self.boxes) if self.caption is None and self.good is None else self.good
        text = self.caption if self.caption is not None else (
            f"{self.file_name}  " + (f"{len(self.boxes)} defect(s)" if self.boxes else "normal"))
        return text, {True: (120, 220, 120), False: (255, 110, 110), None: (230, 230, 230)}[good]


def load_split(root: str | Path, split: str = "test") -> list[SheetImage]:
    """Read ``root/annotations/{split}.json``; images in id order. Raises DataError."""
    root = Path(root)
    ann_path = root / "annotations" / f"{split}.json"
    if not ann_path.is_file():
        have = sorted(p.stem for p in (root / "annotations").glob("*.json"))
        raise DataError(f"{ann_path} does not exist; splits found under {root / 'annotations'}: "
                        f"{', '.join(have) or 'none'} (pass --split, or generate data with defectnet-synth)")
    try:
        data: dict[str, Any] = json.loads(ann_path.read_text(encoding="utf-8"))
        names = {int(c["id"]): str(c["name"]) for c in data.get("categories", [])}
        boxes: dict[int, list[tuple[tuple[float, float, float, float], int, str]]] = {}
        for a in data.get("annotations", []):
            x, y, w, h = (float(v) for v in a["bbox"])
            cid = int(a["category_id"])
            boxes.setdefault(int(a["image_id"]), []).append(((x, y, w, h), cid, names.get(cid, str(cid))))
        return [SheetImage(root / "images" / im["file_name"], str(im["file_name"]), int(im["width"]),
                           int(im["height"]), tuple(boxes.get(int(im["id"]), [])))
                for im in sorted(data["images"], key=lambda im: int(im["id"]))]
    except (KeyError, TypeError, ValueError) as err:
        raise DataError(f"{ann_path} is not a valid COCO detection file ({err!r}); regenerate it") from err


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (OSError, TypeError):  # Pillow without FreeType
        return ImageFont.load_default()


def render_sheet(items: list[SheetImage], *, cols: int = 4, cell_width: int = 320) -> Image.Image:
    """Draw the grid (see the module docstring for its size). Each image is captioned with its
    :meth:`SheetImage.caption_and_colour`; each box carries its class name."""
    if not items:
        raise DataError("no images to draw: the split is empty")
    if cols < 1 or cell_width < 32:
        raise ConfigError(f"cols must be >= 1 and cell width >= 32 pixels, got cols={cols}, width={cell_width}")
    cell_h = round(cell_width * max(it.height / it.width for it in items))
    rows = math.ceil(len(items) / cols)
    sheet = Image.new("RGB", (cols * cell_width, rows * (cell_h + CAPTION_HEIGHT)), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    font = _font(11)
    for k, it in enumerate(items):
        ox, oy = (k % cols) * cell_width, (k // cols) * (cell_h + CAPTION_HEIGHT)
        f = min(cell_width / it.width, cell_h / it.height)
        if it.draw_image:
            if not it.path.is_file():
                raise DataError(f"image {it.path} listed in the annotations is missing; regenerate the data set")
            with Image.open(it.path) as im:
                f = min(cell_width / im.width, cell_h / im.height)
                tw, th = max(1, round(im.width * f)), max(1, round(im.height * f))
                sheet.paste(im.convert("RGB").resize((tw, th), Image.Resampling.BILINEAR), (ox, oy))
        for (x, y, w, h), cid, name in it.boxes:
            color = PALETTE[(cid - 1) % len(PALETTE)]
            x0, y0 = ox + x * f, oy + y * f
            draw.rectangle([x0, y0, x0 + max(w * f, 1), y0 + max(h * f, 1)], outline=color, width=1)
            ty = y0 - 11 if y0 - 11 >= oy else y0 + h * f + 1
            draw.text((x0, ty), name, fill=color, font=font)
        caption, colour = it.caption_and_colour()
        draw.text((ox + 3, oy + cell_h + 2), caption, fill=colour, font=font)
    return sheet


def write_sheet(items: list[SheetImage], out: str | Path, *, cols: int = 4, cell_width: int = 320) -> Path:
    """:func:`render_sheet` written atomically as the PNG ``out``."""
    buf = io.BytesIO()
    render_sheet(items, cols=cols, cell_width=cell_width).save(buf, format="PNG")
    return atomic_write_bytes(out, buf.getvalue())


def write_contact_sheet(root: str | Path, out: str | Path, *, split: str = "test", n: int = 16,
                        cols: int = 4, cell_width: int = 320) -> Path:
    """Draw the first ``n`` images (by id) of ``root``'s split into the PNG ``out``."""
    if n < 1:
        raise ConfigError(f"n must be at least 1 image, got {n}")
    return write_sheet(load_split(root, split)[:n], out, cols=cols, cell_width=cell_width)
