"""Engine folders: the graphs ``defectnet-export`` writes plus ``manifest.json``.

Layout::

    ENGINE_DIR/manifest.json     written last: its presence marks a complete engine
    ENGINE_DIR/gate.onnx         images uint8 [B,3,H,W] + image_sizes int64 [B,2]
                                 -> p_defective [B], c2, c3, c4, c5
    ENGINE_DIR/detector.onnx     c2..c5 + image_sizes -> boxes [B,M,4], scores [B,M],
                                 labels [B,M], count [B]
    ENGINE_DIR/classifier.onnx   two-model baseline only: images + image_sizes -> p_defective [B]

The manifest (:mod:`defectnet.runtime.manifest`, typed and validated there) names every
graph with its SHA-256; :func:`load_engine` reads it, checks that every file exists and
that its bytes match, and raises :class:`EngineError` saying how to fix anything that does
not. The runtime owns the format (the exporter writes it, the runtime reads it), so the
runtime never imports the exporter.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from defectnet.data.transforms import Preprocessor
from defectnet.errors import EngineError
from defectnet.io import sha256_file
from defectnet.runtime.manifest import (
    CLASSIFIER,
    DETECTOR,
    ENGINE_FORMAT,
    GATE,
    GRAPH_FILES,
    MANIFEST_FILE,
    REQUIRED_GRAPHS,
    SCHEMA_VERSION,
    Manifest,
    reexport_hint,
)
from defectnet.runtime.types import EngineKind

#: Graph input / output names (the runtime binds by name).
IMAGE_INPUTS = ("images", "image_sizes")
FEATURE_NAMES = ("c2", "c3", "c4", "c5")
GATE_OUTPUTS = ("p_defective", *FEATURE_NAMES)
CLASSIFIER_OUTPUTS = ("p_defective",)
DETECTOR_INPUTS = (*FEATURE_NAMES, "image_sizes")
DETECTOR_OUTPUTS = ("boxes", "scores", "labels", "count")


@dataclass(frozen=True)
class Engine:
    """A validated engine folder.

    graphs: graph name -> file path (the graphs the kind needs). manifest: the typed
    ``manifest.json`` (:class:`~defectnet.runtime.manifest.Manifest`); kind, class names, gate
    threshold and detections per image are read from it, and :attr:`preprocessor` is the
    :class:`Preprocessor` the graphs were exported for (the runtime uses exactly it).
    """

    root: Path
    graphs: Mapping[str, Path]
    manifest: Manifest

    @property
    def kind(self) -> EngineKind:
        return self.manifest.kind

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.manifest.class_names

    @property
    def gate_threshold(self) -> float:
        return self.manifest.gate_threshold

    @property
    def detections_per_img(self) -> int:
        return self.manifest.detections_per_img

    @cached_property
    def preprocessor(self) -> Preprocessor:
        return self.manifest.preprocessing.preprocessor()

    @property
    def has_classifier(self) -> bool:
        return CLASSIFIER in self.graphs

    def graph(self, name: str) -> Path:
        try:
            return self.graphs[name]
        except KeyError:
            raise EngineError(f"engine {self.root} ({self.kind}) has no {name} graph; it has "
                              f"{sorted(self.graphs)}") from None


def read_manifest(root: str | os.PathLike[str]) -> Manifest:
    """Parse and validate ``root/manifest.json`` (no file hashing)."""
    root = Path(root)
    if not root.is_dir():
        raise EngineError(f"engine folder {root} does not exist; create it with "
                          f"defectnet-export --model NAME --out {root}")
    path = root / MANIFEST_FILE
    if not path.is_file():
        raise EngineError(f"{path} is missing, so {root} is not a complete engine (an export that did not "
                          "finish, or the wrong folder); " + reexport_hint(root))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EngineError(f"engine folder {root}: {MANIFEST_FILE} is not valid JSON ({e}); "
                          + reexport_hint(root)) from None
    return Manifest.from_json(data, root)


def load_engine(root: str | os.PathLike[str], *, check_hashes: bool = True) -> Engine:
    """Validate an engine folder and return it (see the module docstring)."""
    return engine_from_manifest(root, read_manifest(root), check_hashes=check_hashes)


def engine_from_manifest(root: str | os.PathLike[str], manifest: Manifest, *,
                         check_hashes: bool = True) -> Engine:
    """Check ``manifest`` (already validated) against the files in ``root``: every graph the
    kind needs exists and (``check_hashes``) its bytes match the recorded SHA-256."""
    root = Path(root)
    graphs: dict[str, Path] = {}
    for name in REQUIRED_GRAPHS[manifest.kind]:
        entry = manifest.graphs[name]
        path = root / entry.file
        if not path.is_file():
            raise EngineError(f"engine folder {root}: graph file {entry.file} is missing (the manifest names "
                              f"it); copy the whole folder again or " + reexport_hint(root))
        if check_hashes and sha256_file(path) != entry.sha256:
            raise EngineError(f"engine folder {root}: {entry.file} does not match the SHA-256 in "
                              f"{MANIFEST_FILE}; the file is corrupt or was replaced (a partial copy?) — copy "
                              "the folder again or " + reexport_hint(root))
        graphs[name] = path
    return Engine(root, graphs, manifest)


__all__ = ["CLASSIFIER", "DETECTOR", "ENGINE_FORMAT", "Engine", "GATE", "GRAPH_FILES", "MANIFEST_FILE",
           "Manifest", "SCHEMA_VERSION", "engine_from_manifest", "load_engine", "read_manifest", "sha256_file"]
