"""``defectnet-infer --watch DIR``: inspect image files as they appear in a folder.

* **Polling**, no inotify (works on network shares): every ``poll_interval`` seconds the
  folder is scanned (recursively) for files with an image suffix; names starting with
  ``.`` or ``~`` and ``*.tmp``/``*.part`` files are ignored (write-then-rename is the safe
  way to drop files in). A file is taken once its size and mtime have stayed the same for
  ``stable_for`` seconds, so half-written files are not read.
* **Output**: one JSON line per file (the :class:`InspectionResult` record, ``key`` = the
  path relative to DIR), appended to ``--out``, flushed and fsynced per record.
* **Never twice, across restarts**: after each flushed record the state file (default
  ``OUT.state.json``: done files + how many bytes of OUT they cover) is rewritten
  atomically. On start the state is loaded, then OUT is read from that offset on: records
  written after the last state update (a kill between the two writes) count as done too,
  and a torn last line (a kill mid-write) is cut off, so that file is inspected again and
  gets exactly one complete record. A missing or unreadable state file is rebuilt from OUT.
  A file is identified by its relative path: a new file under a done name is skipped.
* **Stopping**: SIGINT/SIGTERM stop the scanning; frames already submitted are finished
  and written, then the command exits 0. ``once``: scan until every file present is stable
  and taken, process them and exit (for tests and cron jobs).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from defectnet.errors import ConfigError, DataError
from defectnet.io import atomic_write_json

log = logging.getLogger(__name__)
STATE_FORMAT = "defectnet-watch-state"
_TEMP_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".swp")


@dataclass
class WatchState:
    """Done files (paths relative to the folder) and the bytes of OUT they are recorded in."""

    path: Path
    folder: str
    done: set[str] = field(default_factory=set)
    out_offset: int = 0

    @classmethod
    def load(cls, path: Path, folder: Path) -> WatchState:
        state = cls(path, str(folder.resolve()))
        if not path.exists():
            return state
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("format") != STATE_FORMAT:
                raise ValueError(f"not a {STATE_FORMAT} file")
            state.done = {str(x) for x in data["done"]}
            state.out_offset = int(data["out_offset"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("state file %s is unreadable (%s); rebuilding it from the output file", path, e)
            return cls(path, str(folder.resolve()))
        if data.get("folder") not in (None, state.folder):
            log.warning("state file %s was written for %s, now watching %s", path, data.get("folder"), state.folder)
        return state

    def save(self) -> None:
        atomic_write_json(self.path, {"format": STATE_FORMAT, "version": 1, "folder": self.folder,
                                      "out_offset": self.out_offset, "done": sorted(self.done)}, indent=None)


def reconcile_output(out: Path, state: WatchState) -> int:
    """Add the records OUT holds beyond ``state.out_offset`` to ``state.done``, cut a torn
    last line off, and return OUT's size (where appending continues)."""
    if not out.exists():
        state.out_offset = 0
        return 0
    size = out.stat().st_size
    start = state.out_offset if 0 <= state.out_offset <= size else 0  # a shorter OUT was replaced: read it all
    with open(out, "rb") as f:
        f.seek(start)
        tail = f.read()
    end = tail.rfind(b"\n") + 1
    for line in tail[:end].splitlines():
        try:
            key = json.loads(line).get("key")
        except (ValueError, AttributeError):
            log.warning("skipping an unparsable line in %s", out)
            continue
        if isinstance(key, str):
            state.done.add(key)
    if start + end < size:
        log.warning("%s ends with a partial record (%d bytes, an interrupted write); removing it", out,
                    size - start - end)
        with open(out, "r+b") as f:
            f.truncate(start + end)
            os.fsync(f.fileno())
        size = start + end
    state.out_offset = size
    return size


