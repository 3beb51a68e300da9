"""A contact sheet of inspection results: the OK/NG verdicts of a ``defectnet-infer`` record
file drawn as a PNG grid, each image with its detections and a caption
``NAME  NG 2 def. P=0.97`` (red) / ``NAME  OK P=0.03`` (green) / ``NAME  ERROR reason``.

    defectnet-contact-sheet --records runs/demo/infer/results.jsonl --out sheet.png

Which records are drawn: up to ``n`` verdict records, NG and OK alternating (so a sheet of a
mostly good line still shows its NG images), in file order within each verdict; then error
records if room is left. Boxes are the records' ``detections`` (original pixels, drawn at
the cell's scale) with their class names and scores.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from itertools import chain, zip_longest
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from defectnet.data.contact_sheet import SheetImage, write_sheet
from defectnet.errors import DataError


def read_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The complete JSON records of a record file in file order (a torn last line, the mark of
    an interrupted writer, is left out). Raises DataError for a missing or unreadable file."""
    path = Path(path)
    try:
        lines = path.read_bytes().split(b"\n")
    except OSError as e:
        raise DataError(f"cannot read the record file {path} ({e.strerror or e}); pass the --out file of "
                        "defectnet-infer") from e
    records = []
    for number, line in enumerate(lines[:-1], 1):  # the part after the last newline is torn or empty
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path} line {number} is not JSON ({e.msg}); is it a defectnet-infer record file?") from e
        if not isinstance(record, dict) or "verdict" not in record:
            raise DataError(f"{path} line {number} is not an inspection record (no 'verdict'); pass the --out file "
                            "of defectnet-infer")
        records.append(record)
    return records


def pick(records: Iterable[Mapping[str, Any]], n: int) -> list[Mapping[str, Any]]:
    """Up to ``n`` records: NG and OK alternating, then errors (see the module docstring)."""
    by_verdict: dict[str, list[Mapping[str, Any]]] = {"NG": [], "OK": [], "ERROR": []}
    for r in records:
        by_verdict.setdefault(str(r["verdict"]), []).append(r)
    verdicts = [r for pair in zip_longest(by_verdict["NG"], by_verdict["OK"]) for r in pair if r is not None]
    others = [r for v, rs in by_verdict.items() if v not in ("NG", "OK") for r in rs]
    return list(chain(verdicts, others))[:n]


def sheet_item(record: Mapping[str, Any]) -> SheetImage:
    """The :class:`SheetImage` of one record (its image is opened for the size of an error
    record, whose ``original_size`` is absent)."""
    path = Path(str(record["image"]))
    name, verdict = path.name, str(record["verdict"])
    if verdict == "ERROR":
        try:
            with Image.open(path) as im:
                (width, height), readable = im.size, True
        except (OSError, UnidentifiedImageError):
            (width, height), readable = (64, 16), False  # an empty cell (wide: it sets no row height)
        reason = (record.get("error") or {}).get("reason", "")
        return SheetImage(path, name, width, height, (), f"{name}  ERROR {reason}", False, draw_image=readable)
    height, width = (int(v) for v in record["original_size"])  # [H, W]
    boxes = tuple(((float(x0), float(y0), float(x1) - float(x0), float(y1) - float(y0)), int(d["label"]),
                   f"{d['class_name']} {float(d['score']):.2f}")
                  for d in record["detections"] for x0, y0, x1, y1 in [d["box"]])
    p = record.get("p_defective")
    gate = "" if p is None else f" P={float(p):.2f}"
    text = f"{name}  NG {len(boxes)} def.{gate}" if verdict == "NG" else f"{name}  OK{gate}"
    return SheetImage(path, name, width, height, boxes, text, verdict == "OK")


def write_results_sheet(records: str | os.PathLike[str], out: str | os.PathLike[str], *, n: int = 16,
                        cols: int = 4, cell_width: int = 320) -> Path:
    """Draw ``n`` records of the record file ``records`` (see :func:`pick`) into the PNG ``out``.
    Raises DataError when the file has no records or an image is gone."""
    chosen = pick(read_records(records), n)
    if not chosen:
        raise DataError(f"{records} holds no records; run defectnet-infer first")
    items = [sheet_item(r) for r in chosen]
    missing = [str(it.path) for it in items if it.draw_image and not it.path.is_file()]
    if missing:
        raise DataError(f"{len(missing)} image(s) of {records} no longer exist (first: {missing[0]}); draw the sheet "
                        "where the inspected images are")
    return write_sheet(items, Path(out), cols=cols, cell_width=cell_width)


__all__ = ["pick", "read_records", "sheet_item", "write_results_sheet"]
