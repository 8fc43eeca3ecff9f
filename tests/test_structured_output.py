"""Structured output, tools and logprobs through the official `openai` client against a real agent HTTP server
(tiny ONNX model, onnxruntime-genai guidance on CPU)."""
from __future__ import annotations

import json
import math
from typing import Literal

import httpx
import openai
import pydantic
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import pytest

from edge_agent.json_schema import SchemaInvalid, check_schema, errors
from edge_agent.tool_calls import call_schema, could_be_call, parse_call
from slmops.chat_format import CHATML, ChatFormat
from tests.test_openai_api import Server, ask

TICKET = {"type": "object", "additionalProperties": False, "required": ["code", "urgent", "steps", "note"],
          "properties": {"code": {"type": "string", "enum": ["E17", "E23", "E40"]}, "urgent": {"type": "boolean"},
                         "steps": {"type": "integer", "minimum": 1, "maximum": 9},
                         "note": {"type": "string", "maxLength": 12}}}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city", "unit"],
                   "properties": {"city": {"type": "string", "maxLength": 10},
                                  "unit": {"type": "string", "enum": ["c", "f"]}}}}}
RESET = {"type": "function", "function": {
    "name": "reset_device", "parameters": {"type": "object", "additionalProperties": False, "required": ["hard"],
                                           "properties": {"hard": {"type": "boolean"}}}}}


@pytest.fixture(scope="module")
def server(tiny_int4, tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("structured"), tiny_int4, max_prompt_tokens=440)  # the tiny model has 512
    yield s
    s.stop()


def schema_format(schema, name="ticket"):
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


def check_ticket(value):
    """Checked by hand, not by the server's own validator."""
    assert set(value) == {"code", "urgent", "steps", "note"}
    assert value["code"] in ("E17", "E23", "E40") and isinstance(value["urgent"], bool)
    assert isinstance(value["steps"], int) and not isinstance(value["steps"], bool) and 1 <= value["steps"] <= 9
    assert isinstance(value["note"], str) and len(value["note"]) <= 12


# -- structured output


def test_json_schema_answer_parses_and_validates(server):
    r = server.client().chat.completions.create(model="tiny", messages=ask(), max_tokens=64,
                                                response_format=schema_format(TICKET))
    assert r.choices[0].finish_reason == "stop"
    check_ticket(json.loads(r.choices[0].message.content))
    free = server.client().chat.completions.create(model="tiny", messages=ask(), max_tokens=64)
    assert free.choices[0].message.content != r.choices[0].message.content   # the constraint did something


def test_sampled_json_schema_answers_validate_and_repeat_with_their_seed(server):
    c = server.client()
    finished = 0
    for seed in range(5):
        kw = dict(model="tiny", messages=ask(), max_tokens=64, temperature=1.0, seed=seed,
                  response_format=schema_format(TICKET))
        a, b = c.chat.completions.create(**kw), c.chat.completions.create(**kw)
        assert a.choices[0].message.content == b.choices[0].message.content
        if a.choices[0].finish_reason == "stop":
            finished += 1
            check_ticket(json.loads(a.choices[0].message.content))
    assert finished >= 3


def test_json_object_answer_is_an_object(server):
    r = server.client().chat.completions.create(model="tiny", messages=ask(), max_tokens=64,
                                                response_format={"type": "json_object"})
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_streamed_json_schema_answer_is_the_same_json(server):
    c = server.client()
    kw = dict(model="tiny", messages=ask(), max_tokens=64, response_format=schema_format(TICKET))
    full = c.chat.completions.create(**kw).choices[0].message.content
    pieces = [ch.choices[0].delta.content for ch in c.chat.completions.create(stream=True, **kw)
              if ch.choices and ch.choices[0].delta.content]
    assert len(pieces) > 1 and "".join(pieces) == full
    check_ticket(json.loads(full))


class Reading(pydantic.BaseModel):
    code: Literal["E17", "E23"]
    urgent: bool


class Report(pydantic.BaseModel):
    device: Literal["K2", "K3"]
    readings: list[Reading] = pydantic.Field(max_length=1)


