"""Pure checks on one uploaded telemetry batch: which events are stored as sent, which are stored with a
clamped timestamp, which are refused and why. No I/O: the servicer passes the batch and the clock.

A batch is judged event by event, so one bad event never costs the valid ones next to it. Only a batch that
is too large as a whole is refused outright (the agent's batches are far smaller; it must split).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

MAX_EVENTS_PER_BATCH = 5000
MAX_FUTURE_SKEW_MS = 5 * 60 * 1000           # device clocks drift; beyond this the timestamp is clamped
KINDS = frozenset({"request", "event", "sample", "golden", "capture"})
MAX_TEXT = 200                                 # kind/name/model/outcome/adapter
MAX_DETAIL = 2000
MAX_CAPTURE_DETAIL = 16000                     # a captured prompt/response pair (opt-in)
MAX_VALUES = 32
MAX_VALUE_KEY = 64                             # a sample value's name (cpu_percent, rss_bytes, ...)


class BatchRefused(Exception):
    """The whole batch is refused (INVALID_ARGUMENT); nothing in it was stored."""


@dataclass
class Verdict:
    events: list[dict] = field(default_factory=list)   # ready for Store.add_telemetry
    clamped: int = 0
    rejected: int = 0
    reasons: list[str] = field(default_factory=list)    # the first few, for UploadAck.detail

    def refuse(self, seq: int, why: str) -> None:
        self.rejected += 1
        if len(self.reasons) < 5:
            self.reasons.append(f"seq {seq}: {why}")

    @property
    def detail(self) -> str:
        parts = list(self.reasons)
        if self.clamped:
            parts.append(f"{self.clamped} timestamp(s) clamped to the server clock")
        return "; ".join(parts)


def _bad_number(x: float) -> bool:
    return math.isnan(x) or math.isinf(x) or x < 0


def check_event(e, now_ms: int, oldest_ms: int = 0) -> tuple[dict | None, bool, str]:
    """(event dict or None, clamped?, reason refused). `e` is a TelemetryEvent message (or alike); events
    older than `oldest_ms` (the raw retention window) are refused: they would be deleted at once."""
    if e.seq <= 0:
        return None, False, "seq must be positive"
    if e.kind not in KINDS:
        return None, False, f"unknown kind {e.kind[:40]!r} (expected one of {', '.join(sorted(KINDS))})"
    for name in ("latency_ms", "first_token_ms"):
        if _bad_number(getattr(e, name)):
            return None, False, f"{name} {getattr(e, name)} is not a non-negative number"
    if e.tokens_in < 0 or e.tokens_out < 0:
        return None, False, "token counts must not be negative"
    values = dict(e.values)
    if len(values) > MAX_VALUES:
        return None, False, f"{len(values)} sample values exceed {MAX_VALUES}"
    if any(not k or len(k) > MAX_VALUE_KEY for k in values):
        return None, False, f"sample value names must be 1-{MAX_VALUE_KEY} characters"
    if any(math.isnan(v) or math.isinf(v) for v in values.values()):
        return None, False, "sample values must be finite"
    ts, clamped = e.ts_unix_ms, False
    if 0 < ts < oldest_ms:
        return None, False, f"timestamp {ts} is older than the retention window"
    if ts <= 0 or ts > now_ms + MAX_FUTURE_SKEW_MS:
        ts, clamped = now_ms, True
    limit = MAX_CAPTURE_DETAIL if e.kind == "capture" else MAX_DETAIL
    return {"seq": e.seq, "ts_ms": ts, "kind": e.kind, "name": e.name[:MAX_TEXT], "model": e.model[:MAX_TEXT],
            "latency_ms": e.latency_ms, "first_token_ms": e.first_token_ms, "tokens_in": e.tokens_in,
            "tokens_out": e.tokens_out, "outcome": e.outcome[:MAX_TEXT], "detail": e.detail[:limit],
            "adapter": e.adapter[:MAX_TEXT], "values": values}, clamped, ""


def check_batch(events, now_ms: int, oldest_ms: int = 0) -> Verdict:
    """Judges every event of a batch; raises BatchRefused when the batch as a whole is unacceptable."""
    if len(events) > MAX_EVENTS_PER_BATCH:
        raise BatchRefused(f"batch of {len(events)} events exceeds {MAX_EVENTS_PER_BATCH}; split it")
    v = Verdict()
    seen: set[int] = set()
    for e in events:
        if e.seq in seen:
            v.refuse(e.seq, "appears twice in this batch")
            continue
        seen.add(e.seq)
        ev, clamped, why = check_event(e, now_ms, oldest_ms)
        if ev is None:
            v.refuse(e.seq, why)
            continue
        v.clamped += clamped
        v.events.append(ev)
    return v
