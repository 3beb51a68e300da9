"""The training loop (one stage) and the orchestration of the seed's model variants.

* one-model: a detector without gate, trained on the **defective** training images only.
* const / linear / inverse / exponential (DefectNet): detector + gate on all images;
  total loss = detector losses + w(n) * CE(gate) (the model weights the gate loss).
* two-model-small / two-model-large: an image classifier (224 px input / full input) on all
  images with CE, plus a one-model detector: ``detector_run`` (``--detector``) reuses a
  finished one-model run, otherwise one is trained in ``RUN_DIR/detector``.

Determinism (CPU): the model is initialised after ``torch.manual_seed(seed)``; every epoch
re-seeds torch/random/numpy from ``(seed, epoch)`` (the model's own sampling draws from
it) and shuffles with a generator seeded from ``(seed, epoch)``; each sample's flip is drawn
under a seed of ``(seed, epoch, index)`` (:class:`SeededSamples`). So the result does not
depend on ``--workers``, and a run resumed after epoch ``e`` continues bit-identically to
an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from collections.abc import Callable, Sequence, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, RandomSampler, Subset
from tqdm import tqdm

from defectnet.errors import CheckpointError, ConfigError
from defectnet.io import atomic_write_json
from defectnet.structures import ImageBatch, Target, is_defective
from defectnet.train import checkpoint as ck
from defectnet.train.config import TrainConfig, Variant
from defectnet.train.init import initialise_from
from defectnet.train.schedules import GateLossSchedule, LrSchedule

#: Loss function of a stage: (model, batch on device, targets on device, 0-based epoch) -> named losses.
LossFn = Callable[[nn.Module, ImageBatch, list[Target], int], dict[str, Tensor]]
Log = Callable[[str], None]

#: Provenance of ``--init`` (which checkpoint, its hash, which tensors started fresh).
INIT_FILE = "init.json"
#: Train-config fields that may differ when resuming (they do not change the result on CPU).
RESUMABLE_CHANGES = frozenset({"workers", "device", "epochs", "keep_checkpoints", "classifier_epochs"})


class Collate(Protocol):
    def __call__(self, samples: list[Any]) -> tuple[ImageBatch, list[Target]]: ...


@dataclass
class Stage:
    """One model to train: its config dict (saved in checkpoints), data and loss.

    kind: ``detector`` or ``classifier``. dataset: yields ``Sample`` objects; ``collate`` turns
    a list of them into ``(ImageBatch, targets)``. label_to_category_id: model label -> COCO id.
    """

    kind: str
    variant: str
    model: nn.Module
    model_config: dict[str, Any]
    dataset: Dataset[Any]
    collate: Collate
    loss_fn: LossFn
    epochs: int
    class_names: list[str]
    label_to_category_id: dict[int, int]


# -------------------------------------------------------------------------------------------
# Losses
# -------------------------------------------------------------------------------------------

def detector_loss(schedule: GateLossSchedule | None) -> LossFn:
    """The detector's losses; with a schedule, the model adds ``w(epoch) * CE(gate)`` as
    ``loss_gate`` (already weighted). Without one (one-model), ``gate_weight`` is 0."""

    def loss(model: nn.Module, batch: ImageBatch, targets: list[Target], epoch: int) -> dict[str, Tensor]:
        w = schedule.weight(epoch) if schedule is not None else 0.0
        return model.losses(batch.images.float(), targets, batch.image_sizes, gate_weight=w)  # type: ignore[operator]

    return loss


def image_labels(targets: Sequence[Target], device: torch.device | str) -> Tensor:
    """int64 ``[B]``: 1 for an image with a defect box, 0 for a normal image."""
    return torch.tensor([int(is_defective(t)) for t in targets], dtype=torch.int64, device=device)


def classifier_loss(model: nn.Module, batch: ImageBatch, targets: list[Target], epoch: int) -> dict[str, Tensor]:
    """Two-class cross-entropy of an image classifier (normal = 0, defective = 1);
    ``model(images, image_sizes)`` returns logits ``[B, 2]``."""
    labels = image_labels(targets, batch.images.device)
    logits = model(batch.images.float(), batch.image_sizes)
    return {"loss_cls": F.cross_entropy(logits, labels)}


# -------------------------------------------------------------------------------------------
# The loop
# -------------------------------------------------------------------------------------------

def seed_everything(seed: int, epoch: int | None = None) -> None:
    """Seed torch, random and numpy from ``seed`` (and ``epoch``: one stream per epoch)."""
    s = seed if epoch is None else (seed * 1_000_003 + 7919 * (epoch + 1)) % (2 ** 31)
    torch.manual_seed(s)
    random.seed(s)
    np.random.seed(s % (2 ** 32))


class SeededSamples(Dataset[Any]):
    """Loads sample ``i`` of epoch ``e`` under its own RNG seed ``f(seed, e, i)``.

    The data set's random augmentation (the flip draws from torch's global RNG) then depends
    only on (seed, epoch, index): not on the number of DataLoader workers, nor on which
    worker loads which sample, nor on what the model drew before. The caller's RNG state is
    restored after each sample.
    """

    def __init__(self, dataset: Dataset[Any], seed: int, epoch: int) -> None:
        self.dataset, self.seed, self.epoch = dataset, seed, epoch

    def __len__(self) -> int:
        return len(cast(Sized, self.dataset))

    def __getitem__(self, index: int) -> Any:
        s = (self.seed * 1_000_003 + self.epoch * 7_919 + index * 104_729 + 1) % (2 ** 63)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s)
            random.seed(s)
            np_state = np.random.get_state()
            np.random.seed(s % (2 ** 32))
            try:
                return self.dataset[index]
            finally:
                np.random.set_state(np_state)


def _to_device(batch: ImageBatch, targets: list[Target], device: torch.device) -> tuple[ImageBatch, list[Target]]:
    b = ImageBatch(batch.images.to(device, non_blocking=True), batch.image_sizes, batch.scale_factors,
                   batch.original_sizes)
    t: list[Target] = [{"boxes": x["boxes"].to(device), "labels": x["labels"].to(device),
                        "image_id": x["image_id"]} for x in targets]
    return b, t


def _short(name: str) -> str:
    return name[5:] if name.startswith("loss_") else name


def _gate_loss(kind: str, means: dict[str, float], weight: float | None) -> dict[str, float | None]:
    """The gate's own cross-entropy of an epoch (mean over its iterations), for history.json.

    A DefectNet's ``loss_gate`` is ``w(n) * CE``; ``w(n)`` is constant within an epoch, so
    ``gate_ce = loss_gate / w(n)`` exactly (None when ``w(n) = 0``: the CE was multiplied
    away). A two-model's classifier stage is the gate: its ``loss_cls`` is the CE. Models
    without a gate get no entry.
    """
    if kind == ck.KIND_CLASSIFIER and "loss_cls" in means:
        return {"gate_ce": means["loss_cls"]}
    if "loss_gate" not in means:
        return {}
    return {"gate_ce": means["loss_gate"] / weight if weight else None}


def _latest_valid_checkpoint(stage_dir: Path, log: Log) -> Path | None:
    for path in reversed(ck.list_checkpoints(stage_dir)):
        try:
            ck.read_checkpoint(path, verify=True)
            return path
        except CheckpointError as e:
            log(f"skipping damaged checkpoint {path}: {e}")
    return None


def fit(stage: Stage, cfg: TrainConfig, stage_dir: Path, model_io: ck.ModelIO, *, resume: bool = False,
        progress: bool = True, log: Log = print) -> Path:
    """Train ``stage.model`` for ``stage.epochs`` epochs with the SGD recipe of ``cfg``;
    write one checkpoint per epoch under ``stage_dir/checkpoints``; return the last one.

    With ``resume``, continue after the newest complete checkpoint (damaged ones are skipped
    with a message). Raises ConfigError when the data set is empty or the loss is not finite.
    """
    device = torch.device(cfg.device)
    n = len(stage.dataset)  # type: ignore[arg-type]
    if n == 0:
        raise ConfigError(f"the {stage.kind} training set is empty; check --data (a one-model needs "
                          "defective images)")
    iters_per_epoch = math.ceil(n / cfg.batch_size)
    sched = LrSchedule.for_run(cfg.effective_lr, stage.epochs, iters_per_epoch, warmup_iters=cfg.warmup_iters,
                               warmup_ratio=cfg.warmup_ratio, max_warmup_fraction=cfg.max_warmup_fraction)
    for note in sched.notes:
        log(f"[{stage.kind}] note: {note}")
    model = stage.model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=sched.lr(0, 0), momentum=cfg.momentum, weight_decay=cfg.weight_decay)

    start_epoch, iteration = 0, 0
    history: list[dict[str, Any]] = []
    history_path = Path(stage_dir) / "history.json"
    last: Path | None = None
    if resume:
        last = _latest_valid_checkpoint(Path(stage_dir), log)
        if last is not None:
            meta = ck.read_checkpoint(last, verify=False)
            ck.load_weights_checked(model, last, model_io)
            model.to(device)
            state = ck.load_train_state(last, map_location=device)
            try:
                optimizer.load_state_dict(state["optimizer"])
            except (KeyError, ValueError) as e:
                raise CheckpointError(f"{last}: the optimizer state does not fit this model ({e}); the run "
                                      "was started with other options — resume with the same options") from None
            start_epoch, iteration = meta.epoch, meta.iteration
            if history_path.is_file():
                try:
                    history = [h for h in json.loads(history_path.read_text()) if h["epoch"] <= start_epoch]
                except (ValueError, KeyError, TypeError):
                    history = []
            log(f"[{stage.kind}] resuming after epoch {start_epoch} from {last}")
        else:
            log(f"[{stage.kind}] no complete checkpoint in {stage_dir}; starting from epoch 1")
    if start_epoch >= stage.epochs and last is not None:
        log(f"[{stage.kind}] already trained for {start_epoch} epochs; nothing to do")
        return last

    for epoch in range(start_epoch, stage.epochs):
        seed_everything(cfg.seed, epoch)
        data = SeededSamples(stage.dataset, cfg.seed, epoch)
        shuffle = torch.Generator().manual_seed(cfg.seed * 7_919 + epoch)
        loader = DataLoader(data, batch_size=cfg.batch_size, sampler=RandomSampler(data, generator=shuffle),
                            collate_fn=stage.collate, num_workers=cfg.workers,
                            generator=torch.Generator().manual_seed(cfg.seed + epoch),
                            pin_memory=device.type == "cuda",
                            # Workers start from a clean server process, not a fork of this one:
                            # forking a process whose runtimes (OpenMP, ONNX Runtime, OpenVINO)
                            # already run threads can crash the child.
                            multiprocessing_context="forkserver" if cfg.workers else None)
        model.train()
        sums: dict[str, float] = {}
        count = 0
        t0 = time.perf_counter()
        bar = tqdm(loader, total=iters_per_epoch, desc=f"{stage.kind} {epoch + 1}/{stage.epochs}",
                   disable=not progress, dynamic_ncols=True, leave=False)
        lr = sched.lr(iteration, epoch)
        for batch, targets in bar:
            lr = sched.lr(iteration, epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch, targets = _to_device(batch, targets, device)
            losses = stage.loss_fn(model, batch, targets, epoch)
            total = sum(losses.values(), torch.zeros((), device=device))
            if not torch.isfinite(total):
                raise ConfigError(
                    f"[{stage.kind}] the loss is {float(total.detach())} at epoch {epoch} iteration {iteration} "
                    f"({ {k: float(v.detach()) for k, v in losses.items()} }); lower --lr or check the data")
            optimizer.zero_grad(set_to_none=True)
            if total.requires_grad:
                total.backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                optimizer.step()
            iteration += 1
            count += 1
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            sums["loss"] = sums.get("loss", 0.0) + float(total.detach())
            bar.set_postfix({_short(k): f"{v / count:.4f}" for k, v in sums.items()} | {"lr": f"{lr:.2e}"})
        bar.close()
        means = {k: v / max(count, 1) for k, v in sums.items()}
        entry = {"epoch": epoch + 1, "iterations": count, "lr_last": lr, "seconds": time.perf_counter() - t0,
                 "losses": means}
        gate_weight = None
        if cfg.gate_schedule is not None and stage.kind == ck.KIND_DETECTOR:
            gate_weight = entry["gate_weight"] = cfg.gate_schedule.weight(epoch)
        entry.update(_gate_loss(stage.kind, means, gate_weight))
        meta = ck.CheckpointMeta(
            kind=stage.kind, variant=stage.variant, epoch=epoch + 1, iteration=iteration,
            model_config=stage.model_config, train_config=cfg.to_dict(), class_names=list(stage.class_names),
            label_to_category_id=dict(stage.label_to_category_id), lr_schedule=sched.to_dict(), losses=means)
        last = ck.save_checkpoint(Path(stage_dir), model, {"optimizer": optimizer.state_dict(),
                                                           "iteration": iteration, "epoch": epoch + 1},
                                  meta, model_io, keep=cfg.keep_checkpoints)
        history.append(entry)
        atomic_write_json(history_path, history)
        log(f"[{stage.kind}] epoch {epoch + 1}/{stage.epochs}: "
            + " ".join(f"{_short(k)}={v:.4f}" for k, v in means.items()) + f" -> {last}")
    assert last is not None
    return last


# -------------------------------------------------------------------------------------------
# Variants
# -------------------------------------------------------------------------------------------

def _check_fresh_or_resume(out_dir: Path, cfg: TrainConfig, resume: bool) -> None:
    cfg_path = out_dir / "train_config.json"
    has_run = (out_dir / ck.RUN_FILE).exists() or cfg_path.exists() or bool(ck.list_checkpoints(out_dir))
    if has_run and not resume:
        raise ConfigError(f"{out_dir} already holds a training run; pass --resume to continue it or choose "
                          "another --out folder")
    if resume and cfg_path.is_file():
        try:
            old = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{cfg_path} is unreadable ({e}); delete it to resume with the options "
                                  "you pass now") from None
        new = cfg.to_dict()
        diffs = {k: (old.get(k), new[k]) for k in new if k not in RESUMABLE_CHANGES and old.get(k) != new[k]}
        if diffs:
            listing = ", ".join(f"{k}: run has {a!r}, you passed {b!r}" for k, (a, b) in sorted(diffs.items()))
            raise ConfigError(f"cannot resume {out_dir} with different options ({listing}); pass the run's "
                              "options or choose another --out folder")


def _detector_config(model_io: ck.ModelIO, cfg: TrainConfig, num_classes: int, with_gate: bool) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "preset": cfg.model_preset, "num_classes": num_classes, "backbone": cfg.backbone,
        "backbone_weights": cfg.backbone_weights, "with_gate": with_gate, "gate_threshold": cfg.gate_threshold}
    if cfg.fpn_channels is not None:
        kw["fpn_channels"] = cfg.fpn_channels
    if cfg.backbone_weights is None and cfg.init_from is None:
        # Freezing BN statistics and the first stages only makes sense for pretrained weights
        # (--backbone-weights, or a trained detector with --init): frozen random layers cannot
        # learn. From scratch, everything trains.
        kw.update(frozen_stages=-1, frozen_bn=False)
    return model_io.detector_config(kw)


def _train_detector(cfg: TrainConfig, dataset: Any, collate: Collate, stage_dir: Path, model_io: ck.ModelIO,
                    resume: bool, progress: bool, log: Log) -> Path:
    """Train a one-model or DefectNet detector into ``stage_dir`` and write its run.json."""
    gated = cfg.variant.is_defectnet
    if gated:
        data = dataset
    else:  # one-model: never sees a normal image
        keep = [i for i in range(len(dataset)) if dataset.is_defective(i)]
        log(f"[detector] one-model: training on {len(keep)} defective of {len(dataset)} images")
        data = Subset(dataset, keep)
    seed_everything(cfg.seed)
    model_config = _detector_config(model_io, cfg, dataset.num_classes, with_gate=gated)
    if cfg.backbone_weights is None and cfg.init_from is None:
        log("[detector] note: random backbone init (no --backbone-weights): BatchNorm and all stages train")
    model = model_io.build_detector(model_config)
    # Resuming a run that has a checkpoint loads that instead; one stopped before its first
    # checkpoint starts from --init again.
    if cfg.init_from is not None and not (resume and ck.list_checkpoints(Path(stage_dir))):
        init = initialise_from(model, model_config, dict(dataset.label_to_category_id), cfg.init_from, log)
        Path(stage_dir).mkdir(parents=True, exist_ok=True)
        atomic_write_json(Path(stage_dir) / INIT_FILE, init)
    stage = Stage(ck.KIND_DETECTOR, cfg.variant.value, model, model_config, data, collate,
                  detector_loss(cfg.gate_schedule if gated else None), cfg.epochs,
                  list(dataset.class_names), dict(dataset.label_to_category_id))
    final = fit(stage, cfg, stage_dir, model_io, resume=resume, progress=progress, log=log)
    ck.write_run_json(stage_dir, {"kind": ck.KIND_DETECTOR, "variant": cfg.variant.value,
                                  "final_checkpoint": str(final.relative_to(stage_dir))})
    return final


def _train_classifier(cfg: TrainConfig, dataset: Any, collate: Collate, stage_dir: Path, model_io: ck.ModelIO,
                      resume: bool, progress: bool, log: Log) -> Path:
    input_size = 224 if cfg.variant is Variant.TWO_MODEL_SMALL else None
    seed_everything(cfg.seed)
    model_config = model_io.classifier_config({"backbone": cfg.backbone, "input_size": input_size,
                                                "backbone_weights": cfg.backbone_weights})
    model = model_io.build_classifier(model_config)
    epochs = cfg.classifier_epochs or cfg.epochs
    stage = Stage(ck.KIND_CLASSIFIER, cfg.variant.value, model, model_config, dataset, collate, classifier_loss,
                  epochs, list(dataset.class_names), dict(dataset.label_to_category_id))
    final = fit(stage, cfg, stage_dir, model_io, resume=resume, progress=progress, log=log)
    ck.write_run_json(stage_dir, {"kind": ck.KIND_CLASSIFIER, "variant": cfg.variant.value,
                                  "final_checkpoint": str(final.relative_to(stage_dir))})
    return final


def _check_reused_detector(run: Path, dataset: Any) -> None:
    raw = ck.read_run_json(run)
    if raw.get("kind") != ck.KIND_DETECTOR or raw.get("variant") != Variant.ONE_MODEL.value:
        raise ConfigError(f"--detector {run} must be a finished one-model run, it is a "
                          f"{raw.get('variant')!r} {raw.get('kind')!r} run")
    meta = ck.read_checkpoint(ck.final_checkpoint(run, raw))
    if meta.label_to_category_id != dict(dataset.label_to_category_id):
        raise ConfigError(f"--detector {run} was trained on other categories ({meta.class_names}) than "
                          f"--data ({list(dataset.class_names)}); train a one-model run on this data")


def train(cfg: TrainConfig, data_dir: str | Path, out_dir: str | Path, *, resume: bool = False,
          progress: bool = True, model_io: ck.ModelIO | None = None, log: Log = print,
          dataset: Any = None, collate: Collate | None = None) -> Path:
    """Train the variant ``cfg.variant`` on ``data_dir``'s train split into ``out_dir``.

    Returns ``out_dir``, which then holds ``run.json`` (see :mod:`defectnet.train.checkpoint`).
    ``dataset``/``collate`` replace the COCO train split (tests); ``model_io`` replaces
    :mod:`defectnet.model`.
    """
    out = Path(out_dir)
    model_io = model_io or ck.default_model_io()
    _check_fresh_or_resume(out, cfg, resume)
    if dataset is None:
        from defectnet.data.coco import collate as coco_collate
        from defectnet.data.coco import load_split
        dataset = load_split(data_dir, "train", scale=cfg.scale, train=True, flip_prob=cfg.flip_prob,
                             background_category_ids=cfg.background_category_ids)
        collate = coco_collate
    assert collate is not None
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "train_config.json", cfg.to_dict())
    if not cfg.variant.is_two_model:
        _train_detector(cfg, dataset, collate, out, model_io, resume, progress, log)
        return out

    if cfg.detector_run is not None:
        det_dir = Path(cfg.detector_run).resolve()
        _check_reused_detector(det_dir, dataset)
        det_ref = str(det_dir)
        log(f"[two-model] reusing the one-model detector {det_dir}")
    else:
        det_cfg = dataclasses.replace(cfg, variant=Variant.ONE_MODEL, classifier_epochs=None)
        _train_detector(det_cfg, dataset, collate, out / "detector", model_io, resume, progress, log)
        det_ref = "detector"
    _train_classifier(cfg, dataset, collate, out / "classifier", model_io, resume, progress, log)
    ck.write_run_json(out, {"kind": ck.KIND_TWO_MODEL, "variant": cfg.variant.value,
                            "detector_run": det_ref, "classifier_run": "classifier"})
    return out