def test_the_clients_pydantic_parse_helper_works_with_nested_models(server):
    """openai's parse() sends a strict schema with $defs/$ref (the nested model) and parses the answer back."""
    r = server.client().chat.completions.parse(model="tiny", messages=ask(), max_tokens=64, response_format=Report)
    assert r.choices[0].finish_reason == "stop"
    parsed = r.choices[0].message.parsed
    assert isinstance(parsed, Report) and len(parsed.readings) <= 1


@pytest.mark.parametrize("response_format,words", [
    (schema_format({"type": "objekt"}), "type"),
    (schema_format({"type": "string", "format": "email"}), "format"),
    (schema_format({"oneOf": [{"type": "string"}]}), "oneOf"),
    (schema_format({"type": "object", "patternProperties": {"^a": {}}}), "patternProperties"),
    (schema_format({"$ref": "#/$defs/missing"}), "$ref"),
    (schema_format({"type": "string", "pattern": "[a-z"}), "pattern"),
    (schema_format({"type": "array", "minItems": 3, "maxItems": 1}), "minItems"),
    (schema_format({"type": "string", "pattern": "(?=a)a"}), "grammar engine"),   # Python's re, not llguidance's
    (schema_format({"$defs": {"a": {"anyOf": [{"$ref": "#/$defs/a"}]}}, "$ref": "#/$defs/a"}), "admits no value"),
    (schema_format({"type": "integer", "anyOf": []}), "anyOf"),
    ({"type": "json_schema", "json_schema": {"name": "x"}}, "response_format.json_schema.schema"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {}, "strict": "yes"}}, "strict"),
    ({"type": "json_schema", "json_schema": {"name": "no spaces", "schema": {}}}, "name"),
    ({"type": "xml"}, "response_format.type"),
])
def test_schemas_that_cannot_be_honoured_are_400_naming_what(server, response_format, words):
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as e:
            server.client().chat.completions.create(model="tiny", messages=ask(), max_tokens=8, stream=stream,
                                                    response_format=response_format)
        assert words in str(e.value)
    assert server.runtime._running == 0


def test_schema_subset_validator_table():
    check_schema(TICKET)
    good = {"code": "E17", "urgent": True, "steps": 3, "note": "ok"}
    assert errors(good, TICKET) == []
    assert errors(dict(good, steps=True), TICKET)          # a boolean is not an integer
    assert errors(dict(good, steps=10), TICKET)
    assert errors(dict(good, code="E99"), TICKET)
    assert errors(dict(good, extra=1), TICKET)
    assert errors({k: v for k, v in good.items() if k != "note"}, TICKET)
    assert errors(dict(good, note="x" * 13), TICKET)
    assert errors(3.0, {"type": "integer"}) == [] and errors(3.5, {"type": "integer"})
    refs = {"$defs": {"r": {"type": "string"}}, "type": "array", "items": {"$ref": "#/$defs/r"}}
    check_schema(refs)
    assert errors(["a"], refs) == [] and errors([1], refs)
    assert errors("b", {"anyOf": [{"const": "a"}, {"const": "b"}]}) == [] and errors("c", {"anyOf": [{"const": "a"}]})
    for bad in ({"type": "objekt"}, {"not": {}}, [], {"required": "x"}, {"$ref": "http://x/y"}, {"enum": []},
                {"$ref": "#/$defs/a", "$defs": 3}, {"maxLength": -1}):
        with pytest.raises(SchemaInvalid):
            check_schema(bad)


# -- tools


def call_of(r):
    msg = r.choices[0].message
    assert r.choices[0].finish_reason == "tool_calls" and msg.content is None and len(msg.tool_calls) == 1
    call = msg.tool_calls[0]
    assert call.type == "function" and call.id.startswith("call_")
    return call.function.name, json.loads(call.function.arguments)


def check_weather(args):
    assert set(args) == {"city", "unit"} and args["unit"] in ("c", "f")
    assert isinstance(args["city"], str) and len(args["city"]) <= 10


