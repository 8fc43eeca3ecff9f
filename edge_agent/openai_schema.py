"""Pure parsing of OpenAI-shaped request bodies into typed requests. Every refusal names the field.

HTTP status is carried on the error so handlers stay thin: 400 malformed, 404 unknown model, 413 too long.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from slmops.errors import RequestInvalid

ROLES = ("system", "user", "assistant")
IGNORED = {"user", "frequency_penalty", "presence_penalty", "logit_bias", "stream_options", "metadata",
           "store", "service_tier", "parallel_tool_calls"}


class BadRequest(RequestInvalid):
    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 code: str = "invalid_request_error"):
        super().__init__(message)
        self.param, self.status, self.code = param, status, code


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
    n = body.get("n", 1)
    if n != 1:
        raise BadRequest("only n=1 is supported", "n")
    for unsupported in ("tools", "functions", "tool_choice", "response_format", "logprobs"):
        if body.get(unsupported) not in (None, False):
            raise BadRequest(f"'{unsupported}' is not supported by this server", unsupported)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be a boolean", "stream")
    max_tokens = _number(body, "max_tokens", 1, max_new_tokens, integer=True)
    if max_tokens is None:
        max_tokens = _number(body, "max_completion_tokens", 1, max_new_tokens, integer=True)
    return dict(model=model, max_tokens=max_tokens, stream=stream, stop=_stop(body),
                temperature=_number(body, "temperature", 0.0, 2.0),
                top_p=_number(body, "top_p", 0.0, 1.0), top_k=_number(body, "top_k", 0, 1000, integer=True),
                seed=_number(body, "seed", -(2**63), 2**63 - 1, integer=True))


def parse_chat(body, max_new_tokens: int) -> GenRequest:
    common = _common(body, max_new_tokens)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list", "messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise BadRequest(f"messages[{i}] must be an object", f"messages[{i}]")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise BadRequest(f"messages[{i}].role must be one of {', '.join(ROLES)}", f"messages[{i}].role")
        if isinstance(content, list):  # OpenAI content parts: text only
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise BadRequest(f"messages[{i}].content parts must all be text", f"messages[{i}].content")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise BadRequest(f"messages[{i}].content must be a string", f"messages[{i}].content")
        out.append({"role": role, "content": content})
    if not any(m["content"].strip() for m in out):
        raise BadRequest("every message is empty", "messages")
    return GenRequest(messages=tuple(out), prompt=None, **common)


def parse_completion(body, max_new_tokens: int) -> GenRequest:
    common = _common(body, max_new_tokens)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise BadRequest("'prompt' must be a non-empty string", "prompt")
    return GenRequest(messages=None, prompt=prompt, **common)
