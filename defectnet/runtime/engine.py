"""Engine folders: the graphs ``defectnet-export`` writes plus ``manifest.json``.

Layout::

    ENGINE_DIR/manifest.json     written last: its presence marks a complete engine
    ENGINE_DIR/gate.onnx         images uint8 [B,3,H,W] + image_sizes int64 [B,2]
                                 -> p_defective [B], c2, c3, c4, c5
    ENGINE_DIR/detector.onnx     c2..c5 + image_sizes -> boxes [B,M,4], scores [B,M],
                                 labels [B,M], count [B]
    ENGINE_DIR/classifier.onnx   two-model baseline only: images + image_sizes -> p_defective [B]

The manifest names every graph with its SHA-256; :func:`load_engine` checks the schema,
that every file exists and that its bytes match, and raises :class:`EngineError` saying
how to fix anything that does not. This module owns the format (the exporter writes it,
the runtime reads it), so the runtime never imports the exporter.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from defectnet.data.transforms import Preprocessor
from defectnet.errors import ConfigError, EngineError
from defectnet.io import sha256_file

ENGINE_FORMAT = "defectnet-engine"
SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"

KIND_DEFECTNET = "defectnet"
KIND_ONE_MODEL = "one-model"
KIND_TWO_MODEL = "two-model"
KINDS = (KIND_DEFECTNET, KIND_ONE_MODEL, KIND_TWO_MODEL)

GATE, DETECTOR, CLASSIFIER = "gate", "detector", "classifier"
#: Graph file names, and which graphs each kind needs.
GRAPH_FILES: dict[str, str] = {GATE: "gate.onnx", DETECTOR: "detector.onnx", CLASSIFIER: "classifier.onnx"}
REQUIRED_GRAPHS: dict[str, tuple[str, ...]] = {
    KIND_DEFECTNET: (GATE, DETECTOR),
    KIND_ONE_MODEL: (GATE, DETECTOR),
    KIND_TWO_MODEL: (CLASSIFIER, GATE, DETECTOR),
}

#: Graph input / output names (the runtime binds by name).
IMAGE_INPUTS = ("images", "image_sizes")
FEATURE_NAMES = ("c2", "c3", "c4", "c5")
GATE_OUTPUTS = ("p_defective", *FEATURE_NAMES)
CLASSIFIER_OUTPUTS = ("p_defective",)
DETECTOR_INPUTS = (*FEATURE_NAMES, "image_sizes")
DETECTOR_OUTPUTS = ("boxes", "scores", "labels", "count")

_REEXPORT = "re-export it with defectnet-export --out {root}"


@dataclass(frozen=True)
class Engine:
    """A validated engine folder.

    kind: ``defectnet`` | ``one-model`` | ``two-model``. graphs: graph name -> file path.
    preprocessor: the :class:`Preprocessor` the graphs were exported for (the runtime uses
    exactly it). manifest: the parsed ``manifest.json``.
    """

    root: Path
    kind: str
    graphs: Mapping[str, Path]
    class_names: tuple[str, ...]
    gate_threshold: float
    preprocessor: Preprocessor
    detections_per_img: int
    manifest: Mapping[str, Any]

    @property
    def has_classifier(self) -> bool:
        return CLASSIFIER in self.graphs

    def graph(self, name: str) -> Path:
        try:
            return self.graphs[name]
        except KeyError:
            raise EngineError(f"engine {self.root} ({self.kind}) has no {name} graph; it has "
                              f"{sorted(self.graphs)}") from None


def _fail(root: Path, problem: str) -> EngineError:
    return EngineError(f"engine folder {root}: {problem}; " + _REEXPORT.format(root=root))


def _get(manifest: Mapping[str, Any], key: str, kind: type | tuple[type, ...], root: Path) -> Any:
    value = manifest.get(key)
    if not isinstance(value, kind):
        raise _fail(root, f"{MANIFEST_FILE} field {key!r} is missing or not a {getattr(kind, '__name__', kind)} "
                          f"(got {value!r})")
    return value


def read_manifest(root: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse and schema-check ``root/manifest.json`` (no file hashing)."""
    root = Path(root)
    if not root.is_dir():
        raise EngineError(f"engine folder {root} does not exist; create it with "
                          f"defectnet-export --model NAME --out {root}")
    path = root / MANIFEST_FILE
    if not path.is_file():
        raise EngineError(f"{path} is missing, so {root} is not a complete engine (an export that did not "
                          "finish, or the wrong folder); " + _REEXPORT.format(root=root))
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _fail(root, f"{MANIFEST_FILE} is not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != ENGINE_FORMAT:
        raise _fail(root, f"{MANIFEST_FILE} is not a {ENGINE_FORMAT} manifest")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise _fail(root, f"{MANIFEST_FILE} has schema_version {version!r} but this defectnet reads "
                          f"version {SCHEMA_VERSION}")
    return manifest


def load_engine(root: str | os.PathLike[str], *, check_hashes: bool = True) -> Engine:
    """Validate an engine folder and return it (see the module docstring)."""
    return engine_from_manifest(root, read_manifest(root), check_hashes=check_hashes)


def engine_from_manifest(root: str | os.PathLike[str], manifest: Mapping[str, Any], *,
                         check_hashes: bool = True) -> Engine:
    """Validate ``manifest`` (already parsed) against the files in ``root``."""
    root = Path(root)
    kind = _get(manifest, "kind", str, root)
    if kind not in KINDS:
        raise _fail(root, f"unknown engine kind {kind!r} (known: {', '.join(KINDS)})")
    entries = _get(manifest, "graphs", dict, root)
    graphs: dict[str, Path] = {}
    for name in REQUIRED_GRAPHS[kind]:
        entry = entries.get(name)
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str) \
                or not isinstance(entry.get("sha256"), str):
            raise _fail(root, f"{MANIFEST_FILE} lacks the {name} graph entry (file + sha256)")
        path = root / entry["file"]
        if Path(entry["file"]).name != entry["file"]:
            raise _fail(root, f"graph file name {entry['file']!r} must be a plain file name inside the folder")
        if not path.is_file():
            raise EngineError(f"engine folder {root}: graph file {entry['file']} is missing (the manifest names "
                              f"it); copy the whole folder again or " + _REEXPORT.format(root=root))
        if check_hashes and sha256_file(path) != entry["sha256"]:
            raise EngineError(f"engine folder {root}: {entry['file']} does not match the SHA-256 in "
                              f"{MANIFEST_FILE}; the file is corrupt or was replaced (a partial copy?) — copy "
                              "the folder again or " + _REEXPORT.format(root=root))
        graphs[name] = path
    names = _get(manifest, "class_names", list, root)
    if not all(isinstance(n, str) for n in names):
        raise _fail(root, "class_names must be a list of strings")
    threshold = _get(manifest, "gate_threshold", (int, float), root)
    pre = _get(manifest, "preprocessing", dict, root)
    try:
        scale = tuple(int(v) for v in pre["scale"])
        preprocessor = Preprocessor(scale=(scale[0], scale[1]), size_divisor=int(pre["size_divisor"]))
    except (KeyError, TypeError, ValueError, IndexError, ConfigError) as e:
        raise _fail(root, f"preprocessing block {pre!r} is invalid ({e})") from None
    detections = _get(manifest, "detections_per_img", int, root)
    return Engine(root, kind, graphs, tuple(names), float(threshold), preprocessor, detections, manifest)