def test_named_tool_choice_is_a_valid_call(server):
    r = server.client().chat.completions.create(
        model="tiny", messages=ask("What is the weather in Berlin?"), max_tokens=64, tools=[WEATHER, RESET],
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    name, args = call_of(r)
    assert name == "get_weather"
    check_weather(args)


def test_required_tool_choice_calls_one_of_the_tools(server):
    for seed in range(3):
        r = server.client().chat.completions.create(
            model="tiny", messages=ask("Reset it"), max_tokens=64, tools=[WEATHER, RESET], tool_choice="required",
            temperature=1.0, seed=seed)
        if r.choices[0].finish_reason == "length":
            continue
        name, args = call_of(r)
        assert name in ("get_weather", "reset_device")
        if name == "reset_device":
            assert set(args) == {"hard"} and isinstance(args["hard"], bool)
        else:
            check_weather(args)


def test_streamed_tool_call_arrives_as_delta_tool_calls(server):
    kw = dict(model="tiny", messages=ask("Weather?"), max_tokens=64, tools=[WEATHER],
              tool_choice={"type": "function", "function": {"name": "get_weather"}})
    c = server.client()
    whole = c.chat.completions.create(**kw)
    name, args, finish, content = "", "", None, ""
    for ch in c.chat.completions.create(stream=True, **kw):
        if not ch.choices:
            continue
        d = ch.choices[0].delta
        content += d.content or ""
        for tc in d.tool_calls or ():
            assert tc.index == 0
            name += tc.function.name or ""
            args += tc.function.arguments or ""
        finish = ch.choices[0].finish_reason or finish
    assert finish == "tool_calls" and content == ""
    assert (name, json.loads(args)) == call_of(whole)


def test_auto_and_none_answer_in_the_right_shape(server):
    c = server.client()
    none = c.chat.completions.create(model="tiny", messages=ask(), max_tokens=16, tools=[WEATHER], tool_choice="none")
    plain = c.chat.completions.create(model="tiny", messages=ask(), max_tokens=16)
    assert none.choices[0].message.tool_calls is None
    assert none.choices[0].message.content == plain.choices[0].message.content   # tools are not shown with none
    auto = c.chat.completions.create(model="tiny", messages=ask(), max_tokens=16, tools=[WEATHER])
    msg = auto.choices[0].message
    if msg.tool_calls:        # the auto rule (edge_agent/tool_calls.py): only a whole valid call is a call
        check_weather(json.loads(msg.tool_calls[0].function.arguments))
        assert auto.choices[0].finish_reason == "tool_calls"
    else:
        assert msg.content and auto.choices[0].finish_reason in ("stop", "length")
        assert parse_call(msg.content, (("get_weather", "", WEATHER["function"]["parameters"]),)) is None
    streamed = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
        model="tiny", messages=ask(), max_tokens=16, tools=[WEATHER], stream=True) if ch.choices)
    assert streamed == (msg.content or "")


def test_auto_rule_table():
    tools = (("get_weather", "", WEATHER["function"]["parameters"]),)
    call = {"name": "get_weather", "arguments": {"city": "Oslo", "unit": "c"}}
    assert parse_call(json.dumps(call), tools) == call
    assert parse_call(f"  <tool_call>\n{json.dumps(call)}\n</tool_call> ", tools) == call
    assert parse_call(json.dumps(dict(call, name="other")), tools) is None
    assert parse_call(json.dumps(dict(call, arguments={"city": "Oslo"})), tools) is None
    assert parse_call("The weather is fine " + json.dumps(call), tools) is None
    assert parse_call("{not json", tools) is None
    assert could_be_call("") and could_be_call("  {") and could_be_call("<tool") and could_be_call("<tool_call>\n{")
    assert not could_be_call("The") and not could_be_call("<b>")
    both = call_schema((("a", "", {"type": "object"}), ("b", "", {"type": "object"})))
    assert errors({"name": "b", "arguments": {}}, both) == [] and errors({"name": "c", "arguments": {}}, both)


