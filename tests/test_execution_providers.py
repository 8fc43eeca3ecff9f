"""Execution providers: a preference list tried in order with onnxruntime-genai, falling back with the reason
kept, refusing with everything tried when none loads; the provider in use is reported in /readyz, /v1/models,
/metrics and (for a fallback) telemetry. Real tiny ONNX models, real HTTP."""
from __future__ import annotations

import pathlib
import threading
import time

import httpx
import onnxruntime_genai as og
import pytest
import uvicorn
from typer.testing import CliRunner

from control_plane.procs import free_port
from edge_agent.agent import ExecutionProviderInfo, reporting_fallbacks
from edge_agent.config import AgentConfig
from edge_agent.engine import OgaEngine
from edge_agent.http_api import build_app
from edge_agent.metrics import AgentMetrics
from edge_agent.runtime import Runtime
from edge_agent.serving import Serving
from edge_agent.state import AgentState
from cli.main import app
from slmops.errors import ConfigError, ModelLoadError
from slmops.manifest import manifest_for_dir

no_cuda = pytest.mark.skipif(og.is_cuda_available(), reason="needs a machine where cuda is unavailable")


def manifest(model_dir):
    return manifest_for_dir(model_dir, "tiny", "v1", "int4")


@no_cuda
def test_cuda_then_cpu_falls_back_to_cpu_with_the_reason_kept(tiny_int4, caplog):
    with caplog.at_level("WARNING", logger="slmops.agent.engine"):
        e = OgaEngine(tiny_int4, manifest(tiny_int4), providers=("cuda", "cpu"))
    assert e.provider == "cpu"
    assert [p for p, _ in e.fallbacks] == ["cuda"] and "cuda" in e.fallbacks[0][1].lower()
    assert "execution provider cuda cannot load tiny@v1" in caplog.text and "trying cpu" in caplog.text
    assert "".join(e.generate(e.chat.render([{"role": "user", "content": "Hi"}]), _params()))


@no_cuda
def test_no_provider_that_loads_is_a_load_error_naming_what_was_tried(tiny_int4):
    with pytest.raises(ModelLoadError) as err:
        OgaEngine(tiny_int4, manifest(tiny_int4), providers=("cuda", "dml"))
    msg = str(err.value)
    assert "on any execution provider of cuda,dml" in msg and "cuda: " in msg and "dml: " in msg


def test_cpu_alone_has_no_fallbacks(tiny_int4):
    e = OgaEngine(tiny_int4, manifest(tiny_int4))
    assert (e.provider, e.fallbacks) == ("cpu", [])


@pytest.mark.parametrize("providers,match", [
    (("tpu", "cpu"), "unknown execution provider 'tpu'; known: cpu, cuda"),
    (("cpu", "cpu"), "names a provider twice"),
    ((), "needs a preference list"),
    ("cuda,cpu", "needs a preference list"),
])
def test_bad_provider_lists_are_config_errors(tmp_path, providers, match):
    with pytest.raises(ConfigError, match=match):
        AgentConfig(control_plane="127.0.0.1:1", data_dir=tmp_path, insecure_loopback_dev=True,
                    execution_providers=providers)


def test_cli_flag_parses_and_refuses_an_unknown_provider(tmp_path):
    assert AgentConfig.parse_providers(" CUDA, cpu") == ("cuda", "cpu")
    r = CliRunner().invoke(app, ["agent", "run", "--control-plane", "127.0.0.1:1", "--data-dir", str(tmp_path),
                                 "--insecure-loopback-dev", "--execution-providers", "cuda,tpu"])
    assert r.exit_code != 0
    assert "unknown execution provider 'tpu'" in r.output


THREADS_PROBE = """
import pathlib, sys, psutil
from edge_agent.engine import OgaEngine
from slmops.manifest import manifest_for_dir
d = pathlib.Path(sys.argv[1])
OgaEngine(d, manifest_for_dir(d, "tiny", "v1", "int4"), threads=int(sys.argv[2]))
print(psutil.Process().num_threads())
"""


