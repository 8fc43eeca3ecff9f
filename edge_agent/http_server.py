"""uvicorn for the agent's HTTP API, with limits a device on a shared network needs: a deadline for each request
head (a connection that sends no or half a request line is closed, so half-open connections cannot pile up
until the process runs out of file descriptors), a cap on open connections (enforced at once, below the
descriptor limit: the oldest idle connection makes room), uvicorn's own keep-alive timeout, concurrency limit
(503) and header size limit (h11). The body's size and time limits are the app's (http_api.read_json), applied while it is read.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("slmops.agent.http")


@dataclass(frozen=True)
class HttpLimits:
    header_timeout_s: float = 10.0       # from connect (or the last response) to a whole request head
    keep_alive_s: int = 5                # idle keep-alive connections are closed after this
    max_connections: int = 256           # open connections; more are closed at once
    max_header_bytes: int = 32 << 10     # a request head larger than this is a 400 (h11)
    backlog: int = 128


def guarded_protocol(limits: HttpLimits) -> type[H11Protocol]:
    class GuardedH11(H11Protocol):
        _head_generation = 0

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._connected_at = self.loop.time()
            if len(self.connections) > limits.max_connections:
                # Make room by closing the oldest connection that is not answering a request (idle or still
                # without a whole request head); with none idle, this one is refused.
                idle = [c for c in self.connections if c is not self and isinstance(c, GuardedH11) and c._idle()]
                victim = min(idle, key=lambda c: c._connected_at) if idle else self
                victim._refused(f"more than {limits.max_connections} open connections")
                if victim is self:
                    return
            self._arm_head_deadline()

        def _idle(self) -> bool:
            return not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_head_deadline()

        def _arm_head_deadline(self) -> None:
            self._head_generation += 1
            self.loop.call_later(limits.header_timeout_s, self._head_deadline, self._head_generation)

        def _head_deadline(self, generation: int) -> None:
            if generation != self._head_generation or self.transport.is_closing():
                return
            if not self._idle():
                return   # a request is being answered: its body and generation have their own limits
            self._refused(f"no complete request head within {limits.header_timeout_s:g} s")

        def _refused(self, why: str) -> None:
            log.debug("closing connection from %s: %s", self.client[0] if self.client else "?", why)  # no flood
            self.transport.close()

    return GuardedH11


def make_server(app, host: str, port: int, limits: HttpLimits = HttpLimits(), **kw) -> uvicorn.Server:
    # uvicorn's limit_concurrency counts connections and running requests; connections are capped above, so it
    # sits one higher, or the last allowed connection would only ever get 503s.
    config = uvicorn.Config(app, host=host, port=port, http=guarded_protocol(limits), ws="none",
                            lifespan="off", log_level=kw.pop("log_level", "warning"), access_log=False,
                            timeout_keep_alive=limits.keep_alive_s, limit_concurrency=limits.max_connections + 1,
                            h11_max_incomplete_event_size=limits.max_header_bytes, backlog=limits.backlog, **kw)
    return uvicorn.Server(config)
