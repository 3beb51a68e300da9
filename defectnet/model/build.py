"""Build models from configs; save and load their weights as safetensors.

A weights file carries the model's config in its metadata (key ``defectnet_config``,
JSON), so :func:`load_model` can rebuild the model without any other file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from defectnet.errors import CheckpointError, ConfigError
from defectnet.io import atomic_write_bytes
from defectnet.model.classifier import ImageClassifier
from defectnet.model.config import ClassifierConfig, ModelConfig
from defectnet.model.defectnet import DefectNet
from defectnet.model.two_model import TwoModel

CONFIG_KEY = "defectnet_config"
CLASS_KEY = "defectnet_model"


def build_model(config: ModelConfig) -> DefectNet:
    """A DefectNet (or, with ``with_gate=False``, the one-model baseline) for ``config``."""
    return DefectNet(config)


def build_classifier(config: ClassifierConfig) -> ImageClassifier:
    """The two-model baseline's image classifier."""
    return ImageClassifier(config)


def build_two_model(classifier: ClassifierConfig, detector: ModelConfig, gate_threshold: float = 0.5) -> TwoModel:
    """Classifier + one-model detector. ``detector.with_gate`` must be False."""
    if detector.with_gate:
        raise ConfigError("the two-model baseline's detector must be a one-model detector; "
                          "pass ModelConfig(..., with_gate=False)")
    return TwoModel(ImageClassifier(classifier), DefectNet(detector), gate_threshold)


def _metadata(model: nn.Module) -> dict[str, str]:
    config = getattr(model, "config", None)
    meta = {"format": "pt", CLASS_KEY: type(model).__name__}
    if isinstance(config, (ModelConfig, ClassifierConfig)):
        meta[CONFIG_KEY] = json.dumps(config.to_dict(), sort_keys=True)
    return meta


def save_weights(model: nn.Module, path: str | os.PathLike[str], *, dtype: torch.dtype | None = None) -> Path:
    """Write ``model.state_dict()`` to ``path`` as safetensors, atomically (temp file +
    rename: a crash never leaves a half-written file). Returns the path. dtype: store the
    floating-point tensors in this type (e.g. ``torch.float16`` for a file half the size;
    :func:`load_weights` casts back to the model's own types); integer buffers keep theirs."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    return atomic_write_bytes(path, save(state, metadata=_metadata(model)))


def _read(path: Path) -> tuple[dict[str, object], dict[str, str]]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointError(f"weights file {str(path)!r} does not exist; check the path "
                              "(save_weights writes it at the end of training)")
    try:
        state = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as err:  # noqa: BLE001 - safetensors raises several types for bad files
        raise CheckpointError(f"weights file {str(path)!r} is not a readable safetensors file ({err}); "
                              "it may be truncated or corrupt: re-copy it or save it again") from err
    return dict(state), dict(meta)


def load_weights(model: nn.Module, path: str | os.PathLike[str], *, optional: tuple[str, ...] = ()) -> list[str]:
    """Load weights written by :func:`save_weights` into ``model`` (strict: every key and
    shape must match), except that keys under the module prefixes in ``optional`` (e.g.
    ``("gate.",)``) may be absent from the file or from the model: absent from the file,
    the model keeps its own (fresh) values. BatchNorm ``num_batches_tracked`` counters the
    model has no place for (frozen BN) are dropped. Returns the model keys left at their own
    values."""
    path = Path(path)
    state, meta = _read(path)
    own = model.state_dict()

    def required(key: str) -> bool:
        return not key.startswith(optional)  # startswith(()) is False: no prefixes, all required

    kept = sorted(k for k in set(own) - set(state) if not required(k))
    # BatchNorm's step counter has no place in FrozenBatchNorm2d (torchvision drops it the same
    # way), so weights of a model trained with BatchNorm load into one with frozen BN.
    state = {k: v for k, v in state.items()
             if k in own or (required(k) and not k.endswith(".num_batches_tracked"))}
    missing = sorted(k for k in set(own) - set(state) if required(k))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state)
                   if tuple(own[k].shape) != tuple(state[k].shape))  # type: ignore[attr-defined]
    if missing or unexpected or wrong:
        saved = meta.get(CONFIG_KEY)
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} shape mismatches (e.g. {k}: file "
                         f"{tuple(state[k].shape)} vs model {tuple(own[k].shape)})")  # type: ignore[attr-defined]
        hint = (f"the file was saved from a model with config {saved}; build the model from that config "
                "(defectnet.model.load_model does)") if saved else \
            "build the model with the same config (backbone, num_classes, with_gate, sizes) it was trained with"
        raise CheckpointError(f"weights file {str(path)!r} does not fit this {type(model).__name__}: "
                              f"{'; '.join(parts)}; {hint}")
    model.load_state_dict(state, strict=not kept)  # type: ignore[arg-type]
    return kept


def saved_config(path: str | os.PathLike[str]) -> ModelConfig:
    """The :class:`ModelConfig` stored in a DefectNet weights file."""
    _, meta = _read(Path(path))
    raw = meta.get(CONFIG_KEY)
    if raw is None or meta.get(CLASS_KEY) != DefectNet.__name__:
        raise CheckpointError(f"weights file {str(path)!r} holds no DefectNet config "
                              f"(model type {meta.get(CLASS_KEY)!r}); build the model yourself and use load_weights")
    return ModelConfig.from_dict(json.loads(raw))


def load_model(path: str | os.PathLike[str], *, backbone_weights: str | None = None) -> DefectNet:
    """Rebuild a DefectNet from a weights file (config from its metadata) and load it.

    The ImageNet file named in the saved config is not needed (the file holds every
    weight): ``backbone_weights`` replaces it (default None = do not read it).
    """
    config = saved_config(path).replace(backbone_weights=backbone_weights)
    model = DefectNet(config)
    load_weights(model, path)
    return model