def test_inference_threads_reach_onnxruntime_and_bad_counts_are_refused(tiny_int4, tmp_path):
    """onnxruntime's intra-op pool has threads - 1 workers besides the caller: a process that loads one engine with
    4 threads has 3 more OS threads than one that loads it with 1 (each load in its own process)."""
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[1]
    count = {t: int(subprocess.run([sys.executable, "-c", THREADS_PROBE, str(tiny_int4), str(t)], cwd=root,
                                   capture_output=True, text=True, check=True, timeout=120).stdout.split()[-1])
             for t in (1, 4)}
    assert count[4] - count[1] == 3
    from slmops.threads import cpus_available, default_threads
    assert OgaEngine(tiny_int4, manifest(tiny_int4)).threads == cpus_available() >= 1   # 0 = one per core
    # (CPUs allowed, logical, physical): SMT siblings do not count; an affinity mask narrows it; never 0
    assert [default_threads(*c) for c in ((2, 2, 2), (8, 8, 4), (4, 8, 4), (1, 2, 1), (3, 8, 0))] == [2, 4, 2, 1, 3]
    for bad in (-1, 257):
        with pytest.raises(ConfigError, match=f"inference_threads {bad} must be between 0"):
            AgentConfig(control_plane="127.0.0.1:1", data_dir=tmp_path, insecure_loopback_dev=True,
                        inference_threads=bad)
    r = CliRunner().invoke(app, ["agent", "run", "--control-plane", "127.0.0.1:1", "--data-dir", str(tmp_path),
                                 "--insecure-loopback-dev", "--inference-threads", "-2"])
    assert r.exit_code != 0 and "inference_threads -2 must be between 0" in r.output


def _params():
    from edge_agent.engine import SamplingParams
    return SamplingParams(max_new_tokens=4)


@pytest.fixture
def fallback_server(tiny_int4, tmp_path):
    """The agent's HTTP API (real uvicorn) serving an engine loaded with the preference cuda,cpu."""
    state = AgentState(tmp_path / "agent.db")
    runtime = Runtime(2, 4)
    metrics = AgentMetrics(runtime, state)
    metrics.registry.register(ExecutionProviderInfo(runtime))
    load = reporting_fallbacks(lambda path, m: OgaEngine(path, m, providers=("cuda", "cpu")), state)
    m = manifest(tiny_int4)
    runtime.swap(load(tiny_int4, m), m)
    serving = Serving(runtime, state, 256, 64, request_timeout_s=30)
    server = uvicorn.Server(uvicorn.Config(build_app(serving, (), metrics.render), host="127.0.0.1",
                                           port=free_port(), log_level="warning"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{server.config.port}", state
    server.should_exit = True
    t.join(10)


@no_cuda
def test_the_provider_in_use_is_reported_over_http_and_in_telemetry(fallback_server):
    url, state = fallback_server
    ready = httpx.get(url + "/readyz").json()
    assert ready["provider"] == "cpu"
    assert [f["provider"] for f in ready["provider_fallbacks"]] == ["cuda"]
    models = httpx.get(url + "/v1/models").json()["data"]
    assert [(d["id"], d["execution_provider"]) for d in models] == [("tiny", "cpu")]
    assert 'slmops_agent_execution_provider_info{model="tiny@v1",provider="cpu"} 1.0' in httpx.get(
        url + "/metrics").text
    r = httpx.post(url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}],
                                                       "max_tokens": 3})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] > 0
    events = [e for e in state.pending(100) if e["name"] == "execution_provider_fallback"]
    assert len(events) == 1
    assert events[0]["outcome"] == "cpu" and events[0]["detail"].startswith("cuda unavailable: ")
    assert events[0]["model"] == "tiny@v1"


@no_cuda
@pytest.mark.e2e
def test_agent_process_with_cuda_then_cpu_serves_on_cpu(cluster, tiny_int4):
    cluster.start_cp()
    m = cluster.publish(tiny_int4, "tiny", "v1")
    cluster.admin.set_desired("tiny", "v1")
    _, port = cluster.start_agent("a1", extra=["--execution-providers", "cuda,cpu", "--probation", "0"])
    cluster.wait_serving("a1", m.ref, timeout=90)
    ready = httpx.get(f"http://127.0.0.1:{port}/readyz").json()
    assert ready["provider"] == "cpu" and ready["provider_fallbacks"][0]["provider"] == "cuda"
    assert httpx.get(f"http://127.0.0.1:{port}/v1/models").json()["data"][0]["execution_provider"] == "cpu"
    assert 'provider="cpu"} 1.0' in httpx.get(f"http://127.0.0.1:{port}/metrics").text
