"""Start a detector from a finished run's weights (``defectnet-train --init RUN``).

The original trained every variant from a COCO-pretrained Cascade R-CNN (mmdetection's
``load_from``). Without downloads, the analogue here is a detector we trained ourselves:
``--init`` loads every weight of a finished one-model or DefectNet run (or one of its epoch
checkpoints) into the new model. The gate is the only part that may differ: a DefectNet
started from a one-model run gets a freshly initialised gate, a one-model started from a
DefectNet run drops the gate. Everything else must match exactly (backbone, preset and
sizes, classes and their COCO ids), or the run refuses to start and says what differs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from defectnet.errors import CheckpointError, ConfigError
from defectnet.io import sha256_file
from defectnet.train import checkpoint as ck

#: Model-config keys that may differ between the --init run and the new model.
FREE_KEYS = frozenset({"with_gate", "gate_threshold", "backbone_weights", "frozen_stages", "frozen_bn"})
#: Parameters the new model may lack or have on top of the --init run's.
OPTIONAL_PREFIXES = ("gate.",)


def resolve_init(path: str | Path) -> Path:
    """A run folder (its final checkpoint) or an epoch checkpoint folder -> the checkpoint folder."""
    p = Path(path)
    if (p / ck.WEIGHTS_FILE).is_file():
        return p
    if (p / ck.RUN_FILE).is_file():
        raw = ck.read_run_json(p)
        if raw.get("kind") != ck.KIND_DETECTOR:
            raise ConfigError(f"--init {p} is a {raw.get('kind')!r} run; pass a finished one-model or DefectNet "
                              "run folder (or one of its checkpoints/epoch_NNNN folders)")
        return ck.final_checkpoint(p, raw)
    raise ConfigError(f"--init {p} is neither a finished run folder (run.json) nor a checkpoint folder "
                      f"({ck.WEIGHTS_FILE}); pass RUN_DIR or RUN_DIR/checkpoints/epoch_NNNN")


def initialise_from(model: nn.Module, model_config: dict[str, Any], label_to_category_id: dict[int, int],
                    source: str | Path, log: Callable[[str], None]) -> dict[str, Any]:
    """Load ``source``'s weights into ``model`` (built from ``model_config``) after checking
    that both describe the same detector; returns the provenance recorded in the run."""
    from defectnet.model.build import load_weights

    ckpt = resolve_init(source)
    meta = ck.read_checkpoint(ckpt, verify=True)
    if meta.kind != ck.KIND_DETECTOR:
        raise ConfigError(f"--init {ckpt} holds a {meta.kind} model; it needs a one-model or DefectNet detector")
    if dict(meta.label_to_category_id) != dict(label_to_category_id):
        raise ConfigError(f"--init {ckpt} was trained on other categories (label -> COCO id "
                          f"{meta.label_to_category_id}) than --data ({label_to_category_id}); initialise from "
                          "a run trained on the same categories")
    theirs = dict(meta.model_config)
    diffs = sorted(k for k in set(theirs) | set(model_config)
                   if k not in FREE_KEYS and theirs.get(k) != model_config.get(k))
    if diffs:
        listing = ", ".join(f"{k}: --init run has {theirs.get(k)!r}, this run {model_config.get(k)!r}" for k in diffs)
        raise ConfigError(f"--init {ckpt} is a different detector ({listing}); pass the same --backbone, --preset "
                          "and sizes it was trained with")
    try:
        fresh = load_weights(model, ckpt / ck.WEIGHTS_FILE, optional=OPTIONAL_PREFIXES)
    except CheckpointError as e:
        raise ConfigError(f"--init: {e}") from None
    note = f"initialised from {ckpt} ({meta.variant}, epoch {meta.epoch})"
    log(f"[detector] {note}" + (f"; {len(fresh)} gate tensors start fresh" if fresh else ""))
    return {"checkpoint": str(ckpt), "variant": meta.variant, "epoch": meta.epoch,
            "weights_sha256": sha256_file(ckpt / ck.WEIGHTS_FILE), "fresh": fresh}