def test_tool_results_are_accepted_and_rendered_by_the_chat_format(server):
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": json.dumps({"city": "Oslo", "unit": "c"})}}
    messages = [{"role": "user", "content": "Weather in Oslo?"},
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_1", "content": "4 degrees, rain"}]
    r = server.client().chat.completions.create(model="tiny", messages=messages, max_tokens=8, tools=[WEATHER],
                                                tool_choice="none")
    fmt = ChatFormat.from_dict(CHATML)
    rendered = fmt.render([{"role": "user", "content": "Weather in Oslo?"},
                           {"role": "assistant", "content": "",
                            "tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "c"}}]},
                           {"role": "tool", "content": "4 degrees, rain"}])
    assert "<tool_response>\n4 degrees, rain\n</tool_response>" in rendered and '"city": "Oslo"' in rendered
    assert r.usage.prompt_tokens == server.runtime.slot.engine.count_tokens(rendered)


@pytest.mark.parametrize("kwargs,words", [
    (dict(tools=[{"type": "function", "function": {"description": "no name"}}]), "tools[0].function.name"),
    (dict(tools=[WEATHER, WEATHER]), "tools[1].function.name"),
    (dict(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "fly"}}), "fly"),
    (dict(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "objekt"}}}]),
     "tools[0].function.parameters"),
    (dict(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "not": {}}}}]),
     "not"),
    (dict(tool_choice="required"), "no 'tools'"),
    (dict(tools=[WEATHER], tool_choice="sometimes"), "tool_choice"),
    (dict(messages=[{"role": "tool", "content": "4 degrees"}]), "tool_call_id"),
    (dict(messages=[{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]), "arguments"),
    (dict(logprobs=True, top_logprobs=21), "top_logprobs"),
    (dict(top_logprobs=3), "top_logprobs"),
    (dict(n=9), "'n'"),
])
def test_bad_tool_and_logprob_input_is_400_naming_the_field(server, kwargs, words):
    args = {"model": "tiny", "messages": ask(), "max_tokens": 4, **kwargs}
    with pytest.raises(openai.BadRequestError) as e:
        server.client().chat.completions.create(**args)
    assert words in str(e.value)


# -- logprobs


def test_logprobs_are_the_models_sorted_and_match_the_answer(server):
    c = server.client()
    r = c.chat.completions.create(model="tiny", messages=ask(), max_tokens=12, logprobs=True, top_logprobs=5)
    content = r.choices[0].logprobs.content
    ended = r.choices[0].finish_reason == "stop"
    assert len(content) == r.usage.completion_tokens - (1 if ended else 0)   # the end-of-sequence token is not text
    assert "".join(t.token for t in content) == r.choices[0].message.content
    for t in content:
        tops = [x.logprob for x in t.top_logprobs]
        assert len(tops) == 5 and tops == sorted(tops, reverse=True) and all(x <= 0 for x in tops)
        assert sum(math.exp(x) for x in tops) <= 1 + 1e-6
        assert t.logprob == pytest.approx(tops[0])   # greedy: the chosen token is the argmax
        assert t.bytes == list(t.token.encode())
    sampled = c.chat.completions.create(model="tiny", messages=ask(), max_tokens=12, logprobs=True,
                                        temperature=1.5, seed=3)
    assert all(t.top_logprobs == [] and t.logprob <= 0 for t in sampled.choices[0].logprobs.content)
    assert c.chat.completions.create(model="tiny", messages=ask(), max_tokens=4).choices[0].logprobs is None


def test_streamed_logprobs_ride_with_their_pieces(server):
    c = server.client()
    kw = dict(model="tiny", messages=ask(), max_tokens=12, logprobs=True, top_logprobs=2)
    whole = c.chat.completions.create(**kw).choices[0].logprobs.content
    got = []
    for ch in c.chat.completions.create(stream=True, **kw):
        if ch.choices and ch.choices[0].delta.content:
            entries = ch.choices[0].logprobs.content
            assert "".join(t.token for t in entries) == ch.choices[0].delta.content
            got += entries
    assert [(t.token, t.logprob) for t in got] == [(t.token, t.logprob) for t in whole]


def test_raw_sse_chunks_carry_openai_fields(server):
    with httpx.stream("POST", server.url + "/v1/chat/completions", json={
            "messages": ask(), "max_tokens": 64, "stream": True, "tools": [WEATHER],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}) as r:
        events = [json.loads(ln[6:]) for ln in r.iter_lines() if ln.startswith("data: {")]
    calls = [e for e in events if e["choices"][0]["delta"].get("tool_calls")]
    assert len(calls) == 1 and calls[0]["choices"][0]["delta"]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_the_readme_example_runs_verbatim(server, monkeypatch, capsys):
    import ast
    import pathlib
    import re

    readme = (pathlib.Path(__file__).parent.parent / "README.md").read_text()
    section = readme[readme.index("## Structured output and tools\n"):]
    section = section[:section.index("\n## ", 5)]
    (code,) = re.findall(r"^```python\n(.*?)^```", section, flags=re.S | re.M)
    monkeypatch.setenv("AGENT_URL", server.url)
    exec(compile(code, "README.md", "exec"), {})
    ticket, call = capsys.readouterr().out.strip().splitlines()
    assert ast.literal_eval(ticket)["code"] in ("E17", "E23") and call.startswith("get_weather {'city': ")


