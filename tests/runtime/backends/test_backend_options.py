"""BackendOptions (validated on creation) and make_backend, the one backend factory that
Pipeline.from_engine, Inspector.from_engine, the bench and export verification build through."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from runtime_helpers import tiny_model

from defectnet.errors import ConfigError, EngineError
from defectnet.runtime import Inspector, OnnxRuntimeBackend, Pipeline, TorchBackend, load_engine
from defectnet.runtime.backends import BackendOptions, make_backend


def test_defaults_and_normalised_providers() -> None:
    o = BackendOptions()
    assert (o.threads, o.device, o.providers, o.allow_spinning) == (0, "cpu", "cpu", False)
    assert BackendOptions(providers=None).providers == "cpu"
    assert BackendOptions(providers="auto").provider_list == "auto"
    both = ("CUDAExecutionProvider", "CPUExecutionProvider")
    for given in (list(both), both, "CUDAExecutionProvider, CPUExecutionProvider"):
        o = BackendOptions(providers=given)
        assert o.providers == both and o.provider_list == list(both)
    assert BackendOptions(device="cuda:1", threads=3).device == "cuda:1"
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.threads = 2  # type: ignore[misc]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"threads": -1}, "threads must be an integer >= 0"),
    ({"threads": 1.5}, "threads must be an integer >= 0"),
    ({"threads": True}, "threads must be an integer >= 0"),
    ({"device": "gpu"}, "device must be 'cpu', 'cuda' or 'cuda:N'"),
    ({"device": "cuda:x"}, "device must be"),
    ({"device": ""}, "device must be"),
    ({"providers": "cuda"}, "providers must be 'cpu', 'auto' or ONNX Runtime provider names"),
    ({"providers": []}, "providers must be"),
    ({"providers": ["CPUExecutionProvider", ""]}, "providers must be"),
    ({"providers": 3}, "providers must be"),
    ({"allow_spinning": "yes"}, "allow_spinning must be True or False"),
])
def test_bad_options_are_config_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        BackendOptions(**kwargs)


def _session_settings(backend: OnnxRuntimeBackend) -> set[tuple[int, str]]:
    backend.load()
    return {(s.get_session_options().intra_op_num_threads,
             s.get_session_options().get_session_config_entry("session.intra_op.allow_spinning"))
            for s in backend._sessions.values()}


def test_make_backend_passes_the_options_to_onnx_runtime(run_engine: Path) -> None:
    engine = load_engine(run_engine)
    backend = make_backend(engine, "onnxruntime", BackendOptions(threads=1, allow_spinning=True))
    assert isinstance(backend, OnnxRuntimeBackend)
    assert _session_settings(backend) == {(1, "1")} and backend.providers == ["CPUExecutionProvider"]
    default = make_backend(engine)
    assert isinstance(default, OnnxRuntimeBackend) and _session_settings(default) == {(0, "0")}
    with pytest.raises(EngineError, match="unknown backend 'tflite'"):
        make_backend(engine, "tflite")
    with pytest.raises(ConfigError, match="options must be a BackendOptions"):
        make_backend(engine, "onnxruntime", {"threads": 1})  # type: ignore[arg-type]


def test_pipeline_and_inspector_build_through_the_factory(run_engine: Path) -> None:
    options = BackendOptions(threads=1)
    pipe = Pipeline.from_engine(run_engine, backend_options=options)
    assert isinstance(pipe.backend, OnnxRuntimeBackend) and _session_settings(pipe.backend) == {(1, "0")}
    with Inspector.from_engine(run_engine, backend_options=options, gate_threshold=0.25, batch_size=2) as insp:
        backend = insp.pipeline.backend
        assert isinstance(backend, OnnxRuntimeBackend) and _session_settings(backend) == {(1, "0")}
        assert insp.pipeline.gate_threshold == 0.25 and insp.batch_size == 2


def test_torch_threads_are_process_wide_and_never_changed_behind_the_callers_back() -> None:
    model = tiny_model()
    before = torch.get_num_threads()
    backend = make_backend(model, "torch", BackendOptions(threads=before))  # what the process runs: fine
    assert isinstance(backend, TorchBackend) and backend.device == torch.device("cpu")
    with pytest.raises(ConfigError, match=rf"torch.set_num_threads\({before + 1}\) once at start-up"):
        make_backend(model, "torch", BackendOptions(threads=before + 1))
    assert torch.get_num_threads() == before
    with pytest.raises(ConfigError, match="runs only on the torch backend"):
        make_backend(model, "onnxruntime")


def test_torch_backend_of_an_engine_checks_threads_too(run_engine: Path) -> None:
    engine = load_engine(run_engine)
    with pytest.raises(ConfigError, match="one thread pool per process"):
        Pipeline.from_engine(engine, "torch", backend_options=BackendOptions(threads=torch.get_num_threads() + 1))


def test_cli_rejects_bad_providers_and_devices_cleanly(run_engine: Path, tmp_path: Path) -> None:
    from defectnet.runtime.cli import main

    for flag, value, message in (("--providers", "cuda", "providers must be"), ("--device", "gpu0", "device must")):
        result = CliRunner().invoke(main, [str(tmp_path), "--engine", str(run_engine), "--out",
                                           str(tmp_path / "r.jsonl"), flag, value])
        assert result.exit_code == 1 and f"error: {message}" in result.output, result.output
