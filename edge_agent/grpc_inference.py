"""The agent's gRPC inference service (slmops.v1.Inference): the same request checks, limits, queue,
telemetry and errors as the HTTP API, because both hand the request to Serving. Errors map onto gRPC codes:
400 -> INVALID_ARGUMENT, 401 -> UNAUTHENTICATED, 404 -> NOT_FOUND, 413 -> OUT_OF_RANGE,
429 -> RESOURCE_EXHAUSTED, 503 -> UNAVAILABLE, a model failure -> INTERNAL.
"""
from __future__ import annotations

import json
import logging
import secrets
from concurrent import futures

import grpc

from edge_agent.openai_schema import BadRequest, parse_chat
from edge_agent.runtime import NotReady, QueueFull
from edge_agent.serving import Outcome, Serving
from slmops.v1 import inference_pb2, inference_pb2_grpc

log = logging.getLogger("slmops.agent.grpc")
STATUS = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
          404: grpc.StatusCode.NOT_FOUND, 413: grpc.StatusCode.OUT_OF_RANGE}


def request_body(req: inference_pb2.GenerateRequest) -> dict:
    body = {"model": req.model, "messages": [{"role": m.role, "content": m.content} for m in req.messages]}
    if req.max_tokens:
        body["max_tokens"] = req.max_tokens
    for field in ("temperature", "top_p", "top_k", "seed"):
        if req.HasField(field):
            body[field] = getattr(req, field)
    if req.stop:
        body["stop"] = list(req.stop)
    if req.json_schema:
        try:
            schema = json.loads(req.json_schema)
        except ValueError as e:
            raise BadRequest(f"'json_schema' is not valid JSON: {e}", "json_schema") from None
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "grpc", "schema": schema}}
    elif req.json_object:
        body["response_format"] = {"type": "json_object"}
    return body


class InferenceServicer(inference_pb2_grpc.InferenceServicer):
    def __init__(self, serving: Serving, api_keys: tuple[str, ...] = ()):
        self.serving = serving
        self.api_keys = api_keys

    def _authorized(self, context) -> bool:
        if not self.api_keys:
            return True
        got = dict(context.invocation_metadata()).get("authorization", "")
        token = got[7:] if got.startswith("Bearer ") else ""
        return any(secrets.compare_digest(token, k) for k in self.api_keys)

    def Generate(self, request, context):
        if not self._authorized(context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong API key (authorization: Bearer KEY)")
        outcome = Outcome(model="")
        try:
            req = parse_chat(request_body(request), self.serving.max_new_tokens)
            pieces = self.serving.run(req, "grpc", outcome, cancelled=lambda: not context.is_active())
            for piece in pieces:
                yield inference_pb2.GenerateChunk(text=piece, model=outcome.model)
        except BadRequest as e:
            context.abort(STATUS.get(e.status, grpc.StatusCode.INVALID_ARGUMENT), str(e))
        except QueueFull as e:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"server busy: {e}")
        except NotReady as e:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"not ready: {e}")
        except Exception as e:  # the model failed, not the request
            log.error("generation failed: %s: %s", type(e).__name__, e)
            context.abort(grpc.StatusCode.INTERNAL, f"the model failed to generate: {type(e).__name__}")
        yield inference_pb2.GenerateChunk(finish_reason=outcome.finish_reason or "stop", model=outcome.model,
                                          prompt_tokens=outcome.prompt_tokens,
                                          completion_tokens=outcome.completion_tokens)


def start_server(serving: Serving, address: str, api_keys: tuple[str, ...] = (), workers: int = 16) -> grpc.Server:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    inference_pb2_grpc.add_InferenceServicer_to_server(InferenceServicer(serving, api_keys), server)
    if server.add_insecure_port(address) == 0:
        raise OSError(f"could not bind the gRPC inference API on {address}")
    server.start()
    log.info("gRPC inference API on %s", address)
    return server