def test_completions_take_response_format_too(server):
    r = server.client().completions.create(model="tiny", prompt="<|im_start|>user\nE17?<|im_end|>\n<|im_start|>assistant\n",
                                           max_tokens=40, extra_body={"response_format": schema_format(TICKET)})
    if r.choices[0].finish_reason == "stop":
        check_ticket(json.loads(r.choices[0].text))
    else:   # cut by max_tokens: still a prefix of an object that validates
        assert r.choices[0].text.startswith('{"code":"E')


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=6),
                           lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
                           max_leaves=10)
schemas = st.recursive(st.fixed_dictionaries({}, optional={
    "type": st.sampled_from(["object", "string", "integer", "x"]) | json_values, "enum": json_values,
    "pattern": st.text(max_size=4), "maxLength": json_values, "required": json_values, "$ref": st.text(max_size=12),
    "format": json_values}),
    lambda c: st.fixed_dictionaries({}, optional={"properties": st.dictionaries(st.text(max_size=3), c, max_size=2),
                                                  "items": c, "anyOf": st.lists(c, max_size=2), "$defs": json_values,
                                                  "additionalProperties": c | json_values}), max_leaves=6)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(body=st.fixed_dictionaries({"messages": st.just(ask())}, optional={
    "response_format": st.fixed_dictionaries({"type": st.sampled_from(["json_schema", "json_object", "x"])},
                                             optional={"json_schema": st.fixed_dictionaries(
                                                 {"name": st.sampled_from(["t", ""]), "schema": schemas | json_values},
                                                 optional={"strict": json_values})}) | json_values,
    "tools": st.lists(st.fixed_dictionaries({"type": st.just("function"), "function": st.fixed_dictionaries(
        {"name": st.sampled_from(["a", "b", ""]) | json_values}, optional={"parameters": schemas | json_values,
                                                                            "description": json_values})}),
        max_size=3) | json_values,
    "tool_choice": st.sampled_from(["auto", "none", "required"]) | json_values,
    "logprobs": json_values, "top_logprobs": json_values}))
def test_random_structured_requests_parse_or_are_400(body):
    from edge_agent.openai_schema import BadRequest, parse_chat

    try:
        req = parse_chat(body, 64)
    except BadRequest as e:
        assert e.status == 400 and e.param
        return
    if req.json_schema is not None:
        check_schema(req.json_schema)
        errors({}, req.json_schema)     # the validator runs on whatever was accepted
    for _, _, params in req.tools:
        check_schema(params)
        errors({}, params)
    if len(req.tools) > 0:
        call_schema(req.tools)


def test_a_schema_that_refers_to_itself_is_validated_without_recursing_forever():
    loop = {"$defs": {"a": {"anyOf": [{"$ref": "#/$defs/a"}]}}, "$ref": "#/$defs/a"}
    check_schema(loop)
    assert errors(1, loop)   # nothing can satisfy it: an error, not a RecursionError
    tree = {"$defs": {"n": {"type": "object", "properties": {"kids": {"type": "array", "items": {"$ref": "#/$defs/n"}}}}},
            "$ref": "#/$defs/n"}
    assert errors({"kids": [{"kids": []}, {}]}, tree) == [] and errors({"kids": [{"kids": 3}]}, tree)


def test_patterns_that_backtrack_exponentially_are_refused():
    for pattern in ("(a+)+$", "(ab|a)*c", "(?:x(?:y)*)+"):
        with pytest.raises(SchemaInvalid, match="repeats a group"):
            check_schema({"type": "string", "pattern": pattern})
    for pattern in ("^E\\d{2}$", "(a|b)*c", "(\\d{3}-)+x", "[a-z]+@[a-z]+"):
        check_schema({"type": "string", "pattern": pattern})
    assert errors("E17", {"type": "string", "pattern": "^E\\d{2}$"}) == []
    assert errors("E1", {"type": "string", "pattern": "^E\\d{2}$"})


