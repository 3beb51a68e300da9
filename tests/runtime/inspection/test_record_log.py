"""RecordLog: append-only JSONL, fsynced per record; a torn last line is cut off on open."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from defectnet.errors import DataError
from defectnet.runtime.inspection.folders import walk_image_entries
from defectnet.runtime.inspection.record_log import RecordLog, recover


def test_append_recover_and_repair(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "r.jsonl"
    with RecordLog(out) as log:
        assert log.recovered.keys == [] and log.size == 0
        size_a = log.append({"key": "a.png", "verdict": "OK"})
        size_b = log.append({"key": "b.png", "verdict": "ERROR"})
    assert out.stat().st_size == size_b > size_a
    with open(out, "ab") as f:
        f.write(b"not json\n")  # a complete line that is no record: kept, not counted
        f.write(b'{"key": "c.png", "verdi')  # a kill mid-write
    found = recover(out)
    assert found.keys == ["a.png", "b.png"] and found.unparsable == 1 and found.torn == len(b'{"key": "c.png", "verdi')
    assert out.read_bytes().endswith(b"not json\n") and out.stat().st_size == found.size
    assert recover(out, start=size_a).keys == ["b.png"]  # --watch reads from its state's offset
    assert recover(out, start=10**9).keys == ["a.png", "b.png"]  # an offset past the end: read it all
    with RecordLog(out) as log:
        log.append({"key": "c.png"})
    assert [json.loads(x).get("key") for x in out.read_bytes().splitlines() if x.startswith(b"{")] == [
        "a.png", "b.png", "c.png"]
    with RecordLog(out, overwrite=True) as log:
        assert log.recovered.keys == [] and out.stat().st_size == 0


def test_a_file_name_that_is_not_unicode_reads_back_equal(tmp_path: Path) -> None:
    key = b"caf\xe9.png".decode("utf-8", "surrogateescape")  # a Latin-1 name on a UTF-8 system
    with RecordLog(tmp_path / "r.jsonl") as log:
        log.append({"key": key, "image": key})
        log.append({"key": "ünïcode.png"})
    raw = (tmp_path / "r.jsonl").read_bytes()
    raw.decode("utf-8")  # every line stays valid UTF-8 JSON
    assert "ünïcode".encode() in raw  # readable names stay readable
    assert recover(tmp_path / "r.jsonl").keys == [key, "ünïcode.png"]


def test_unwritable_output_is_a_clean_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="cannot write the record file"):
        RecordLog(tmp_path / "file" / "r.jsonl")  # its parent is a file
    with pytest.raises(DataError, match="choose a writable --out"):
        RecordLog(tmp_path)  # a folder


def test_walk_lists_every_entry_named_like_an_image(tmp_path: Path) -> None:
    for name in ("a.png", "B.JPG", "notes.txt", ".hidden.png", "~lock.png", "c.png.tmp", "sub/d.tif",
                 ".cache/e.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "folder.png" / "inner.png").mkdir(parents=True)  # a folder named like an image, and one inside
    (tmp_path / "dangling.png").symlink_to(tmp_path / "gone.png")
    entries, errors = walk_image_entries(tmp_path)
    assert errors == []
    assert entries == [".cache/e.png", ".hidden.png", "B.JPG", "a.png", "dangling.png", "folder.png",
                       "folder.png/inner.png", "sub/d.tif", "~lock.png"]
    watched, _ = walk_image_entries(tmp_path, skip_hidden=True)
    assert watched == ["B.JPG", "a.png", "dangling.png", "folder.png", "folder.png/inner.png", "sub/d.tif"]
    _, errors = walk_image_entries(tmp_path / "vanished")
    assert len(errors) == 1 and errors[0].filename == str(tmp_path / "vanished")
