"""The HTTP API of defectnet.serve without a cluster: InspectService with a stand-in model
part (status codes, records, deadlines, limits, health, metrics), the options, the config
file, and the Ingress's retry and back-pressure logic with stand-in handles."""

from __future__ import annotations

import asyncio
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from serve_helpers import check_record, noise_images, png

pytest.importorskip("starlette", reason="needs the serve extra: pip install 'defectnet[serve]'")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray Serve's pydantic v1-style fields

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from starlette.requests import Request  # noqa: E402

from defectnet.errors import ConfigError  # noqa: E402
from defectnet.runtime.inspection.validation import Reason  # noqa: E402
from defectnet.runtime.pipeline import ImageResult  # noqa: E402
from defectnet.runtime.types import Verdict  # noqa: E402
from defectnet.serve.metrics import ServeMetrics  # noqa: E402
from defectnet.serve.options import DETECTOR, GATE, Scaling, ServeOptions  # noqa: E402
from defectnet.serve.service import InspectService, Outcome  # noqa: E402

HAS_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAS_RAY, reason="needs the serve extra: pip install 'defectnet[serve]'")


def _request(method: str, path: str, body: bytes = b"", query: str = "", headers: dict[str, str] | None = None,
             chunk: int = 1 << 20) -> Request:
    chunks = [body[i:i + chunk] for i in range(0, len(body), chunk)] or [b""]

    async def receive() -> dict[str, Any]:
        data = chunks.pop(0) if chunks else b""
        return {"type": "http.request", "body": data, "more_body": bool(chunks)}

    scope = {"type": "http", "method": method, "path": path, "root_path": "", "query_string": query.encode(),
             "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]}
    return Request(scope, receive)


def _result() -> ImageResult:
    return ImageResult(verdict=Verdict.NG, p_defective=0.8, ran_detector=True, boxes=torch.tensor([[1.0, 2.0, 30.0, 40.0]]),
                       scores=torch.tensor([0.9]), labels=torch.tensor([2]), class_names=["stain"],
                       original_size=(180, 300), timings_ms={"gate": 1.0, "detector": 2.0}, batch_size=3)


def _service(infer: Any = None, healthy: bool = True, **options: Any) -> InspectService:
    async def default_infer(image: torch.Tensor, expires_at: float) -> Outcome:
        assert image.dtype == torch.uint8 and image.shape[0] == 3
        return Outcome(result=_result())

    async def health() -> tuple[bool, dict[str, Any]]:
        return healthy, {"running_replicas": {"Gate": int(healthy)}}

    opts = ServeOptions(engine="/nowhere", **options)
    return InspectService(opts, infer or default_infer, health, ServeMetrics([GATE, DETECTOR], [r.value for r in Reason]))


def _call(service: InspectService, request: Request) -> tuple[int, dict[str, Any], Any]:
    response = asyncio.run(service(request))
    body = json.loads(response.body) if response.media_type == "application/json" else response.body.decode()
    return response.status_code, body, response.headers


def test_verdict_record() -> None:
    status, record, _ = _call(_service(), _request("POST", "/v1/inspect", png(noise_images(1)[0]), "key=line3%2F17"))
    assert status == 200
    check_record(record)
    assert record["key"] == "line3/17" and record["verdict"] == "NG" and record["batch_size"] == 3
    assert record["detections"] == [{"box": [1.0, 2.0, 30.0, 40.0], "score": 0.9, "label": 2, "class_name": "stain"}]
    assert record["image"].startswith("<") and record["deadline_ms"] is None and not record["deadline_missed"]


@pytest.mark.parametrize(("body", "query", "status", "reason"), [
    (b"", "", 422, "empty"),
    (b"not an image at all", "", 422, "unsupported_format"),
    (png(noise_images(1)[0])[:300], "", 422, "decode_error"),
    (png(noise_images(1)[0][:4, :4]), "", 422, "too_small"),
    (png(noise_images(1)[0]), "deadline_ms=soon", 400, "unsupported_input"),
    (png(noise_images(1)[0]), "deadline_ms=-5", 400, "unsupported_input"),
])
def test_bad_requests_get_error_records(body: bytes, query: str, status: int, reason: str) -> None:
    got, record, _ = _call(_service(), _request("POST", "/v1/inspect", body, f"key=k&name=cam1%2Fa.png&{query}"))
    assert got == status
    check_record(record)
    assert record["verdict"] == "ERROR" and record["error"]["reason"] == reason and record["key"] == "k"
    assert record["image"] == "cam1/a.png"  # the name the client gave
    assert reason == "unsupported_input" or record["error"]["message"].startswith("cam1/a.png: ")


def test_body_limit_413() -> None:
    service = _service(max_body_bytes=1000)
    body = png(noise_images(1)[0])
    declared = _request("POST", "/v1/inspect", body, headers={"Content-Length": str(len(body))})
    streamed = _request("POST", "/v1/inspect", body, chunk=256)  # no Content-Length: counted while read
    for request in (declared, streamed):
        status, record, _ = _call(service, request)
        assert status == 413
        check_record(record)
        assert record["error"]["reason"] == "too_large" and "1,000 bytes" in record["error"]["message"]


def test_deadline_and_server_timeout_504() -> None:
    async def slow(image: torch.Tensor, expires_at: float) -> Outcome:
        await asyncio.sleep(5)
        raise AssertionError("not reached")

    service = _service(slow, request_timeout_s=0.3)
    status, record, _ = _call(service, _request("POST", "/v1/inspect", png(noise_images(1)[0]), "deadline_ms=50"))
    assert status == 504
    check_record(record)
    assert record["error"]["reason"] == "timeout" and record["deadline_missed"] and record["deadline_ms"] == 50
    assert record["latency_ms"] < 1000 and "50 ms deadline" in record["error"]["message"]
    status, record, _ = _call(service, _request("POST", "/v1/inspect", png(noise_images(1)[0])))
    assert status == 504 and "0.3 s request timeout" in record["error"]["message"]
    assert record["latency_ms"] < 2000


@pytest.mark.parametrize(("reason", "status"), [(Reason.OVERLOADED, 503), (Reason.UNAVAILABLE, 503),
                                                 (Reason.BACKEND_ERROR, 500), (Reason.TIMEOUT, 504)])
def test_model_failures(reason: Reason, status: int) -> None:
    async def fail(image: torch.Tensor, expires_at: float) -> Outcome:
        return Outcome(reason=reason, message=f"stand-in {reason.value}")

    got, record, headers = _call(_service(fail, retry_after_s=2.5), _request("POST", "/v1/inspect",
                                                                             png(noise_images(1)[0])))
    assert got == status
    check_record(record)
    assert record["error"] == {"reason": reason.value, "message": f"stand-in {reason.value}"}
    assert headers.get("retry-after") == ("3" if status == 503 else None)


def test_a_bug_in_the_model_part_is_an_internal_error_record() -> None:
    async def bug(image: torch.Tensor, expires_at: float) -> Outcome:
        raise KeyError("oops")

    status, record, _ = _call(_service(bug), _request("POST", "/v1/inspect", png(noise_images(1)[0])))
    assert status == 500 and record["error"]["reason"] == "internal_error" and "KeyError" in record["error"]["message"]


def test_routes_health_and_metrics() -> None:
    service = _service()
    assert _call(service, _request("GET", "/v1/inspect"))[0] == 405
    assert _call(service, _request("GET", "/nowhere"))[0] == 404
    assert _call(service, _request("GET", "/healthz")) [:2] == (200, {"ready": True, "running_replicas": {"Gate": 1}})
    assert _call(_service(healthy=False), _request("GET", "/healthz"))[0] == 503
    _call(service, _request("POST", "/v1/inspect", png(noise_images(1)[0])))
    _call(service, _request("POST", "/v1/inspect", b"junk"))
    service.metrics.record_gate(True)
    service.metrics.record_gate(False)
    service.metrics.record_call(GATE, 0.02, 4, 40.0)
    status, text, headers = _call(service, _request("GET", "/metrics"))
    assert status == 200 and headers["content-type"].startswith("text/plain")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    p = "defectnet_serve_"
    assert samples[(f"{p}requests_total", (("code", "200"),))] == 1
    assert samples[(f"{p}requests_total", (("code", "422"),))] == 1
    assert samples[(f"{p}results_total", (("verdict", "NG"),))] == 1
    assert samples[(f"{p}errors_total", (("reason", "unsupported_format"),))] == 1
    assert samples[(f"{p}errors_total", (("reason", "overloaded"),))] == 0  # every reason from 0
    assert samples[(f"{p}gate_pass_rate", ())] == 0.5
    assert samples[(f"{p}deployment_busy_seconds_total", (("deployment", GATE),))] == pytest.approx(0.01)
    service.metrics.record_call(GATE, 0.05, 2, 30.0)  # waited 50 - 30 ms for its batch of 2
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(service.metrics.text()) for s in family.samples}
    assert samples[(f"{p}deployment_wait_seconds_total", (("deployment", GATE),))] == pytest.approx(0.02)
    assert samples[(f"{p}deployment_batch_size_count", (("deployment", DETECTOR),))] == 0
    assert samples[(f"{p}in_flight", ())] == 0


