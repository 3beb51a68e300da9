"""Batch defectnet-infer: streamed records survive a kill (SIGTERM: exit 130; SIGKILL: only
complete lines), a re-run resumes without duplicates, inputs are listed by one rule, a
failing write stops the run without losing what was written, metrics are served."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from record_schema import read_records

from defectnet.errors import DataError
from defectnet.runtime.cli import main
from defectnet.runtime.inspection import batch as batch_module
from defectnet.runtime.inspection.batch import collect_inputs, run_inference
from defectnet.runtime.inspection.record_log import RecordLog
from defectnet.runtime.pipeline import Pipeline

pytestmark = pytest.mark.timeout(240)


def _images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"img_{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _complete_lines(out: Path) -> int:
    return out.read_bytes().count(b"\n") if out.exists() else 0


def _start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    with open(log, "ab") as sink:
        return subprocess.Popen([sys.executable, "-c", "from defectnet.runtime.cli import main; main()", *args],
                                env=env, stdout=sink, stderr=subprocess.STDOUT)


def _wait_for(condition: Any, proc: subprocess.Popen[bytes], what: str, limit: float = 120.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert proc.poll() is None, f"the process ended (rc {proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} after {limit:.0f} s"
        time.sleep(0.02)


def test_sigterm_then_kill_9_then_rerun_gives_every_input_exactly_one_record(run_engine: Path,
                                                                              tmp_path: Path) -> None:
    inputs = [str(p) for p in _images(tmp_path / "imgs", 40)]
    out, log = tmp_path / "r.jsonl", tmp_path / "log.txt"
    args = [str(tmp_path / "imgs"), "--engine", str(run_engine), "--out", str(out), "--gate-threshold", "0",
            "--no-progress"]  # threshold 0: every image runs the detector (the slow path: a wide kill window)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        # 1. SIGTERM: the intake stops, the images in flight are finished and written, exit 130
        procs.append(proc := _start(args, log))
        _wait_for(lambda: _complete_lines(out) >= 2, proc, "2 records")
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=60) == 130, log.read_text()
        assert "interrupted:" in log.read_text() and "run the same command again to resume" in log.read_text()
        after_term = read_records(out)  # only complete lines
        assert 2 <= len(after_term) < len(inputs)

        # 2. SIGKILL: no clean-up at all
        procs.append(proc := _start(args, log))
        _wait_for(lambda: _complete_lines(out) >= len(after_term) + 3, proc, "3 more records")
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        for p in procs:  # never leave a process behind
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
    raw = out.read_bytes()
    complete = raw[: raw.rfind(b"\n") + 1]
    killed_at = complete.count(b"\n")
    assert len(after_term) + 3 <= killed_at < len(inputs), "the kill came too late to test anything"
    if raw == complete:  # the kill fell between two records; make it a kill mid-write
        with open(out, "ab") as f:
            f.write(b'{"key": "' + inputs[killed_at].encode() + b'", "image": "tor')
    for line in complete.splitlines():
        assert line.startswith(b"{") and line.endswith(b"}")

    # 3. re-run: the torn line is cut off, the recorded inputs are skipped, the rest appended in order
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert f"resuming: {killed_at} of {len(inputs)} inputs are already recorded" in result.output
    records = read_records(out)
    assert [r["key"] for r in records] == inputs  # every input exactly once, in input order
    assert all(r["verdict"] in ("OK", "NG") for r in records)


def test_rerun_skips_recorded_inputs_and_overwrite_starts_over(run_engine: Path, tmp_path: Path) -> None:
    paths = _images(tmp_path / "imgs", 3)
    out = tmp_path / "r.jsonl"
    args = ["--engine", str(run_engine), "--out", str(out), "--gate-threshold", "2.0", "--no-progress"]
    assert CliRunner().invoke(main, [str(paths[0]), str(tmp_path / "gone.png"), *args]).exit_code == 0
    first = read_records(out)
    result = CliRunner().invoke(main, [str(tmp_path / "imgs"), str(tmp_path / "gone.png"), *args])
    assert result.exit_code == 0, result.output
    assert "inputs 4: 2 processed (2 OK, 0 NG), 0 errors, 2 already recorded (skipped)" in result.output
    records = read_records(out)
    assert records[:2] == first  # the old lines are untouched
    assert [r["key"] for r in records] == [str(paths[0]), str(tmp_path / "gone.png"), str(paths[1]), str(paths[2])]
    result = CliRunner().invoke(main, [str(tmp_path / "imgs"), *args, "--overwrite"])
    assert result.exit_code == 0 and "inputs 3: 3 processed" in result.output
    assert [r["key"] for r in read_records(out)] == [str(p) for p in paths]


def test_inputs_follow_one_listing_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "imgs"
    for name in ("b.png", "a.JPG", "sub/c.tif", "notes.txt"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"x")
    (folder / "d.png").mkdir()
    given = str(folder) + "/"
    keys = collect_inputs([given, str(folder / "notes.txt"), str(tmp_path / "missing.bin"), given])
    assert keys == [given + "a.JPG", given + "b.png", given + "d.png", given + "sub/c.tif",  # walked, sorted
                    str(folder / "notes.txt"), str(tmp_path / "missing.bin")]  # named: whatever the suffix
    gone = FileNotFoundError(errno.ENOENT, "No such file or directory", str(folder / "sub"))
    monkeypatch.setattr(batch_module, "walk_image_entries", lambda path, suffixes: (["a.JPG"], [gone]))
    assert collect_inputs([str(folder)]) == [str(folder / "a.JPG"), str(folder / "sub")]  # an unlistable folder


def test_inputs_that_vanish_mid_run_get_not_found_records(run_engine: Path, tmp_path: Path) -> None:
    _images(tmp_path / "imgs", 2)
    (tmp_path / "imgs" / "dir.png").mkdir()
    keys = collect_inputs([str(tmp_path / "imgs")])
    (tmp_path / "imgs" / "img_001.png").unlink()
    (tmp_path / "imgs" / "dir.png").rmdir()
    summary = run_inference(Pipeline.from_engine(run_engine, gate_threshold=2.0), keys, tmp_path / "r.jsonl",
                            progress=False)
    outcome = {Path(r["key"]).name: r.get("error", {}).get("reason", r["verdict"]) for r in
               read_records(tmp_path / "r.jsonl")}
    assert outcome == {"dir.png": "not_found", "img_000.png": "OK", "img_001.png": "not_found"}
    assert summary.errors_by_reason == {"not_found": 2} and summary.to_json()["records"] == 3


def test_a_failing_write_stops_the_run_and_keeps_the_records_written(run_engine: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    keys = [str(p) for p in _images(tmp_path / "imgs", 6)]
    out = tmp_path / "r.jsonl"
    pipeline = Pipeline.from_engine(run_engine, gate_threshold=2.0)
    real_append = RecordLog.append
    calls = [0]

    def append(self: RecordLog, record: dict[str, Any]) -> int:
        calls[0] += 1
        if calls[0] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_append(self, record)

    monkeypatch.setattr(RecordLog, "append", append)
    with pytest.raises(DataError, match="No space left on device.*the 2 records written before are kept"):
        run_inference(pipeline, keys, out, progress=False)
    assert [r["key"] for r in read_records(out)] == keys[:2]
    monkeypatch.setattr(RecordLog, "append", real_append)
    summary = run_inference(pipeline, keys, out, progress=False)  # space freed: the re-run completes
    assert summary.skipped == 2 and summary.records == 4 and summary.unfinished == 0
    assert [r["key"] for r in read_records(out)] == keys


def test_batch_serves_metrics_on_loopback_while_it_runs(run_engine: Path, tmp_path: Path) -> None:
    keys = [str(p) for p in _images(tmp_path / "imgs", 2)]
    scraped: list[str] = []
    urls: list[str] = []

    def echo(message: str) -> None:  # called before the first input is submitted
        if message.startswith("metrics: "):
            urls.append(message.removeprefix("metrics: "))
            with urllib.request.urlopen(urls[0], timeout=10) as response:
                scraped.append(response.read().decode())

    run_inference(Pipeline.from_engine(run_engine, gate_threshold=2.0), keys, tmp_path / "r.jsonl", progress=False,
                  metrics_port=0, echo=echo)
    assert urls and urls[0].startswith("http://127.0.0.1:") and urls[0].endswith("/metrics")
    names = {family.name for family in text_string_to_metric_families(scraped[0])}
    assert {"defectnet_inspector_frames_submitted", "defectnet_inspector_results",
            "defectnet_inspector_errors"} <= names
    with pytest.raises(urllib.error.URLError):  # the run is over: so is the endpoint
        urllib.request.urlopen(urls[0], timeout=5)


def test_watch_serves_metrics_on_loopback(run_engine: Path, tmp_path: Path) -> None:
    folder, out, log = tmp_path / "incoming", tmp_path / "w.jsonl", tmp_path / "log.txt"
    _images(folder, 2)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    proc = _start(["--watch", str(folder), "--engine", str(run_engine), "--out", str(out), "--stable-for", "0",
                   "--poll-interval", "0.1", "--gate-threshold", "2.0", "--metrics-port", "0"], log)
    try:
        _wait_for(lambda: _complete_lines(out) >= 3 and "metrics: " in log.read_text(), proc, "3 records")
        url = log.read_text().split("metrics: ", 1)[1].split()[0]
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url, timeout=10) as response:
            families = {f.name: f for f in text_string_to_metric_families(response.read().decode())}
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for f in families.values() for s in f.samples}
        assert samples[("defectnet_inspector_frames_submitted_total", ())] == 3
        assert samples[("defectnet_inspector_results_total", (("verdict", "OK"),))] == 2
        assert samples[("defectnet_inspector_errors_total", (("reason", "decode_error"),))] + samples[
            ("defectnet_inspector_errors_total", (("reason", "unsupported_format"),))] == 1
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert len(read_records(out)) == 3
