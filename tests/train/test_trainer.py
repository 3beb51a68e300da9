"""Trainer, checkpoints, resume and run folders, with the tiny fakes of conftest.py."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from defectnet.errors import CheckpointError, ConfigError
from defectnet.train import checkpoint as ck
from defectnet.train.config import TrainConfig, Variant
from defectnet.train.schedules import LrSchedule
from defectnet.train.trainer import train


def _cfg(variant: str, **kw: Any) -> TrainConfig:
    base: dict[str, Any] = {"epochs": 2, "batch_size": 2, "lr": 0.01, "seed": 3}
    base.update(kw)
    return TrainConfig(Variant(variant), **base)


def _recording_io(fake_io: ck.ModelIO) -> tuple[ck.ModelIO, list[Any]]:
    built: list[Any] = []

    def build(d: dict[str, Any]) -> Any:
        m = fake_io.build_detector(d)
        built.append(m)
        return m

    return dataclasses.replace(fake_io, build_detector=build), built


def _run(cfg: TrainConfig, out: Path, io: ck.ModelIO, data: Any, collate: Any, **kw: Any) -> Path:
    return train(cfg, "unused", out, model_io=io, dataset=data, collate=collate, progress=False,
                 log=kw.pop("log", lambda m: None), **kw)


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_one_model_never_sees_normal_images(tmp_path: Path, fake_io, fake_data, fake_collate) -> None:
    io, built = _recording_io(fake_io)
    _run(_cfg("one-model", epochs=1), tmp_path / "run", io, fake_data, fake_collate)
    seen = built[0].seen_ids
    defective = {100 + i for i in range(len(fake_data)) if fake_data.is_defective(i)}
    assert sorted(seen) == sorted(defective)
    assert set(built[0].gate_weights) == {0.0}


def test_defectnet_sees_all_images_with_scheduled_weight(tmp_path: Path, fake_io, fake_data, fake_collate) -> None:
    io, built = _recording_io(fake_io)
    _run(_cfg("exponential", epochs=3), tmp_path / "run", io, fake_data, fake_collate)
    m = built[0]
    assert sorted(m.seen_ids) == sorted(3 * [100 + i for i in range(len(fake_data))])
    per_epoch = 5  # ceil(9 / 2) iterations
    assert m.gate_weights == [1.0] * per_epoch + [0.5] * per_epoch + [0.25] * per_epoch
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [h["gate_weight"] for h in history] == [1.0, 0.5, 0.25]
    assert set(history[0]["losses"]) == {"loss_gate", "loss_rpn_cls", "loss"}
    # the gate's own cross-entropy per epoch: the weighted loss divided by that epoch's weight
    for h in history:
        assert h["gate_ce"] == pytest.approx(h["losses"]["loss_gate"] / h["gate_weight"])
    assert 0.0 < history[2]["gate_ce"] != history[2]["losses"]["loss_gate"]


def test_history_gate_ce_only_for_models_with_a_gate(tmp_path: Path, fake_io, fake_data, fake_collate) -> None:
    _run(_cfg("one-model", epochs=1), tmp_path / "run", fake_io, fake_data, fake_collate)
    (h,) = json.loads((tmp_path / "run" / "history.json").read_text())
    assert "gate_ce" not in h and "loss_gate" not in h["losses"]


def test_lr_recipe_applied(tmp_path: Path, fake_io, fake_data, fake_collate) -> None:
    cfg = _cfg("const", epochs=12, batch_size=3, lr=None)  # 3 iters/epoch, 36 total: warm-up capped at 9
    _run(cfg, tmp_path / "run", fake_io, fake_data, fake_collate)
    expected = LrSchedule.for_run(0.0025 * 3 / 2, 12, 3)
    assert expected.warmup_iters == 9 and expected.steps == (8, 11)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    for epoch, h in enumerate(history):
        assert h["lr_last"] == pytest.approx(expected.lr(epoch * 3 + 2, epoch))
    assert [h["lr_last"] for h in history][7:] == pytest.approx([0.00375] + [0.000375] * 3 + [0.0000375])
    state = ck.load_train_state(ck.checkpoint_dir(tmp_path / "run", 12))
    assert state["optimizer"]["param_groups"][0]["momentum"] == 0.9
    assert state["optimizer"]["param_groups"][0]["weight_decay"] == 1e-4
    meta = ck.read_checkpoint(ck.checkpoint_dir(tmp_path / "run", 12))
    assert meta.lr_schedule["warmup_iters"] == 9 and any("capped" in n for n in meta.lr_schedule["notes"])


def test_checkpoint_round_trip(tmp_path: Path, fake_io, fake_data, fake_collate) -> None:
    io, built = _recording_io(fake_io)
    run = _run(_cfg("const"), tmp_path / "run", io, fake_data, fake_collate)
    raw = json.loads((run / "run.json").read_text())
    assert raw["kind"] == "detector" and raw["final_checkpoint"] == "checkpoints/epoch_0002"
    assert [p.name for p in ck.list_checkpoints(run)] == ["epoch_0001", "epoch_0002"]
    model, info = ck.load_run(run, model_io=fake_io)
    assert not model.training
    trained = built[0].state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(v, trained[k])
    assert info.kind == "detector" and info.variant == "const" and info.name == "defectnet_const"
    assert info.epoch == 2 and info.class_names == ["spot", "thread"]
    assert info.label_to_category_id == {1: 5, 2: 9} and info.has_gate
    assert TrainConfig.from_dict(info.train_config) == _cfg("const")
    # the optimizer state is plain tensors/containers
    state = torch.load(info.checkpoint / ck.STATE_FILE, weights_only=True)
    assert state["iteration"] == 10 and state["epoch"] == 2


def test_resume_continues_at_the_right_epoch(tmp_path: Path, fake_io, fake_data, fake_collate) -> None:
    io_a, built_a = _recording_io(fake_io)
    cfg = _cfg("inverse", epochs=3)
    _run(cfg, tmp_path / "a", io_a, fake_data, fake_collate)

    class Crash(Exception):
        pass

    def crash_after_epoch_2(msg: str) -> None:
        if "epoch 2/3" in msg:
            raise Crash

    io_b, built_b = _recording_io(fake_io)
    with pytest.raises(Crash):
        _run(cfg, tmp_path / "b", io_b, fake_data, fake_collate, log=crash_after_epoch_2)
    assert not (tmp_path / "b" / "run.json").exists()
    with pytest.raises(CheckpointError, match="--resume"):
        ck.load_run(tmp_path / "b", model_io=fake_io)
    with pytest.raises(ConfigError, match="--resume"):
        _run(cfg, tmp_path / "b", io_b, fake_data, fake_collate)
    with pytest.raises(ConfigError, match="lr"):
        _run(dataclasses.replace(cfg, lr=0.5), tmp_path / "b", io_b, fake_data, fake_collate, resume=True)

    logs: list[str] = []
    _run(cfg, tmp_path / "b", io_b, fake_data, fake_collate, resume=True, log=logs.append)
    assert any("resuming after epoch 2" in m for m in logs)
    resumed = built_b[-1]
    assert resumed.gate_weights == [1 / 3] * 5  # only the third epoch ran
    history = json.loads((tmp_path / "b" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    a, _ = ck.load_run(tmp_path / "a", model_io=fake_io)
    b, _ = ck.load_run(tmp_path / "b", model_io=fake_io)
    for k, v in a.state_dict().items():  # bit-identical to the uninterrupted run
        assert torch.equal(v, b.state_dict()[k]), k


def test_resume_skips_a_damaged_last_checkpoint(tmp_path: Path, fake_io, fake_data, fake_collate) -> None:
    cfg = _cfg("const", epochs=2)
    run = _run(cfg, tmp_path / "run", fake_io, fake_data, fake_collate)
    (run / "run.json").unlink()
    (ck.checkpoint_dir(run, 2) / ck.WEIGHTS_FILE).write_bytes(b"garbage")
    logs: list[str] = []
    _run(cfg, run, fake_io, fake_data, fake_collate, resume=True, log=logs.append)
    assert any("skipping damaged" in m for m in logs) and any("resuming after epoch 1" in m for m in logs)
    ck.load_run(run, model_io=fake_io)


@pytest.mark.parametrize("damage", ["no_run_json", "bad_run_json", "no_meta", "bad_meta", "bad_weights",
                                    "no_weights", "no_state", "no_folder"])
def test_damaged_run_folder_raises_checkpoint_error(tmp_path: Path, fake_io, fake_data, fake_collate,
                                                    damage: str) -> None:
    run = _run(_cfg("one-model", epochs=1), tmp_path / "run", fake_io, fake_data, fake_collate)
    ckpt = ck.checkpoint_dir(run, 1)
    if damage == "no_run_json":
        (run / "run.json").unlink()
    elif damage == "bad_run_json":
        (run / "run.json").write_text("{not json")
    elif damage == "no_meta":
        (ckpt / ck.META_FILE).unlink()
    elif damage == "bad_meta":
        (ckpt / ck.META_FILE).write_text('{"format": "defectnet-checkpoint", "version": 1}')
    elif damage == "bad_weights":
        data = bytearray((ckpt / ck.WEIGHTS_FILE).read_bytes())
        data[-1] ^= 0xFF
        (ckpt / ck.WEIGHTS_FILE).write_bytes(bytes(data))
    elif damage == "no_weights":
        (ckpt / ck.WEIGHTS_FILE).unlink()
    elif damage == "no_state":
        (ckpt / ck.STATE_FILE).unlink()
    elif damage == "no_folder":
        run = tmp_path / "nowhere"
    with pytest.raises(CheckpointError) as err:
        ck.load_run(run, model_io=fake_io)
    msg = str(err.value)
    assert any(word in msg for word in ("resume", "retrain", "delete", "finished", "rerun")), msg


def test_unknown_weights_error_becomes_checkpoint_error(tmp_path: Path, fake_io, fake_data, fake_collate) -> None:
    run = _run(_cfg("one-model", epochs=1), tmp_path / "run", fake_io, fake_data, fake_collate)

    def bad_load(model: Any, path: Path) -> None:
        raise RuntimeError("size mismatch")

    with pytest.raises(CheckpointError, match="size mismatch"):
        ck.load_run(run, model_io=dataclasses.replace(fake_io, load_weights=bad_load))


def test_two_model_trains_detector_and_classifier(tmp_path: Path, fake_io, fake_data, fake_collate) -> None:
    cfg = _cfg("two-model-small", epochs=1, classifier_epochs=2)
    run = _run(cfg, tmp_path / "two", fake_io, fake_data, fake_collate)
    raw = json.loads((run / "run.json").read_text())
    assert raw["kind"] == "two-model" and raw["detector_run"] == "detector"
    assert [p.name for p in ck.list_checkpoints(run / "classifier")] == ["epoch_0001", "epoch_0002"]
    history = json.loads((run / "classifier" / "history.json").read_text())
    assert [h["gate_ce"] for h in history] == [h["losses"]["loss_cls"] for h in history]  # the classifier is the gate
    model, info = ck.load_run(run, model_io=fake_io)
    assert info.kind == "two-model" and info.name == "two-model_small" and info.has_gate
    assert info.detector is not None and info.detector.variant == "one-model"
    assert info.model_config["input_size"] == 224
    assert model.threshold == 0.5

    # --detector reuses the one-model run
    run2 = _run(dataclasses.replace(cfg, variant=Variant.TWO_MODEL_LARGE, detector_run=str(run / "detector")),
                tmp_path / "two2", fake_io, fake_data, fake_collate)
    raw2 = json.loads((run2 / "run.json").read_text())
    assert Path(raw2["detector_run"]) == (run / "detector").resolve()
    assert not (run2 / "detector").exists()
    _, info2 = ck.load_run(run2, model_io=fake_io)
    assert info2.model_config["input_size"] is None
    with pytest.raises(ConfigError, match="one-model"):
        _run(dataclasses.replace(cfg, detector_run=str(run / "classifier")), tmp_path / "two3", fake_io,
             fake_data, fake_collate)


def test_keep_checkpoints(tmp_path: Path, fake_io, fake_data, fake_collate) -> None:
    run = _run(_cfg("const", epochs=3, keep_checkpoints=1), tmp_path / "run", fake_io, fake_data, fake_collate)
    assert [p.name for p in ck.list_checkpoints(run)] == ["epoch_0003"]
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]


def test_non_finite_loss_is_reported(tmp_path: Path, fake_io, fake_data, fake_collate) -> None:
    with pytest.raises(ConfigError, match="lower --lr"):
        _run(_cfg("const", epochs=1, lr=1e30, grad_clip=0.0), tmp_path / "run", fake_io, fake_data, fake_collate)


def test_result_does_not_depend_on_workers(tmp_path: Path, fake_io, fake_data, fake_collate) -> None:
    cfg = _cfg("linear", epochs=2)
    _run(cfg, tmp_path / "w0", fake_io, fake_data, fake_collate)
    _run(dataclasses.replace(cfg, workers=2), tmp_path / "w2", fake_io, fake_data, fake_collate)
    a, _ = ck.load_run(tmp_path / "w0", model_io=fake_io)
    b, _ = ck.load_run(tmp_path / "w2", model_io=fake_io)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k


def test_random_init_unfreezes_the_backbone_and_pretrained_keeps_the_recipe(fake_io: ck.ModelIO) -> None:
    from defectnet.train.trainer import _detector_config

    from_scratch = _detector_config(fake_io, TrainConfig(variant="const", model_preset="compact"), 3, True)
    assert from_scratch["frozen_stages"] == -1 and from_scratch["frozen_bn"] is False
    assert from_scratch["preset"] == "compact"
    pretrained = _detector_config(fake_io, TrainConfig(variant="const", backbone_weights="r50.pth"), 3, True)
    assert "frozen_stages" not in pretrained and "frozen_bn" not in pretrained  # the recipe's defaults