def test_options_validation_and_round_trip() -> None:
    opts = ServeOptions(engine="/e", mode="fused", fused=Scaling(min_replicas=0, max_replicas=3, cpus=0.5))
    assert ServeOptions.from_args(json.loads(json.dumps(opts.to_args()))) == opts
    assert list(opts.deployments()) == ["Ingress", "Fused"] and opts.cpus_needed() == 1.5
    assert opts.fused.deployment_options()["autoscaling_config"] == {
        "min_replicas": 0, "max_replicas": 3, "target_ongoing_requests": 2.0}
    assert str(opts.fused) == "0-3" and str(Scaling(replicas=2)) == "2"
    for bad, match in (({"mode": "pipelined"}, "mode"), ({"max_batch_size": 0}, "max_batch_size"),
                       ({"backend": "tvm"}, "backend"), ({"max_queued": True}, "max_queued"),
                       ({"threads": -1}, "threads"), ({"gate_threshold": -0.1}, "gate_threshold")):
        with pytest.raises(ConfigError, match=match):
            ServeOptions(engine="/e", **bad)
    with pytest.raises(ConfigError, match="max_replicas"):
        Scaling(min_replicas=3, max_replicas=2)
    with pytest.raises(ConfigError, match="unknown defectnet.serve option"):
        ServeOptions.from_args({"engine": "/e", "max_batch": 4})
    with pytest.raises(ConfigError, match="unknown gate scaling option"):
        ServeOptions.from_args({"engine": "/e", "gate": {"replica": 2}})


