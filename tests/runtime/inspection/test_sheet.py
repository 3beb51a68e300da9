"""The contact sheet of inspection records: which records, their captions and boxes, bad files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from defectnet.errors import DataError
from defectnet.runtime.inspection.sheet import pick, read_records, sheet_item, write_results_sheet


def _record(path: Path, verdict: str, p: float | None = 0.5, detections: list[dict[str, Any]] | None = None
            ) -> dict[str, Any]:
    if verdict == "ERROR":
        return {"key": str(path), "image": str(path), "verdict": "ERROR",
                "error": {"reason": "decode_error", "message": "cannot decode"}}
    return {"key": str(path), "image": str(path), "verdict": verdict, "p_defective": p,
            "detections": detections or [], "original_size": [40, 100]}


def _write(path: Path, records: list[dict[str, Any]], torn: bytes = b"") -> Path:
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in records) + torn)
    return path


def test_pick_alternates_ng_and_ok_then_errors(tmp_path: Path) -> None:
    recs = [_record(tmp_path / f"{v}{i}.png", v) for i, v in enumerate(["OK", "OK", "OK", "NG", "ERROR", "NG"])]
    assert [r["verdict"] for r in pick(recs, 10)] == ["NG", "OK", "NG", "OK", "OK", "ERROR"]
    assert [Path(r["image"]).name for r in pick(recs, 3)] == ["NG3.png", "OK0.png", "NG5.png"]


def test_sheet_item_caption_boxes_and_colour(tmp_path: Path) -> None:
    det = {"box": [10.0, 5.0, 30.0, 25.0], "score": 0.875, "label": 2, "class_name": "hole"}
    ng = sheet_item(_record(tmp_path / "a.png", "NG", 0.97, [det]))
    assert (ng.width, ng.height) == (100, 40)  # original_size is [H, W]
    assert ng.boxes == (((10.0, 5.0, 20.0, 20.0), 2, "hole 0.88"),)
    assert ng.caption_and_colour() == ("a.png  NG 1 def. P=0.97", (255, 110, 110))
    ok = sheet_item(_record(tmp_path / "b.png", "OK", None))
    assert ok.caption_and_colour()[0] == "b.png  OK" and ok.good
    bad = tmp_path / "c.jpg"
    bad.write_bytes(b"not an image")
    err = sheet_item(_record(bad, "ERROR"))
    assert not err.draw_image and err.caption == "c.jpg  ERROR decode_error"


def test_write_results_sheet_skips_a_torn_line_and_keeps_error_cells(tmp_path: Path) -> None:
    img = tmp_path / "a.png"
    Image.new("RGB", (100, 40), (90, 90, 90)).save(img)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 broken")
    records = _write(tmp_path / "r.jsonl", [_record(img, "NG"), _record(img, "OK"), _record(bad, "ERROR")],
                     torn=b'{"key": "half')
    assert len(read_records(records)) == 3
    out = write_results_sheet(records, tmp_path / "s.png", cols=2, cell_width=100)
    with Image.open(out) as im:
        assert im.size == (200, 2 * (40 + 16))
        assert im.getpixel((50, 20)) == (90, 90, 90) and im.getpixel((50, 56 + 20)) == (24, 24, 24)


@pytest.mark.parametrize("content, message", [
    (b"", "holds no records"),
    (b"[1, 2]\n", "not an inspection record"),
    (b"{oops\n", "is not JSON"),
])
def test_bad_record_files_say_what_is_wrong(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "r.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        write_results_sheet(path, tmp_path / "s.png")


def test_missing_files_are_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read the record file"):
        read_records(tmp_path / "none.jsonl")
    gone = _write(tmp_path / "r.jsonl", [_record(tmp_path / "gone.png", "OK")])
    with pytest.raises(DataError, match="no longer exist"):
        write_results_sheet(gone, tmp_path / "s.png")
