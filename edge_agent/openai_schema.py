"""Pure parsing of OpenAI-shaped request bodies into typed requests. Every refusal names the field.

HTTP status is carried on the error so handlers stay thin: 400 malformed, 404 unknown model, 413 too long.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

from edge_agent.json_schema import SchemaInvalid, check_schema
from edge_agent.tool_calls import call_schema
from slmops.errors import RequestInvalid

ROLES = ("system", "user", "assistant", "tool")
MAX_TOP_LOGPROBS = 20
TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
NO_PARAMETERS = {"type": "object", "properties": {}}
IGNORED = {"user", "frequency_penalty", "presence_penalty", "logit_bias", "stream_options", "metadata",
           "store", "service_tier", "parallel_tool_calls"}


class BadRequest(RequestInvalid):
    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 code: str = "invalid_request_error"):
        super().__init__(message)
        self.param, self.status, self.code = param, status, code


MAX_N = 4             # choices per request ('n'); each is a row of the request's batch
MAX_JSON_DEPTH = 32   # an OpenAI request nests 4 deep (body > messages > [i] > content parts)


def parse_json_body(raw: bytes, max_depth: int = MAX_JSON_DEPTH):
    """Request bytes -> JSON value, or a BadRequest naming what is wrong (never a RecursionError)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRequest(f"request body is not valid UTF-8: {e}") from None
    try:
        value = json.loads(text)
    except RecursionError:
        raise BadRequest(f"request body is nested more deeply than {max_depth} levels", code="json_too_deep") from None
    except ValueError as e:
        raise BadRequest(f"request body is not valid JSON: {e}") from None
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, (dict, list)):
            if depth > max_depth:
                raise BadRequest(f"request body is nested more deeply than {max_depth} levels", code="json_too_deep")
            stack.extend((c, depth + 1) for c in (v.values() if isinstance(v, dict) else v))
    return value


@dataclass(frozen=True)
class GenRequest:
    model: str
    messages: tuple[dict, ...] | None    # chat
    prompt: str | None                   # completions
    max_tokens: int | None
    temperature: float | None
    top_p: float | None
    top_k: int | None
    seed: int | None
    stop: tuple[str, ...]
    stream: bool
    # Structured output: a JSON schema the answer must validate against (json_object is {"type": "object"}).
    json_schema: dict | None = None
    # Tools: (name, description, parameters schema) each; tool_choice "auto" | "none" | "required" | a tool's name.
    tools: tuple[tuple[str, str, dict], ...] = ()
    tool_choice: str = "none"
    logprobs: bool = False
    top_logprobs: int = 0
    n: int = 1                           # choices, generated as rows of one batch (at most MAX_N)


def _number(body: dict, key: str, lo: float, hi: float, integer: bool = False):
    if key not in body or body[key] is None:
        return None
    v = body[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
        raise BadRequest(f"'{key}' must be {'an integer' if integer else 'a number'}, got {type(v).__name__}", key)
    if not lo <= v <= hi:
        raise BadRequest(f"'{key}' must be between {lo} and {hi}, got {v}", key)
    return v


def _stop(body: dict) -> tuple[str, ...]:
    v = body.get("stop")
    if v is None:
        return ()
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(s, str) and s for s in v) or len(v) > 4:
        raise BadRequest("'stop' must be a non-empty string or a list of up to 4 non-empty strings", "stop")
    return tuple(v)


def _common(body, max_new_tokens: int) -> dict:
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    model = body.get("model", "")
    if not isinstance(model, str):
        raise BadRequest("'model' must be a string", "model")
    n = _number(body, "n", 1, MAX_N, integer=True) or 1
    if body.get("functions") is not None or body.get("function_call") is not None:
        raise BadRequest("'functions'/'function_call' are the deprecated form: send 'tools' and 'tool_choice'",
                         "functions")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be a boolean", "stream")
    max_tokens = _number(body, "max_tokens", 1, max_new_tokens, integer=True)
    if max_tokens is None:
        max_tokens = _number(body, "max_completion_tokens", 1, max_new_tokens, integer=True)
    return dict(model=model, max_tokens=max_tokens, stream=stream, stop=_stop(body), n=n,
                temperature=_number(body, "temperature", 0.0, 2.0),
                top_p=_number(body, "top_p", 0.0, 1.0), top_k=_number(body, "top_k", 0, 1000, integer=True),
                seed=_number(body, "seed", -(2**63), 2**63 - 1, integer=True),
                json_schema=_response_format(body.get("response_format")))