def test_a_pattern_constrains_the_answer(server):
    schema = {"type": "object", "additionalProperties": False, "required": ["code"],
              "properties": {"code": {"type": "string", "pattern": "^E[0-9]{2}$"}}}
    r = server.client().chat.completions.create(model="tiny", messages=ask(), max_tokens=40,
                                                response_format=schema_format(schema))
    import re
    assert r.choices[0].finish_reason == "stop"
    assert re.fullmatch(r"E[0-9]{2}", json.loads(r.choices[0].message.content)["code"])


def test_auto_tools_with_a_response_format_answer_in_that_format(server):
    r = server.client().chat.completions.create(model="tiny", messages=ask(), max_tokens=64, tools=[WEATHER],
                                                response_format=schema_format(TICKET))
    assert r.choices[0].finish_reason == "stop" and r.choices[0].message.tool_calls is None
    check_ticket(json.loads(r.choices[0].message.content))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
          derandomize=True)
@given(schema=schemas | json_values, tools=st.lists(schemas, max_size=2), stream=st.booleans())
def test_random_schemas_over_http_never_give_5xx(server, schema, tools, stream):
    body = {"messages": ask(), "max_tokens": 8, "stream": stream, "response_format": schema_format(schema)}
    if tools:
        body["tools"] = [{"type": "function", "function": {"name": f"f{i}", "parameters": p}}
                         for i, p in enumerate(tools)]
        body["tool_choice"] = "required"
    r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code in (200, 400), r.text
    if r.status_code == 400:
        assert r.json()["error"]["param"]


def test_completions_logprobs_in_the_legacy_shape(server):
    c = server.client()
    prompt = "<|im_start|>user\nE17?<|im_end|>\n<|im_start|>assistant\n"
    r = c.completions.create(model="tiny", prompt=prompt, max_tokens=10, logprobs=3)
    lp = r.choices[0].logprobs
    assert "".join(lp.tokens) == r.choices[0].text and len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs)
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    for chosen, tops in zip(lp.token_logprobs, lp.top_logprobs):
        assert 0 < len(tops) <= 3 and max(tops.values()) == pytest.approx(chosen)   # greedy: the most likely
    streamed = [ch.choices[0].logprobs for ch in c.completions.create(model="tiny", prompt=prompt, max_tokens=10,
                                                                       logprobs=3, stream=True)
                if ch.choices and ch.choices[0].text]
    assert sum((s.tokens for s in streamed), []) == lp.tokens
    assert sum((s.text_offset for s in streamed), []) == lp.text_offset
    with pytest.raises(openai.BadRequestError, match="logprobs"):
        c.completions.create(model="tiny", prompt=prompt, max_tokens=2, logprobs=21)


def test_a_seeded_stream_is_the_seeded_answer(server):
    c = server.client()
    kw = dict(model="tiny", messages=ask(), max_tokens=16, temperature=1.2, seed=11)
    whole = c.chat.completions.create(**kw).choices[0].message.content
    streamed = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(stream=True, **kw)
                       if ch.choices)
    other = c.chat.completions.create(**dict(kw, seed=12)).choices[0].message.content
    assert streamed == whole and other != whole   # fixed seeds: deterministic, and the seed decides


def test_n_choices_come_from_one_batch_each_whole(server):
    c = server.client()
    r = c.chat.completions.create(model="tiny", messages=ask(), max_tokens=12, n=3, temperature=1.0, seed=5)
    again = c.chat.completions.create(model="tiny", messages=ask(), max_tokens=12, n=3, temperature=1.0, seed=5)
    texts = [ch.message.content for ch in r.choices]
    assert [ch.index for ch in r.choices] == [0, 1, 2] and len(set(texts)) > 1
    assert texts == [ch.message.content for ch in again.choices]   # the seed holds for the whole batch
    assert all(ch.finish_reason in ("stop", "length") for ch in r.choices)
    one = c.chat.completions.create(model="tiny", messages=ask(), max_tokens=12, temperature=1.0, seed=5)
    assert r.usage.prompt_tokens == one.usage.prompt_tokens
    greedy = c.chat.completions.create(model="tiny", messages=ask(), max_tokens=12, n=2)
    alone = c.chat.completions.create(model="tiny", messages=ask(), max_tokens=12)
    assert [ch.message.content for ch in greedy.choices] == 2 * [alone.choices[0].message.content]
    assert greedy.usage.completion_tokens == 2 * alone.usage.completion_tokens


