"""Checkpoints and run folders that cannot execute code when loaded.

Layout of a run folder (``defectnet-train --out RUN_DIR``)::

    RUN_DIR/run.json                      the finished run: kind, variant, final checkpoint
    RUN_DIR/checkpoints/epoch_0003/
        model.safetensors                 weights (safetensors: no code, no pickle)
        train_state.pt                    optimizer state + iteration + RNG (tensors and plain
                                          containers only; loaded with weights_only=True)
        checkpoint.json                   everything needed to rebuild the model: model config,
                                          train config, class names, label -> COCO category map,
                                          epoch, LR schedule, mean losses, SHA-256 of both files

A two-model run holds two such stage folders, ``detector/`` (a one-model run, or none when
``--detector`` named an existing run) and ``classifier/``, and a ``run.json`` naming both.

Every file is written atomically, and an epoch folder is assembled under a hidden temporary
name and renamed into place last, so ``checkpoints/epoch_NNNN`` exists only when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from defectnet.errors import CheckpointError
from defectnet.io import atomic_write, atomic_write_json, current_umask, sha256_file

CHECKPOINT_FORMAT = "defectnet-checkpoint"
RUN_FORMAT = "defectnet-run"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "train_state.pt"
META_FILE = "checkpoint.json"
RUN_FILE = "run.json"
CHECKPOINTS_DIR = "checkpoints"

KIND_DETECTOR = "detector"
KIND_CLASSIFIER = "classifier"
KIND_TWO_MODEL = "two-model"


# -------------------------------------------------------------------------------------------
# How models are built, saved and loaded (injected, so tests can use tiny fakes)
# -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelIO:
    """The model-side functions checkpoints need.

    detector_config / classifier_config: keyword values -> the full, validated config dict
    (``ModelConfig.preset(**kw).to_dict()``: ``preset`` names the size), which checkpoints store.
    build_detector / build_classifier: a config dict -> a fresh model.
    save_weights / load_weights: safetensors files. two_model: (classifier, detector, gate
    threshold) -> model.
    """

    detector_config: Callable[[dict[str, Any]], dict[str, Any]]
    classifier_config: Callable[[dict[str, Any]], dict[str, Any]]
    build_detector: Callable[[dict[str, Any]], nn.Module]
    build_classifier: Callable[[dict[str, Any]], nn.Module]
    save_weights: Callable[[nn.Module, Path], object]
    load_weights: Callable[[nn.Module, Path], object]
    two_model: Callable[[nn.Module, nn.Module, float], nn.Module]


def default_model_io() -> ModelIO:
    """The real :mod:`defectnet.model` (imported lazily)."""
    import defectnet.model as m

    def detector_config(kw: dict[str, Any]) -> dict[str, Any]:
        fields = {k: v for k, v in kw.items() if k != "preset"}
        return m.ModelConfig.preset(kw.get("preset", "paper"), **fields).to_dict()

    return ModelIO(
        detector_config=detector_config,
        classifier_config=lambda kw: m.ClassifierConfig(**kw).to_dict(),
        build_detector=lambda d: m.build_model(m.ModelConfig.from_dict(d)),
        build_classifier=lambda d: m.build_classifier(m.ClassifierConfig.from_dict(d)),
        save_weights=lambda model, path: m.save_weights(model, path),
        load_weights=lambda model, path: m.load_weights(model, path),
        two_model=lambda c, d, thr: m.TwoModel(c, d, thr),  # type: ignore[arg-type]
    )


# -------------------------------------------------------------------------------------------
# Checkpoints
# -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CheckpointMeta:
    """The JSON side of one epoch checkpoint.

    kind: ``detector`` (DefectNet / one-model) or ``classifier``. epoch: completed epochs
    (1-based: ``epoch_0003`` holds the model after epochs 0, 1, 2). iteration: completed global
    iterations. label_to_category_id: model label (1..K) -> COCO category id.
    """

    kind: str
    variant: str
    epoch: int
    iteration: int
    model_config: dict[str, Any]
    train_config: dict[str, Any]
    class_names: list[str]
    label_to_category_id: dict[int, int]
    lr_schedule: dict[str, Any] = field(default_factory=dict)
    losses: dict[str, float] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)

    @property
    def is_packed(self) -> bool:
        """An inference-only checkpoint (defectnet-pack-run): weights, no training state."""
        return STATE_FILE not in self.files

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT, "version": FORMAT_VERSION, "kind": self.kind,
            "variant": self.variant, "epoch": self.epoch, "iteration": self.iteration,
            "model_config": self.model_config, "train_config": self.train_config,
            "class_names": list(self.class_names),
            "label_to_category_id": {str(k): int(v) for k, v in self.label_to_category_id.items()},
            "lr_schedule": self.lr_schedule, "losses": self.losses, "files": self.files,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: Path) -> CheckpointMeta:
        if d.get("format") != CHECKPOINT_FORMAT or d.get("version") != FORMAT_VERSION:
            raise CheckpointError(
                f"{source} is not a {CHECKPOINT_FORMAT} v{FORMAT_VERSION} file (format={d.get('format')!r}, "
                f"version={d.get('version')!r}); it was written by another tool or version — retrain")
        try:
            return cls(
                kind=str(d["kind"]), variant=str(d["variant"]), epoch=int(d["epoch"]),
                iteration=int(d["iteration"]), model_config=dict(d["model_config"]),
                train_config=dict(d["train_config"]), class_names=[str(c) for c in d["class_names"]],
                label_to_category_id={int(k): int(v) for k, v in d["label_to_category_id"].items()},
                lr_schedule=dict(d.get("lr_schedule", {})), losses=dict(d.get("losses", {})),
                files={str(k): str(v) for k, v in d["files"].items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise CheckpointError(f"{source} lacks a valid field ({e!r}); the file is damaged — "
                                  "delete this epoch folder and resume from the previous one") from None


def checkpoint_dir(stage_dir: Path, epoch: int) -> Path:
    """``stage_dir/checkpoints/epoch_NNNN`` for ``epoch`` completed epochs."""
    return Path(stage_dir) / CHECKPOINTS_DIR / f"epoch_{epoch:04d}"


def save_checkpoint(stage_dir: Path, model: nn.Module, train_state: dict[str, Any], meta: CheckpointMeta,
                    model_io: ModelIO, keep: int = 0) -> Path:
    """Write ``checkpoints/epoch_{meta.epoch}`` under ``stage_dir`` atomically and return it.

    train_state: tensors and plain containers only (optimizer ``state_dict()``, RNG states).
    keep: keep only the newest ``keep`` epoch folders (0 = all).
    """
    final = checkpoint_dir(stage_dir, meta.epoch)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700; give the folder the usual mode
        model_io.save_weights(model, tmp / WEIGHTS_FILE)
        atomic_write(tmp / STATE_FILE, lambda f: torch.save(train_state, f))
        files = {name: sha256_file(tmp / name) for name in (WEIGHTS_FILE, STATE_FILE)}
        full = CheckpointMeta(**{**meta.__dict__, "files": files})
        atomic_write_json(tmp / META_FILE, full.to_dict())
        if final.exists():  # re-running an epoch (resume from an older checkpoint)
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep > 0:
        for old in list_checkpoints(stage_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(stage_dir: Path) -> list[Path]:
    """Complete epoch folders under ``stage_dir/checkpoints``, oldest first."""
    root = Path(stage_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith("epoch_") and p.name[6:].isdigit():
            found.append((int(p.name[6:]), p))
    return [p for _, p in sorted(found)]


def read_checkpoint(ckpt_dir: Path, verify: bool = True) -> CheckpointMeta:
    """Parse ``checkpoint.json``; with ``verify`` also check both files' SHA-256."""
    ckpt_dir = Path(ckpt_dir)
    meta_path = ckpt_dir / META_FILE
    if not meta_path.is_file():
        raise CheckpointError(f"{meta_path} is missing; {ckpt_dir} is not a complete checkpoint — "
                              "train again with --resume or point at another run folder")
    try:
        raw = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{meta_path} is not valid JSON ({e}); the checkpoint is damaged — "
                              "delete the epoch folder and resume from the previous one") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{meta_path} must hold a JSON object; the checkpoint is damaged")
    meta = CheckpointMeta.from_dict(raw, meta_path)
    if verify:
        # A training checkpoint records weights + training state; a packed model
        # (defectnet-pack-run) records the weights only.
        packed = meta.is_packed
        for name in (WEIGHTS_FILE,) if packed else (WEIGHTS_FILE, STATE_FILE):
            path = ckpt_dir / name
            fix = (f"restore it (e.g. git checkout -- {ckpt_dir}) or pack it again with defectnet-pack-run "
                   "SOURCE_RUN --out RUN_DIR" if packed else
                   f"delete {ckpt_dir} and resume training from the previous epoch")
            if not path.is_file():
                raise CheckpointError(f"{path} is missing; the checkpoint is incomplete — {fix}")
            expected = meta.files.get(name)
            if expected is None or sha256_file(path) != expected:
                raise CheckpointError(f"{path} does not match the SHA-256 recorded in {meta_path}; the "
                                      f"file is corrupt or was replaced — {fix}")
    return meta


