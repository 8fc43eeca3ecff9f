"""Request execution shared by the HTTP and gRPC front ends: resolve the model, render the prompt, check
limits, admit, generate, record telemetry. Front ends only translate shapes and errors.
"""
from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Iterator

from edge_agent.engine import GrammarRefused, SamplingParams
from edge_agent.json_schema import errors, guidance_text
from edge_agent.openai_schema import BadRequest, GenRequest
from edge_agent.tool_calls import call_schema, could_be_call, parse_call
from edge_agent.runtime import Runtime
from edge_agent.state import AgentState


@dataclass
class Outcome:
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = ""
    adapter: str = ""
    # OpenAI-shaped tool calls ({"id", "type", "function": {"name", "arguments": JSON text}}) when the answer is one
    tool_calls: list = field(default_factory=list)
    logprobs: list | None = None    # per token (engine.Generation.logprobs), when the request asked for them
    more: list = field(default_factory=list)   # n > 1: the Outcomes of choices 1..n-1 (usage counts them all)
    text: str = ""                  # choices 1..n-1: the answer (choice 0's text is what run() yielded)


class StructuredOutputBroken(Exception):
    """A constrained answer that the grammar completed does not validate: a bug in the constraint, never the
    client's doing (a 500, logged)."""


def unsatisfiable(what: str) -> BadRequest:
    """No JSON value is empty: a constrained answer that ended before its first character means llguidance found
    nothing the schema admits (e.g. a $ref that only refers to itself)."""
    return BadRequest(f"'{what}': the schema admits no value (the grammar engine ended the answer at once)", what)


def plan(req: GenRequest) -> tuple[dict | None, str, list[dict], tuple]:
    """(schema the answer is generated under, mode, tools shown to the model, tools it may call). mode: "text"
    (free or response_format), "call" (tool_choice required or named: the answer is a call), "auto" (tool_choice
    auto: a call if the answer reads as one, tool_calls.py; with a response_format the answer follows it)."""
    shown = [{"name": n, "description": d, "parameters": p} for n, d, p in req.tools] \
        if req.tool_choice != "none" else []
    if req.tool_choice in ("none", "auto") or not req.tools:
        return req.json_schema, "auto" if shown else "text", shown, req.tools if shown else ()
    allowed = req.tools if req.tool_choice == "required" else tuple(t for t in req.tools if t[0] == req.tool_choice)
    return call_schema(allowed), "call", shown, allowed


def tool_call(call: dict) -> dict:
    return {"id": "call_" + uuid.uuid4().hex[:24], "type": "function",
            "function": {"name": call["name"], "arguments": json.dumps(call["arguments"])}}


def resolve_model(requested: str, name: str, ref: str, adapters: dict) -> str | None:
    """The adapter a request names (`BASE` or `BASE:ADAPTER`; BASE is the name or name@version), or a 404."""
    if not requested:
        return None
    base, _, adapter = requested.partition(":")
    if base not in (name, ref):
        raise BadRequest(f"model {requested!r} is not served here; this agent serves {name!r}"
                         + (f" with adapters {', '.join(sorted(adapters))}" if adapters else ""),
                         "model", status=404, code="model_not_found")
    if not adapter and requested.endswith(":"):
        raise BadRequest(f"model {requested!r} names an empty adapter", "model", status=404, code="model_not_found")
    if adapter and adapter not in adapters:
        raise BadRequest(f"adapter {adapter!r} is not loaded for {name!r}; available: "
                         f"{', '.join(sorted(adapters)) or 'none'}", "model", status=404, code="model_not_found")
    return adapter or None


def interleaved(answers: list) -> Iterator[tuple[int, str]]:
    """(choice index, piece) of several choices as their pieces come. One choice is read here; more (rows of one
    batch, n > 1) are each drained by a short-lived thread that waits on its row, so a slow row never holds back
    another's pieces. A choice's error is raised here; the threads end with their rows (the caller cancels them)."""
    if len(answers) == 1:
        yield from ((0, p) for p in answers[0])
        return
    q: queue.SimpleQueue = queue.SimpleQueue()

    def drain(i: int, it) -> None:
        try:
            for piece in it:
                q.put((i, piece, None))
            q.put((i, None, None))
        except BaseException as e:   # handed to the reader, raised there
            q.put((i, None, e))
    for i, it in enumerate(answers):
        threading.Thread(target=drain, args=(i, it), name=f"choice-{i}", daemon=True).start()
    open_ = len(answers)
    while open_:
        i, piece, error = q.get()
        if error is not None:
            raise error
        if piece is None:
            open_ -= 1
        else:
            yield i, piece


