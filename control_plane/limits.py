"""Limits on long-lived gRPC streams and on device calls in flight. The server is asyncio (control_plane/server.py):
an open stream costs a coroutine and its buffers, not a thread, but it still costs memory and a share of the
event loop, so without limits one device token (or one address, without any token) could open streams until
nothing is left for anyone else (Health/Check, Admin calls, other devices).

StreamGate decides (bookkeeping under a lock, O(1) per decision, no I/O): per device, at most `watch_per_device`
desired-state streams (a newer one replaces the oldest, so a reconnecting agent always gets through) and
`downloads_per_device` downloads, and `unary_per_device` device calls in flight at once (short, but one token
must not fill the blocking-work pool with them either); per peer address, at most `streams_per_peer` streams and
`health_watch_per_peer` health watches (unauthenticated); in all, at most `total_streams` and
`health_watch_total`. A refusal is RESOURCE_EXHAUSTED with the limit named (the agent retries with backoff).
StreamLimitInterceptor applies it, after the auth interceptor (control_plane/auth.py), so a device's streams are
counted against the device that signed them and an unauthenticated one against its address.
"""
from __future__ import annotations

import asyncio
import inspect
import itertools
import threading
from collections import Counter
from dataclasses import dataclass

import grpc

from control_plane.auth import current_device
from slmops.errors import ConfigError

WATCH, DOWNLOAD, HEALTH, ADMIN, UNARY = "watch", "download", "health", "admin", "unary"
DEVICE_SERVICES = ("/slmops.v1.Fleet/", "/slmops.v1.Artifacts/", "/slmops.v1.Telemetry/")
STREAM_KINDS = {"/slmops.v1.Fleet/WatchDesiredState": WATCH, "/slmops.v1.Artifacts/Download": DOWNLOAD,
                "/grpc.health.v1.Health/Watch": HEALTH, "/slmops.v1.Admin/PipelineLogs": ADMIN}
REPLACED = "replaced by a newer desired-state stream of this device"