def load_train_state(ckpt_dir: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The optimizer/RNG state of a checkpoint, loaded with ``weights_only=True``."""
    path = Path(ckpt_dir) / STATE_FILE
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing; resume from another epoch or retrain") from None
    except Exception as e:  # noqa: BLE001 - torch raises many kinds on a bad file
        raise CheckpointError(f"cannot load {path} ({type(e).__name__}: {e}); it is corrupt or not a "
                              "defectnet training state — delete the epoch folder and resume") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a training-state dict; delete it and resume")
    return state


def load_weights_checked(model: nn.Module, ckpt_dir: Path, model_io: ModelIO) -> None:
    """Load ``model.safetensors`` into ``model``; any failure becomes a CheckpointError."""
    path = Path(ckpt_dir) / WEIGHTS_FILE
    try:
        model_io.load_weights(model, path)
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"cannot load weights {path} ({type(e).__name__}: {e}); the file is corrupt "
                              "or belongs to a different model config — retrain or use another run") from None


def build_from_checkpoint(ckpt_dir: Path, model_io: ModelIO, device: str | torch.device = "cpu",
                          verify: bool = True) -> tuple[nn.Module, CheckpointMeta]:
    """Rebuild the model of a checkpoint from its JSON, load its weights, move it to
    ``device`` and put it in eval mode. ``backbone_weights`` is not re-read (the checkpoint
    already holds every weight)."""
    meta = read_checkpoint(ckpt_dir, verify=verify)
    config = dict(meta.model_config)
    if "backbone_weights" in config:
        config["backbone_weights"] = None
    try:
        if meta.kind == KIND_DETECTOR:
            model = model_io.build_detector(config)
        elif meta.kind == KIND_CLASSIFIER:
            model = model_io.build_classifier(config)
        else:
            raise CheckpointError(f"{ckpt_dir}: unknown checkpoint kind {meta.kind!r}")
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{ckpt_dir}: cannot rebuild the model from its config ({type(e).__name__}: "
                              f"{e}); it was written by an incompatible defectnet version") from None
    load_weights_checked(model, ckpt_dir, model_io)
    return model.to(device).eval(), meta


# -------------------------------------------------------------------------------------------
# Run folders
# -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunInfo:
    """What a finished run folder holds.

    kind: ``detector`` (one-model or DefectNet), ``classifier`` (a two-model's first stage) or
    ``two-model``. checkpoint: the final epoch folder (the classifier's for a two-model).
    detector: for a two-model, the RunInfo of its detector run. For a two-model, class names
    and the label map are the detector's.
    """

    run_dir: Path
    kind: str
    variant: str
    checkpoint: Path
    epoch: int
    class_names: list[str]
    label_to_category_id: dict[int, int]
    model_config: dict[str, Any]
    train_config: dict[str, Any]
    detector: RunInfo | None = None

    @property
    def has_gate(self) -> bool:
        """Whether some images can skip the detector (DefectNet's gate or a two-model's classifier)."""
        if self.kind == KIND_TWO_MODEL:
            return True
        return bool(self.model_config.get("with_gate", False))

    @property
    def name(self) -> str:
        """The row name of the seed's table (``one-model``, ``defectnet_const``, ...)."""
        from defectnet.train.config import Variant
        try:
            return Variant(self.variant).table_name
        except ValueError:
            return self.variant


def write_run_json(run_dir: Path, content: dict[str, Any]) -> Path:
    """Write ``run_dir/run.json`` (atomically) marking the run finished."""
    return atomic_write_json(Path(run_dir) / RUN_FILE,
                             {"format": RUN_FORMAT, "version": FORMAT_VERSION, **content})


def read_run_json(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse ``run_dir/run.json``; a missing or bad folder/file raises CheckpointError."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run folder {run_dir} does not exist; pass the --out folder of a "
                              "finished defectnet-train run")
    path = run_dir / RUN_FILE
    if not path.is_file():
        hint = (" It has epoch checkpoints, so training did not finish: rerun defectnet-train with "
                "--resume to complete it." if list_checkpoints(run_dir) else
                " Pass the --out folder of a finished defectnet-train run.")
        raise CheckpointError(f"{path} is missing, so {run_dir} is not a finished run.{hint}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); rerun defectnet-train with --resume to "
                              "rewrite it") from None
    if not isinstance(raw, dict) or raw.get("format") != RUN_FORMAT or raw.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} is not a {RUN_FORMAT} v{FORMAT_VERSION} file; rerun defectnet-train "
                              "with --resume to rewrite it")
    return raw


def _resolve(run_dir: Path, rel: Any, path: Path) -> Path:
    if not isinstance(rel, str) or not rel:
        raise CheckpointError(f"{path} names no valid checkpoint/run path ({rel!r}); rerun defectnet-train "
                              "with --resume to rewrite it")
    p = Path(rel)
    return p if p.is_absolute() else run_dir / p


def final_checkpoint(run_dir: Path, raw: dict[str, Any]) -> Path:
    """The epoch folder a detector/classifier stage's ``run.json`` (``raw``) names as final."""
    return _resolve(run_dir, raw.get("final_checkpoint"), run_dir / RUN_FILE)


def _stage_info(run_dir: Path, raw: dict[str, Any], verify: bool) -> tuple[RunInfo, CheckpointMeta]:
    ckpt = final_checkpoint(run_dir, raw)
    meta = read_checkpoint(ckpt, verify=verify)
    info = RunInfo(run_dir, meta.kind, str(raw.get("variant", meta.variant)), ckpt, meta.epoch,
                   meta.class_names, meta.label_to_category_id, meta.model_config, meta.train_config)
    return info, meta


def load_run(run_dir: str | os.PathLike[str], device: str | torch.device = "cpu", *,
             model_io: ModelIO | None = None, verify: bool = True) -> tuple[nn.Module, RunInfo]:
    """Load the final model of a finished run folder, in eval mode on ``device``.

    Returns a DefectNet (one-model and DefectNet variants), an ImageClassifier (a
    two-model's ``classifier/`` stage folder) or a TwoModel (a two-model run), and its
    :class:`RunInfo`. Nothing in the folder can execute code: weights are safetensors and
    configs JSON. A missing/corrupt folder or file raises CheckpointError saying how to fix it.
    """
    model_io = model_io or default_model_io()
    run_dir = Path(run_dir)
    raw = read_run_json(run_dir)
    kind = raw.get("kind")
    if kind in (KIND_DETECTOR, KIND_CLASSIFIER):
        info, meta = _stage_info(run_dir, raw, verify)
        model, _ = build_from_checkpoint(info.checkpoint, model_io, device, verify=False)
        return model, info
    if kind == KIND_TWO_MODEL:
        det_dir = _resolve(run_dir, raw.get("detector_run"), run_dir / RUN_FILE)
        cls_dir = _resolve(run_dir, raw.get("classifier_run"), run_dir / RUN_FILE)
        detector, det_info = load_run(det_dir, device, model_io=model_io, verify=verify)
        classifier, cls_info = load_run(cls_dir, device, model_io=model_io, verify=verify)
        if det_info.kind != KIND_DETECTOR or cls_info.kind != KIND_CLASSIFIER:
            raise CheckpointError(f"{run_dir / RUN_FILE}: detector_run must be a detector run and "
                                  f"classifier_run a classifier run, got {det_info.kind} and {cls_info.kind}")
        info = RunInfo(run_dir, KIND_TWO_MODEL, str(raw.get("variant", "two-model")), cls_info.checkpoint,
                       cls_info.epoch, det_info.class_names, det_info.label_to_category_id,
                       cls_info.model_config, cls_info.train_config, detector=det_info)
        threshold = float(cls_info.train_config.get("gate_threshold", 0.5))
        return model_io.two_model(classifier, detector, threshold).to(device).eval(), info
    raise CheckpointError(f"{run_dir / RUN_FILE} has unknown kind {kind!r}; rerun defectnet-train with "
                          "--resume to rewrite it")