class Serving:
    def __init__(self, runtime: Runtime, state: AgentState, max_prompt_tokens: int, max_new_tokens: int,
                 request_timeout_s: float):
        self.runtime = runtime
        self.state = state
        self.max_prompt_tokens = max_prompt_tokens
        self.max_new_tokens = max_new_tokens
        self.timeout = request_timeout_s

    def served_model(self) -> str:
        slot = self.runtime.slot
        return slot.manifest.name if slot else ""

    def run(self, req: GenRequest, endpoint: str, outcome: Outcome, cancelled=lambda: False,
            choices: bool = False) -> Iterator:
        """Yields choice 0's text pieces, or with `choices` (a stream of n > 1) (choice index, piece) of every
        choice as they come; fills `outcome` (and outcome.more) as it goes. Raises BadRequest/QueueFull/NotReady
        before the first piece, never after."""
        t0 = time.monotonic()
        first = None
        status, detail = "ok", ""
        done = threading.Event()   # the consumer stopped or an error ended the request: the other rows stop too
        try:
            with self.runtime.admit(wait_s=self.timeout) as slot:
                m = slot.manifest
                engine = slot.engine
                adapter = resolve_model(req.model, m.name, m.ref, getattr(engine, "adapter_versions", {}))
                outcome.model = f"{m.ref}:{adapter}" if adapter else m.ref
                outcome.adapter = adapter or ""
                schema, mode, shown, callable_tools = plan(req)
                if req.messages is None:
                    prompt = req.prompt
                else:
                    prompt = engine.chat.render(list(req.messages), **({"tools": shown} if shown else {}))
                n_prompt = engine.count_tokens(prompt)
                outcome.prompt_tokens = n_prompt
                room = min(self.max_prompt_tokens, engine.context_length - 1)
                if n_prompt > room:
                    raise BadRequest(f"prompt has {n_prompt} tokens; the limit is {room}", "messages",
                                     status=413, code="context_length_exceeded")
                g = m.generation
                max_new = min(req.max_tokens or g.get("max_tokens", 128), self.max_new_tokens,
                              engine.context_length - n_prompt)
                params = SamplingParams(
                    max_new_tokens=max_new,
                    temperature=req.temperature if req.temperature is not None else g.get("temperature", 0.0),
                    top_p=req.top_p if req.top_p is not None else g.get("top_p", 1.0),
                    top_k=req.top_k if req.top_k is not None else g.get("top_k", 50),
                    repetition_penalty=g.get("repetition_penalty", 1.0), seed=req.seed,
                    stop=req.stop + tuple(m.chat_format.get("stop", ())),
                    guidance=("json_schema", guidance_text(schema)) if schema is not None else None,
                    top_logprobs=req.top_logprobs if req.logprobs else None)
                deadline = t0 + self.timeout
                try:
                    gens = engine.generate_n(prompt, params, req.n,
                                             cancelled=lambda: cancelled() or done.is_set()
                                             or time.monotonic() > deadline,
                                             **({"adapter": adapter} if adapter else {}))
                except GrammarRefused as e:
                    what = "tools" if mode == "call" else "response_format"
                    raise BadRequest(f"'{what}': the grammar engine cannot build this schema: {e}", what) from None
                outcome.more = [Outcome(model=outcome.model, prompt_tokens=n_prompt, adapter=outcome.adapter)
                                for _ in gens[1:]]
                answers = [self._answer(g, req, mode, schema, callable_tools, o)
                           for g, o in zip(gens, [outcome] + outcome.more)]
                for i, piece in interleaved(answers):
                    if first is None:
                        first = time.monotonic()
                    if i:
                        outcome.more[i - 1].text += piece
                    if choices:
                        yield i, piece
                    elif i == 0:
                        yield piece
                outcome.completion_tokens += sum(o.completion_tokens for o in outcome.more)
                if any(g.finish_reason == "cancelled" for g in gens):
                    status = "timeout" if time.monotonic() > deadline else "cancelled"
        except BadRequest as e:
            status, detail = f"http_{e.status}", str(e)
            raise
        except GeneratorExit:
            status = "cancelled"
            raise
        except Exception as e:
            status, detail = "error", f"{type(e).__name__}: {e}"
            raise
        finally:
            done.set()
            total = (time.monotonic() - t0) * 1000
            self.state.record("request", endpoint, model=outcome.model, latency_ms=total,
                              first_token_ms=((first or time.monotonic()) - t0) * 1000,
                              tokens_in=outcome.prompt_tokens, tokens_out=outcome.completion_tokens,
                              outcome=status, detail=detail, adapter=outcome.adapter)

    def _answer(self, gen, req: GenRequest, mode: str, schema, callable_tools, outcome: Outcome) -> Iterator[str]:
        """One choice: its pieces, held while they may be a tool call; fills `outcome` (tokens, finish reason,
        tool calls, logprobs) and checks a finished structured answer."""
        outcome.logprobs = gen.logprobs if req.logprobs else None
        text, held = "", mode != "text"
        for piece in gen:
            outcome.completion_tokens = gen.completion_tokens
            text += piece
            if held and (mode == "call" or could_be_call(text)):
                continue
            yield text if held else piece   # held text is let go at once when it cannot be a call
            held = False
        outcome.completion_tokens = gen.completion_tokens
        outcome.finish_reason = gen.finish_reason
        if held and gen.finish_reason != "cancelled":
            call = parse_call(text, callable_tools)
            if call is None and mode == "call" and gen.ended_by_model:
                if not text.strip():
                    raise unsatisfiable("tools")
                raise StructuredOutputBroken(f"a forced tool call did not parse: {text[:200]!r}")
            if call is not None:
                outcome.tool_calls = [tool_call(call)]
                outcome.finish_reason = "tool_calls"
            elif text:
                yield text
        if mode != "call" and schema is not None and not outcome.tool_calls and gen.finish_reason != "cancelled":
            self._check(text, schema, gen)

    @staticmethod
    def _check(text: str, schema: dict, gen) -> None:
        """A structured answer the model finished must parse and validate (the grammar guarantees it; checked
        anyway). One cut by max_tokens or a stop string is returned as it is, finish_reason telling why."""
        if not gen.ended_by_model:
            return
        if not text.strip():
            raise unsatisfiable("response_format")
        try:
            value = json.loads(text)
        except ValueError as e:
            raise StructuredOutputBroken(f"a finished structured answer is not JSON ({e}): {text[:200]!r}") from None
        bad = errors(value, schema)
        if bad:
            raise StructuredOutputBroken(f"a finished structured answer breaks its schema: {'; '.join(bad[:3])}")
