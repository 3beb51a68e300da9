"""An append-only JSON-lines file of inspection records (``defectnet-infer --out``, batch and
``--watch``): nothing written is lost, nothing is written twice.

* **Append, flush, fsync per record**: each record is one line, on disk before the next is
  written, so a crash, ``kill -9`` or power loss after k records leaves k complete lines
  (and at most one partial line: the record being written). This file is the exception to
  the write-atomically rule of :mod:`defectnet.io`: a whole-file rename at the end would lose
  every record of an interrupted run.
* **Recovery on open** (:func:`recover`): the keys of the complete records are read (what a
  re-run skips) and a partial last line is cut off, so appending continues after the last
  complete record and the interrupted input gets exactly one complete record later.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from defectnet.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class Recovered:
    """What :func:`recover` found. keys: the ``key`` of every complete record from the start
    offset on, in file order; size: the file's size after repair (where appending goes on);
    torn: bytes of a partial last line that were cut off; unparsable: complete lines that are
    not JSON objects (kept, not counted as records)."""

    keys: list[Any] = field(default_factory=list)
    size: int = 0
    torn: int = 0
    unparsable: int = 0


def recover(path: str | os.PathLike[str], start: int = 0) -> Recovered:
    """Read the complete records of ``path`` from byte ``start`` on (the whole file when
    ``start`` is past its end) and cut a partial last line off (fsynced). A missing file is
    empty."""
    path = Path(path)
    found = Recovered()
    try:
        f = open(path, "r+b")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return found
    with f:
        size = os.fstat(f.fileno()).st_size
        offset = start if 0 <= start <= size else 0  # a shorter file replaced the one the offset was for
        f.seek(offset)
        for line in f:
            if not line.endswith(b"\n"):  # the last line, interrupted mid-write
                found.torn = len(line)
                break
            offset += len(line)
            try:
                record = json.loads(line)
                found.keys.append(record["key"])
            except (ValueError, TypeError, KeyError):
                found.unparsable += 1
        if found.torn:
            log.warning("%s ends with a partial record (%d bytes, an interrupted write); removing it", path,
                        found.torn)
            f.truncate(offset)
            f.flush()
            os.fsync(f.fileno())
        if found.unparsable:
            log.warning("%s: %d lines are not records; they are kept but not counted", path, found.unparsable)
    found.size = offset
    return found


class RecordLog:
    """An open record file (module docstring). start: the byte offset from which
    :attr:`recovered` reads keys (``--watch`` keeps the offset its state file covers);
    overwrite: empty the file first. Raises :class:`DataError` when the file cannot be
    opened for appending."""

    def __init__(self, path: str | os.PathLike[str], *, start: int = 0, overwrite: bool = False) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            created = not self.path.exists()
            if overwrite:
                with open(self.path, "wb") as f:
                    os.fsync(f.fileno())
            self.recovered = recover(self.path, start)
            self._file: IO[bytes] = open(self.path, "ab")  # noqa: SIM115 - closed by close()
            if created or overwrite:
                _fsync_dir(self.path.parent)  # the new file's name survives a power loss too
        except OSError as e:
            raise DataError(f"cannot write the record file {self.path} ({e.strerror or e}); choose a writable "
                            "--out path") from None
        self.size = self.recovered.size

    def append(self, record: Mapping[str, Any]) -> int:
        """Write ``record`` as one JSON line, flush and fsync it; returns the file's new size.
        UTF-8; a record holding a string that is not valid Unicode (a file name in another
        encoding) is written with ``\\u`` escapes, so every line stays valid JSON and its key
        reads back equal."""
        try:
            line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        except UnicodeEncodeError:
            line = (json.dumps(record, ensure_ascii=True) + "\n").encode("ascii")
        self._file.write(line)
        self._file.flush()
        os.fsync(self._file.fileno())
        self.size += len(line)
        return self.size

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> RecordLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot fsync a folder
    finally:
        os.close(fd)


__all__ = ["RecordLog", "Recovered", "recover"]
