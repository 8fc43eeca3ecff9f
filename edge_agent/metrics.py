"""Prometheus text for the agent's /metrics, from the runtime and the local state (prometheus_client)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, generate_latest


class AgentMetrics:
    def __init__(self, runtime, state):
        self.runtime, self.state = runtime, state

    def render(self) -> str:
        reg = CollectorRegistry()
        Gauge("slmops_agent_queue_depth", "requests waiting for a generation slot", registry=reg).set(
            self.runtime.queue_depth)
        serving = Gauge("slmops_agent_model_info", "the model being served", ["model"], registry=reg)
        slot = self.runtime.slot
        if slot:
            serving.labels(slot.manifest.ref).set(1)
        Gauge("slmops_agent_telemetry_pending", "events waiting for upload", registry=reg).set(
            self.state.db.execute("select count(*) from outbox").fetchone()[0])
        Gauge("slmops_agent_telemetry_dropped", "events dropped because the local buffer was full",
              registry=reg).set(self.state.get("telemetry_dropped", 0))
        return generate_latest(reg).decode()
