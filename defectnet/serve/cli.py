"""``defectnet-serve``: the inspection service on Ray Serve.

::

    defectnet-serve --engine runs/const/engine                       # foreground; Ctrl-C stops it
    defectnet-serve --engine E --mode fused --fused-replicas 2
    defectnet-serve --engine E --gate-replicas 2 --detector-replicas 1-3   # 1..3: autoscaling
    defectnet-serve config --engine E --out serve.yaml [--cluster]  # a Serve config file

The first form starts a loopback-only Ray cluster in this process (:mod:`.local`), serves
``POST /v1/inspect``, ``GET /healthz`` and ``GET /metrics`` on ``--host:--port`` until
SIGINT/SIGTERM, then shuts Serve and Ray down. ``--host 0.0.0.0`` opens the HTTP port to the
network (trusted networks only); Ray itself stays on 127.0.0.1.
Exit status: 0 after a clean stop; 1 when the service could not start.
"""

from __future__ import annotations

import functools
import re
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from defectnet.errors import ConfigError, DefectNetError
from defectnet.runtime.backends import BACKENDS
from defectnet.runtime.types import BackendName
from defectnet.serve.options import MODES, Scaling, ServeOptions

_REPLICAS = re.compile(r"^(\d+)(?:-(\d+))?$")


def parse_replicas(value: str, cpus: float, name: str) -> Scaling:
    """``N`` (a fixed count) or ``MIN-MAX`` (autoscaling) -> :class:`Scaling`."""
    m = _REPLICAS.match(value.strip())
    if not m:
        raise click.BadParameter(f"{value!r}: give a replica count (2) or an autoscaling range (1-4)",
                                 param_hint=f"--{name}-replicas")
    low, high = int(m.group(1)), m.group(2)
    try:
        if high is None:
            return Scaling(replicas=low, cpus=cpus)
        return Scaling(replicas=max(low, 1), min_replicas=low, max_replicas=int(high), cpus=cpus)
    except ConfigError as e:
        raise click.BadParameter(str(e), param_hint=f"--{name}-replicas") from None