def test_replicas_option() -> None:
    from defectnet.serve.cli import parse_replicas

    assert parse_replicas("3", 1.0, "gate") == Scaling(replicas=3)
    assert parse_replicas("0-4", 0.5, "gate") == Scaling(replicas=1, min_replicas=0, max_replicas=4, cpus=0.5)
    import click

    for bad in ("x", "4-2", "0", "-1"):
        with pytest.raises(click.BadParameter):
            parse_replicas(bad, 1.0, "detector")


@needs_ray
def test_config_file_is_a_serve_config_of_the_same_application(tmp_path: Path) -> None:
    import yaml
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve.schema import ServeDeploySchema

    from defectnet.serve.app import app_builder
    from defectnet.serve.config_file import IMPORT_PATH, write_serve_config

    for mode, cluster in (("split", False), ("fused", True)):
        opts = ServeOptions(engine="/models/engine", mode=mode, detector=Scaling(min_replicas=1, max_replicas=3))
        path = write_serve_config(tmp_path / f"{mode}.yaml", opts, host="0.0.0.0" if cluster else "127.0.0.1",
                                  port=8123, cluster=cluster)
        config = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))  # what serve run/deploy check
        (app,) = config.applications
        assert app.import_path == IMPORT_PATH and config.http_options.port == 8123
        assert config.proxy_location.value == ("EveryNode" if cluster else "HeadOnly")
        assert app.args["loopback"] is (not cluster)
        built = call_user_app_builder_with_args_if_necessary(app_builder, app.args)  # as Serve builds it
        names = {d.name for d in app.deployments}
        assert names == set(opts.deployments())
        ingress = built._bound_deployment
        assert ingress.name == "Ingress"
        models = {arg._bound_deployment.name for arg in ingress.init_args[1:]}
        assert models == names - {"Ingress"}
        entries = {d.name: d for d in app.deployments}
        if mode == "split":
            assert entries["Detector"].autoscaling_config["max_replicas"] == 3  # type: ignore[index]
        assert entries["Ingress"].backpressure_config.retry_after_s == 1.0


@needs_ray
def test_kuberay_example_deploys_the_same_application() -> None:
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from defectnet.serve.config_file import IMPORT_PATH

    path = Path(__file__).resolve().parents[2] / "deploy" / "kuberay" / "rayservice.yaml"
    service = yaml.safe_load(path.read_text())
    assert service["kind"] == "RayService"
    config = ServeDeploySchema.model_validate(yaml.safe_load(service["spec"]["serveConfigV2"]))
    (app,) = config.applications
    assert app.import_path == IMPORT_PATH
    opts = ServeOptions.from_args(app.args)
    assert not opts.loopback and {d.name for d in app.deployments} == set(opts.deployments())