def test_n_choices_with_a_schema_and_logprobs_each_validate(server):
    r = server.client().chat.completions.create(
        model="tiny", messages=ask(), max_tokens=60, n=2, temperature=1.0, seed=3, logprobs=True, top_logprobs=2,
        response_format={"type": "json_schema", "json_schema": {"name": "w", "strict": True, "schema": TICKET}})
    assert len(r.choices) == 2
    for ch in r.choices:
        if ch.finish_reason == "stop":
            assert not errors(json.loads(ch.message.content), TICKET)
        assert "".join(t.token for t in ch.logprobs.content) == ch.message.content


def streamed_choices(chunks) -> dict:
    """index -> {"text", "finish", "tool_calls", "logprobs"} from a stream's chunks; the last chunk's usage."""
    got, usage = {}, None
    for ch in chunks:
        usage = ch.usage or usage
        for c in ch.choices:
            g = got.setdefault(c.index, {"text": "", "finish": [], "tool_calls": [], "logprobs": []})
            g["text"] += (c.delta.content or "") if hasattr(c, "delta") else (c.text or "")
            if c.finish_reason:
                g["finish"].append(c.finish_reason)
            if hasattr(c, "delta"):
                g["tool_calls"] += c.delta.tool_calls or []
            if c.logprobs is not None and getattr(c.logprobs, "content", None):
                g["logprobs"] += c.logprobs.content
    return got, usage


def test_n_choices_stream_each_with_its_index(server):
    """A stream of n = 3 carries every choice's pieces under its index, each ends once, the usage of all at the
    end: the same texts as the whole answer with the same seed."""
    c = server.client()
    kw = dict(model="tiny", messages=ask(), max_tokens=12, n=3, temperature=1.0, seed=5)
    whole = c.chat.completions.create(**kw)
    got, usage = streamed_choices(c.chat.completions.create(stream=True, **kw))
    assert sorted(got) == [0, 1, 2]
    assert [got[i]["text"] for i in range(3)] == [ch.message.content for ch in whole.choices]
    assert [got[i]["finish"] for i in range(3)] == [[ch.finish_reason] for ch in whole.choices]
    assert usage.completion_tokens == whole.usage.completion_tokens
    legacy = dict(model="tiny", prompt="The device", max_tokens=8, n=2, temperature=1.0, seed=2)
    got, _ = streamed_choices(c.completions.create(stream=True, **legacy))
    assert [got[i]["text"] for i in range(2)] == [ch.text for ch in c.completions.create(**legacy).choices]


def test_n_choices_stream_tool_calls_and_logprobs_per_choice(server):
    c = server.client()
    kw = dict(model="tiny", messages=ask("Weather?"), max_tokens=64, n=2, temperature=1.0, seed=4, tools=[WEATHER],
              tool_choice={"type": "function", "function": {"name": "get_weather"}})
    got, _ = streamed_choices(c.chat.completions.create(stream=True, **kw))
    for i in (0, 1):
        calls = got[i]["tool_calls"]
        if got[i]["finish"] == ["tool_calls"]:
            assert calls and calls[0].function.name == "get_weather"
            check_weather(json.loads("".join(t.function.arguments or "" for t in calls)))
        else:
            assert got[i]["finish"] == ["length"] and not calls
    kw = dict(model="tiny", messages=ask(), max_tokens=10, n=2, temperature=1.0, seed=8, logprobs=True,
              top_logprobs=2)
    got, _ = streamed_choices(c.chat.completions.create(stream=True, **kw))
    for i in (0, 1):
        assert "".join(t.token for t in got[i]["logprobs"]) == got[i]["text"] and got[i]["logprobs"]
