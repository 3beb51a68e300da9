"""``defectnet-infer --watch DIR``: inspect image files as they appear in a folder.

* **Polling**, no inotify (works on network shares): every ``poll_interval`` seconds the
  folder is scanned (recursively) for entries with an image suffix
  (:func:`~defectnet.runtime.inspection.folders.walk_image_entries`: files, dangling
  symlinks, folders named like images); names starting with ``.`` or ``~`` and
  ``*.tmp``/``*.part`` files are ignored (write-then-rename is the safe way to drop files
  in). An entry is taken once its size and mtime (of the link itself when its target is
  gone) have stayed the same for ``stable_for`` seconds, so half-written files are not read.
* **Output**: one JSON line per entry (the :class:`InspectionResult` record, ``key`` = the
  path relative to DIR; an entry that is not an image gets an error record), appended to
  ``--out`` by a :class:`~defectnet.runtime.inspection.record_log.RecordLog` (flushed and
  fsynced per record).
* **Never twice, across restarts**: after each flushed record the state file (default
  ``OUT.state.json``: done files + how many bytes of OUT they cover) is rewritten
  atomically. On start the state is loaded, then OUT is read from that offset on: records
  written after the last state update (a kill between the two writes) count as done too,
  and a torn last line (a kill mid-write) is cut off, so that file is inspected again and
  gets exactly one complete record. A missing or unreadable state file is rebuilt from OUT.
  A file is identified by its relative path: a new file under a done name is skipped.
  ``overwrite`` starts over (empties OUT, forgets the state).
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
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from defectnet.errors import ConfigError, DataError
from defectnet.io import atomic_write_text
from defectnet.runtime.inspection.folders import IMAGE_SUFFIXES, walk_image_entries
from defectnet.runtime.inspection.record_log import RecordLog
from defectnet.runtime.types import Verdict

log = logging.getLogger(__name__)
STATE_FORMAT = "defectnet-watch-state"


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
        """Write the state atomically (ASCII JSON: a file name that is not valid Unicode is
        kept as a ``\\u`` escape and reads back equal)."""
        state = {"format": STATE_FORMAT, "version": 1, "folder": self.folder, "out_offset": self.out_offset,
                 "done": sorted(self.done)}
        atomic_write_text(self.path, json.dumps(state, sort_keys=True, ensure_ascii=True) + "\n")


class FolderScanner:
    """Finds the entries of ``folder`` (:func:`walk_image_entries`) whose size and mtime are
    unchanged for ``stable_for`` s."""

    def __init__(self, folder: Path, suffixes: Iterable[str] = IMAGE_SUFFIXES, stable_for: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.folder = folder
        self.suffixes = {s.lower() for s in suffixes}
        self.stable_for = stable_for
        self.clock = clock
        self._seen: dict[str, tuple[tuple[int, int], float]] = {}

    def _candidates(self) -> dict[str, tuple[int, int]]:
        out: dict[str, tuple[int, int]] = {}
        entries, errors = walk_image_entries(self.folder, self.suffixes, skip_hidden=True)
        for e in errors:
            if os.path.exists(e.filename):  # a folder that vanished mid-scan is not worth a warning
                log.warning("cannot list %s (%s); its files are not watched", e.filename, e.strerror or e)
        for rel in entries:
            path = self.folder / rel
            try:
                st = path.stat()
            except OSError:
                try:
                    st = path.lstat()  # a dangling symlink (or unreachable target): still an entry
                except OSError:
                    continue  # vanished between listing and stat
            out[rel] = (st.st_size, st.st_mtime_ns)
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
    errors_by_reason: Counter[str] = field(default_factory=Counter)

    def text(self) -> str:
        by_reason = ", ".join(f"{reason} {n}" for reason, n in sorted(self.errors_by_reason.items()))
        return (f"watch: {self.processed} files inspected ({self.ng} NG, {self.errors} errors"
                f"{': ' + by_reason if by_reason else ''}); {self.skipped_done} already done before this run")


def watch_folder(make_inspector: Callable[[Callable[[Any], None]], Any], folder: str | os.PathLike[str],
                 out: str | os.PathLike[str], *,
                 state_file: str | os.PathLike[str] | None = None, suffixes: Iterable[str] = IMAGE_SUFFIXES,
                 once: bool = False, poll_interval: float = 1.0, stable_for: float = 1.0,
                 stop: threading.Event | None = None, max_wait_once: float = 30.0,
                 overwrite: bool = False) -> WatchSummary:
    """Run the watch loop (module docstring). make_inspector: ``on_result -> Inspector`` (e.g.
    ``lambda cb: Inspector.from_engine(dir, on_result=cb)``); the inspector is closed on
    return. ``stop``: set it to end the loop (the SIGINT/SIGTERM handlers do)."""
    folder, out = Path(folder), Path(out)
    if not folder.is_dir():
        raise DataError(f"watch folder {folder} does not exist; create it or fix --watch")
    if poll_interval <= 0 or stable_for < 0:
        raise ConfigError(f"poll interval must be > 0 and stable-for >= 0, got {poll_interval}, {stable_for}")
    state_path = Path(state_file) if state_file else out.with_name(out.name + ".state.json")
    state = WatchState(state_path, str(folder.resolve())) if overwrite else WatchState.load(state_path, folder)
    sink = RecordLog(out, start=state.out_offset, overwrite=overwrite)  # repairs a torn last line
    state.done.update(k for k in sink.recovered.keys if isinstance(k, str))  # written after the last state save
    state.out_offset = sink.size
    try:
        state.save()
    except BaseException:
        sink.close()
        raise
    summary = WatchSummary(skipped_done=len(state.done))
    stop = stop or threading.Event()
    submitted: set[str] = set()
    lock = threading.Lock()  # state.done: added to by the delivery thread, read by the scanner

    def record(result: Any) -> None:  # the inspector's delivery thread, in submission order
        size = sink.append(result.to_json())
        with lock:
            state.done.add(str(result.key))
            state.out_offset = size
            state.save()
        summary.processed += 1
        summary.errors += not result.ok
        summary.ng += result.verdict == Verdict.NG
        if not result.ok:
            summary.errors_by_reason[str(result.reason)] += 1

    try:
        inspector = make_inspector(record)
    except BaseException:
        sink.close()
        raise
    scanner = FolderScanner(folder, suffixes, stable_for)
    restore = stop_on_signals(stop)
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


def stop_on_signals(stop: threading.Event) -> Callable[[], None]:
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


__all__ = ["FolderScanner", "WatchState", "WatchSummary", "stop_on_signals", "watch_folder"]
