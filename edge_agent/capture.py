"""Opt-in sampled capture of prompt/response pairs, for the next distillation round. Off by default
(rate 0). A sampled request's messages (or prompt) and answer pass through a redaction hook, then go to
the outbox as a "capture" event; the control plane exports them as JSONL (GET /api/captures.jsonl).

The redaction hook is any callable str -> str ("module:function" in the config); the default masks e-mail
addresses, phone-like and long digit runs, and IPv4 addresses.
"""
from __future__ import annotations

import importlib
import json
import random
from typing import Callable, Iterator

from edge_agent.serving import Serving
from slmops.redact import redact_default

MAX_CAPTURE_CHARS = 16000
__all__ = ["CapturingServing", "capture_record", "load_redactor", "redact_default"]


def load_redactor(spec: str) -> Callable[[str], str]:
    """"" -> the default; "package.module:function" -> that callable."""
    if not spec:
        return redact_default
    module, _, name = spec.partition(":")
    if not name:
        raise ValueError(f"redactor {spec!r} must be 'module:function'")
    fn = getattr(importlib.import_module(module), name)
    if not callable(fn):
        raise ValueError(f"redactor {spec!r} is not callable")
    return fn


def capture_record(req, response: str, redact: Callable[[str], str], finish_reason: str = "",
                   tool_calls: list = ()) -> str:
    """The JSON text stored for one pair (pure). Chat requests keep their messages; completions their prompt;
    both the finish reason (stop, length, ...: the output drift signals read it). An answer that is a tool call
    keeps the call ({"name", "arguments"}, the arguments' JSON text redacted too).
    Too long a pair is dropped to the empty string rather than stored half (it would not parse)."""
    if req.messages is not None:
        pair = {"messages": [{"role": m["role"], "content": redact(m["content"])} for m in req.messages],
                "response": redact(response)}
    else:
        pair = {"prompt": redact(req.prompt or ""), "response": redact(response)}
    if finish_reason:
        pair["finish_reason"] = finish_reason
    if tool_calls:
        pair["tool_calls"] = [{"name": c["function"]["name"], "arguments": redact(c["function"]["arguments"])}
                              for c in tool_calls]
    text = json.dumps(pair, ensure_ascii=False)
    return text if len(text) <= MAX_CAPTURE_CHARS else ""


class CapturingServing(Serving):
    """Serving that records a sampled share of completed requests (same behaviour otherwise)."""

    def __init__(self, *args, capture_rate: float, redact: Callable[[str], str] = redact_default,
                 rng: random.Random | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.capture_rate, self.redact, self.rng = capture_rate, redact, rng or random.Random()

    def run(self, req, endpoint: str, outcome, cancelled=lambda: False, choices: bool = False) -> Iterator:
        pieces = []   # choice 0's answer is the one captured
        for item in super().run(req, endpoint, outcome, cancelled, choices):
            if not choices:
                pieces.append(item)
            elif item[0] == 0:
                pieces.append(item[1])
            yield item
        if outcome.finish_reason not in ("cancelled", "") and self.rng.random() < self.capture_rate:
            record = capture_record(req, "".join(pieces), self.redact, outcome.finish_reason, outcome.tool_calls)
            if record:
                self.state.record("capture", endpoint, model=outcome.model, detail=record,
                                  detail_limit=MAX_CAPTURE_CHARS)
