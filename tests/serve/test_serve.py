"""defectnet.serve on a real local Ray cluster (one per module, loopback only, a tiny engine):
the split application (Gate 1, Detector 2 replicas) and a fused one beside it.

The tests run in file order; the last one shuts the cluster down and checks that no process
it started is left."""

from __future__ import annotations

import importlib.util
import json
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from serve_helpers import alive, check_record, descendants, listening_sockets, noise_images, png

if importlib.util.find_spec("ray") is None:
    pytest.skip("needs the serve extra: pip install 'defectnet[serve]'", allow_module_level=True)

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from defectnet.runtime.pipeline import ImageResult, Pipeline  # noqa: E402
from defectnet.serve.local import LOOPBACK, LocalService, start_local  # noqa: E402
from defectnet.serve.options import Scaling, ServeOptions  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"), pytest.mark.timeout(300)]
FUSED_APP = "fused"
TINY_APP = "tiny"


@dataclass
class Cluster:
    service: LocalService
    pipeline: Pipeline  # in process, the same engine and threshold
    images: list[np.ndarray]
    expected: list[ImageResult]  # Pipeline.run([image]) of each image
    before: set[int]  # this process's children before the cluster started

    def processes(self) -> dict[int, int]:
        """{pid: start time} of every live process the cluster started (all of Ray's run below
        this process: GCS and raylet are its children, workers and agents the raylet's)."""
        return {pid: start for pid, start in descendants().items() if pid not in self.before}


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1).contiguous()


