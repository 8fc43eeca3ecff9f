"""Request execution shared by the HTTP and gRPC front ends: resolve the model, render the prompt, check
limits, admit, generate, record telemetry. Front ends only translate shapes and errors.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator

from edge_agent.engine import SamplingParams
from edge_agent.openai_schema import BadRequest, GenRequest
from edge_agent.runtime import Runtime
from edge_agent.state import AgentState


@dataclass
class Outcome:
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = ""
    adapter: str = ""


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

    def run(self, req: GenRequest, endpoint: str, outcome: Outcome, cancelled=lambda: False) -> Iterator[str]:
        """Yields text pieces; fills `outcome` as it goes. Raises BadRequest/QueueFull/NotReady before the
        first piece, never after."""
        t0 = time.monotonic()
        first = None
        status, detail = "ok", ""
        try:
            with self.runtime.admit(wait_s=self.timeout) as slot:
                m = slot.manifest
                engine = slot.engine
                adapter = resolve_model(req.model, m.name, m.ref, getattr(engine, "adapter_versions", {}))
                outcome.model = f"{m.ref}:{adapter}" if adapter else m.ref
                outcome.adapter = adapter or ""
                prompt = engine.chat.render(list(req.messages)) if req.messages is not None else req.prompt
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
                    stop=req.stop + tuple(m.chat_format.get("stop", ())))
                deadline = t0 + self.timeout
                gen = engine.generate(prompt, params,
                                      cancelled=lambda: cancelled() or time.monotonic() > deadline,
                                      **({"adapter": adapter} if adapter else {}))
                for piece in gen:
                    if first is None:
                        first = time.monotonic()
                    outcome.completion_tokens = gen.completion_tokens
                    yield piece
                outcome.completion_tokens = gen.completion_tokens
                outcome.finish_reason = gen.finish_reason
                if gen.finish_reason == "cancelled":
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
            total = (time.monotonic() - t0) * 1000
            self.state.record("request", endpoint, model=outcome.model, latency_ms=total,
                              first_token_ms=((first or time.monotonic()) - t0) * 1000,
                              tokens_in=outcome.prompt_tokens, tokens_out=outcome.completion_tokens,
                              outcome=status, detail=detail, adapter=outcome.adapter)
