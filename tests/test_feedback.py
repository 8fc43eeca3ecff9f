"""POST /v1/feedback on a real agent HTTP server (the agent's own uvicorn wiring, loopback, free port): a score for
an answer becomes a telemetry event for the serving version; every bad body is a 400 naming its field."""
import json
import threading
import time
from types import SimpleNamespace

import httpx
import pytest

from control_plane.procs import free_port
from edge_agent.feedback import parse_feedback
from edge_agent.http_api import build_app
from edge_agent.http_server import make_server
from edge_agent.openai_schema import BadRequest
from edge_agent.runtime import Runtime
from edge_agent.serving import Serving
from edge_agent.state import AgentState


@pytest.fixture
def agent(tmp_path):
    state, runtime = AgentState(tmp_path / "agent.db"), Runtime(1, 1)
    server = make_server(build_app(Serving(runtime, state, 64, 16, request_timeout_s=5), ("key1",)),
                         "127.0.0.1", port := free_port())
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": "Bearer key1"}, timeout=10)
    yield SimpleNamespace(state=state, runtime=runtime, client=client)
    client.close()
    server.should_exit = True
    thread.join(10)


def manifest(name="support", version="v2"):
    return SimpleNamespace(name=name, version=version, ref=f"{name}@{version}")


def test_feedback_is_carried_as_a_telemetry_event_of_the_serving_version(agent):
    r = agent.client.post("/v1/feedback", json={"request_id": "chatcmpl-abc123", "score": 0.25})
    assert r.status_code == 503 and "no model is serving" in r.json()["error"]["message"]
    agent.runtime.swap(object(), manifest())
    r = agent.client.post("/v1/feedback", json={"request_id": "chatcmpl-abc123", "score": 0.25, "model": "support"})
    assert r.status_code == 200, r.text
    assert r.json() == {"object": "feedback", "request_id": "chatcmpl-abc123", "score": 0.25, "model": "support@v2"}
    ev = [e for e in agent.state.pending(10) if e["name"] == "feedback"]
    assert [(e["kind"], e["model"], e["detail"], json.loads(e["vals"])) for e in ev] == \
        [("event", "support@v2", "chatcmpl-abc123", {"score": 0.25})]
    r = agent.client.post("/v1/feedback", json={"request_id": "x", "score": 1, "model": "other"})
    assert r.status_code == 404 and r.json()["error"]["param"] == "model"
    assert httpx.post(f"{agent.client.base_url}/v1/feedback", json={"request_id": "x", "score": 1}).status_code == 401


@pytest.mark.parametrize("body, field, words", [
    ({"score": 1}, "request_id", "request_id must be"),
    ({"request_id": "a b", "score": 1}, "request_id", "letters, digits"),
    ({"request_id": "r" * 129, "score": 1}, "request_id", "1-128"),
    ({"request_id": "r1"}, "score", "score must be a number from 0"),
    ({"request_id": "r1", "score": 1.5}, "score", "got 1.5"),
    ({"request_id": "r1", "score": True}, "score", "score must be"),
    ({"request_id": "r1", "score": "good"}, "score", "got good"),
    ({"request_id": "r1", "score": 1, "comment": "x"}, "comment", "unknown field 'comment'"),
])
def test_bad_feedback_is_a_400_naming_the_field(agent, body, field, words):
    agent.runtime.swap(object(), manifest())
    r = agent.client.post("/v1/feedback", json=body)
    assert r.status_code == 400 and r.json()["error"]["param"] == field and words in r.json()["error"]["message"]
    assert not [e for e in agent.state.pending(10) if e["name"] == "feedback"]


def test_a_body_that_is_not_an_object_or_too_large_is_refused(agent):
    assert agent.client.post("/v1/feedback", content=b"[1]").status_code == 400
    assert agent.client.post("/v1/feedback", content=b"{").status_code == 400
    assert agent.client.post("/v1/feedback", content=b"x" * (2 << 20)).status_code == 413
    with pytest.raises(BadRequest, match="JSON object"):
        parse_feedback("score")
