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
    """One image to draw: boxes are COCO ``(x, y, w, h)`` with their class names."""

    path: Path
    file_name: str
    width: int
    height: int
    boxes: tuple[tuple[tuple[float, float, float, float], int, str], ...]


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
    """Draw the grid (see the module docstring for its size). Normal images are captioned
    "normal", defective ones with their box count; each box carries its class name."""
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
        if not it.path.is_file():
            raise DataError(f"image {it.path} listed in the annotations is missing; regenerate the data set")
        ox, oy = (k % cols) * cell_width, (k // cols) * (cell_h + CAPTION_HEIGHT)
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
        caption = f"{it.file_name}  " + (f"{len(it.boxes)} defect(s)" if it.boxes else "normal")
        draw.text((ox + 3, oy + cell_h + 2), caption, fill=(230, 230, 230) if it.boxes else (120, 220, 120),
                  font=font)
    return sheet


def write_contact_sheet(root: str | Path, out: str | Path, *, split: str = "test", n: int = 16,
                        cols: int = 4, cell_width: int = 320) -> Path:
    """Draw the first ``n`` images (by id) of ``root``'s split into the PNG ``out``."""
    if n < 1:
        raise ConfigError(f"n must be at least 1 image, got {n}")
    sheet = render_sheet(load_split(root, split)[:n], cols=cols, cell_width=cell_width)
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return atomic_write_bytes(out, buf.getvalue())
