"""``defectnet-eval``: evaluate run folders and print the seed's table.

Example::

    defectnet-eval runs/one runs/const runs/two-small --data data/fabric --out results.json

One-model runs are evaluated first; the first one's ATT is the ATT_one of every other row's
ATT_ideal (or pass ``--att-one MS``). Without either, each row uses its own ATT_defective as
the full-path time and its JSON says so (``att_one_source``).
"""

from __future__ import annotations

import datetime as _dt
import platform
import shlex
import sys

import click
import torch

from defectnet.errors import DefectNetError
from defectnet.runtime.backends import BACKENDS
from defectnet.runtime.types import BackendName


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("run_dirs", nargs=-1, type=click.Path(file_okay=False))
@click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False),
              help="Data folder with annotations/{split}.json and images/.")
@click.option("--split", default="test", show_default=True, type=click.Choice(["train", "test"]))
@click.option("--out", "out_file", type=click.Path(dir_okay=False), default=None, help="Write all results as JSON.")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda[:N].")
@click.option("--warmup", default=3, show_default=True, type=int, help="Untimed warm-up calls before timing.")
@click.option("--att-one", "att_one_ms", type=float, default=None,
              help="One-model ATT (ms) for ATT_ideal [default: from a one-model run given here].")
@click.option("--gate-threshold", type=float, default=None, help="Override the gate's P(defective) threshold.")
@click.option("--engine", "engine_dirs", multiple=True, type=click.Path(file_okay=False),
              help="Also evaluate this exported engine folder (repeatable), after the runs.")
@click.option("--backend", default=BackendName.AUTO.value, show_default=True, type=click.Choice(list(BACKENDS)),
              help="Runtime backend for --engine folders: " + "auto (default): as the engine was built (a plain export on onnxruntime, a built folder on its backend, a per-graph folder on each graph's); onnxruntime / openvino: the engine's graphs; torch: the checkpoint it was exported from; tensorrt: the folder's TensorRT plans (NVIDIA GPU).")
@click.option("--scale", default=None, help="Test scale LONGxSHORT [default: each run's train scale], "
              "e.g. 1333x800 for the seed's test scale.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch intra-op threads and the --engine backend's threads [default: the libraries' own]; "
              "use defectnet-bench's --threads value to time both alike.")
@click.option("--no-progress", is_flag=True)
def main(run_dirs: tuple[str, ...], data_dir: str, split: str, out_file: str | None, device: str, warmup: int,
         att_one_ms: float | None, gate_threshold: float | None, engine_dirs: tuple[str, ...], backend: str,
         scale: str | None, threads: int | None, no_progress: bool) -> None:
    """Evaluate RUN_DIR... (PyTorch) and --engine DIR... (runtime backend) on --data: mAP, F1,
    ATT (seed table) plus gate recall, the gate's ROC AUC / average precision and latency.
    --out FILE.json also writes FILE.detections.json (every detection, per image)."""
    from defectnet.evaluation.environment import library_versions, machine_info
    from defectnet.evaluation.evaluate import evaluate_engine, evaluate_runs
    from defectnet.evaluation.records import detections_path, write_detections
    from defectnet.evaluation.report import deployment_table, per_class_table, seed_table
    from defectnet.evaluation.timing import thread_counts
    from defectnet.io import atomic_write_json
    from defectnet.train.cli import parse_scale

    if threads is not None:
        torch.set_num_threads(threads)
    try:
        test_scale = parse_scale(scale) if scale else None
        if not run_dirs and not engine_dirs:
            raise click.UsageError("give at least one RUN_DIR or --engine DIR")
        ordered = evaluate_runs(run_dirs, data_dir, split=split, device=device, warmup=warmup,
                                att_one_ms=att_one_ms, gate_threshold=gate_threshold, progress=not no_progress,
                                log=lambda m: click.echo(m, err=True), scale=test_scale)
        att_one = att_one_ms if att_one_ms is not None else next(
            (r.att_ms for r in ordered if not r.has_gate and r.model == "one-model"), None)
        ordered += [evaluate_engine(e, data_dir, backend=backend, split=split, warmup=warmup, att_one_ms=att_one,
                                    gate_threshold=gate_threshold, progress=not no_progress, scale=test_scale,
                                    threads=threads or 0)
                    for e in engine_dirs]
    except DefectNetError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    click.echo(f"\n{split} split of {data_dir}, {device}, batch 1 "
               "(ATT_normal/ATT_defective by ground truth; the seed's table had them swapped)\n")
    click.echo(seed_table(ordered))
    click.echo("")
    click.echo(deployment_table(ordered))
    click.echo("")
    click.echo(per_class_table(ordered))
    if out_file:
        sidecar = detections_path(out_file)
        results, detections = [], {}
        for k, r in enumerate(ordered):
            d = r.to_dict()
            key = f"{k}: {r.model}"
            detections[key] = {"image_id": d["per_image"].get("image_id", []),
                               "detections": d["per_image"].pop("detections", [])}
            d["detections_file"] = f"{sidecar.name}#{key}"
            results.append(d)
        write_detections(sidecar, detections)
        command = _command_line(run_dirs, data_dir, split, out_file, device, warmup, att_one_ms, gate_threshold,
                                engine_dirs, backend, scale, threads)
        atomic_write_json(out_file, {
            "command": command, "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "data": data_dir, "split": split, "device": device, "warmup": warmup,
            "threads": {"requested": threads, **thread_counts()},
            "torch": torch.__version__, "platform": platform.platform(),
            "cuda_device": torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else None,
            "machine": machine_info(), "libraries": library_versions(),
            "results": results,
        })
        click.echo(f"\nwrote {out_file} and {sidecar}", err=True)


def _command_line(run_dirs: tuple[str, ...], data_dir: str, split: str, out_file: str, device: str, warmup: int,
                  att_one_ms: float | None, gate_threshold: float | None, engine_dirs: tuple[str, ...],
                  backend: str, scale: str | None, threads: int | None) -> str:
    """The ``defectnet-eval`` command that reproduces this run (every option spelt out)."""
    args = ["defectnet-eval", *run_dirs, "--data", data_dir, "--split", split, "--out", out_file,
            "--device", device, "--warmup", str(warmup)]
    for flag, value in (("--att-one", att_one_ms), ("--gate-threshold", gate_threshold), ("--scale", scale),
                        ("--threads", threads)):
        if value is not None:
            args += [flag, str(value)]
    for e in engine_dirs:
        args += ["--engine", e]
    if engine_dirs:
        args += ["--backend", backend]
    return shlex.join(args)


if __name__ == "__main__":  # pragma: no cover
    main()
