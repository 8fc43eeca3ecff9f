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