def _schema(schema, field: str) -> dict:
    try:
        check_schema(schema)
    except SchemaInvalid as e:
        raise BadRequest(f"'{field}' is not a schema this server can honour: {e}", field) from None
    if not isinstance(schema, dict):
        raise BadRequest(f"'{field}' must be a JSON schema object", field)
    return schema


def _response_format(rf) -> dict | None:
    if rf is None:
        return None
    if not isinstance(rf, dict) or rf.get("type") not in ("text", "json_object", "json_schema"):
        raise BadRequest("'response_format.type' must be one of text, json_object, json_schema",
                         "response_format.type")
    if rf["type"] == "text":
        return None
    if rf["type"] == "json_object":
        return {"type": "object"}
    js = rf.get("json_schema")
    if not isinstance(js, dict):
        raise BadRequest("'response_format.json_schema' must be an object with 'name' and 'schema'",
                         "response_format.json_schema")
    name = js.get("name")
    if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
        raise BadRequest("'response_format.json_schema.name' must be 1-64 letters, digits, '_' or '-'",
                         "response_format.json_schema.name")
    if not isinstance(js.get("strict", False), bool) and js.get("strict") is not None:
        raise BadRequest("'response_format.json_schema.strict' must be a boolean", "response_format.json_schema.strict")
    if "schema" not in js:
        raise BadRequest("'response_format.json_schema.schema' is missing", "response_format.json_schema.schema")
    return _schema(js["schema"], "response_format.json_schema.schema")


def _tools(body: dict) -> tuple[tuple, str]:
    """(tools, tool_choice) with every tool checked; tool_choice defaults to auto with tools, none without."""
    tools = body.get("tools")
    out, names = [], set()
    if tools is not None:
        if not isinstance(tools, list):
            raise BadRequest("'tools' must be a list", "tools")
        for i, t in enumerate(tools):
            where = f"tools[{i}]"
            if not isinstance(t, dict) or t.get("type", "function") != "function" or not isinstance(
                    t.get("function"), dict):
                raise BadRequest(f"'{where}' must be {{\"type\": \"function\", \"function\": {{...}}}}", where)
            f = t["function"]
            name = f.get("name")
            if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
                raise BadRequest(f"'{where}.function.name' must be 1-64 letters, digits, '_' or '-'",
                                 f"{where}.function.name")
            if name in names:
                raise BadRequest(f"'{where}.function.name' {name!r} is used by another tool", f"{where}.function.name")
            names.add(name)
            desc = f.get("description", "")
            if not isinstance(desc, str):
                raise BadRequest(f"'{where}.function.description' must be a string", f"{where}.function.description")
            params = f.get("parameters")
            params = NO_PARAMETERS if params is None else _schema(params, f"{where}.function.parameters")
            out.append((name, desc, params))
    if out:
        try:
            call_schema(tuple(out))
        except ValueError as e:
            raise BadRequest(f"'tools' cannot be combined: {e}", "tools") from None
    choice = body.get("tool_choice")
    if choice is None:
        return tuple(out), "auto" if out else "none"
    if isinstance(choice, dict):
        fn = choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        if choice.get("type") != "function" or not isinstance(name, str):
            raise BadRequest("'tool_choice' must be none, auto, required or "
                             "{\"type\": \"function\", \"function\": {\"name\": NAME}}", "tool_choice")
        if name not in names:
            raise BadRequest(f"'tool_choice' names function {name!r}, which is not in 'tools'"
                             f" ({', '.join(sorted(names)) or 'none given'})", "tool_choice.function.name")
        return tuple(out), name
    if choice not in ("none", "auto", "required"):
        raise BadRequest("'tool_choice' must be none, auto, required or a function", "tool_choice")
    if choice != "none" and not out:
        raise BadRequest(f"'tool_choice' is {choice!r} but no 'tools' are given", "tool_choice")
    return tuple(out), choice


