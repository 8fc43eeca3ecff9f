"""The agent's gRPC inference API: same semantics as the HTTP API (it shares Serving), streaming tokens."""
from __future__ import annotations

import grpc
import pytest

from control_plane.procs import free_port
from edge_agent.grpc_inference import start_server
from slmops.v1 import inference_pb2, inference_pb2_grpc
from tests.test_openai_api import Server, ask


@pytest.fixture(scope="module")
def both(tiny_int4, tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("grpc-agent"), tiny_int4)
    port = free_port()
    g = start_server(s.serving, f"127.0.0.1:{port}")
    ch = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield s, inference_pb2_grpc.InferenceStub(ch)
    ch.close()
    g.stop(1)
    s.stop()


def generate(stub, **kw):
    msgs = kw.pop("messages", [inference_pb2.ChatMessage(role="user", content=ask()[0]["content"])])
    return list(stub.Generate(inference_pb2.GenerateRequest(messages=msgs, **kw), timeout=60))


def test_streams_the_same_text_as_the_http_api(both):
    s, stub = both
    chunks = generate(stub, model="tiny", max_tokens=12)
    text = "".join(c.text for c in chunks)
    http = s.client().chat.completions.create(model="tiny", messages=ask(), max_tokens=12)
    assert text == http.choices[0].message.content
    assert len([c for c in chunks if c.text]) > 1            # token by token, not one blob
    last = chunks[-1]
    assert last.finish_reason in ("stop", "length") and last.completion_tokens == http.usage.completion_tokens
    assert last.prompt_tokens == http.usage.prompt_tokens and last.model == "tiny@v1"


@pytest.mark.parametrize("kw,code,words", [
    (dict(model="gpt-9"), grpc.StatusCode.NOT_FOUND, "gpt-9"),
    (dict(messages=[]), grpc.StatusCode.INVALID_ARGUMENT, "messages"),
    (dict(messages=[inference_pb2.ChatMessage(role="robot", content="x")]), grpc.StatusCode.INVALID_ARGUMENT, "role"),
    (dict(temperature=9.0), grpc.StatusCode.INVALID_ARGUMENT, "temperature"),
    (dict(max_tokens=10**6), grpc.StatusCode.INVALID_ARGUMENT, "max_tokens"),
    (dict(messages=[inference_pb2.ChatMessage(role="user", content="word " * 3000)]), grpc.StatusCode.OUT_OF_RANGE,
     "limit"),
])
def test_bad_requests_get_the_right_status(both, kw, code, words):
    _, stub = both
    with pytest.raises(grpc.RpcError) as e:
        generate(stub, **kw)
    assert e.value.code() == code and words in e.value.details()
    assert generate(stub, max_tokens=2)  # and the next request is served


def test_api_key_is_required_when_configured(tiny_int4, tmp_path):
    s = Server(tmp_path, tiny_int4)
    port = free_port()
    g = start_server(s.serving, f"127.0.0.1:{port}", api_keys=("k1",))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = inference_pb2_grpc.InferenceStub(ch)
            with pytest.raises(grpc.RpcError) as e:
                generate(stub, max_tokens=2)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
            req = inference_pb2.GenerateRequest(messages=[inference_pb2.ChatMessage(role="user", content="hi")],
                                                max_tokens=2)
            assert list(stub.Generate(req, metadata=(("authorization", "Bearer k1"),), timeout=60))
    finally:
        g.stop(1)
        s.stop()


TICKET = {"type": "object", "additionalProperties": False, "required": ["code", "urgent"],
          "properties": {"code": {"type": "string", "enum": ["E17", "E23"]}, "urgent": {"type": "boolean"}}}


def test_json_schema_answer_validates_and_matches_the_http_api(both):
    import json

    s, stub = both
    chunks = generate(stub, max_tokens=40, json_schema=json.dumps(TICKET))
    text = "".join(c.text for c in chunks)
    value = json.loads(text)
    assert set(value) == {"code", "urgent"} and value["code"] in ("E17", "E23") and isinstance(value["urgent"], bool)
    assert chunks[-1].finish_reason == "stop"
    http = s.client().chat.completions.create(model="tiny", messages=ask(), max_tokens=40, response_format={
        "type": "json_schema", "json_schema": {"name": "t", "schema": TICKET}})
    assert http.choices[0].message.content == text
    obj = "".join(c.text for c in generate(stub, max_tokens=40, json_object=True))
    assert isinstance(json.loads(obj), dict)


def test_stop_and_seed(both):
    _, stub = both
    full = "".join(c.text for c in generate(stub, max_tokens=24))
    word = full.split()[2]
    chunks = generate(stub, max_tokens=24, stop=[word])
    cut = "".join(c.text for c in chunks)
    assert word not in cut and full.startswith(cut) and chunks[-1].finish_reason == "stop"
    runs = ["".join(c.text for c in generate(stub, max_tokens=16, temperature=1.0, seed=seed)) for seed in (5, 5, 6)]
    assert runs[0] == runs[1] and runs[0] != runs[2]   # the seed decides (fixed seeds: deterministic)


@pytest.mark.parametrize("schema,words", [
    ("{not json", "json_schema"), ('{"type": "objekt"}', "type"), ('{"type": "string", "format": "email"}', "format"),
])
def test_bad_json_schema_is_invalid_argument_naming_what(both, schema, words):
    _, stub = both
    with pytest.raises(grpc.RpcError) as e:
        generate(stub, max_tokens=4, json_schema=schema)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and words in e.value.details()
