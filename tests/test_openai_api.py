"""The agent's OpenAI-compatible API over real HTTP (uvicorn on loopback) with a real ONNX model, driven by
the official `openai` client."""
from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from control_plane.procs import free_port
from edge_agent.engine import OgaEngine
from edge_agent.http_api import build_app
from edge_agent.http_server import make_server
from edge_agent.metrics import AgentMetrics
from edge_agent.runtime import NotReady, QueueFull, Runtime
from edge_agent.serving import Serving
from edge_agent.state import AgentState
from slmops.manifest import manifest_for_dir


class Server:
    def __init__(self, tmp, engine_dir=None, api_keys=(), max_concurrent=2, max_queue=4, max_prompt_tokens=256,
                 precision="int4", adapters=(), body_timeout_s=30.0, batch_wait_s=0.01):
        self.state = AgentState(tmp / "agent.db")
        self.runtime = Runtime(max_concurrent, max_queue)
        self.metrics = AgentMetrics(self.runtime, self.state)
        if engine_dir is not None:
            m = manifest_for_dir(engine_dir, "tiny", "v1", precision, adapters=tuple(adapters))
            self.runtime.swap(OgaEngine(engine_dir, m, max_batch=max_concurrent, batch_wait_s=batch_wait_s,
                                        on_batch=self.metrics.observe_batch), m)
        self.serving = Serving(self.runtime, self.state, max_prompt_tokens, 64, request_timeout_s=30)
        self.port = free_port()
        self.server = make_server(build_app(self.serving, api_keys, self.metrics.render,
                                            body_timeout_s=body_timeout_s), "127.0.0.1",
                                  self.port)   # the agent's own server and limits (edge_agent/http_server.py)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}"

    def client(self, key="none") -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=30)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def server(tiny_int4, tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("agent"), tiny_int4)
    yield s
    s.stop()


def ask(content="What does error E17 mean on the Kestrel K2?"):
    return [{"role": "user", "content": content}]


def test_chat_completion(server):
    r = server.client().chat.completions.create(model="tiny", messages=ask(), max_tokens=12)
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 0 and 0 < r.usage.completion_tokens <= 12
    assert r.model == "tiny@v1"


def test_greedy_is_deterministic_and_seeded_sampling_repeats(server):
    c = server.client()
    a = c.chat.completions.create(model="tiny", messages=ask(), max_tokens=12).choices[0].message.content
    b = c.chat.completions.create(model="tiny", messages=ask(), max_tokens=12).choices[0].message.content
    assert a == b
    s1 = c.chat.completions.create(model="tiny", messages=ask(), max_tokens=12, temperature=1.0, seed=7)
    s2 = c.chat.completions.create(model="tiny", messages=ask(), max_tokens=12, temperature=1.0, seed=7)
    assert s1.choices[0].message.content == s2.choices[0].message.content


def test_streaming_matches_non_streaming(server):
    c = server.client()
    full = c.chat.completions.create(model="tiny", messages=ask(), max_tokens=16).choices[0].message.content
    pieces, finish = [], None
    for chunk in c.chat.completions.create(model="tiny", messages=ask(), max_tokens=16, stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
    assert "".join(pieces) == full
    assert finish in ("stop", "length")


def test_sse_ends_with_done(server):
    with httpx.stream("POST", server.url + "/v1/chat/completions",
                      json={"messages": ask(), "max_tokens": 4, "stream": True}) as r:
        lines = [ln for ln in r.iter_lines() if ln]
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[-2][6:])["usage"]["completion_tokens"] > 0


def test_completions_and_models(server):
    c = server.client()
    r = c.completions.create(model="tiny", prompt="<|im_start|>user\nHello<|im_end|>\n", max_tokens=5)
    assert r.choices[0].text is not None and r.usage.completion_tokens > 0
    models = c.models.list()
    assert [m.id for m in models.data] == ["tiny"]


def test_stop_sequence_cuts_output(server):
    c = server.client()
    full = c.chat.completions.create(model="tiny", messages=ask(), max_tokens=24).choices[0].message.content
    word = full.split()[2]
    cut = c.chat.completions.create(model="tiny", messages=ask(), max_tokens=24, stop=[word])
    assert word not in cut.choices[0].message.content
    assert full.startswith(cut.choices[0].message.content)
    assert cut.choices[0].finish_reason == "stop"


def test_unknown_model_is_404(server):
    with pytest.raises(openai.NotFoundError) as e:
        server.client().chat.completions.create(model="gpt-9", messages=ask())
    assert "gpt-9" in str(e.value)


@pytest.mark.parametrize("kwargs,match", [
    (dict(temperature=5), "temperature"), (dict(max_tokens=-1), "max_tokens"), (dict(max_tokens=10**9), "max_tokens"),
    (dict(top_p=2), "top_p"), (dict(n=5), "'n' must be between 1 and 4"), (dict(messages=[]), "messages"),
    (dict(messages=[{"role": "robot", "content": "x"}]), "role"),
    (dict(messages=[{"role": "user", "content": ""}]), "empty"),
])
def test_invalid_requests_are_400_with_the_field_named(server, kwargs, match):
    args = {"model": "tiny", "messages": ask(), **kwargs}
    with pytest.raises(openai.BadRequestError) as e:
        server.client().chat.completions.create(**args)
    assert match in str(e.value)


