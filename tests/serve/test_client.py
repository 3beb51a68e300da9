"""The defectnet.serve client against a scripted stand-in server on 127.0.0.1 (no Ray): retries
on 503 (Retry-After) and refused connections, one record per input, input order, resume,
bounded concurrency."""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from serve_helpers import check_record, noise_images, png

from defectnet.errors import ConfigError
from defectnet.runtime.inspection.records import InspectionResult
from defectnet.runtime.types import Verdict
from defectnet.serve.client import ServeClient, run_client

Script = Callable[[dict[str, Any]], tuple[int, dict[str, str], bytes]]


def ok_record(state: dict[str, Any]) -> bytes:
    """The stand-in's verdict record for a request (key and name from its query, as the service)."""
    query = state["query"]
    record = InspectionResult(key=query.get("key"), source=query.get("name", f"<{len(state['body'])} bytes>"), sequence=0, verdict=Verdict.OK, p_defective=0.1,
                              original_size=(10, 20), batch_size=1, timings_ms={"gate": 1.0})
    return json.dumps(record.to_json()).encode()


class StandIn:
    """A ThreadingHTTPServer answering POST /v1/inspect from ``script(state)``."""

    def __init__(self, script: Script, delay_s: float = 0.0) -> None:
        self.requests: list[dict[str, Any]] = []
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                query = dict(urllib.parse.parse_qsl(urllib.parse.urlparse(self.path).query))
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with outer.lock:
                    outer.in_flight += 1
                    outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
                    state = {"query": query, "body": body, "n": len(outer.requests)}
                    outer.requests.append(state)
                time.sleep(delay_s)
                status, headers, payload = script(state)
                with outer.lock:
                    outer.in_flight -= 1
                self.send_response(status)
                for k, v in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def stand_in() -> Iterator[Callable[..., StandIn]]:
    servers: list[StandIn] = []

    def make(script: Script, **kwargs: Any) -> StandIn:
        servers.append(StandIn(script, **kwargs))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def test_retries_503_after_retry_after(stand_in: Callable[..., StandIn]) -> None:
    def script(state: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        if state["n"] < 2:
            return 503, {"Retry-After": "0"}, b"queue full"  # Serve's proxy answers plain text
        return 200, {}, ok_record(state)

    server = stand_in(script)
    record = ServeClient(server.url, retries=3).inspect(b"xyz", "k1", image="frame.png")
    check_record(record)
    assert record["verdict"] == "OK" and record["key"] == "k1" and record["image"] == "frame.png"
    assert len(server.requests) == 3


def test_gives_up_with_an_error_record(stand_in: Callable[..., StandIn], tmp_path: Path) -> None:
    overloaded = stand_in(lambda state: (503, {"Retry-After": "0"}, json.dumps(
        {"key": None, "image": "x", "verdict": "ERROR", "error": {"reason": "overloaded", "message": "full"}}).encode()))
    record = ServeClient(overloaded.url, retries=2, backoff_s=0).inspect(b"x", "k")
    check_record(record)
    assert record["error"]["reason"] == "overloaded" and "3 attempts" in record["error"]["message"]
    assert len(overloaded.requests) == 3
    not_ours = stand_in(lambda state: (404, {"Content-Type": "text/html"}, b"<html>nope</html>"))
    record = ServeClient(not_ours.url).inspect(b"x", "k")
    check_record(record)
    assert record["error"]["reason"] == "unavailable" and "HTTP 404" in record["error"]["message"]
    port = overloaded.server.server_address[1]
    overloaded.close()  # nothing listens there now: refused connections
    t0 = time.perf_counter()
    record = ServeClient(f"http://127.0.0.1:{port}", retries=2, backoff_s=0.01).inspect(b"x", "k")
    check_record(record)
    assert record["error"]["reason"] == "unavailable" and "could not be reached" in record["error"]["message"]
    assert time.perf_counter() - t0 < 5
    missing = ServeClient(not_ours.url).inspect_file(tmp_path / "missing.png")
    check_record(missing)
    assert missing["error"]["reason"] == "not_found" and missing["key"] == str(tmp_path / "missing.png")
    with pytest.raises(ConfigError, match="http://HOST:PORT"):
        ServeClient("127.0.0.1:8000")


def test_run_client_one_record_per_input_in_order_and_resumes(stand_in: Callable[..., StandIn], tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(noise_images(12)):
        (folder / f"{i:02d}.png").write_bytes(png(image))
    (folder / "empty.png").write_bytes(b"")

    def script(state: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        if state["n"] % 5 == 1:
            return 503, {"Retry-After": "0"}, b"busy"
        return 200, {}, ok_record(state)

    server = stand_in(script, delay_s=0.02)
    from defectnet.runtime.inspection.batch import collect_inputs

    inputs = collect_inputs([str(folder), str(tmp_path / "gone.png")])
    out = tmp_path / "results.jsonl"
    client = ServeClient(server.url, backoff_s=0)
    stop = threading.Event()
    summary = run_client(client, inputs[:5], out, concurrency=3, stop=stop)
    assert summary.records == 5 and summary.unfinished == 0
    summary = run_client(client, inputs, out, concurrency=3)  # resumes: the first 5 are skipped
    assert summary.skipped == 5 and summary.records == len(inputs) - 5
    records = [json.loads(line) for line in out.read_text().splitlines()]
    for r in records:
        check_record(r)
    assert [r["key"] for r in records] == inputs  # one record each, in input order
    assert [r["image"] for r in records] == inputs
    by_key = {r["key"]: r for r in records}
    assert by_key[str(folder / "empty.png")]["error"]["reason"] == "empty"
    assert by_key[str(tmp_path / "gone.png")]["error"]["reason"] == "not_found"
    assert sum(r["verdict"] == "OK" for r in records) == 12
    assert server.max_in_flight <= 3
    assert summary.to_json()["errors_by_reason"] == {"empty": 1, "not_found": 1}
    # --overwrite starts over; a stop set before the first request leaves every input unfinished
    stop.set()
    summary = run_client(client, inputs, out, concurrency=2, overwrite=True, stop=stop)
    assert summary.records == 0 and summary.unfinished == len(inputs) and out.read_text() == ""
    with pytest.raises(ConfigError, match="concurrency"):
        run_client(client, inputs, out, concurrency=0)


def test_defectnet_infer_server_flag(stand_in: Callable[..., StandIn], tmp_path: Path) -> None:
    from click.testing import CliRunner

    from defectnet.runtime.cli import main as infer

    server = stand_in(lambda state: (200, {}, ok_record(state)))
    image = tmp_path / "a.png"
    image.write_bytes(png(noise_images(1)[0]))
    out = tmp_path / "out.jsonl"
    runner = CliRunner()
    result = runner.invoke(infer, [str(image), str(tmp_path / "b.png"), "--server", server.url, "--out", str(out),
                                   "--no-progress"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["key"], r["verdict"]) for r in records] == [(str(image), "OK"), (str(tmp_path / "b.png"), "ERROR")]
    for args, message in ((["--engine", str(tmp_path)], "--engine does not apply"), ([], "IMAGES_OR_FOLDERS")):
        result = runner.invoke(infer, [*([str(image)] if args else []), "--server", server.url, "--out", str(out),
                                       *args])
        assert result.exit_code == 2 and message in result.output
    result = runner.invoke(infer, [str(image), "--out", str(out)])
    assert result.exit_code == 2 and "--engine DIR" in result.output