def _logprobs(body: dict) -> tuple[bool, int]:
    lp = body.get("logprobs")
    if lp is not None and not isinstance(lp, bool):
        raise BadRequest("'logprobs' must be a boolean", "logprobs")
    top = _number(body, "top_logprobs", 0, MAX_TOP_LOGPROBS, integer=True)
    if top is not None and not lp:
        raise BadRequest("'top_logprobs' needs 'logprobs': true", "top_logprobs")
    return bool(lp), top or 0


def _tool_calls(m: dict, where: str) -> list:
    calls = m.get("tool_calls")
    if not isinstance(calls, list) or not calls:
        raise BadRequest(f"{where}.tool_calls must be a non-empty list", f"{where}.tool_calls")
    out = []
    for j, c in enumerate(calls):
        f = c.get("function") if isinstance(c, dict) else None
        if not isinstance(f, dict) or not isinstance(f.get("name"), str) or not isinstance(f.get("arguments"), str):
            raise BadRequest(f"{where}.tool_calls[{j}] must have function.name and function.arguments (a JSON string)",
                             f"{where}.tool_calls[{j}]")
        try:
            args = json.loads(f["arguments"])
        except ValueError:
            raise BadRequest(f"{where}.tool_calls[{j}].function.arguments is not valid JSON",
                             f"{where}.tool_calls[{j}].function.arguments") from None
        out.append({"id": str(c.get("id", "")), "name": f["name"], "arguments": args})
    return out


def parse_chat(body, max_new_tokens: int) -> GenRequest:
    common = _common(body, max_new_tokens)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list", "messages")
    tools, tool_choice = _tools(body)
    logprobs, top_logprobs = _logprobs(body)
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise BadRequest(f"messages[{i}] must be an object", f"messages[{i}]")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise BadRequest(f"messages[{i}].role must be one of {', '.join(ROLES)}", f"messages[{i}].role")
        if role == "assistant" and m.get("tool_calls") is not None:
            calls = _tool_calls(m, f"messages[{i}]")
            if content is not None and not isinstance(content, str):
                raise BadRequest(f"messages[{i}].content must be a string or null", f"messages[{i}].content")
            out.append({"role": role, "content": content or "", "tool_calls": calls})
            continue
        if role == "tool":
            if not isinstance(m.get("tool_call_id"), str) or not m["tool_call_id"]:
                raise BadRequest(f"messages[{i}].tool_call_id must be the id of the call this answers",
                                 f"messages[{i}].tool_call_id")
        if isinstance(content, list):  # OpenAI content parts: text only
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise BadRequest(f"messages[{i}].content parts must all be text", f"messages[{i}].content")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise BadRequest(f"messages[{i}].content must be a string", f"messages[{i}].content")
        out.append({"role": role, "content": content})
    if not any(m["content"].strip() or m.get("tool_calls") for m in out):
        raise BadRequest("every message is empty", "messages")
    return GenRequest(messages=tuple(out), prompt=None, tools=tools, tool_choice=tool_choice, logprobs=logprobs,
                      top_logprobs=top_logprobs, **common)


def parse_completion(body, max_new_tokens: int) -> GenRequest:
    common = _common(body, max_new_tokens)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise BadRequest("'prompt' must be a non-empty string", "prompt")
    for field in ("tools", "tool_choice", "top_logprobs"):
        if body.get(field) is not None:
            raise BadRequest(f"'{field}' is served on /v1/chat/completions only", field)
    # the legacy form: logprobs is the number of alternatives per token (0-20), not a boolean
    top = _number(body, "logprobs", 0, MAX_TOP_LOGPROBS, integer=True)
    return GenRequest(messages=None, prompt=prompt, logprobs=top is not None, top_logprobs=top or 0, **common)