def test_streaming_errors_before_the_first_piece_are_real_statuses(server):
    c = server.client()
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="gpt-9", messages=ask(), stream=True)
    with pytest.raises(openai.APIStatusError) as e:
        c.chat.completions.create(model="tiny", messages=ask("word " * 2000), stream=True)
    assert e.value.status_code == 413
    assert server.runtime._running == 0 and server.runtime.queue_depth == 0


def test_huge_prompt_is_413(server):
    with pytest.raises(openai.APIStatusError) as e:
        server.client().chat.completions.create(model="tiny", messages=ask("word " * 2000))
    assert e.value.status_code == 413 and "limit" in str(e.value)


@pytest.mark.parametrize("raw", [b"{not json", b"\xff\xfe\x00", b"[]", b'"x"', b"null"])
def test_malformed_bodies_are_400(server, raw):
    r = httpx.post(server.url + "/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"]["message"]


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
                           lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
                           max_leaves=8)
bodies = st.fixed_dictionaries({}, optional={
    "model": st.one_of(st.just("tiny"), st.text(max_size=5), json_values),
    "messages": st.one_of(st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "x"]),
                                                           "content": st.one_of(st.text(max_size=20), json_values)}),
                                   max_size=3), json_values),
    "max_tokens": st.one_of(st.integers(-5, 8), json_values), "temperature": json_values, "top_p": json_values,
    "stop": json_values, "stream": st.one_of(st.booleans(), json_values), "seed": json_values})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
          derandomize=True)
@given(body=bodies)
def test_fuzzed_bodies_never_give_5xx(server, body):
    r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=30)
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        assert r.json()["error"]["message"]


def test_server_still_serves_after_bad_input(server):
    httpx.post(server.url + "/v1/chat/completions", content=b"\x00\x01")
    assert server.client().chat.completions.create(model="tiny", messages=ask(), max_tokens=3).choices


def test_api_key_required_when_configured(tiny_int4, tmp_path):
    s = Server(tmp_path, tiny_int4, api_keys=("secret-1",))
    try:
        with pytest.raises(openai.AuthenticationError):
            s.client("wrong").chat.completions.create(model="tiny", messages=ask(), max_tokens=2)
        assert s.client("secret-1").chat.completions.create(model="tiny", messages=ask(), max_tokens=2).choices
    finally:
        s.stop()


def test_not_ready_is_503(tmp_path):
    s = Server(tmp_path, None)
    try:
        assert httpx.get(s.url + "/readyz").status_code == 503
        assert httpx.get(s.url + "/healthz").status_code == 200
        with pytest.raises(openai.APIStatusError) as e:
            s.client().chat.completions.create(model="tiny", messages=ask())
        assert e.value.status_code == 503
    finally:
        s.stop()


def test_abandoned_stream_releases_its_slot(tiny_int4, tmp_path):
    s = Server(tmp_path, tiny_int4, max_concurrent=1, max_queue=1)
    try:
        with httpx.stream("POST", s.url + "/v1/chat/completions",
                          json={"messages": ask(), "max_tokens": 64, "stream": True}) as r:
            next(r.iter_lines())  # read one event, then walk away
        deadline = time.monotonic() + 10
        while s.runtime._running and time.monotonic() < deadline:
            time.sleep(0.05)
        assert s.runtime._running == 0
        assert s.client().chat.completions.create(model="tiny", messages=ask(), max_tokens=3).choices
    finally:
        s.stop()


def test_runtime_admission_is_bounded():
    rt = Runtime(max_concurrent=1, max_queue=1)
    with pytest.raises(NotReady):
        with rt.admit(0.1):
            pass
    rt.swap(object(), manifest=None)
    with rt.admit(1):
        with pytest.raises(QueueFull, match="no generation slot"):
            with rt.admit(0.05):
                pass
    with rt.admit(1) as slot:
        assert slot.inflight == 1


def test_a_client_hanging_up_mid_body_is_not_a_model_failure(server, caplog):
    """Headers promise 1000 bytes, 10 arrive, the socket closes: no 'generation failed' error, next request fine."""
    import logging
    import socket

    with caplog.at_level(logging.INFO, logger="slmops"):
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 1000\r\n\r\n{\"messages\"")
        deadline = time.monotonic() + 10
        while "disconnected before sending" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
    assert "disconnected before sending the whole request body" in caplog.text
    assert "generation failed" not in caplog.text
    r = server.client().chat.completions.create(model="tiny", max_tokens=4,
                                                 messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content is not None


def test_a_body_that_stops_arriving_is_408_and_the_server_goes_on(tmp_path, tiny_int4):
    """Headers promise 1000 bytes, 10 arrive, the client waits: answered 408 (the connection closed), not held."""
    import socket

    s = Server(tmp_path, tiny_int4, body_timeout_s=0.5)
    try:
        with socket.create_connection(("127.0.0.1", s.port), timeout=30) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 1000\r\n\r\n{\"messages\"")
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 408") and b"not received within" in reply
        r = s.client().chat.completions.create(model="tiny", max_tokens=4, messages=ask("hi"))
        assert r.choices[0].message.content is not None
    finally:
        s.stop()


@pytest.mark.parametrize("raw,status,words", [
    (b"[" * 5000 + b"]" * 5000, 400, "nested more deeply"),
    (b'{"messages": [{"role": "user", "content": ' + b"[" * 40 + b"]" * 40 + b"}]}", 400, "nested more deeply"),
])
def test_deep_json_is_400_not_500(server, raw, status, words):
    r = httpx.post(server.url + "/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == status and words in r.json()["error"]["message"]
    assert r.json()["error"]["code"] == "json_too_deep"
