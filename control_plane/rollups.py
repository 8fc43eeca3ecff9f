"""Pure telemetry arithmetic: raw events in, per-device figures out."""
from __future__ import annotations


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n*q/100), at least 1
    return float(ordered[int(rank) - 1])


def summarize(events: list[dict]) -> dict[str, dict]:
    """Per device: request count, errors, p50/p95 latency, tokens in/out, decode tokens/s, other events."""
    out: dict[str, dict] = {}
    for e in events:
        d = out.setdefault(e["device_id"], {"requests": 0, "errors": 0, "latencies": [], "tokens_in": 0,
                                            "tokens_out": 0, "gen_seconds": 0.0, "events": 0})
        if e["kind"] != "request":
            d["events"] += 1
            continue
        d["requests"] += 1
        if e["outcome"] != "ok":
            d["errors"] += 1
            continue
        d["latencies"].append(e["latency_ms"])
        d["tokens_in"] += e["tokens_in"]
        d["tokens_out"] += e["tokens_out"]
        d["gen_seconds"] += max(0.0, e["latency_ms"] - e["first_token_ms"]) / 1000
    for d in out.values():
        lat = d.pop("latencies")
        secs = d.pop("gen_seconds")
        d["p50_latency_ms"] = percentile(lat, 50)
        d["p95_latency_ms"] = percentile(lat, 95)
        d["tokens_per_s"] = d["tokens_out"] / secs if secs > 0 else 0.0
    return out


MINUTE_MS = 60_000


def minute_of(ts_ms: int) -> int:
    return ts_ms // MINUTE_MS * MINUTE_MS


def minute_rollup(events: list[dict]) -> dict:
    """One device's figures for one minute, from that minute's raw events (requests, samples, golden checks).
    cpu_percent is the mean and rss_bytes the max of the resource samples; -1 when the minute has none."""
    lat, gen_s, tokens_out, requests, errors, golden_failed = [], 0.0, 0, 0, 0, 0
    cpu, rss = [], []
    for e in events:
        kind = e["kind"]
        if kind == "request":
            requests += 1
            if e["outcome"] != "ok":
                errors += 1
                continue
            lat.append(e["latency_ms"])
            tokens_out += e["tokens_out"]
            gen_s += max(0.0, e["latency_ms"] - e["first_token_ms"]) / 1000
        elif kind == "sample":
            vals = e.get("values") or {}
            if "cpu_percent" in vals:
                cpu.append(vals["cpu_percent"])
            if "rss_bytes" in vals:
                rss.append(vals["rss_bytes"])
        elif kind == "golden" and e["outcome"] != "pass":
            golden_failed += 1
    return {"requests": requests, "errors": errors, "p50_latency_ms": percentile(lat, 50),
            "p95_latency_ms": percentile(lat, 95), "tokens_out": tokens_out,
            "tokens_per_s": tokens_out / gen_s if gen_s > 0 else 0.0,
            "cpu_percent": sum(cpu) / len(cpu) if cpu else -1.0, "rss_bytes": float(max(rss)) if rss else -1.0,
            "golden_failed": golden_failed}


def device_health(state: str, last_seen_ms: int, now_ms: int, recent: dict | None,
                  stale_after_ms: int = 5 * MINUTE_MS) -> str:
    """One word for the fleet overview: offline (not heard from), error (the agent says so), degraded (errors
    or failed golden checks in the recent window), healthy."""
    if now_ms - last_seen_ms > stale_after_ms:
        return "offline"
    if state == "error":
        return "error"
    if recent and (recent.get("errors", 0) > 0 or recent.get("golden_failed", 0) > 0):
        return "degraded"
    return "healthy"
