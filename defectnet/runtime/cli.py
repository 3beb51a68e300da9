"""``defectnet-infer``: run an engine folder on images and write one JSON line per input.

Example::

    defectnet-infer --engine runs/const/engine data/fabric/images --out results.jsonl \\
        --save-images annotated/ --batch 4

A thin click layer over two runners that share the input rule, the record and the record
file:

* files and folders (batch mode): :mod:`defectnet.runtime.inspection.batch` -- every input
  gets exactly one record (``docs/record.schema.json``), in input order, streamed to
  ``--out`` as it finishes; a re-run with the same ``--out`` resumes (``--overwrite``
  starts over);
* ``--watch DIR``: :mod:`defectnet.runtime.inspection.watch` -- the files appearing in DIR,
  each once across restarts;
* ``--server URL INPUTS...``: :mod:`defectnet.serve.client` -- the inputs sent to a
  ``defectnet-serve`` service, with the same one-record-per-input file and resume.

Exit status: 0 when every input got a record (error records included); 1 when the run could
not be set up (engine, options, an unwritable ``--out``) or writing a record failed; 2 for
a usage error (no inputs); 130 when SIGINT/SIGTERM stopped a batch run before every input
had its record (run it again to resume).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from defectnet.errors import DefectNetError
from defectnet.runtime.backends import BACKENDS, BackendOptions
from defectnet.runtime.inspection.folders import IMAGE_SUFFIXES
from defectnet.runtime.types import BackendName

#: Exit status of a batch run that SIGINT/SIGTERM stopped before every input had its record.
EXIT_INTERRUPTED = 130


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("inputs", nargs=-1, required=False)
@click.option("--engine", "engine_dir", default=None, type=click.Path(file_okay=False),
              help="Engine folder written by defectnet-export (required unless --server).")
@click.option("--server", "server_url", default=None,
              help="Send the inputs to a defectnet-serve service at this URL (http://HOST:PORT) instead of running "
              "an engine here: the same records, 503s retried.")
@click.option("--concurrency", default=4, show_default=True, type=int, help="--server: requests in flight.")
@click.option("--deadline-ms", type=float, default=None, help="--server: each request's deadline.")
@click.option("--out", "out_file", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Records, one JSON line per input, appended and fsynced as each image finishes. An existing "
              "file is resumed: inputs it already has a record for are skipped.")
@click.option("--overwrite", is_flag=True, help="Start --out over instead of resuming it.")
@click.option("--save-images", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write annotated JPEGs (boxes, labels, verdict) into this folder.")
@click.option("--contact-sheet", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Then draw up to 16 of --out's records (NG and OK alternating, with their boxes) into this PNG.")
@click.option("--backend", type=click.Choice(list(BACKENDS)), default=BackendName.AUTO.value, show_default=True,
              help="auto (default): as the engine was built (a plain export on onnxruntime, a built folder on its backend, a per-graph folder on each graph's); onnxruntime / openvino: the engine's graphs; torch: the checkpoint it was exported from; tensorrt: the folder's TensorRT plans (NVIDIA GPU).")
@click.option("--providers", default="cpu", show_default=True,
              help="onnxruntime providers: cpu, auto (TensorRT/CUDA when present) or a comma-separated list.")
@click.option("--device", default="cpu", show_default=True, help="torch backend device (cpu, cuda[:N]).")
@click.option("--batch", "batch", default=1, show_default=True, type=int, help="Images per batch.")
@click.option("--gate-threshold", type=float, default=None, help="Override the engine's P(defective) threshold.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--metrics-port", type=int, default=None,
              help="Serve Prometheus metrics at http://HOST:PORT/metrics while running (0: any free port).")
@click.option("--metrics-host", default="127.0.0.1", show_default=True,
              help="Address for --metrics-port (this machine only by default; 0.0.0.0 on a trusted network only).")
@click.option("--watch", "watch_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Watch this folder instead: inspect image files as they appear (size stable), append to --out.")
@click.option("--state", "state_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="--watch: files already done (default OUT.state.json); a restart skips them.")
@click.option("--once", is_flag=True, help="--watch: process the files present, then exit.")
@click.option("--poll-interval", default=1.0, show_default=True, type=float, help="--watch: seconds between scans.")
@click.option("--stable-for", default=1.0, show_default=True, type=float,
              help="--watch: seconds a file's size and mtime must stay unchanged before it is read.")
def main(inputs: tuple[str, ...], engine_dir: str | None, server_url: str | None, concurrency: int,
         deadline_ms: float | None, out_file: Path, overwrite: bool, save_images: Path | None,
         contact_sheet: Path | None, backend: str, providers: str, device: str, batch: int, gate_threshold: float | None, no_progress: bool,
         metrics_port: int | None, metrics_host: str, watch_dir: Path | None, state_file: Path | None, once: bool,
         poll_interval: float, stable_for: float) -> None:
    """Run the engine on IMAGES_OR_FOLDERS... and write one JSON line per input to --out
    (or, with --watch DIR, on the files appearing in DIR; stop with Ctrl-C / SIGTERM).

    A file named here is an input whatever its suffix; a folder is searched recursively for
    entries named like images. Exit status 0: every input has its record (error records
    included); 1: set-up failed; 130: interrupted (run again to resume)."""
    from defectnet.runtime.inspection.batch import run_inference
    from defectnet.runtime.pipeline import Pipeline

    if server_url is not None:
        _server(server_url, inputs, engine_dir, watch_dir, save_images, out_file, overwrite, concurrency, deadline_ms,
                no_progress, contact_sheet)
        return
    try:
        if engine_dir is None:
            raise click.UsageError("give --engine DIR (an engine folder written by defectnet-export) or --server URL")
        if batch < 1:
            raise click.BadParameter("--batch must be >= 1", param_hint="--batch")
        backend_options = BackendOptions(device=device, providers=providers)  # a ConfigError says what is wrong
        if watch_dir is not None:
            if contact_sheet is not None:
                raise click.UsageError("--contact-sheet is for batch and --server runs; for --watch, run "
                                       "defectnet-infer on the folder afterwards")
            _watch(watch_dir, inputs, engine_dir, out_file, backend, backend_options, batch, gate_threshold,
                   state_file, once, poll_interval, stable_for, save_images, overwrite, metrics_port, metrics_host)
            return
        if not inputs:
            raise click.UsageError("give IMAGES_OR_FOLDERS... or --watch DIR")
        pipeline = Pipeline.from_engine(engine_dir, backend, backend_options=backend_options,
                                        gate_threshold=gate_threshold)
        summary = run_inference(pipeline, _inputs(inputs), out_file, batch=batch, save_images=save_images,
                                progress=not no_progress, overwrite=overwrite, metrics_port=metrics_port,
                                metrics_host=metrics_host, echo=click.echo)
    except DefectNetError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    _report(summary, out_file, contact_sheet)


def _inputs(inputs: tuple[str, ...]) -> list[str]:
    """The record keys of the inputs (batch.collect_inputs); a usage error when there are none."""
    from defectnet.runtime.inspection.batch import collect_inputs

    keys = collect_inputs(inputs)
    if not keys:
        raise click.UsageError(f"no inputs: no entry named like an image ({', '.join(sorted(IMAGE_SUFFIXES))}) "
                               f"in {', '.join(inputs)}")
    return keys


def _report(summary: Any, out_file: Path, contact_sheet: Path | None) -> None:
    """Print a batch or client run's summary and draw the contact sheet; exit 130 when it was
    interrupted (with no sheet), 1 when the sheet cannot be drawn."""
    from defectnet.runtime.inspection.sheet import write_results_sheet

    click.echo(summary.text())
    click.echo(f"{out_file}: {summary.records} records written now, {summary.skipped} before")
    if contact_sheet is not None and not summary.unfinished:
        try:
            click.echo(f"contact sheet: {write_results_sheet(out_file, contact_sheet)}")
        except DefectNetError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(1)
    if summary.unfinished:
        sys.exit(EXIT_INTERRUPTED)


def _server(url: str, inputs: tuple[str, ...], engine_dir: str | None, watch_dir: Path | None,
            save_images: Path | None, out_file: Path, overwrite: bool, concurrency: int, deadline_ms: float | None,
            no_progress: bool, contact_sheet: Path | None) -> None:
    """``--server URL``: :func:`defectnet.serve.client.run_client` (the same inputs, records and
    resume as batch mode; the service runs the engine)."""
    from defectnet.serve.client import run_client

    for given, flag in ((engine_dir, "--engine"), (watch_dir, "--watch"), (save_images, "--save-images")):
        if given is not None:
            raise click.UsageError(f"{flag} does not apply with --server (the service runs its own engine)")
    if not inputs:
        raise click.UsageError("give IMAGES_OR_FOLDERS... to send to --server")
    keys = _inputs(inputs)
    try:
        summary = run_client(url, keys, out_file, concurrency=concurrency, overwrite=overwrite,
                             deadline_ms=deadline_ms, progress=not no_progress, echo=click.echo)
    except DefectNetError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    _report(summary, out_file, contact_sheet)


def _watch(folder: Path, inputs: tuple[str, ...], engine_dir: str, out_file: Path, backend: str,
           backend_options: BackendOptions, batch: int, gate_threshold: float | None,
           state_file: Path | None, once: bool, poll_interval: float, stable_for: float,
           save_images: Path | None, overwrite: bool, metrics_port: int | None, metrics_host: str) -> None:
    """``--watch``: :func:`defectnet.runtime.inspection.watch.watch_folder` with an Inspector
    (serving its metrics when asked; closing the inspector stops the server)."""
    from defectnet.runtime.inspection.inspector import Inspector
    from defectnet.runtime.inspection.watch import watch_folder

    if inputs:
        raise click.UsageError("--watch takes no IMAGES_OR_FOLDERS arguments")
    if save_images is not None:
        raise click.UsageError("--save-images is not available with --watch")

    def make_inspector(on_result: Callable[[Any], None]) -> Inspector:
        inspector = Inspector.from_engine(engine_dir, backend, backend_options=backend_options,
                                          gate_threshold=gate_threshold, batch_size=batch, on_result=on_result)
        if metrics_port is not None:
            try:
                click.echo(f"metrics: {inspector.serve_metrics(metrics_port, metrics_host).url}")
            except BaseException:
                inspector.close()
                raise
        return inspector

    summary = watch_folder(make_inspector, folder, out_file, state_file=state_file, suffixes=IMAGE_SUFFIXES,
                           once=once, poll_interval=poll_interval, stable_for=stable_for, overwrite=overwrite)
    click.echo(summary.text())
