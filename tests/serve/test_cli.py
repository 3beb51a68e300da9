"""defectnet-serve as a user runs it: in the foreground until SIGTERM, then a clean shutdown
(exit 0, no process left); ``defectnet-serve config``; usage errors."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner
from serve_helpers import alive, check_record, descendants, noise_images, png

from defectnet.serve.cli import main

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="needs the serve extra: pip install 'defectnet[serve]'")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@needs_ray
@pytest.mark.timeout(240)
def test_runs_in_the_foreground_until_sigterm(serve_engine: Path, tmp_path: Path) -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # the command sets its own
    log = (tmp_path / "serve.log").open("w+")
    proc = subprocess.Popen([sys.executable, "-m", "defectnet.serve.cli", "--engine", str(serve_engine), "--port",
                             str(port), "--num-cpus", "2", "--mode", "fused"], stdout=log, stderr=subprocess.STDOUT,
                            env=env, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 150
        while time.time() < deadline:
            assert proc.poll() is None, Path(log.name).read_text()
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=5) as r:
                    if json.loads(r.read())["ready"]:
                        break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(1)
        else:
            pytest.fail(f"not ready after 150 s: {Path(log.name).read_text()}")
        request = urllib.request.Request(f"{url}/v1/inspect?key=one", data=png(noise_images(1)[0]), method="POST")
        with urllib.request.urlopen(request, timeout=60) as r:
            record = json.loads(r.read())
        check_record(record)
        assert record["key"] == "one" and record["verdict"] in ("OK", "NG")
        while "serving" not in Path(log.name).read_text() and time.time() < deadline:
            time.sleep(0.2)  # the proxy can answer before the command has finished starting
        started = descendants(proc.pid)
        assert len(started) >= 5
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0
        t0 = time.time()
        while alive(started) and time.time() - t0 < 60:
            time.sleep(0.5)
        assert alive(started) == []
        text = Path(log.name).read_text()
        assert f"serving {serve_engine}" in text and "stopped" in text
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@needs_ray
def test_config_command(serve_engine: Path, tmp_path: Path) -> None:
    import yaml

    out = tmp_path / "serve.yaml"
    result = CliRunner().invoke(main, ["config", "--engine", str(serve_engine), "--out", str(out), "--mode", "fused",
                                       "--fused-replicas", "1-3", "--max-batch-size", "8", "--port", "8100"])
    assert result.exit_code == 0, result.output
    config = yaml.safe_load(out.read_text())
    (app,) = config["applications"]
    assert app["args"]["engine"] == str(serve_engine.resolve()) and app["args"]["max_batch_size"] == 8
    assert config["http_options"] == {"host": "127.0.0.1", "port": 8100, "request_timeout_s": 40.0}
    fused = {d["name"]: d for d in app["deployments"]}["Fused"]
    assert fused["autoscaling_config"]["max_replicas"] == 3 and fused["max_ongoing_requests"] == 16
    # --cluster alone still binds loopback and says how to open it; every interface is an explicit --host
    result = CliRunner().invoke(main, ["config", "--engine", "/models/engine", "--out", str(out), "--cluster"])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(out.read_text())["http_options"]["host"] == "127.0.0.1" and "--host 0.0.0.0" in result.output
    result = CliRunner().invoke(main, ["config", "--engine", "/models/engine", "--out", str(out), "--cluster",
                                       "--host", "0.0.0.0"])
    assert result.exit_code == 0 and yaml.safe_load(out.read_text())["http_options"]["host"] == "0.0.0.0"
    assert "note:" not in result.output


def test_usage_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["config", "--out", str(tmp_path / "x.yaml")])
    assert result.exit_code == 2 and "--engine" in result.output
    result = runner.invoke(main, ["config", "--engine", str(tmp_path), "--gate-replicas", "3-1"])
    assert result.exit_code == 2 and "max_replicas" in result.output
    result = runner.invoke(main, ["config", "--engine", str(tmp_path / "none"), "--out", str(tmp_path / "x.yaml")])
    assert result.exit_code == 1 and "error:" in result.output
    assert not (tmp_path / "x.yaml").exists()
