"""A trained model plus everything an engine records about it: what ``defectnet-export``
starts from and what the runtime's PyTorch backend loads (this module sits below both, so
neither imports the other; ``defectnet.train`` is imported only when a run or checkpoint
folder is loaded).

:func:`load_source` accepts a finished run folder (``RUN_DIR/run.json``, what
``defectnet-train --out`` writes), one epoch checkpoint folder (``checkpoint.json``) or a
bare DefectNet weights file (``.safetensors`` with its config in the metadata).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from defectnet.data.transforms import DEFAULT_SCALE, SIZE_DIVISOR
from defectnet.errors import CheckpointError, ExportError
from defectnet.io import sha256_file
from defectnet.model import DefectNet, ImageClassifier, TwoModel
from defectnet.runtime.manifest import Manifest, SourceInfo
from defectnet.runtime.types import EngineKind

_WEIGHTS = "model.safetensors"


@dataclass
class ModelSource:
    """A model ready to export.

    model: the DefectNet (gate or one-model) or TwoModel, in eval mode on the CPU.
    kind: ``defectnet`` | ``one-model`` | ``two-model``. checkpoint: the path given by the
    user; weights: weights file -> SHA-256 (what the engine's provenance records).
    scale / size_divisor: the preprocessing the model was trained with.
    """

    model: nn.Module
    class_names: list[str]
    checkpoint: Path | None = None
    weights: dict[str, str] = field(default_factory=dict)
    variant: str = ""
    scale: tuple[int, int] = DEFAULT_SCALE
    size_divisor: int = SIZE_DIVISOR

    def __post_init__(self) -> None:
        if not isinstance(self.model, (DefectNet, TwoModel)):
            raise ExportError(f"can only export a DefectNet or TwoModel, got {type(self.model).__name__}")
        k = self.detector.config.num_classes
        if len(self.class_names) != k:
            raise ExportError(f"{len(self.class_names)} class names for a model with {k} classes; "
                              "pass one name per label 1..K")
        self.model.eval()

    @property
    def detector(self) -> DefectNet:
        return self.model.detector if isinstance(self.model, TwoModel) else self.model  # type: ignore[return-value]

    @property
    def classifier(self) -> ImageClassifier | None:
        return self.model.classifier if isinstance(self.model, TwoModel) else None

    @property
    def kind(self) -> EngineKind:
        if isinstance(self.model, TwoModel):
            return EngineKind.TWO_MODEL
        return EngineKind.DEFECTNET if self.detector.config.with_gate else EngineKind.ONE_MODEL

    @property
    def gate_threshold(self) -> float:
        if isinstance(self.model, TwoModel):
            return float(self.model.gate_threshold)
        return float(self.detector.config.gate_threshold)

    def provenance(self) -> SourceInfo:
        """What the engine manifest records about this model (its ``source`` block)."""
        return SourceInfo(str(Path(self.checkpoint).resolve()) if self.checkpoint else None, dict(self.weights),
                          self.variant, self.detector.config.to_dict())


def default_class_names(k: int) -> list[str]:
    return [f"class_{i}" for i in range(1, k + 1)]


def _from_run(run_dir: Path) -> ModelSource:
    from defectnet.train import load_run

    model, info = load_run(run_dir)
    weights = {str(info.checkpoint / _WEIGHTS): sha256_file(info.checkpoint / _WEIGHTS)}
    if info.detector is not None:
        det = info.detector.checkpoint / _WEIGHTS
        weights[str(det)] = sha256_file(det)
    train_config = info.detector.train_config if info.detector is not None else info.train_config
    scale = tuple(info.train_config.get("scale") or train_config.get("scale") or DEFAULT_SCALE)
    return ModelSource(model, list(info.class_names), run_dir, weights, info.variant,
                        (int(scale[0]), int(scale[1])))


def _from_checkpoint(ckpt_dir: Path) -> ModelSource:
    from defectnet.train.checkpoint import build_from_checkpoint, default_model_io

    model, meta = build_from_checkpoint(ckpt_dir, default_model_io())
    if meta.kind != "detector":
        raise ExportError(f"{ckpt_dir} is a {meta.kind} checkpoint; export a detector checkpoint, or the "
                          "two-model run folder (which names both its classifier and detector)")
    scale = tuple(meta.train_config.get("scale") or DEFAULT_SCALE)
    return ModelSource(model, list(meta.class_names), ckpt_dir,
                        {str(ckpt_dir / _WEIGHTS): sha256_file(ckpt_dir / _WEIGHTS)}, meta.variant,
                        (int(scale[0]), int(scale[1])))


def _from_weights(path: Path) -> ModelSource:
    from defectnet.model import load_model

    model = load_model(path)
    return ModelSource(model, default_class_names(model.config.num_classes), path,
                        {str(path): sha256_file(path)}, "")


def load_source(path: str | os.PathLike[str]) -> ModelSource:
    """Load a run folder, a checkpoint folder or a weights file (see the module docstring)."""
    path = Path(path)
    try:
        if path.is_dir() and (path / "run.json").is_file():
            return _from_run(path)
        if path.is_dir() and (path / "checkpoint.json").is_file():
            return _from_checkpoint(path)
        if path.is_file() and path.suffix == ".safetensors":
            return _from_weights(path)
    except CheckpointError as e:
        raise ExportError(f"cannot load the model to export from {path}: {e}") from None
    if not path.exists():
        raise ExportError(f"{path} does not exist; pass --model NAME (a run folder under --runs-dir) or "
                          "--checkpoint PATH (a run folder, an epoch checkpoint folder or a .safetensors file)")
    raise ExportError(f"{path} is neither a finished run folder (run.json), an epoch checkpoint folder "
                      "(checkpoint.json) nor a DefectNet .safetensors weights file; pass one of those")


def load_source_from_manifest(manifest: Manifest, root: Path) -> ModelSource:
    """The source an engine was exported from, checked against the recorded weight hashes."""
    from defectnet.errors import EngineError

    ckpt = manifest.source.checkpoint if manifest.source is not None else None
    if not ckpt or manifest.source is None:
        raise EngineError(f"engine {root} records no source checkpoint, so the torch backend cannot load "
                          "the model; use --backend onnxruntime or re-export from a checkpoint")
    try:
        source = load_source(ckpt)
    except ExportError as e:
        raise EngineError(f"engine {root}: the recorded source checkpoint cannot be loaded ({e})") from None
    expected = manifest.source.weights_sha256
    if expected and sorted(source.weights.values()) != sorted(expected.values()):
        raise EngineError(f"engine {root}: the weights at {ckpt} changed since the export (SHA-256 differs); "
                          f"re-export with defectnet-export --checkpoint {ckpt} --out {root}")
    return source