@pytest.fixture(scope="module")
def cluster(serve_engine: Path) -> Iterator[Cluster]:
    before = descendants()
    images = noise_images(9, seed=5)
    pipeline = Pipeline.from_engine(serve_engine, gate_threshold=2.0)
    p = [pipeline.run([_to_tensor(im)])[0].p_defective for im in images]
    pipeline.gate_threshold = float(np.median(p))  # about half the images are flagged
    expected = [pipeline.run([_to_tensor(im)])[0] for im in images]
    assert 0 < sum(r.ran_detector for r in expected) < len(images)
    options = ServeOptions(engine=str(serve_engine), gate_threshold=pipeline.gate_threshold, threads=1,
                           gate=Scaling(cpus=1), detector=Scaling(replicas=2, cpus=1), max_batch_size=4,
                           batch_wait_ms=5, max_body_bytes=2_000_000, request_timeout_s=60)
    service = start_local(options, host=LOOPBACK, port=_free_port(), num_cpus=4)
    try:
        from ray import serve

        from defectnet.serve.app import build_app

        fused = ServeOptions.from_args({**options.to_args(), "mode": "fused", "fused": {"cpus": 1}})
        serve.run(build_app(fused), name=FUSED_APP, route_prefix=f"/{FUSED_APP}")
        # tiny queues for the overload test: one image in the replica, one more waiting, then 503
        tiny = ServeOptions.from_args({**fused.to_args(), "fused": {"cpus": 0}, "max_queued": 1, "max_batch_size": 1,
                                       "retry_after_s": 0.5})
        serve.run(build_app(tiny), name=TINY_APP, route_prefix=f"/{TINY_APP}")
        yield Cluster(service, pipeline, images, expected, set(before))
    finally:
        service.shutdown()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def _post(url: str, body: bytes, query: str = "", timeout: float = 90.0) -> tuple[int, Any, Any]:
    """(status, the JSON answer -- or the raw text when it is not JSON, headers)."""
    request = urllib.request.Request(f"{url}/v1/inspect{query}", data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            status, raw, headers = r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        status, raw, headers = e.code, e.read(), e.headers
    try:
        return status, json.loads(raw), headers
    except ValueError:
        return status, raw.decode("utf-8", "replace"), headers


def _metrics(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _same_boxes(record: dict[str, Any], want: ImageResult, atol: float) -> None:
    assert record["verdict"] == want.verdict and record["ran_detector"] == want.ran_detector
    assert record["p_defective"] == pytest.approx(want.p_defective, abs=1e-6 + 5e-7)  # rounded to 6 decimals
    got = record["detections"]
    assert [d["label"] for d in got] == want.labels.tolist()
    assert [d["class_name"] for d in got] == want.class_names
    if got:
        np.testing.assert_allclose([d["box"] for d in got], want.boxes.numpy(), atol=atol, rtol=0)
        np.testing.assert_allclose([d["score"] for d in got], want.scores.numpy(), atol=5e-6 + 1e-4, rtol=0)


def test_every_component_on_loopback(cluster: Cluster) -> None:
    import ray

    assert [n["NodeManagerAddress"] for n in ray.nodes()] == [LOOPBACK]
    assert ray.util.get_node_ip_address() == LOOPBACK
    assert ray.get_runtime_context().gcs_address.startswith(f"{LOOPBACK}:")
    processes = cluster.processes()
    names = {Path(f"/proc/{pid}/comm").read_text().strip() for pid in processes}
    assert {"gcs_server", "raylet"} <= names, names
    sockets = listening_sockets(list(processes))
    assert len({pid for pid, _, _ in sockets}) >= 5  # gcs, raylet, agents, controller, proxy, replicas
    assert all(address in (LOOPBACK, f"::ffff:{LOOPBACK}") for _, address, _ in sockets), sockets
    proxy = [address for _, address, port in sockets if port == cluster.service.port]
    assert proxy == [LOOPBACK]  # the Serve HTTP proxy
    # no dashboard: with include_dashboard=False Ray runs its API server without the web frontend and
    # with the usage-statistics module only (idle: usage statistics are off); no usage statistics
    commands = [Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") for pid in processes]
    heads = [c for c in commands if any(part.endswith(b"dashboard/dashboard.py") for part in c)]
    assert all(b"--disable-frontend" in c and b"--modules-to-load=UsageStatsHead" in c for c in heads), heads
    gcs = next(pid for pid in processes if Path(f"/proc/{pid}/comm").read_text().strip() == "gcs_server")
    assert b"RAY_USAGE_STATS_ENABLED=0" in Path(f"/proc/{gcs}/environ").read_bytes().split(b"\0")


def test_same_boxes_as_the_pipeline_over_http(cluster: Cluster) -> None:
    url = cluster.service.url
    for root in (url, f"{url}/{FUSED_APP}"):
        with ThreadPoolExecutor(4) as pool:  # concurrent: the images share batches
            answers = list(pool.map(lambda i, root=root: _post(root, png(cluster.images[i]), f"?key=img{i}"),
                                    range(len(cluster.images))))
        for i, (status, record, _) in enumerate(answers):
            assert status == 200, record
            check_record(record)
            assert record["key"] == f"img{i}"
            # the record rounds boxes to 0.01 px: |round(x) - x| <= 0.005, plus 1e-4 between the two runs
            _same_boxes(record, cluster.expected[i], atol=0.005 + 1e-4)
            if root == url:  # split: a gate-negative image's record has no detector time (fused: the batch's)
                assert ("detector" in record["timings_ms"]) == record["ran_detector"]


def test_same_boxes_as_the_pipeline_over_the_handle(cluster: Cluster) -> None:
    from ray import serve

    from defectnet.serve.app import DetectorCall, GateJob

    app = cluster.service.app_name
    gate, detector = (serve.get_deployment_handle(name, app).options(method_name="infer") for name in ("Gate", "Detector"))
    fused = serve.get_deployment_handle("Fused", FUSED_APP).options(method_name="infer")
    expires = time.time() + 60
    jobs = [GateJob(np.ascontiguousarray(im.transpose(2, 0, 1)), expires) for im in cluster.images]
    gated = [r.result() for r in [gate.remote(job) for job in jobs]]
    flagged = [i for i, g in enumerate(gated) if g.detector_job is not None]
    assert flagged == [i for i, r in enumerate(cluster.expected) if r.ran_detector]
    detected = {i: r.result() for i, r in [(i, detector.remote(DetectorCall(gated[i].detector_job, expires)))
                                           for i in flagged]}
    fused_results = [r.result().result for r in [fused.remote(job) for job in jobs]]
    for i, want in enumerate(cluster.expected):
        split = detected[i].result if i in detected else gated[i].result
        for got in (split, fused_results[i]):
            assert got is not None and got.verdict == want.verdict and got.ran_detector == want.ran_detector
            assert got.p_defective == pytest.approx(want.p_defective, abs=1e-6)
            assert got.class_names == want.class_names and torch.equal(got.labels, want.labels)
            torch.testing.assert_close(got.boxes, want.boxes, atol=1e-4, rtol=0)
            torch.testing.assert_close(got.scores, want.scores, atol=1e-4, rtol=0)
            assert got.original_size == want.original_size


def test_detector_runs_exactly_for_the_flagged_images(cluster: Cluster) -> None:
    url = cluster.service.url
    before = _metrics(url)
    order = [i % len(cluster.images) for i in range(24)]
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda i: _post(url, png(cluster.images[i]))[1], order))
    after = _metrics(url)

    def delta(name: str, **labels: str) -> float:
        key = (f"defectnet_serve_{name}", tuple(sorted(labels.items())))
        return after[key] - before.get(key, 0.0)

    flagged = [cluster.expected[i].ran_detector for i in order]
    assert [a["ran_detector"] for a in answers] == flagged
    assert delta("deployment_batch_size_count", deployment="Detector") == sum(flagged)  # one call per flagged image
    assert delta("deployment_batch_size_count", deployment="Gate") == len(order)
    assert delta("deployment_retries_total", deployment="Detector") == 0
    assert delta("gate_passed_total") == sum(flagged) and delta("gate_images_total") == len(order)
    assert delta("deployment_busy_seconds_total", deployment="Detector") > 0
    assert after[("defectnet_serve_gate_pass_rate", ())] == pytest.approx(
        after[("defectnet_serve_gate_passed_total", ())] / after[("defectnet_serve_gate_images_total", ())])


def test_200_requests_from_8_clients(cluster: Cluster) -> None:
    url = cluster.service.url
    bodies = [png(im) for im in cluster.images]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda k: _post(url, bodies[k % len(bodies)], f"?key=r{k}"), range(200)))
    assert [status for status, _, _ in answers] == [200] * 200
    keys = Counter(record["key"] for _, record, _ in answers)
    assert keys == Counter(f"r{k}" for k in range(200))  # each answered exactly once
    for k, (_, record, _) in enumerate(answers):
        check_record(record)
        assert record["verdict"] == cluster.expected[k % len(bodies)].verdict


