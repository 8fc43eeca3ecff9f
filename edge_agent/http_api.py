"""OpenAI-compatible HTTP API (Starlette). Handlers translate JSON <-> Serving calls and map errors to
OpenAI's error shape: 400 invalid, 401 key, 404 model, 413 too long, 429 busy (Retry-After), 503 not ready.
"""
from __future__ import annotations

import asyncio
import json
import logging
import secrets
import threading
import time
import uuid
from typing import Iterator

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

from edge_agent import feedback
from edge_agent.openai_schema import BadRequest, GenRequest, parse_chat, parse_completion, parse_json_body
from edge_agent.runtime import NotReady, QueueFull
from edge_agent.serving import Outcome, Serving, StructuredOutputBroken

MAX_BODY_BYTES = 1 << 20
BODY_TIMEOUT_S = 30.0
log = logging.getLogger("slmops.agent.http")


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The request body, read piece by piece and cut off at `limit` bytes (413) or after `timeout_s` (408): a
    larger body is never held in memory, a declared Content-Length over the limit is refused before reading."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BadRequest(f"Content-Length {declared[:40]!r} is not a number")
        if int(declared) > limit:
            raise BadRequest(f"request body of {declared} bytes exceeds {limit}", status=413)
    pieces, size = [], 0

    async def read() -> None:
        nonlocal size
        async for piece in request.stream():
            size += len(piece)
            if size > limit:
                raise BadRequest(f"request body exceeds {limit} bytes", status=413)
            pieces.append(piece)

    try:
        await asyncio.wait_for(read(), timeout_s)
    except asyncio.TimeoutError:
        raise BadRequest(f"request body not received within {timeout_s:g} s", status=408) from None
    return b"".join(pieces)


def error(status: int, message: str, type_: str = "invalid_request_error", param=None, code=None,
          headers=None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "param": param, "code": code}},
                        status_code=status, headers=headers)


