"""Helpers of the defectnet.serve tests (a uniquely named module: test files import it, not
conftest): images, and the processes and listening sockets of this test process's children
(Linux /proc)."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["hole", "stain"]
SCALE = (320, 256)
#: Three image sizes (h, w): the service batches by size, so mixed sizes are exercised.
SIZES = ((180, 300), (240, 320), (150, 330))


def noise_images(n: int, seed: int = 0) -> list[np.ndarray]:
    """uint8 HxWx3 noise images in :data:`SIZES` (cycled)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*SIZES[i % len(SIZES)], 3), dtype=np.uint8) for i in range(n)]


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(parent pid, state, start time in clock ticks) of a process, None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()  # after "pid (comm) "
    return int(fields[1]), fields[0], int(fields[19])


def descendants(root: int | None = None) -> dict[int, int]:
    """{pid: start time} of every live process below ``root`` (default: this process)."""
    root = os.getpid() if root is None else root
    parents: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (info := _stat(int(entry))) is not None and info[1] != "Z":
            parents.setdefault(info[0], []).append(int(entry))
            starts[int(entry)] = info[2]
    out: dict[int, int] = {}
    todo = [root]
    while todo:
        for child in parents.get(todo.pop(), []):
            if child not in out:
                out[child] = starts[child]
                todo.append(child)
    return out


def alive(processes: dict[int, int]) -> list[int]:
    """The pids of ``processes`` ({pid: start time}) still running (the same process, not a
    reused pid; a zombie has exited and counts as gone)."""
    left = []
    for pid, start in processes.items():
        info = _stat(pid)
        if info is not None and info[2] == start and info[1] != "Z":
            left.append(pid)
    return left


def _inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    except OSError:
        pass
    return inodes


def _address(hex_address: str) -> str:
    """The IP of a /proc/net/tcp{,6} local address (``0100007F:1F90`` -> ``127.0.0.1``)."""
    ip = hex_address.split(":")[0]
    if len(ip) == 8:
        return ".".join(str(b) for b in bytes.fromhex(ip)[::-1])
    words = [bytes.fromhex(ip[i:i + 8])[::-1] for i in range(0, 32, 8)]
    raw = b"".join(words)
    if raw[:12] == b"\0" * 10 + b"\xff\xff":  # ::ffff:a.b.c.d
        return "::ffff:" + ".".join(str(b) for b in raw[12:])
    return ":".join(raw[i:i + 2].hex() for i in range(0, 16, 2))


def listening_sockets(pids: list[int]) -> list[tuple[int, str, int]]:
    """(pid, address, port) of every TCP socket in LISTEN state that one of ``pids`` holds."""
    by_inode: dict[int, tuple[str, int]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A":  # LISTEN
                by_inode[int(cols[9])] = (_address(cols[1]), int(cols[1].split(":")[1], 16))
    out = []
    for pid in pids:
        for inode in _inodes(pid):
            if inode in by_inode:
                out.append((pid, *by_inode[inode]))
    return out


# the published record schema's checker lives with the runtime tests
sys.path.append(str(Path(__file__).resolve().parents[1] / "runtime"))
from record_schema import check_record  # noqa: E402

__all__ = ["CLASSES", "SCALE", "SIZES", "alive", "check_record", "descendants", "listening_sockets", "noise_images",
           "png"]