def test_broken_inputs_get_4xx_error_records(cluster: Cluster) -> None:
    url = cluster.service.url
    good = png(cluster.images[0])
    cases = [(b"", "", 422, "empty"), (b"GIF89a-not-really", "", 422, "unsupported_format"),
             (good[: len(good) // 3], "", 422, "decode_error"), (png(cluster.images[0][:5, :5]), "", 422, "too_small"),
             (png(cluster.images[0][:8, :300]), "", 422, "bad_aspect_ratio"), (b"\0" * 2_100_000, "", 413, "too_large"),
             (good, "&deadline_ms=never", 400, "unsupported_input")]
    for body, query, status, reason in cases:
        got, record, _ = _post(url, body, f"?key=bad{query}")
        assert (got, record["verdict"], record["error"]["reason"]) == (status, "ERROR", reason), record
        check_record(record)
    got, record, _ = _post(url, good, "?deadline_ms=0.5")
    assert got == 504 and record["error"]["reason"] == "timeout" and record["deadline_missed"]
    check_record(record)
    for path, method, status in (("/v1/inspect", "GET", 405), ("/v2/inspect", "POST", 404)):
        request = urllib.request.Request(url + path, data=b"x" if method == "POST" else None, method=method)
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=30)
        assert info.value.code == status


def test_healthz_and_metrics(cluster: Cluster) -> None:
    with urllib.request.urlopen(f"{cluster.service.url}/healthz", timeout=30) as r:
        health = json.loads(r.read())
    assert r.status == 200 and health["ready"] is True
    assert health["running_replicas"] == {"Ingress": 1, "Gate": 1, "Detector": 2}
    for app in (FUSED_APP, TINY_APP):
        with urllib.request.urlopen(f"{cluster.service.url}/{app}/healthz", timeout=30) as r:
            assert json.loads(r.read())["running_replicas"] == {"Ingress": 1, "Fused": 1}
    samples = _metrics(cluster.service.url)
    for name in ("requests_total", "results_total", "errors_total", "gate_pass_rate", "latency_seconds_count",
                 "deployment_latency_seconds_count", "deployment_batch_size_count", "deployment_busy_seconds_total"):
        assert any(key[0] == f"defectnet_serve_{name}" for key in samples), name
    assert samples[("defectnet_serve_errors_total", (("reason", "too_small"),))] >= 1


def test_overload_gets_503_with_retry_after_and_the_client_retries(cluster: Cluster) -> None:
    from defectnet.serve.client import ServeClient

    url = f"{cluster.service.url}/{TINY_APP}"
    body = png(cluster.images[0])
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda k: _post(url, body, f"?key=o{k}"), range(24)))
    statuses = Counter(status for status, _, _ in answers)
    # some served while the rest are turned away (how many of each depends on the machine's speed)
    assert set(statuses) <= {200, 503} and statuses[503] >= 1 and statuses[200] >= 1, statuses
    for status, record, headers in answers:
        if status == 503:  # from the Ingress (an overloaded record) or Serve's proxy (text); Retry-After either way
            assert headers["Retry-After"] == "1", headers
            if isinstance(record, dict):
                check_record(record)
                assert record["error"]["reason"] == "overloaded"
        else:
            check_record(record)
    assert any(isinstance(r, dict) for s, r, _ in answers if s == 503)  # the Ingress's own back-pressure
    client = ServeClient(url, retries=40, max_backoff_s=0.5)
    with ThreadPoolExecutor(12) as pool:
        records = list(pool.map(lambda k: client.inspect(body, f"c{k}"), range(24)))
    assert [r["verdict"] for r in records] == [cluster.expected[0].verdict] * 24  # every one got through
    assert [r["key"] for r in records] == [f"c{k}" for k in range(24)]


