"""The client of a ``defectnet.serve`` service (standard library only: no Ray needed).

::

    client = ServeClient("http://127.0.0.1:8000")
    record = client.inspect_file("frame.png", key="frame.png")      # one record (a dict)
    summary = run_client("http://127.0.0.1:8000", ["images/"], "results.jsonl", concurrency=4)

* **One record per input**, always: the server's record, or one made here with the same
  :class:`~defectnet.runtime.inspection.records.InspectionResult` when the input cannot be
  read (the file half of the input rule, :func:`read_input_file`: not_found, unreadable,
  empty) or the service cannot answer (``overloaded`` after the 503 retries, ``unavailable``
  when it cannot be reached). The input's path goes along as the request's ``name``, so the
  service's record (and its messages) name the file as batch mode's do.
* **Retries**: a 503 is sent again after its ``Retry-After`` (at most ``max_backoff_s``), a
  refused or broken connection after an exponential back-off, up to ``retries`` times.
* :func:`run_client` -- ``defectnet-infer --server URL``: bounded concurrency, records
  appended in input order to a :class:`~defectnet.runtime.inspection.record_log.RecordLog`
  (fsynced, resumable: a re-run skips the inputs already recorded; ``overwrite`` starts
  over), SIGINT/SIGTERM stop the intake and finish what is in flight.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from defectnet.errors import ConfigError
from defectnet.runtime.inspection.counts import RecordCounts
from defectnet.runtime.inspection.record_log import RecordLog
from defectnet.runtime.inspection.records import InspectionResult
from defectnet.runtime.inspection.validation import InputError, Reason, read_input_file
from defectnet.runtime.types import Verdict

log = logging.getLogger(__name__)
INSPECT_PATH = "/v1/inspect"


def error_record(key: Any, image: str, reason: Reason, message: str, latency_ms: float = 0.0,
                 deadline_ms: float | None = None) -> dict[str, Any]:
    """An error record made on the client's side (the same record class the service uses)."""
    result = InspectionResult(key=key, source=image, sequence=0, verdict=Verdict.ERROR, reason=reason.value,
                              message=message, latency_ms=latency_ms, deadline_ms=deadline_ms,
                              deadline_missed=reason == Reason.TIMEOUT and deadline_ms is not None)
    return result.to_json()


class ServeClient:
    """Requests to one service. url: its root (``http://HOST:PORT``); timeout_s: per HTTP
    attempt (a request with ``deadline_ms`` waits at most that plus 5 s); retries: further
    attempts after a 503 or a connection failure; backoff_s / max_backoff_s: the first wait
    after a connection failure (doubling) and the cap of every wait."""

    def __init__(self, url: str, *, timeout_s: float = 60.0, retries: int = 5, backoff_s: float = 0.5,
                 max_backoff_s: float = 10.0) -> None:
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ConfigError(f"the service URL must look like http://HOST:PORT, got {url!r}")
        if retries < 0 or not timeout_s > 0 or backoff_s < 0 or max_backoff_s < 0:
            raise ConfigError("retries, backoff_s and max_backoff_s must be >= 0 and timeout_s > 0")
        self.url = url.rstrip("/")
        self.timeout_s = float(timeout_s)
        self.retries = int(retries)
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)

    def inspect(self, data: bytes, key: Any = None, *, deadline_ms: float | None = None,
                image: str | None = None) -> dict[str, Any]:
        """The record of one encoded image (never raises for a service problem: see the
        module docstring). image: what the record calls it (sent as ``name``; default
        ``<N bytes>``)."""
        query = {k: v for k, v in (("key", key), ("deadline_ms", deadline_ms), ("name", image)) if v is not None}
        url = f"{self.url}{INSPECT_PATH}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        timeout = self.timeout_s if deadline_ms is None else min(self.timeout_s, deadline_ms / 1e3 + 5.0)
        label = image if image is not None else f"<{len(data)} bytes>"
        t0 = time.perf_counter()
        wait, last = self.backoff_s, ""
        reason = Reason.UNAVAILABLE
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(url, data=data, method="POST",
                                             headers={"Content-Type": "application/octet-stream"})
            retry_after: float | None = None
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    status, body = response.status, response.read()
            except urllib.error.HTTPError as e:
                status, body = e.code, e.read()
                retry_after = _retry_after(e.headers.get("Retry-After"))
            except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as e:
                last = f"{type(e).__name__}: {getattr(e, 'reason', None) or e}"
                reason = Reason.UNAVAILABLE
                if attempt < self.retries:
                    time.sleep(min(wait, self.max_backoff_s))
                    wait *= 2
                continue
            record = _parse_record(body)
            if status == 503:
                reason = Reason.OVERLOADED if record is None or _reason(record) == Reason.OVERLOADED.value \
                    else Reason.UNAVAILABLE
                last = (record or {}).get("error", {}).get("message") or body[:200].decode("utf-8", "replace")
                if attempt < self.retries:
                    time.sleep(min(retry_after if retry_after is not None else wait, self.max_backoff_s))
                    wait *= 2
                continue
            if record is None:
                return error_record(key, label, Reason.UNAVAILABLE, (
                    f"{label}: the service at {self.url} answered HTTP {status} without a record "
                    f"({body[:200].decode('utf-8', 'replace')!r}); is it a defectnet-serve service?"),
                    (time.perf_counter() - t0) * 1e3, deadline_ms)
            return record
        what = "kept answering 503 (overloaded)" if reason == Reason.OVERLOADED else "could not be reached"
        return error_record(key, label, reason, (
            f"{label}: the service at {self.url} {what} after {self.retries + 1} attempts ({last}); send it again "
            "later"), (time.perf_counter() - t0) * 1e3, deadline_ms)

    def inspect_file(self, path: str | os.PathLike[str], key: Any = None, *,
                     deadline_ms: float | None = None) -> dict[str, Any]:
        """The record of an image file (key: default the path as given)."""
        name = os.fspath(path)
        name = name if isinstance(name, str) else repr(name)
        key = name if key is None else key
        try:
            data = read_input_file(path, name)
        except InputError as e:
            return error_record(key, name, e.reason, str(e), deadline_ms=deadline_ms)
        return self.inspect(data, key, deadline_ms=deadline_ms, image=name)

    def health(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, the JSON) of ``GET /healthz``."""
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=self.timeout_s) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as e:
            return e.code, _parse_json(e.read()) or {}


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _parse_json(body: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _parse_record(body: bytes) -> dict[str, Any] | None:
    record = _parse_json(body)
    return record if record is not None and "verdict" in record and "key" in record else None


def _reason(record: dict[str, Any]) -> str | None:
    error = record.get("error")
    return error.get("reason") if isinstance(error, dict) else None


@dataclass
class ClientSummary(RecordCounts):
    """What :func:`run_client` did (:class:`~defectnet.runtime.inspection.counts.RecordCounts`,
    counted from the records it wrote), with wall_s: the run's wall-clock time."""

    wall_s: float = 0.0

    def add(self, record: dict[str, Any]) -> None:
        self.count(str(record.get("verdict")), _reason(record), bool(record.get("ran_detector")))

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "records_per_s": self.records / self.wall_s if self.wall_s else None}

    def text(self) -> str:
        s = self.to_json()
        lines = [self.headline()]
        if s["records_per_s"]:
            lines.append(f"{s['records']} records in {self.wall_s:.1f} s ({s['records_per_s']:.1f}/s)"
                         + (f", gate pass rate {s['gate_pass_rate']:.3f}" if s["gate_pass_rate"] is not None else ""))
        return "\n".join(lines + self.unfinished_line())


