"""Limits on long-lived gRPC streams. The server is grpc's sync server: every open stream holds one thread of
the pool for its whole life, so without limits one device token (or one address, without any token) could open
streams until nothing is left for anyone else (Health/Check, Admin calls, other devices).

StreamGate decides (pure bookkeeping under a lock, no I/O): per device, at most `watch_per_device` desired-state
streams (a newer one replaces the oldest, so a reconnecting agent always gets through) and `downloads_per_device`
downloads, and `unary_per_device` device calls in flight at once (those are short, but one token must not fill
the pool with them either); per peer address, at most `streams_per_peer` streams and `health_watch_per_peer`
health watches (unauthenticated); in all, at most `total_streams` and `health_watch_total`. A refusal is
RESOURCE_EXHAUSTED with the limit named (the agent retries with backoff). StreamLimitInterceptor applies it.
"""
from __future__ import annotations

import itertools
import threading
from collections import Counter
from dataclasses import dataclass

import grpc

from slmops.errors import ConfigError

WATCH, DOWNLOAD, HEALTH, ADMIN, UNARY = "watch", "download", "health", "admin", "unary"
DEVICE_SERVICES = ("/slmops.v1.Fleet/", "/slmops.v1.Artifacts/", "/slmops.v1.Telemetry/")
STREAM_KINDS = {"/slmops.v1.Fleet/WatchDesiredState": WATCH, "/slmops.v1.Artifacts/Download": DOWNLOAD,
                "/grpc.health.v1.Health/Watch": HEALTH, "/slmops.v1.Admin/PipelineLogs": ADMIN}


@dataclass(frozen=True)
class StreamLimits:
    total_streams: int = 1984          # of the pool's threads; the rest stay free for unary calls
    streams_per_peer: int = 1536       # one address (or NAT) may not hold the whole pool
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
    def for_pool(cls, max_workers: int) -> StreamLimits:
        """Limits that leave at least 1/32 of the pool (and 16 threads) to unary calls, and 1/4 of the streams to
        peers other than the busiest one."""
        total = max(2, max_workers - max(16, max_workers // 32))
        return cls(total_streams=total, streams_per_peer=max(1, total * 3 // 4),
                   health_watch_total=max(1, min(64, total // 8)))


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

    def admit(self, kind: str, peer: str, device: str, cancel) -> tuple[int | None, str, list]:
        """(ticket, "", streams to end) when the stream may start; (None, why, []) when it is refused."""
        lim = self.limits
        with self._lock:
            if kind == UNARY:   # counted per device only: short calls, not part of the stream budget
                if sum(1 for s in self._open.values() if s.kind == UNARY and s.device == device) >= \
                        lim.unary_per_device:
                    return None, f"at most {lim.unary_per_device} calls at once per device", []
                ticket = next(self._ids)
                self._open[ticket] = _Stream(kind, peer, device, cancel)
                return ticket, "", []
            streams = [s for s in self._open.values() if s.kind != UNARY]
            per_peer = Counter(s.peer for s in streams)
            evict: list[int] = []
            if kind == HEALTH:
                health = [s for s in streams if s.kind == HEALTH]
                if len(health) >= lim.health_watch_total:
                    return None, f"too many health watch streams ({lim.health_watch_total} open)", []
                if sum(1 for s in health if s.peer == peer) >= lim.health_watch_per_peer:
                    return None, f"at most {lim.health_watch_per_peer} health watch streams per address", []
            if device and kind == WATCH:
                mine = sorted(i for i, s in self._open.items() if s.kind == WATCH and s.device == device)
                evict = mine[:max(0, len(mine) - lim.watch_per_device + 1)]
            if device and kind == DOWNLOAD and sum(
                    1 for s in streams if s.kind == DOWNLOAD and s.device == device) >= lim.downloads_per_device:
                return None, f"at most {lim.downloads_per_device} downloads at once per device", []
            freed_peer = sum(1 for i in evict if self._open[i].peer == peer)
            if per_peer[peer] - freed_peer >= lim.streams_per_peer:
                return None, f"at most {lim.streams_per_peer} open streams per address", []
            if len(streams) - len(evict) >= lim.total_streams:
                return None, f"the control plane holds its maximum of {lim.total_streams} open streams", []
            ticket = next(self._ids)
            ended = [self._open.pop(i).cancel for i in evict]
            self._open[ticket] = _Stream(kind, peer, device, cancel)
            return ticket, "", ended

    def release(self, ticket: int) -> None:
        with self._lock:
            self._open.pop(ticket, None)

    def count(self, kind: str | None = None) -> int:
        with self._lock:
            return sum(1 for s in self._open.values() if kind is None or s.kind == kind)


def peer_address(peer: str) -> str:
    """'ipv4:127.0.0.1:5000' -> 'ipv4:127.0.0.1'; 'ipv6:[::1]:5000' -> 'ipv6:[::1]' (the port changes per
    connection, the address does not)."""
    head, _, port = peer.rpartition(":")
    return head if port.isdigit() and head else peer


class StreamLimitInterceptor(grpc.ServerInterceptor):
    """Applies a StreamGate to the server-streaming methods in STREAM_KINDS. Installed after the auth
    interceptor, so a device stream is counted against the device that signed it."""

    def __init__(self, gate: StreamGate):
        self.gate = gate

    def intercept_service(self, continuation, details):
        handler = continuation(details)
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

        def wrapped(request, context):
            dev = getattr(context, "slmops_device", None)
            ticket, why, ended = self.gate.admit(kind, peer_address(context.peer()), dev["device_id"] if dev else "",
                                                 context.cancel)
            for cancel in ended:
                cancel()          # the replaced stream's client sees CANCELLED and its thread is freed
            if ticket is None:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, why)
            try:
                yield from behavior(request, context)
            finally:
                self.gate.release(ticket)

        return handler._replace(unary_stream=wrapped)

    def _unary(self, behavior):
        def wrapped(request, context):
            dev = getattr(context, "slmops_device", None)
            if dev is None:   # not authenticated: the auth interceptor has refused it already
                return behavior(request, context)
            ticket, why, _ = self.gate.admit(UNARY, peer_address(context.peer()), dev["device_id"], None)
            if ticket is None:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, why)
            try:
                return behavior(request, context)
            finally:
                self.gate.release(ticket)
        return wrapped
