"""``defectnet-train``: train one row of the seed's table.

Examples::

    defectnet-train --model const --data data/fabric --out runs/const
    defectnet-train --model one-model --data data/fabric --out runs/one
    defectnet-train --model two-model-small --data data/fabric --out runs/two-small --detector runs/one
    defectnet-train --model const --data data/fabric --out runs/const --resume   # after a crash

Two-model variants need a one-model detector: ``--detector RUN_DIR`` reuses a finished
one-model run (trained on the same data); without it a one-model detector is trained first
into ``RUN_DIR/detector`` with the same options, then the classifier into
``RUN_DIR/classifier``.
"""

from __future__ import annotations

import sys

import click

from defectnet.errors import DefectNetError
from defectnet.model.config import MODEL_PRESETS
from defectnet.train.config import TrainConfig, Variant
from defectnet.train.schedules import ORIGINAL_DEFAULTS, GateLossSchedule, Strategy


def parse_scale(text: str) -> tuple[int, int]:
    """``"1333x800"`` -> ``(1333, 800)``."""
    try:
        a, b = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"expected LONGxSHORT such as 1333x800, got {text!r}") from None
    return a, b


def _gate_schedule(variant: Variant, w0: float | None, k: float | None, t: float | None,
                   a: float | None) -> GateLossSchedule | None:
    if not variant.is_defectnet:
        if any(v is not None for v in (w0, k, t, a)):
            raise click.UsageError(f"--gate-* options only apply to DefectNet variants, not {variant.value}")
        return None
    d0, k0, t0, a0 = ORIGINAL_DEFAULTS[Strategy(variant.value)]
    return GateLossSchedule(Strategy(variant.value), d0 if w0 is None else w0, k0 if k is None else k,
                            t0 if t is None else t, a0 if a is None else a)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--model", "variant", required=True, type=click.Choice([v.value for v in Variant]),
              help="Which row of the table to train.")
@click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False),
              help="Data folder with annotations/train.json and images/.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Run folder to write.")
@click.option("--backbone", default="resnet50", show_default=True, help="torchvision ResNet name.")
@click.option("--backbone-weights", type=click.Path(dir_okay=False, exists=True), default=None,
              help="torchvision ImageNet ResNet state_dict (.pth or .safetensors) to start from "
                   "[default: random init].")
@click.option("--init", "init_from", type=click.Path(exists=True), default=None,
              help="Start from a finished one-model/DefectNet run (or its checkpoints/epoch_NNNN) trained "
              "with the same backbone and preset: the original's load_from of a pretrained detector. "
              "A gate it lacks starts fresh; stem, stage 1 and BatchNorm stay frozen as for pretrained weights.")
@click.option("--epochs", default=12, show_default=True, type=int)
@click.option("--batch-size", default=2, show_default=True, type=int)
@click.option("--scale", default="1333x800", show_default=True, help="Train scale LONGxSHORT (keep ratio).")
@click.option("--lr", type=float, default=None, help="SGD LR [default: 0.0025 * batch-size / 2].")
@click.option("--warmup-iters", default=500, show_default=True, type=int,
              help="Linear warm-up from 1/3; capped at --max-warmup-fraction of the run's iterations.")
@click.option("--max-warmup-fraction", default=0.25, show_default=True, type=float)
@click.option("--grad-clip", default=35.0, show_default=True, type=float, help="Max gradient L2 norm (0 = off).")
@click.option("--gate-weight", type=float, default=None, help="Gate-loss w0 [default: the original's].")
@click.option("--gate-scale-factor", type=float, default=None, help="Gate-loss k.")
@click.option("--gate-period", type=float, default=None, help="Gate-loss T.")
@click.option("--gate-base", type=float, default=None, help="Gate-loss a (exponential).")
@click.option("--gate-threshold", default=0.5, show_default=True, type=float,
              help="P(defective) at which the gate runs the detector (stored in the model config).")
@click.option("--classifier-epochs", type=int, default=None,
              help="Two-model classifier epochs [default: --epochs; the original used 52 for small].")
@click.option("--detector", "detector_run", type=click.Path(file_okay=False, exists=True), default=None,
              help="Two-model: reuse this finished one-model run as the detector.")
@click.option("--preset", "model_preset", type=click.Choice(sorted(MODEL_PRESETS)), default="paper",
              show_default=True, help="Detector size: paper = the original recipe; compact = scaled for CPU "
              "training on reduced-size images (narrow FPN/box head, scale-4 anchors, fewer RoIs).")
@click.option("--fpn-channels", default=None, type=int, help="FPN width [default: the preset's].")
@click.option("--background-id", "background_ids", multiple=True, type=int, default=(0,), show_default=True,
              help="COCO category id(s) that mark normal images.")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda[:N].")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--workers", default=0, show_default=True, type=int, help="DataLoader worker processes.")
@click.option("--keep-checkpoints", default=0, show_default=True, type=int, help="Keep the newest N (0 = all).")
@click.option("--resume", is_flag=True, help="Continue --out after its last complete epoch.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def main(variant: str, data_dir: str, out_dir: str, backbone: str, backbone_weights: str | None,
         init_from: str | None, epochs: int,
         batch_size: int, scale: str, lr: float | None, warmup_iters: int, max_warmup_fraction: float,
         grad_clip: float, gate_weight: float | None, gate_scale_factor: float | None,
         gate_period: float | None, gate_base: float | None, gate_threshold: float,
         classifier_epochs: int | None, detector_run: str | None, model_preset: str, fpn_channels: int | None,
         background_ids: tuple[int, ...], device: str, seed: int, workers: int, keep_checkpoints: int,
         resume: bool, no_progress: bool) -> None:
    """Train a one-model, two-model or DefectNet variant with the original recipe.

    Writes RUN_DIR/checkpoints/epoch_NNNN/ after every epoch and RUN_DIR/run.json at the end.
    Two-model variants need a one-model detector: --detector RUN_DIR reuses a finished one-model
    run trained on the same data; without it one is trained first into RUN_DIR/detector (same
    options), then the classifier into RUN_DIR/classifier.
    """
    from defectnet.train.trainer import train

    try:
        v = Variant(variant)
        cfg = TrainConfig(
            variant=v, epochs=epochs, batch_size=batch_size, lr=lr, warmup_iters=warmup_iters,
            max_warmup_fraction=max_warmup_fraction, grad_clip=grad_clip, scale=parse_scale(scale),
            seed=seed, workers=workers, device=device, backbone=backbone, backbone_weights=backbone_weights,
            init_from=init_from,
            gate_schedule=_gate_schedule(v, gate_weight, gate_scale_factor, gate_period, gate_base),
            gate_threshold=gate_threshold, classifier_epochs=classifier_epochs, detector_run=detector_run,
            model_preset=model_preset, fpn_channels=fpn_channels, background_category_ids=tuple(background_ids),
            keep_checkpoints=keep_checkpoints)
        run = train(cfg, data_dir, out_dir, resume=resume, progress=not no_progress,
                    log=lambda m: click.echo(m, err=True))
    except DefectNetError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    click.echo(str(run / "run.json"))


if __name__ == "__main__":  # pragma: no cover
    main()