def run_client(url: str | ServeClient, inputs: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str], *,
               concurrency: int = 4, overwrite: bool = False, deadline_ms: float | None = None,
               stop: threading.Event | None = None, progress: bool = False,
               echo: Callable[[str], Any] = lambda message: None) -> ClientSummary:
    """Send every input (paths, as :func:`~defectnet.runtime.inspection.batch.collect_inputs`
    lists them) to the service and append one record per input to ``out``, in input order
    (module docstring). concurrency: requests in flight (>= 1)."""
    from tqdm import tqdm

    from defectnet.runtime.inspection.watch import stop_on_signals

    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ConfigError(f"concurrency must be an integer >= 1, got {concurrency!r}")
    client = url if isinstance(url, ServeClient) else ServeClient(url)
    keys = list(dict.fromkeys(os.fspath(p) for p in inputs))
    summary = ClientSummary(inputs=len(keys))
    sink = RecordLog(out, overwrite=overwrite)
    done = {k for k in sink.recovered.keys if isinstance(k, str)}
    todo = [k for k in keys if k not in done]
    summary.skipped = len(keys) - len(todo)
    if summary.skipped:
        echo(f"resuming: {summary.skipped} of {len(keys)} inputs are already recorded in {out}; sending the other "
             f"{len(todo)} (--overwrite starts over)")
    stop = stop or threading.Event()
    restore = stop_on_signals(stop)
    bar = tqdm(total=len(todo), unit="img", disable=not progress)
    window: deque[Future[dict[str, Any]]] = deque()
    t0 = time.perf_counter()

    def write(future: Future[dict[str, Any]]) -> None:
        record = future.result()
        sink.append(record)
        summary.add(record)
        bar.update(1)

    try:
        with ThreadPoolExecutor(concurrency, thread_name_prefix="defectnet-client") as pool:
            try:
                for key in todo:
                    if stop.is_set():
                        break
                    window.append(pool.submit(client.inspect_file, key, key, deadline_ms=deadline_ms))
                    if len(window) >= 2 * concurrency:  # bounded: records are written in input order
                        write(window.popleft())
            finally:
                while window:  # the requests in flight finish and are written, also when stopping
                    write(window.popleft())
    finally:
        restore()
        summary.wall_s = time.perf_counter() - t0
        sink.close()
        bar.close()
    summary.unfinished = len(todo) - summary.records
    return summary


__all__ = ["ClientSummary", "ServeClient", "error_record", "run_client"]
