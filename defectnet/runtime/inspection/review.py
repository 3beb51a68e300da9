"""Saving NG and borderline-gate images for human review, off the inference threads.

A frame is saved when its verdict is NG (``save_ng``) or when its gate probability lies
within ``band`` of the gate threshold (``|P - threshold| <= band``: the images a small
threshold change would flip, including gate exits that may be escapes). Each saved frame
is a lossless PNG of the decoded input plus a JSON sidecar with its result record, both
written atomically (:func:`defectnet.io.atomic_write`), named
``<time_ns>_<n>_<kind>_<key>.png`` so that names sort oldest first. The folder keeps the
newest ``max_images`` frames: older ones (also those left by an earlier run) are deleted.
Writing happens on one background thread with a bounded queue; when it is full the image
is skipped and counted (``review_dropped_total``), never blocking the line.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from defectnet.errors import ConfigError
from defectnet.io import atomic_write, atomic_write_text
from defectnet.runtime.inspection.metrics import InspectorMetrics
from defectnet.runtime.types import Verdict

log = logging.getLogger(__name__)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class ReviewConfig:
    """folder: where images go; band: borderline half-width around the gate threshold
    (0 disables borderline saving); max_images: newest frames kept; save_ng: also save NG
    frames; queue_size: frames waiting for the writer before new ones are skipped."""

    folder: Path
    band: float = 0.05
    max_images: int = 1000
    save_ng: bool = True
    queue_size: int = 32

    def __post_init__(self) -> None:
        if not 0.0 <= self.band <= 1.0:
            raise ConfigError(f"review band must be in [0, 1], got {self.band!r}")
        if self.max_images < 1 or self.queue_size < 1:
            raise ConfigError(f"review max_images and queue_size must be >= 1, got {self.max_images}, "
                              f"{self.queue_size}")

    def save_reason(self, verdict: str, p_defective: float | None, threshold: float) -> str | None:
        """'ng', 'borderline' or None (not saved)."""
        if verdict == Verdict.NG and self.save_ng:
            return "ng"
        if p_defective is not None and self.band > 0 and abs(p_defective - threshold) <= self.band:
            return "borderline"
        return None


class ReviewWriter:
    """The background writer of a :class:`ReviewConfig` (see the module docstring)."""

    def __init__(self, config: ReviewConfig, metrics: InspectorMetrics) -> None:
        self.config = config
        self.metrics = metrics
        self.folder = Path(config.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._saved: deque[Path] = deque(sorted(self.folder.glob("*.png")))
        self._queue: queue.Queue[tuple[Path, Tensor, dict[str, Any], str] | None] = queue.Queue(config.queue_size)
        self._count = 0
        self._lock = threading.Lock()
        self._prune()  # files an earlier run left beyond the bound
        self._thread = threading.Thread(target=self._loop, name="defectnet-review", daemon=True)
        self._thread.start()

    def offer(self, image: Tensor, record: dict[str, Any], kind: str, key: Any) -> str | None:
        """Queue ``image`` (uint8 ``[3, H, W]``) for saving; returns the path it will have, or
        None when the writer is busy (counted as dropped)."""
        with self._lock:
            self._count += 1
            n = self._count
        stem = _UNSAFE.sub("_", str(key))[-80:].strip("_") or "frame"
        path = self.folder / f"{time.time_ns()}_{n:06d}_{kind}_{stem}.png"
        try:
            self._queue.put_nowait((path, image, {**record, "review_kind": kind}, kind))
        except queue.Full:
            self.metrics.count_review_dropped()
            return None
        return str(path)

    def close(self) -> None:
        """Write what is queued, then stop the thread."""
        self._queue.put(None)
        self._thread.join()

    def _loop(self) -> None:
        while (item := self._queue.get()) is not None:
            path, image, record, kind = item
            try:
                self._write(path, image, record)
                self.metrics.count_review(kind)
                self._saved.append(path)
                self._prune()
            except Exception:  # noqa: BLE001 - a full disk must not stop inspection
                log.exception("could not write review image %s", path)
                self.metrics.count_review_dropped()

    @staticmethod
    def _write(path: Path, image: Tensor, record: dict[str, Any]) -> None:
        from PIL import Image

        pil = Image.fromarray(image.permute(1, 2, 0).contiguous().numpy())
        atomic_write(path, lambda f: pil.save(f, format="PNG", compress_level=1))
        atomic_write_text(path.with_suffix(".json"), json.dumps(record, ensure_ascii=False, indent=1) + "\n")

    def _prune(self) -> None:
        while len(self._saved) > self.config.max_images:
            old = self._saved.popleft()
            old.unlink(missing_ok=True)
            old.with_suffix(".json").unlink(missing_ok=True)


__all__ = ["ReviewConfig", "ReviewWriter"]
