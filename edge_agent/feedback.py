"""`POST /v1/feedback`: an app says how good an answer was, and the agent carries it to the control plane as a
telemetry event (kind "event", name "feedback", the request id as detail, `values.score`), where it feeds the
quality drift signal `feedback_score_drop` (control_plane/drift.py).

Body: {"request_id": "chatcmpl-...", "score": 0..1, "model": optional}. The request id is the `id` of the
answer (1-128 characters of letters, digits and . _ : -); the score is a number from 0 (bad) to 1 (good). The
feedback counts for the version serving when it arrives (feedback follows its answer within moments; a swap in
between is rare and only blurs one sample); a `model` that is not the one serving is refused (404).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from edge_agent.openai_schema import BadRequest

REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
FIELDS = frozenset({"request_id", "score", "model"})


@dataclass(frozen=True)
class Feedback:
    request_id: str
    score: float
    model: str = ""


def parse_feedback(body) -> Feedback:
    """A decoded JSON body -> Feedback, or a BadRequest naming the field (pure)."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object {request_id, score}")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise BadRequest(f"unknown field {unknown[0][:40]!r} (expected request_id, score, model)", unknown[0][:40])
    rid = body.get("request_id")
    if not isinstance(rid, str) or not REQUEST_ID.match(rid):
        raise BadRequest("request_id must be the answer's id: 1-128 letters, digits or . _ : -", "request_id")
    score = body.get("score")
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score) \
            or not 0 <= score <= 1:
        raise BadRequest(f"score must be a number from 0 (bad) to 1 (good), got {str(score)[:40]}", "score")
    model = body.get("model", "")
    if not isinstance(model, str) or len(model) > 200:
        raise BadRequest("model must be a string of at most 200 characters", "model")
    return Feedback(rid, float(score), model)


def record(state, slot, fb: Feedback) -> str:
    """Writes the event to the outbox; returns the version it counted for. BadRequest 404/503 if none fits."""
    if slot is None:
        raise BadRequest("no model is serving yet: feedback has nothing to count for", status=503,
                         code="model_not_ready")
    m = slot.manifest
    if fb.model and fb.model not in (m.name, m.ref) and not fb.model.startswith(m.name + ":"):
        raise BadRequest(f"model {fb.model!r} is not served here (serving {m.ref})", "model", 404, "model_not_found")
    state.record("event", "feedback", model=m.ref, outcome="ok", detail=fb.request_id, values={"score": fb.score})
    return m.ref


def endpoint(serving, authorized, read_json, error):
    """The Starlette handler (http_api.py registers it with its own auth check, body reader and error shape)."""
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import JSONResponse

    async def feedback(request):
        if not authorized(request):
            return error(401, "missing or wrong API key (Authorization: Bearer KEY)", "authentication_error",
                         code="invalid_api_key")
        try:
            fb = parse_feedback(await read_json(request))
            ref = await run_in_threadpool(record, serving.state, serving.runtime.slot, fb)
        except BadRequest as e:
            return error(e.status, str(e), param=e.param, code=e.code)
        return JSONResponse({"object": "feedback", "request_id": fb.request_id, "score": fb.score, "model": ref})
    return feedback
