"""Tool calls, pure: the JSON schema a forced call is generated under, and the rule that reads a call out of an
answer. A call is one JSON object {"name": TOOL, "arguments": {...}} (one call per answer).

tool_choice "required" or a named function: the answer is generated under guidance with `call_schema`, so it is
always such an object (name among the allowed tools, arguments valid against that tool's parameters).
tool_choice "auto": the model answers freely; the answer is a call when its whole text, trimmed and optionally
inside the chat format's <tool_call></tool_call> tags, is a JSON object naming one of the tools whose arguments
validate against its parameters. Anything else is text. While streaming, text is held back only as long as the
answer so far could still become a call (it is empty, starts with "{", or starts like the opening tag).
"""
from __future__ import annotations

import json

from edge_agent.json_schema import errors

OPEN, CLOSE = "<tool_call>", "</tool_call>"


def call_schema(tools: tuple[tuple[str, str, dict], ...]) -> dict:
    """One schema for a call to any of `tools`; their $defs/definitions are hoisted to the root so local $refs
    still resolve. Raises ValueError when two tools define the same definition name differently."""
    defs: dict[str, dict] = {}
    alts = []
    for name, _, params in tools:
        params = dict(params)
        for key in ("$defs", "definitions"):
            for k, v in params.pop(key, {}).items():
                if defs.setdefault(key, {}).setdefault(k, v) != v:
                    raise ValueError(f"tools define {key}/{k} differently; give each definition its own name")
        alts.append({"type": "object", "properties": {"name": {"const": name}, "arguments": params},
                     "required": ["name", "arguments"], "additionalProperties": False})
    return {"anyOf": alts, **defs} if len(alts) > 1 else {**alts[0], **defs}


def parse_call(text: str, tools: tuple[tuple[str, str, dict], ...]) -> dict | None:
    """{"name", "arguments"} when `text` is a valid call to one of `tools` (the auto rule above), else None."""
    s = text.strip()
    if s.startswith(OPEN) and s.endswith(CLOSE):
        s = s[len(OPEN):-len(CLOSE)].strip()
    if not s.startswith("{"):
        return None
    try:
        obj = json.loads(s)
    except ValueError:
        return None
    if not isinstance(obj, dict) or set(obj) != {"name", "arguments"}:
        return None
    by_name = {name: params for name, _, params in tools}
    params = by_name.get(obj["name"]) if isinstance(obj["name"], str) else None
    if params is None or not isinstance(obj["arguments"], dict) or errors(obj["arguments"], params):
        return None
    return obj


def could_be_call(text: str) -> bool:
    """Whether an answer that starts with `text` may still turn out to be a call (streaming holds it back)."""
    s = text.lstrip()
    return not s or s.startswith("{") or s.startswith(OPEN) or OPEN.startswith(s)