def _app_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The options that describe the application (shared by the run and config commands)."""
    decorators = [
        click.option("--engine", "engine_dir", type=click.Path(file_okay=False), default=None,
                     help="Engine folder written by defectnet-export (every node must be able to read it)."),
        click.option("--backend", type=click.Choice(list(BACKENDS)), default=BackendName.AUTO.value,
                     show_default=True, help="Backend of the model replicas (auto: as the engine was built)."),
        click.option("--providers", default="cpu", show_default=True, help="onnxruntime providers (cpu, auto, names)."),
        click.option("--device", default="cpu", show_default=True, help="torch/tensorrt device (cpu, cuda[:N])."),
        click.option("--threads", default=1, show_default=True, type=int,
                     help="Intra-op threads per model replica (0: the library's default)."),
        click.option("--gate-threshold", type=float, default=None, help="Override the engine's P(defective) threshold."),
        click.option("--mode", type=click.Choice(list(MODES)), default="split", show_default=True,
                     help="split: Gate and Detector deployments, features through Ray's object store; fused: one "
                     "deployment runs both (no feature hop)."),
        click.option("--gate-replicas", default="1", show_default=True, help="split: N, or MIN-MAX to autoscale."),
        click.option("--detector-replicas", default="1", show_default=True,
                     help="split: N, or MIN-MAX to autoscale. About gate replicas x pass rate x t_detector / t_gate."),
        click.option("--fused-replicas", default="1", show_default=True, help="fused: N, or MIN-MAX to autoscale."),
        click.option("--ingress-replicas", default="1", show_default=True,
                     help="HTTP ingress replicas (each serves its own /metrics)."),
        click.option("--replica-cpus", default=1.0, show_default=True, type=float,
                     help="Ray CPUs reserved per model replica."),
        click.option("--max-batch-size", default=4, show_default=True, type=int, help="Images per model batch."),
        click.option("--batch-wait-ms", default=10.0, show_default=True, type=float,
                     help="How long a batch waits to fill after its first image."),
        click.option("--max-queued", default=64, show_default=True, type=int,
                     help="Requests that may wait per deployment and caller; beyond: 503 with Retry-After."),
        click.option("--max-ongoing", default=64, show_default=True, type=int,
                     help="Requests one ingress replica works on at once."),
        click.option("--max-body-mb", default=32.0, show_default=True, type=float,
                     help="Largest request body; larger ones get 413."),
        click.option("--request-timeout-s", default=30.0, show_default=True, type=float,
                     help="Every request is answered by then (504 with a timeout record), or by its deadline_ms."),
    ]
    return functools.reduce(lambda f, d: d(f), reversed(decorators), fn)


def _options(kw: dict[str, Any], *, loopback: bool) -> ServeOptions:
    engine = kw.pop("engine_dir")
    if engine is None:
        raise click.UsageError("give --engine DIR (an engine folder written by defectnet-export)")
    cpus = kw.pop("replica_cpus")
    scaling = {name: parse_replicas(kw.pop(f"{name}_replicas"), cpus if name != "ingress" else 0.0, name)
               for name in ("gate", "detector", "fused", "ingress")}
    return ServeOptions(
        engine=str(Path(engine).resolve()), backend=kw.pop("backend"), providers=kw.pop("providers"),
        device=kw.pop("device"), threads=kw.pop("threads"), gate_threshold=kw.pop("gate_threshold"),
        mode=kw.pop("mode"), max_batch_size=kw.pop("max_batch_size"), batch_wait_ms=kw.pop("batch_wait_ms"),
        max_queued=kw.pop("max_queued"), max_ongoing=kw.pop("max_ongoing"),
        max_body_bytes=int(kw.pop("max_body_mb") * 1024 * 1024), request_timeout_s=kw.pop("request_timeout_s"),
        loopback=loopback, ingress=scaling["ingress"], gate=scaling["gate"], detector=scaling["detector"],
        fused=scaling["fused"])


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"],
                                                            "max_content_width": 100})
@_app_options
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address of the HTTP proxy (0.0.0.0: every interface; trusted networks only).")
@click.option("--port", default=8000, show_default=True, type=int, help="HTTP port.")
@click.option("--num-cpus", default=None, type=int, help="Ray CPUs of this node (default: its cores).")
@click.pass_context
def main(ctx: click.Context, host: str, port: int, num_cpus: int | None, **kw: Any) -> None:
    """Serve an engine over HTTP on Ray Serve: POST /v1/inspect (image bytes -> the JSON
    record), GET /healthz, GET /metrics. Runs in the foreground until Ctrl-C / SIGTERM.

    `defectnet-serve config --engine DIR` writes a Serve config file instead."""
    if ctx.invoked_subcommand is not None:
        return
    from defectnet.runtime.inspection.watch import stop_on_signals
    from defectnet.serve.local import start_local

    stop = threading.Event()
    restore = stop_on_signals(stop)  # before Ray starts: a signal during the start-up stops it once it is up
    try:
        try:
            options = _options(kw, loopback=True)
            replicas = ", ".join(f"{name} {scaling}" for name, scaling in options.deployments().items())
            click.echo(f"starting Ray and Serve ({options.mode}: {replicas} replicas)...", err=True)
            service = start_local(options, host=host, port=port, num_cpus=num_cpus)
        except DefectNetError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(1)
        try:
            click.echo(f"serving {options.engine} at {service.url}/v1/inspect (started in {service.started_s:.1f} "
                       f"s; health {service.url}/healthz, metrics {service.url}/metrics); Ctrl-C stops it", err=True)
            while not stop.wait(0.5):
                pass
            click.echo("stopping...", err=True)
        finally:
            service.shutdown()
    finally:
        restore()
    click.echo("stopped", err=True)


@main.command("config")
@_app_options
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path), default=Path("serve.yaml"),
              show_default=True, help="Where to write the config.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="HTTP proxy address; a cluster's proxies must listen on the nodes' network (e.g. 0.0.0.0: "
              "every interface, trusted networks only), which you opt into here.")
@click.option("--port", default=8000, show_default=True, type=int, help="HTTP port.")
@click.option("--cluster", is_flag=True,
              help="For a multi-machine cluster (KubeRay, serve deploy): a proxy on every node, Ray not pinned "
              "to loopback.")
def config_command(out_file: Path, host: str, port: int, cluster: bool, **kw: Any) -> None:
    """Write a Ray Serve config file of the application (for `serve run`, `serve deploy` or a
    KubeRay RayService's serveConfigV2)."""
    from defectnet.runtime.engine import load_engine
    from defectnet.serve.config_file import write_serve_config

    try:
        options = _options(kw, loopback=not cluster)
        if not cluster:
            load_engine(options.engine)  # on a cluster the path is the nodes' (it may not exist here)
        path = write_serve_config(out_file, options, host=host, port=port, cluster=cluster)
    except DefectNetError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    click.echo(f"wrote {path}")
    if cluster and host in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"note: the proxies listen on {host} only, so nothing outside each node reaches them; pass "
                   "--host 0.0.0.0 (or the nodes' address) to serve other machines", err=True)


__all__ = ["main", "parse_replicas"]


if __name__ == "__main__":  # python -m defectnet.serve.cli
    main()
