"""Calibration cache: the measured tensor ranges, keyed by everything they depend on.

A cache entry is reused only when its key material is *equal* to the current one:

* the SHA-256 of every float32 graph that was calibrated (and of the exported graphs they
  came from) -- a retrained or re-exported model never reuses old ranges;
* the SHA-256 of the calibration images (selection order + each file's bytes) and the
  preprocessing scale -- changed data never reuses them either;
* the settings: method, percentile / histogram bins, --calib-size, seed, chunking, the
  calibrated op types, the Q/DQ flavours, the gate threshold that picked the detector's
  images, and the onnxruntime version whose calibrators computed the ranges.

The entry file is ``<digest of the material>.json``; the material is stored inside too
and compared on load, so a renamed or hand-edited file is recomputed, never trusted. The
ranges are onnxruntime ``TensorsData`` serialised with its own ``CalibrationCacheEncoder``
(float32 values round-trip exactly, so a cache hit yields byte-identical Q/DQ graphs).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CACHE_FORMAT = "defectnet-calibration-cache"
CACHE_VERSION = 1


def default_cache_dir() -> Path:
    """``$DEFECTNET_CACHE_DIR/calibration``, else ``$XDG_CACHE_HOME`` or ``~/.cache`` + ``defectnet/calibration``."""
    root = os.environ.get("DEFECTNET_CACHE_DIR")
    if root:
        return Path(root) / "calibration"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "defectnet" / "calibration"


@dataclass(frozen=True)
class CacheKey:
    """JSON-able key material; ``digest`` names the entry."""

    material: Mapping[str, Any]

    @property
    def digest(self) -> str:
        return hashlib.sha256(_canonical(self.material).encode("utf-8")).hexdigest()


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


class CalibrationCache:
    """A folder of cache entries (``root`` None: a disabled cache that never hits)."""

    def __init__(self, root: str | os.PathLike[str] | None) -> None:
        self.root = Path(root) if root is not None else None

    def path(self, key: CacheKey) -> Path | None:
        return self.root / f"{key.digest}.json" if self.root is not None else None

    def load(self, key: CacheKey) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """``(ranges, info)`` -- graph name -> ``TensorsData``, and the info saved with them --
        or None on a miss."""
        from onnxruntime.quantization.calibrate import TensorsData

        path = self.path(key)
        if path is None or not path.is_file():
            return None
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
            if stored.get("format") != CACHE_FORMAT or stored.get("version") != CACHE_VERSION:
                raise ValueError(f"not a version-{CACHE_VERSION} {CACHE_FORMAT} file")
            if _canonical(stored.get("material")) != _canonical(key.material):
                log.warning("calibration cache %s does not hold the expected key material; recalibrating", path)
                return None
            ranges = {name: TensorsData.from_dict(d) for name, d in stored["ranges"].items()}
            return ranges, dict(stored.get("info") or {})
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            log.warning("calibration cache %s is unreadable (%s); recalibrating", path, e)
            return None

    def save(self, key: CacheKey, ranges: Mapping[str, Any], info: Mapping[str, Any] | None = None) -> Path | None:
        """Store ``ranges`` (graph name -> ``TensorsData``) and JSON-able ``info`` atomically;
        returns the file (None for a disabled cache)."""
        from onnxruntime.quantization.calibrate import CalibrationCacheEncoder

        from defectnet.io import atomic_write_text

        path = self.path(key)
        if path is None:
            return None
        payload = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "key": key.digest,
                   "material": dict(key.material), "info": dict(info or {}),
                   "ranges": {k: v.to_dict() for k, v in ranges.items()}}
        return atomic_write_text(path, json.dumps(payload, cls=CalibrationCacheEncoder, sort_keys=True) + "\n")