def _detector_replicas() -> set[str]:
    import ray

    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "#Detector#" in a["name"]}


def test_a_detector_replica_killed_mid_load(cluster: Cluster) -> None:
    import ray

    url = cluster.service.url
    flagged = [png(im) for im, r in zip(cluster.images, cluster.expected) if r.ran_detector]
    replicas = _detector_replicas()
    assert len(replicas) == 2
    victim = sorted(replicas)[0]
    answered: list[tuple[int, dict[str, Any]]] = []
    lock = threading.Lock()

    def send(k: int) -> None:
        status, record, _ = _post(url, flagged[k % len(flagged)], f"?key=kill{k}", timeout=120)
        with lock:
            answered.append((status, record))

    n = 60
    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(send, k) for k in range(n)]
        deadline = time.time() + 60
        while len(answered) < 10 and time.time() < deadline:
            time.sleep(0.05)
        with lock:
            at_kill = len(answered)
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        for f in futures:
            f.result(timeout=180)  # none hangs
    assert 10 <= at_kill < n - 10  # killed mid-load
    assert sorted(record["key"] for _, record in answered) == sorted(f"kill{k}" for k in range(n))  # none lost
    retries = _metrics(url)[("defectnet_serve_deployment_retries_total", (("deployment", "Detector"),))]
    print(f"killed {victim} after {at_kill} of {n} answers; Detector calls retried: {retries:g}; statuses: "
          f"{Counter(status for status, _ in answered)}")
    for status, record in answered:
        check_record(record)
        assert status == 200 or (status == 503 and record["error"]["reason"] == "unavailable"), record
    assert sum(status == 200 for status, _ in answered) >= n - 6  # retried on the other replica
    t0 = time.time()
    while time.time() - t0 < 90:  # Serve starts a replacement
        current = _detector_replicas()
        if len(current) == 2 and victim not in current:
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"the killed Detector replica was not replaced: {_detector_replicas()}")
    status, record, _ = _post(url, flagged[0], "?key=after")
    assert status == 200 and record["ran_detector"]


def test_defectnet_infer_server_writes_the_records_batch_mode_writes(cluster: Cluster, serve_engine: Path,
                                                                     tmp_path: Path) -> None:
    from click.testing import CliRunner

    from defectnet.runtime.cli import main as infer

    folder = tmp_path / "line"
    folder.mkdir()
    for i, image in enumerate(cluster.images):
        (folder / f"{i}.png").write_bytes(png(image))
    (folder / "torn.png").write_bytes(png(cluster.images[0])[:200])
    inputs = [str(folder), str(tmp_path / "missing.png")]
    served, local = tmp_path / "served.jsonl", tmp_path / "local.jsonl"
    runner = CliRunner()
    result = runner.invoke(infer, [*inputs, "--server", cluster.service.url, "--out", str(served), "--concurrency",
                                   "4", "--no-progress"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(infer, [*inputs, "--engine", str(serve_engine), "--gate-threshold",
                                   str(cluster.pipeline.gate_threshold), "--out", str(local), "--no-progress"])
    assert result.exit_code == 0, result.output
    a = [json.loads(line) for line in served.read_text().splitlines()]
    b = [json.loads(line) for line in local.read_text().splitlines()]
    assert [r["key"] for r in a] == [r["key"] for r in b] and len(a) == len(cluster.images) + 2
    for x, y in zip(a, b):
        check_record(x)
        assert x["image"] == y["image"] and x["verdict"] == y["verdict"]
        if x["verdict"] == "ERROR":
            assert x["error"] == y["error"]  # torn.png: decode_error; missing.png: not_found
            continue
        assert x["ran_detector"] == y["ran_detector"] and x["original_size"] == y["original_size"]
        assert [d["label"] for d in x["detections"]] == [d["label"] for d in y["detections"]]
        if x["detections"]:
            np.testing.assert_allclose([d["box"] for d in x["detections"]], [d["box"] for d in y["detections"]],
                                       atol=0.01 + 1e-4, rtol=0)  # both rounded to 0.01 px
    result = runner.invoke(infer, [*inputs, "--server", cluster.service.url, "--out", str(served), "--no-progress"])
    assert result.exit_code == 0 and "0 records written now" in result.output  # resumed: nothing left to do


def test_zz_shutdown_leaves_no_ray_process(cluster: Cluster) -> None:
    started = cluster.processes()  # also the replica that replaced the killed one
    assert len(started) >= 5
    t0 = time.perf_counter()
    cluster.service.shutdown()
    while alive(started) and time.perf_counter() - t0 < 60:
        time.sleep(0.5)
    left = alive(started)
    assert left == [], f"Ray processes left after shutdown: {left}"
    import ray

    assert not ray.is_initialized()
