"""Prometheus text for the agent's /metrics (prometheus_client). Counters and histograms are fed by every
event the agent records in its outbox (AgentState.observers), so /metrics and the uploaded telemetry count
the same things; gauges are read from the runtime and the local state when scraped."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class _LiveGauges:
    def __init__(self, runtime, state):
        self.runtime, self.state = runtime, state

    def collect(self):
        g = GaugeMetricFamily("slmops_agent_queue_depth", "requests waiting for a generation slot")
        g.add_metric([], self.runtime.queue_depth)
        yield g
        g = GaugeMetricFamily("slmops_agent_model_info", "the model being served", labels=["model"])
        slot = self.runtime.slot
        if slot:
            g.add_metric([slot.manifest.ref], 1)
        yield g
        cache = getattr(slot.engine, "prefix_cache", None) if slot else None
        g = GaugeMetricFamily("slmops_agent_prefix_cache_hits",
                              "requests of the serving model that reused a cached prefix (since it loaded)")
        g.add_metric([], cache.hits if cache else 0)
        yield g
        g = GaugeMetricFamily("slmops_agent_prefix_cache_reused_tokens",
                              "prompt tokens not prefilled again thanks to the prefix cache (since it loaded)")
        g.add_metric([], cache.reused_tokens if cache else 0)
        yield g
        g = GaugeMetricFamily("slmops_agent_telemetry_pending", "events waiting for upload")
        g.add_metric([], self.state.db.execute("select count(*) from outbox").fetchone()[0])
        yield g
        g = GaugeMetricFamily("slmops_agent_telemetry_dropped", "events dropped because the local buffer was full")
        g.add_metric([], self.state.get("telemetry_dropped", 0))
        yield g


class AgentMetrics:
    def __init__(self, runtime, state):
        self.runtime, self.state = runtime, state
        self.registry = reg = CollectorRegistry()
        self.requests = Counter("slmops_agent_requests", "requests served, by endpoint, model and outcome",
                                ["endpoint", "model", "outcome"], registry=reg)
        self.latency = Histogram("slmops_agent_request_latency_seconds", "total request latency",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=reg)
        self.first_token = Histogram("slmops_agent_first_token_seconds", "latency to the first text piece",
                                     ["endpoint"], buckets=LATENCY_BUCKETS, registry=reg)
        self.tokens = Counter("slmops_agent_tokens", "tokens processed", ["direction"], registry=reg)
        self.events = Counter("slmops_agent_events", "agent events (download, swap, verify_failed, ...)",
                              ["name", "outcome"], registry=reg)
        self.golden = Counter("slmops_agent_golden_checks", "scheduled golden-prompt checks", ["outcome"],
                              registry=reg)
        self.batches = Counter("slmops_agent_batches", "generation batches run, by how many sequences shared one",
                               ["rows"], registry=reg)
        reg.register(_LiveGauges(runtime, state))
        state.observers.append(self.observe)

    def observe(self, e: dict) -> None:
        kind = e["kind"]
        if kind == "request":
            self.requests.labels(e["name"], e["model"] or "none", e["outcome"]).inc()
            if e["outcome"] == "ok":
                self.latency.labels(e["name"]).observe(e["latency_ms"] / 1000)
                self.first_token.labels(e["name"]).observe(e["first_token_ms"] / 1000)
            self.tokens.labels("in").inc(e["tokens_in"])
            self.tokens.labels("out").inc(e["tokens_out"])
        elif kind == "event":
            self.events.labels(e["name"], e["outcome"]).inc()
        elif kind == "golden":
            self.golden.labels(e["outcome"]).inc()

    def observe_batch(self, rows: int) -> None:
        self.batches.labels(str(rows)).inc()

    def render(self) -> str:
        return generate_latest(self.registry).decode()