# ----------------------------------------------------------------- the Ingress's model part
class _Response:
    def __init__(self, outcome: Any) -> None:
        self.outcome = outcome

    def __await__(self) -> Any:
        async def resolve() -> Any:
            if isinstance(self.outcome, BaseException):
                raise self.outcome
            return self.outcome

        return resolve().__await__()

    def cancel(self) -> None:
        pass


class _Handle:
    """A DeploymentHandle stand-in that answers from a script (one entry per call)."""

    def __init__(self, script: list[Any]) -> None:
        self.script = script
        self.payloads: list[Any] = []

    def options(self, **kwargs: Any) -> _Handle:
        assert kwargs == {"method_name": "infer"}
        return self

    def remote(self, payload: Any) -> _Response:
        self.payloads.append(payload)
        return _Response(self.script.pop(0))


@needs_ray
def test_ingress_retries_dead_replicas_and_maps_back_pressure() -> None:
    import time

    import ray
    from ray.serve.exceptions import BackPressureError

    from defectnet.serve.app import Ingress, StageReply

    ok = StageReply(result=_result(), batch_size=2, batch_ms=10.0)
    args = ServeOptions(engine="/e", loopback=False).to_args()
    image = torch.from_numpy(noise_images(1)[0]).permute(2, 0, 1).contiguous()

    def run(gate: list[Any], detector: list[Any], expires_in: float = 30.0) -> tuple[Outcome, Any, _Handle, _Handle]:
        g, d = _Handle(gate), _Handle(detector)
        ingress = Ingress.func_or_class(args, g, d)
        outcome = asyncio.run(ingress._infer(image, time.time() + expires_in))
        return outcome, ingress, g, d

    # a gate-negative image: the detector is not called
    outcome, ingress, g, d = run([ok], [])
    assert outcome.result is not None and len(g.payloads) == 1 and d.payloads == []
    # a positive: the ObjectRef the gate returned goes to the detector; a dead detector replica is retried
    positive = StageReply(detector_job="ref-1", batch_size=1, batch_ms=5.0)
    outcome, ingress, g, d = run([positive], [ray.exceptions.ActorDiedError(), ok])
    assert outcome.result is not None and [p.job for p in d.payloads] == ["ref-1", "ref-1"]
    assert "deployment_retries_total{deployment=\"Detector\"} 1.0" in ingress.metrics.text()
    # the gate's features were lost: through the gate again
    lost = StageReply(reason=Reason.UNAVAILABLE.value, message="lost")
    outcome, _, g, d = run([positive, StageReply(detector_job="ref-2")], [lost, ok])
    assert outcome.result is not None and len(g.payloads) == 2 and d.payloads[-1].job == "ref-2"
    # a full queue is an 'overloaded' answer at once (the client retries after Retry-After)
    outcome, _, g, d = run([BackPressureError(num_queued_requests=64, max_queued_requests=64)], [])
    assert outcome.reason == Reason.OVERLOADED and "Gate" in outcome.message and len(g.payloads) == 1
    # replicas that stay dead: 'unavailable' once the deadline leaves no time for another try
    outcome, _, g, d = run([ray.exceptions.ActorDiedError()] * 50, [], expires_in=0.3)
    assert outcome.reason == Reason.UNAVAILABLE and 1 < len(g.payloads) < 50
    # fused: one call; the gate pass rate is counted from the result
    fused_args = ServeOptions(engine="/e", loopback=False, mode="fused").to_args()
    f = _Handle([ok])
    fused_ingress = Ingress.func_or_class(fused_args, f)
    outcome = asyncio.run(fused_ingress._infer(image, time.time() + 30))
    assert outcome.result is not None and len(f.payloads) == 1
    assert "defectnet_serve_gate_passed_total 1.0" in fused_ingress.metrics.text()
    # an error reply of the model (one bad image) is passed on as is
    bad = StageReply(reason=Reason.BACKEND_ERROR.value, message="the backend failed")
    outcome, _, _, _ = run([bad], [])
    assert outcome.reason == Reason.BACKEND_ERROR and outcome.message == "the backend failed"
