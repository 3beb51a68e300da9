"""defectnet-infer --watch: files inspected as they appear, exactly once across restarts."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image
from runtime_helpers import images

from defectnet.runtime.cli import IMAGE_SUFFIXES, main
from defectnet.runtime.inspection.watch import FolderScanner, WatchState

pytestmark = pytest.mark.timeout(120)


def _drop(folder: Path, names: list[str], seed: int = 0) -> None:
    for name, im in zip(names, images(len(names), seed=seed)):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(im.permute(1, 2, 0).numpy()).save(path)


def _watch_once(engine: Path, folder: Path, out: Path, *extra: str) -> str:
    result = CliRunner().invoke(main, ["--watch", str(folder), "--engine", str(engine), "--out", str(out), "--once",
                                       "--stable-for", "0", "--poll-interval", "0.05", "--gate-threshold", "2.0",
                                       "--batch", "2", *extra])
    assert result.exit_code == 0, result.output
    return result.output


def _records(out: Path) -> list[dict]:  # type: ignore[type-arg]
    raw = out.read_bytes()
    assert raw.endswith(b"\n")
    return [json.loads(line) for line in raw.decode().splitlines()]


def _state(out: Path) -> dict:  # type: ignore[type-arg]
    return json.loads(out.with_name(out.name + ".state.json").read_text())


def test_watch_once_resumes_without_duplicates(run_engine: Path, tmp_path: Path) -> None:
    folder, out = tmp_path / "incoming", tmp_path / "results.jsonl"
    folder.mkdir()
    _drop(folder, ["a.png", "b.png", "sub/c.png"])
    (folder / "notes.txt").write_text("not an image")
    (folder / ".d.png.tmp").write_bytes(b"being written")  # temp names are ignored
    output = _watch_once(run_engine, folder, out)
    assert "3 files inspected" in output
    assert sorted(r["key"] for r in _records(out)) == ["a.png", "b.png", "sub/c.png"]
    state = _state(out)
    assert state["done"] == ["a.png", "b.png", "sub/c.png"] and state["out_offset"] == out.stat().st_size

    _drop(folder, ["d.png", "e.png"], seed=1)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    output = _watch_once(run_engine, folder, out)
    assert re.search(r"3 files inspected \(0 NG, 1 errors: (decode_error|unsupported_format) 1\); 3 already done",
                     output), output
    records = _records(out)
    keys = [r["key"] for r in records]
    assert len(keys) == len(set(keys)) == 6
    assert next(r for r in records if r["key"] == "broken.png")["error"]["reason"] in ("decode_error",
                                                                                      "unsupported_format")
    assert all(r["verdict"] == "OK" for r in records if r["key"] != "broken.png")

    assert "0 files inspected" in _watch_once(run_engine, folder, out)  # nothing new: nothing done twice
    assert len(_records(out)) == 6


def test_watch_recovers_from_a_kill_between_and_during_writes(run_engine: Path, tmp_path: Path) -> None:
    folder, out = tmp_path / "incoming", tmp_path / "results.jsonl"
    folder.mkdir()
    _drop(folder, ["a.png", "b.png", "c.png"])
    _watch_once(run_engine, folder, out)
    lines = out.read_bytes().splitlines(keepends=True)
    # a kill after b's and c's records were appended but before the state file caught up (the
    # state on disk is the one written after the first record) ...
    state_path = out.with_name(out.name + ".state.json")
    first = json.loads(lines[0])["key"]
    state_path.write_text(json.dumps({"format": "defectnet-watch-state", "version": 1, "folder": str(folder),
                                      "out_offset": len(lines[0]), "done": [first]}))
    # ... and a kill in the middle of writing the next file's record
    _drop(folder, ["d.png"], seed=2)
    with open(out, "ab") as f:
        f.write(b'{"key": "d.png", "image": "tor')
    _watch_once(run_engine, folder, out)
    records = _records(out)  # the torn line is gone: every line parses
    assert sorted(r["key"] for r in records) == ["a.png", "b.png", "c.png", "d.png"]
    assert _state(out)["done"] == ["a.png", "b.png", "c.png", "d.png"]

    # no state file at all (deleted, or a crash before the first one): rebuilt from the output
    state_path.unlink()
    _drop(folder, ["e.png"], seed=3)
    _watch_once(run_engine, folder, out)
    assert sorted(r["key"] for r in _records(out)) == ["a.png", "b.png", "c.png", "d.png", "e.png"]


def test_scanner_waits_for_a_stable_size(tmp_path: Path) -> None:
    now = [100.0]
    scanner = FolderScanner(tmp_path, IMAGE_SUFFIXES, stable_for=1.0, clock=lambda: now[0])
    path = tmp_path / "x.jpg"
    path.write_bytes(b"12345")
    assert scanner.poll() == ([], 1)
    now[0] += 0.5
    with open(path, "ab") as f:
        f.write(b"678")  # still growing: the clock restarts
    assert scanner.poll() == ([], 1)
    now[0] += 0.9
    assert scanner.poll() == ([], 1)
    now[0] += 0.2
    assert scanner.poll() == (["x.jpg"], 0)
    assert scanner.poll(skip={"x.jpg"}) == ([], 0)
    state = WatchState.load(tmp_path / "missing.json", tmp_path)
    assert state.done == set() and state.out_offset == 0
    (tmp_path / "garbage.json").write_text("{not json")
    assert WatchState.load(tmp_path / "garbage.json", tmp_path).done == set()


def test_sigterm_stops_cleanly_and_keeps_state(run_engine: Path, tmp_path: Path) -> None:
    folder, out = tmp_path / "incoming", tmp_path / "results.jsonl"
    folder.mkdir()
    _drop(folder, ["a.png", "b.png"])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from defectnet.runtime.cli import main; main()", "--watch", str(folder),
         "--engine", str(run_engine), "--out", str(out), "--stable-for", "0", "--poll-interval", "0.1",
         "--gate-threshold", "2.0"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (out.exists() and out.read_bytes().count(b"\n") >= 2):
            time.sleep(0.1)
        _drop(folder, ["c.png"], seed=5)
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output.decode()
    assert b"files inspected" in output
    keys = [r["key"] for r in _records(out)]
    assert len(keys) == len(set(keys)) and {"a.png", "b.png"} <= set(keys)
    assert sorted(_state(out)["done"]) == sorted(keys)