def build_app(serving: Serving, api_keys: tuple[str, ...] = (), metrics=None,
              body_timeout_s: float = BODY_TIMEOUT_S) -> Starlette:
    def authorized(request: Request) -> bool:
        if not api_keys:
            return True
        got = request.headers.get("authorization", "")
        token = got[7:] if got.startswith("Bearer ") else ""
        return any(secrets.compare_digest(token, k) for k in api_keys)

    async def read_json(request: Request):
        return parse_json_body(await read_body(request, MAX_BODY_BYTES, body_timeout_s))

    def handler(parse, kind: str):
        async def endpoint(request: Request):
            if not authorized(request):
                return error(401, "missing or wrong API key (Authorization: Bearer KEY)", "authentication_error",
                             code="invalid_api_key")
            try:
                req = parse(await read_json(request), serving.max_new_tokens)
                if req.stream:
                    return await stream(req, kind)
                return await complete(req, kind)
            except BadRequest as e:
                # a body refused before it was read whole leaves bytes on the connection: close it after answering
                close = {"Connection": "close"} if e.status in (408, 413) else None
                return error(e.status, str(e), param=e.param, code=e.code, headers=close)
            except ClientDisconnect:   # hung up before the whole body arrived: nobody to answer, nothing failed
                log.info("client disconnected before sending the whole request body")
                return error(400, "the client disconnected before sending the whole request body")
            except QueueFull as e:
                return error(429, f"server busy: {e}", "rate_limit_error", headers={"Retry-After": "1"})
            except NotReady as e:
                return error(503, f"not ready: {e}", "service_unavailable")
            except StructuredOutputBroken as e:   # a constrained answer that does not validate: say so
                log.error("structured output failed its check: %s", e)
                return error(500, str(e), "server_error")
            except Exception as e:  # the model failed, not the request: a 500 in OpenAI's shape, logged
                log.error("generation failed: %s: %s", type(e).__name__, e)
                return error(500, f"the model failed to generate: {type(e).__name__}", "server_error")
        return endpoint

    async def complete(req: GenRequest, kind: str):
        outcome = Outcome(model="")
        text = await run_in_threadpool(lambda: "".join(serving.run(req, kind, outcome)))
        return JSONResponse(body(kind, text, outcome, final=True))

    async def stream(req: GenRequest, kind: str):
        outcome = Outcome(model="")
        cancelled = threading.Event()
        cid = "chatcmpl-" + uuid.uuid4().hex[:24]
        framers: dict = {}   # choice index -> its SSE framer (the chunk's JSON around the piece, rendered once)
        sent: dict = {}      # choice index -> (tokens, characters) whose logprobs went out

        def frame(item: tuple[int, str]) -> bytes:  # on the generating thread, between tokens: the loop only writes
            i, piece = item
            o = outcome.more[i - 1] if i else outcome
            if o.logprobs is not None:   # the logprobs of the tokens this piece came from ride with it
                return sse(with_logprobs(kind, chunk(kind, cid, piece, outcome, None, index=i), o, sent, i))
            if i not in framers:   # the model's name is known once a piece exists
                framers[i] = sse_framer(kind, cid, outcome, i)
            return framers[i](piece)

        pieces = map(frame, serving.run(req, kind, outcome, cancelled=cancelled.is_set, choices=True))
        pump = Pump(pieces, asyncio.get_running_loop())
        try:
            # Wait for the first piece before answering, so errors (404, 413, 429, 503) are real HTTP statuses.
            first = await pump.take()
        except BaseException:
            cancelled.set()
            pump.first_sent()
            raise

        async def events():
            batch = first
            try:
                while batch:
                    # Pieces that arrived while the last write was under way go out together: one write, one
                    # wake-up, each piece still its own SSE event.
                    yield b"".join(batch)
                    pump.first_sent()
                    batch = await pump.take()
                every = [outcome] + outcome.more
                for i, o in enumerate(every):
                    if o.tool_calls:   # a call is sent whole in one delta (clients concatenate the pieces)
                        c = chunk(kind, cid, "", outcome, None, index=i)
                        c["choices"][0]["delta"] = {"role": "assistant", "content": None, "tool_calls": [
                            dict(call, index=k) for k, call in enumerate(o.tool_calls)]}
                        yield sse(c)
                for i, o in enumerate(every):   # usage (all choices) rides with the last choice's end
                    yield sse(chunk(kind, cid, "", outcome, o.finish_reason or "stop", usage_=i == len(every) - 1,
                                    index=i))
                yield b"data: [DONE]\n\n"
            finally:
                cancelled.set()  # client gone or done: the generation stops within a token and frees its slot
                pump.first_sent()
        def closed():  # also when the client left before the body started (events() then never runs)
            cancelled.set()
            pump.first_sent()
        return EventStream(events(), closed, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def models(request: Request):
        if not authorized(request):
            return error(401, "missing or wrong API key", "authentication_error", code="invalid_api_key")
        slot = serving.runtime.slot
        data = []
        if slot:
            m = slot.manifest
            created = int(m.created_unix_ms / 1000)
            ep = provider(slot.engine)
            data.append({"id": m.name, "object": "model", "created": created, "owned_by": "slmops",
                         "version": m.version, "precision": m.precision, "execution_provider": ep})
            for name, version in sorted(getattr(slot.engine, "adapter_versions", {}).items()):
                data.append({"id": f"{m.name}:{name}", "object": "model", "created": created, "owned_by": "slmops",
                             "version": version, "parent": m.name, "base_version": m.version,
                             "execution_provider": ep})
        return JSONResponse({"object": "list", "data": data})

    async def healthz(request: Request):
        return JSONResponse({"status": "alive"})

    async def readyz(request: Request):
        slot = serving.runtime.slot
        if slot is None:
            return JSONResponse({"status": "not ready", "model": None}, status_code=503)
        return JSONResponse({"status": "ready", "model": slot.manifest.ref, "provider": provider(slot.engine),
                             "provider_fallbacks": [{"provider": p, "reason": r}
                                                    for p, r in getattr(slot.engine, "fallbacks", ())]})

    async def metrics_endpoint(request: Request):
        text = metrics() if metrics else ""
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    routes = [Route("/v1/chat/completions", handler(parse_chat, "chat"), methods=["POST"]),
              Route("/v1/completions", handler(parse_completion, "completion"), methods=["POST"]),
              Route("/v1/models", models, methods=["GET"]),
              Route("/v1/feedback", feedback.endpoint(serving, authorized, read_json, error), methods=["POST"]),
              Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", metrics_endpoint)]
    return Starlette(routes=routes)


class EventStream(StreamingResponse):
    """A StreamingResponse that calls `closed` once the response is over, however it ended."""

    def __init__(self, content, closed, **kw):
        super().__init__(content, **kw)
        self._closed = closed

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._closed()


class Pump:
    """Runs a blocking iterator (one generation) to its end on a worker thread and hands what it yields to the
    event loop. The generator never waits for the network (the next token is computed while the last one is
    written), and the loop is woken only when it is waiting, not once per piece.
    onnxruntime-genai holds the GIL while it computes a token, so the event loop runs only between tokens: after
    the first piece the generator waits (up to FIRST_HOLD_S) until the consumer calls `first_sent`, else the
    response's start and first piece would each wait out a token and the first-token latency grow by several."""

    FIRST_HOLD_S = 1.0

    def __init__(self, it: Iterator, loop: asyncio.AbstractEventLoop):
        self._it, self._loop = it, loop
        self._first_sent = threading.Event()
        self._lock = threading.Lock()
        self._items: list = []
        self._waiter: asyncio.Future | None = None
        self._done = False
        self._error: BaseException | None = None
        # A pooled worker thread (already running: starting a fresh thread blocks the loop until the OS schedules
        # it, tens of ms on a busy 2-core box); the task is kept so the loop does not drop it.
        self._task = loop.create_task(run_in_threadpool(self._run))

    def _run(self) -> None:
        try:
            for item in self._it:
                with self._lock:
                    self._items.append(item)
                    waiter, self._waiter = self._waiter, None
                if waiter is not None:
                    self._loop.call_soon_threadsafe(_wake, waiter)
                if not self._first_sent.is_set():
                    self._first_sent.wait(self.FIRST_HOLD_S)
        except BaseException as e:  # handed to the consumer, raised there
            self._error = e
        finally:
            with self._lock:
                self._done = True
                waiter, self._waiter = self._waiter, None
            if waiter is not None:
                self._loop.call_soon_threadsafe(_wake, waiter)

    def first_sent(self) -> None:
        """The first piece is on the wire (or never will be): the generator goes on."""
        self._first_sent.set()

    async def take(self) -> list:
        """Every item produced since the last take (waits for one); [] at the end; the iterator's error, raised."""
        while True:
            with self._lock:
                if self._items:
                    items, self._items = self._items, []
                    return items
                if self._done:
                    if self._error is not None:
                        raise self._error
                    return []
                waiter = self._waiter = self._loop.create_future()
            await waiter


def _wake(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


def sse_framer(kind: str, cid: str, o: Outcome, index: int = 0):
    """piece -> its SSE event bytes for choice `index`: the chunk's JSON around the piece is rendered once."""
    head, tail = json.dumps(chunk(kind, cid, "\x00", o, None, index=index)).split('"\\u0000"')
    head, tail = b"data: " + head.encode(), tail.encode() + b"\n\n"
    return lambda piece: head + json.dumps(piece).encode() + tail


def provider(engine) -> str:
    """The execution provider a loaded engine runs on (the first of the preference list that loaded)."""
    return getattr(engine, "provider", "") or "cpu"


def sse(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def usage(o: Outcome) -> dict:
    return {"prompt_tokens": o.prompt_tokens, "completion_tokens": o.completion_tokens,
            "total_tokens": o.prompt_tokens + o.completion_tokens}


def body(kind: str, text: str, o: Outcome, final: bool) -> dict:
    created = int(time.time())
    choices = [choice(kind, i, t, c) for i, (t, c) in enumerate([(text, o)] + [(m.text, m) for m in o.more])]
    if kind == "chat":
        return {"id": "chatcmpl-" + uuid.uuid4().hex[:24], "object": "chat.completion", "created": created,
                "model": o.model, "choices": choices, "usage": usage(o)}
    return {"id": "cmpl-" + uuid.uuid4().hex[:24], "object": "text_completion", "created": created,
            "model": o.model, "choices": choices, "usage": usage(o)}


def choice(kind: str, index: int, text: str, o: Outcome) -> dict:
    if kind == "chat":
        message = {"role": "assistant", "content": text}
        if o.tool_calls:
            message = {"role": "assistant", "content": text or None, "tool_calls": o.tool_calls}
        return {"index": index, "message": message,
                "logprobs": None if o.logprobs is None else {"content": o.logprobs},
                "finish_reason": o.finish_reason or "stop"}
    return {"index": index, "text": text, "finish_reason": o.finish_reason or "stop",
            "logprobs": None if o.logprobs is None else legacy_logprobs(o.logprobs)}


def legacy_logprobs(entries: list, offset: int = 0) -> dict:
    """/v1/completions' shape of the engine's per-token logprobs (text_offset counts from the answer's start)."""
    offsets = []
    for t in entries:
        offsets.append(offset)
        offset += len(t["token"])
    return {"tokens": [t["token"] for t in entries], "token_logprobs": [t["logprob"] for t in entries],
            "top_logprobs": [{x["token"]: x["logprob"] for x in t["top_logprobs"]} for t in entries],
            "text_offset": offsets}


def with_logprobs(kind: str, c: dict, o: Outcome, sent: dict, index: int = 0) -> dict:
    """A stream chunk with the logprobs of the choice's tokens not sent yet (they came with this piece);
    `sent[index]`: (tokens, characters) already sent."""
    done, offset = sent.get(index, (0, 0))
    new = o.logprobs[done:]
    c["choices"][0]["logprobs"] = {"content": new} if kind == "chat" else legacy_logprobs(new, offset)
    sent[index] = (len(o.logprobs), offset + sum(len(t["token"]) for t in new))
    return c


def chunk(kind: str, cid: str, text: str, o: Outcome, finish, usage_: bool = False, index: int = 0) -> dict:
    created = int(time.time())
    if kind == "chat":
        d = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": o.model,
             "choices": [{"index": index, "delta": {"content": text} if text or finish is None else {},
                          "finish_reason": finish}]}
    else:
        d = {"id": cid, "object": "text_completion", "created": created, "model": o.model,
             "choices": [{"index": index, "text": text, "finish_reason": finish, "logprobs": None}]}
    if usage_:
        d["usage"] = usage(o)
    return d