class FolderScanner:
    """Finds files in ``folder`` whose size and mtime are unchanged for ``stable_for`` s."""

    def __init__(self, folder: Path, suffixes: Iterable[str], stable_for: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.folder = folder
        self.suffixes = {s.lower() for s in suffixes}
        self.stable_for = stable_for
        self.clock = clock
        self._seen: dict[str, tuple[tuple[int, int], float]] = {}

    def _candidates(self) -> dict[str, tuple[int, int]]:
        out: dict[str, tuple[int, int]] = {}
        for root, dirs, files in os.walk(self.folder):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in files:
                if name.startswith((".", "~")) or name.lower().endswith(_TEMP_SUFFIXES):
                    continue
                if Path(name).suffix.lower() not in self.suffixes:
                    continue
                path = Path(root) / name
                try:
                    st = path.stat()
                except OSError:
                    continue  # vanished between listing and stat
                out[path.relative_to(self.folder).as_posix()] = (st.st_size, st.st_mtime_ns)
        return out

    def poll(self, skip: set[str] | frozenset[str] = frozenset()) -> tuple[list[str], int]:
        """(files ready now, sorted; files seen but not stable yet), ignoring ``skip``."""
        now = self.clock()
        ready, waiting = [], 0
        current = {k: v for k, v in self._candidates().items() if k not in skip}
        for rel, sig in current.items():
            prev = self._seen.get(rel)
            if prev is None or prev[0] != sig:
                self._seen[rel] = (sig, now)
                prev = self._seen[rel]
            if now - prev[1] >= self.stable_for:  # a file that stays empty gets an 'empty' error record
                ready.append(rel)
            else:
                waiting += 1
        self._seen = {k: v for k, v in self._seen.items() if k in current}
        return sorted(ready), waiting


@dataclass
class WatchSummary:
    processed: int = 0
    errors: int = 0
    ng: int = 0
    skipped_done: int = 0

    def text(self) -> str:
        return (f"watch: {self.processed} files inspected ({self.ng} NG, {self.errors} errors); "
                f"{self.skipped_done} already done before this run")


def watch_folder(make_inspector: Callable[[Callable[[Any], None]], Any], folder: str | os.PathLike[str],
                 out: str | os.PathLike[str], *,
                 state_file: str | os.PathLike[str] | None = None, suffixes: Iterable[str],
                 once: bool = False, poll_interval: float = 1.0, stable_for: float = 1.0,
                 stop: threading.Event | None = None, max_wait_once: float = 30.0) -> WatchSummary:
    """Run the watch loop (module docstring). make_inspector: ``on_result -> Inspector`` (e.g.
    ``lambda cb: Inspector.from_engine(dir, on_result=cb)``); the inspector is closed on
    return. ``stop``: set it to end the loop (the SIGINT/SIGTERM handlers do)."""
    folder, out = Path(folder), Path(out)
    if not folder.is_dir():
        raise DataError(f"watch folder {folder} does not exist; create it or fix --watch")
    if poll_interval <= 0 or stable_for < 0:
        raise ConfigError(f"poll interval must be > 0 and stable-for >= 0, got {poll_interval}, {stable_for}")
    state = WatchState.load(Path(state_file) if state_file else out.with_name(out.name + ".state.json"), folder)
    reconcile_output(out, state)
    state.save()
    summary = WatchSummary(skipped_done=len(state.done))
    stop = stop or threading.Event()
    submitted: set[str] = set()
    lock = threading.Lock()  # state.done: added to by the delivery thread, read by the scanner
    out.parent.mkdir(parents=True, exist_ok=True)
    sink: IO[bytes] = open(out, "ab")  # noqa: SIM115 - closed in finally

    def record(result: Any) -> None:  # the inspector's delivery thread, in submission order
        line = (json.dumps(result.to_json(), ensure_ascii=False) + "\n").encode("utf-8")
        sink.write(line)
        sink.flush()
        os.fsync(sink.fileno())
        with lock:
            state.done.add(str(result.key))
            state.out_offset += len(line)
            state.save()
        summary.processed += 1
        summary.errors += not result.ok
        summary.ng += result.verdict == "NG"

    try:
        inspector = make_inspector(record)
    except BaseException:
        sink.close()
        raise
    scanner = FolderScanner(folder, suffixes, stable_for)
    restore = _install_signal_handlers(stop)
    started = time.monotonic()
    try:
        while not stop.is_set():
            with lock:
                skip = state.done | submitted
            ready, waiting = scanner.poll(skip=skip)
            for rel in ready:
                if stop.is_set():
                    break
                submitted.add(rel)
                inspector.submit(folder / rel, key=rel)
            if once and not waiting and not ready:
                break
            if once and time.monotonic() - started > max_wait_once:
                log.warning("--once: %d files still changing after %.0f s; leaving them for the next run", waiting,
                            max_wait_once)
                break
            stop.wait(min(poll_interval, stable_for) if once else poll_interval)
    finally:
        restore()
        inspector.close()  # finishes and records everything submitted
        sink.close()
    return summary


def _install_signal_handlers(stop: threading.Event) -> Callable[[], None]:
    """SIGINT/SIGTERM set ``stop`` (main thread only); returns a function restoring the old ones."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    old = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, frame: Any) -> None:
        log.info("signal %d: finishing the frames in flight, then exiting", signum)
        stop.set()

    for sig in old:
        signal.signal(sig, handler)

    def restore() -> None:
        for sig, h in old.items():
            signal.signal(sig, h)

    return restore


__all__ = ["FolderScanner", "WatchState", "WatchSummary", "reconcile_output", "watch_folder"]