@dataclass(frozen=True)
class StreamLimits:
    total_streams: int = 20_000        # open streams of every kind, in all (an asyncio stream is ~tens of KiB)
    streams_per_peer: int = 15_000     # one address (or NAT) may not hold them all
    watch_per_device: int = 2          # a third desired-state stream from one device replaces its oldest
    downloads_per_device: int = 8      # the agent downloads 4 chunks at a time
    unary_per_device: int = 16         # device calls in flight at once (report, upload, trust metadata)
    health_watch_per_peer: int = 4
    health_watch_total: int = 64

    def __post_init__(self) -> None:
        for name, value in self.__dict__.items():
            if value < 1:
                raise ConfigError(f"stream limit {name} must be at least 1, not {value}")

    @classmethod
    def for_total(cls, total_streams: int, streams_per_peer: int = 0) -> StreamLimits:
        """A stream budget, with 3/4 of it per address unless streams_per_peer says otherwise."""
        return cls(total_streams=total_streams,
                   streams_per_peer=streams_per_peer or max(1, total_streams * 3 // 4),
                   health_watch_total=max(1, min(64, total_streams // 8)))


@dataclass
class _Stream:
    kind: str
    peer: str
    device: str
    cancel: object          # called to end a stream that a newer one replaces


class StreamGate:
    def __init__(self, limits: StreamLimits):
        self.limits = limits
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._open: dict[int, _Stream] = {}
        self._streams = 0                               # open streams (every kind but UNARY)
        self._per_peer: Counter = Counter()             # peer -> open streams
        self._per_kind: Counter = Counter()             # kind -> open
        self._per_device: Counter = Counter()           # (kind, device) -> open
        self._health_per_peer: Counter = Counter()
        self._watches: dict[str, dict[int, None]] = {}  # device -> its watch tickets, oldest first

    def admit(self, kind: str, peer: str, device: str, cancel) -> tuple[int | None, str, list]:
        """(ticket, "", streams to end) when the stream may start; (None, why, []) when it is refused."""
        lim = self.limits
        with self._lock:
            if kind == UNARY:   # counted per device only: short calls, not part of the stream budget
                if self._per_device[UNARY, device] >= lim.unary_per_device:
                    return None, f"at most {lim.unary_per_device} calls at once per device", []
                return self._add(kind, peer, device, cancel), "", []
            if kind == HEALTH:
                if self._per_kind[HEALTH] >= lim.health_watch_total:
                    return None, f"too many health watch streams ({lim.health_watch_total} open)", []
                if self._health_per_peer[peer] >= lim.health_watch_per_peer:
                    return None, f"at most {lim.health_watch_per_peer} health watch streams per address", []
            evict: list[int] = []
            if device and kind == WATCH:
                mine = list(self._watches.get(device, ()))
                evict = mine[:max(0, len(mine) - lim.watch_per_device + 1)]
            if device and kind == DOWNLOAD and self._per_device[DOWNLOAD, device] >= lim.downloads_per_device:
                return None, f"at most {lim.downloads_per_device} downloads at once per device", []
            freed_peer = sum(1 for i in evict if self._open[i].peer == peer)
            if self._per_peer[peer] - freed_peer >= lim.streams_per_peer:
                return None, f"at most {lim.streams_per_peer} open streams per address", []
            if self._streams - len(evict) >= lim.total_streams:
                return None, f"the control plane holds its maximum of {lim.total_streams} open streams", []
            ended = [self._remove(i).cancel for i in evict]
            return self._add(kind, peer, device, cancel), "", ended

    def _add(self, kind: str, peer: str, device: str, cancel) -> int:
        ticket = next(self._ids)
        self._open[ticket] = _Stream(kind, peer, device, cancel)
        self._per_kind[kind] += 1
        self._per_device[kind, device] += 1
        if kind != UNARY:
            self._streams += 1
            self._per_peer[peer] += 1
        if kind == HEALTH:
            self._health_per_peer[peer] += 1
        if kind == WATCH:
            self._watches.setdefault(device, {})[ticket] = None
        return ticket

    def _remove(self, ticket: int) -> _Stream:
        s = self._open.pop(ticket)
        for counter, key in ((self._per_kind, s.kind), (self._per_device, (s.kind, s.device))) + (
                ((self._per_peer, s.peer),) if s.kind != UNARY else ()) + (
                ((self._health_per_peer, s.peer),) if s.kind == HEALTH else ()):
            counter[key] -= 1
            if counter[key] <= 0:
                del counter[key]
        if s.kind != UNARY:
            self._streams -= 1
        if s.kind == WATCH:
            mine = self._watches.get(s.device, {})
            mine.pop(ticket, None)
            if not mine:
                self._watches.pop(s.device, None)
        return s

    def release(self, ticket: int) -> None:
        with self._lock:
            if ticket in self._open:
                self._remove(ticket)

    def count(self, kind: str | None = None) -> int:
        with self._lock:
            return len(self._open) if kind is None else self._per_kind[kind]


def peer_address(peer: str) -> str:
    """'ipv4:127.0.0.1:5000' -> 'ipv4:127.0.0.1'; 'ipv6:[::1]:5000' -> 'ipv6:[::1]' (the port changes per
    connection, the address does not)."""
    head, _, port = peer.rpartition(":")
    return head if port.isdigit() and head else peer


class StreamLimitInterceptor(grpc.aio.ServerInterceptor):
    """Applies a StreamGate to the server-streaming methods in STREAM_KINDS and to unary device calls. Coroutine
    handlers (device services, health) get coroutine wrappers; the Admin service's plain handlers (run on the
    server's admin thread pool) get plain ones."""

    def __init__(self, gate: StreamGate):
        self.gate = gate
        self._enders: set[asyncio.Task] = set()

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or handler.request_streaming:
            return handler
        if not handler.response_streaming:
            if details.method.startswith(DEVICE_SERVICES) and not details.method.endswith("/Enroll"):
                return handler._replace(unary_unary=self._unary(handler.unary_unary))
            return handler
        kind = STREAM_KINDS.get(details.method)
        if kind is None:
            return handler
        behavior = handler.unary_stream
        if not (inspect.iscoroutinefunction(behavior) or inspect.isasyncgenfunction(behavior)):
            return handler._replace(unary_stream=self._sync_stream(kind, behavior))
        return handler._replace(unary_stream=self._stream(kind, behavior))

    def _stream(self, kind: str, behavior):
        gate, enders = self.gate, self._enders

        async def wrapped(request, context):
            dev = current_device()
            task, loop = asyncio.current_task(), asyncio.get_running_loop()

            async def end() -> None:      # replaced by a newer stream: the client sees CANCELLED at once
                try:
                    await context.abort(grpc.StatusCode.CANCELLED, REPLACED)
                except BaseException:     # AbortError is how abort reports success  # noqa: BLE001
                    pass
                task.cancel()

            def cancel() -> None:
                loop.call_soon_threadsafe(lambda: _keep(enders, loop.create_task(end())))

            ticket, why, ended = gate.admit(kind, peer_address(context.peer()), dev["device_id"] if dev else "",
                                            cancel)
            for c in ended:
                c()
            if ticket is None:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, why)
            try:
                result = behavior(request, context)
                if inspect.isasyncgen(result):
                    async for msg in result:
                        yield msg
                else:                     # a handler that writes with context.write (the health servicer)
                    await result
            finally:
                gate.release(ticket)

        return wrapped

    def _sync_stream(self, kind: str, behavior):
        def wrapped(request, context):
            ticket, why, _ = self.gate.admit(kind, peer_address(context.peer()), "", None)
            if ticket is None:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, why)
            try:
                yield from behavior(request, context)
            finally:
                self.gate.release(ticket)
        return wrapped

    def _unary(self, behavior):
        async def wrapped(request, context):
            dev = current_device()
            if dev is None:   # not authenticated: the auth interceptor has refused it already
                return await behavior(request, context)
            ticket, why, _ = self.gate.admit(UNARY, peer_address(context.peer()), dev["device_id"], None)
            if ticket is None:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, why)
            try:
                return await behavior(request, context)
            finally:
                self.gate.release(ticket)
        return wrapped


def _keep(tasks: set, task: asyncio.Task) -> None:
    """Holds a fire-and-forget task until it is done (the loop keeps only weak references)."""
    tasks.add(task)
    task.add_done_callback(tasks.discard)
