"""Prometheus text for the control plane's own /metrics: ingest counters kept in-process, whether this replica
holds the leader lease, fleet and telemetry-store gauges read from the store when scraped, and each version's
drift signals as the telemetry job's last drift check left them (control_plane/drift_monitor.py), and what the
garbage-collector policy did (control_plane/gc_policy.py)."""
from __future__ import annotations

import gc

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from control_plane import drift_monitor
from control_plane.gc_policy import GcPolicy
from control_plane.store import Store


class _StoreCollector:
    def __init__(self, store: Store):
        self.store = store

    def collect(self):
        db = self.store.db
        # the lease's last verdict (asked by the rollout driver each pass), not a new attempt to take it
        leader = GaugeMetricFamily("slmops_cp_leader", "1 on the replica that drives rollouts and rollups "
                                   "(holds the leader lease), 0 on the others")
        leader.add_metric([], 1 if self.store.leader.holder else 0)
        yield leader
        devices = GaugeMetricFamily("slmops_cp_devices", "enrolled devices by reported state", labels=["state"])
        for r in db.query("select state, count(*) as n from devices group by state"):
            devices.add_metric([r["state"] or "unknown"], r["n"])
        yield devices
        rows = GaugeMetricFamily("slmops_cp_telemetry_rows", "raw telemetry rows stored")
        rows.add_metric([], db.execute("select count(*) from telemetry").fetchone()[0])
        yield rows
        dirty = GaugeMetricFamily("slmops_cp_rollup_dirty_minutes", "device-minutes waiting for a rollup rebuild")
        dirty.add_metric([], db.execute("select count(*) from telemetry_dirty").fetchone()[0])
        yield dirty
        value = GaugeMetricFamily("slmops_cp_drift_value", "a drift signal's latest value per model version",
                                  labels=["model", "signal", "group"])
        limit = GaugeMetricFamily("slmops_cp_drift_threshold", "the threshold the drift signal is held to",
                                  labels=["model", "signal", "group"])
        over = GaugeMetricFamily("slmops_cp_drift_crossed", "1 when the drift signal is over its threshold",
                                 labels=["model", "signal", "group"])
        for r in drift_monitor.latest(self.store):
            key = [r["model"], r["signal"], r["grp"]]
            value.add_metric(key, r["value"])
            limit.add_metric(key, r["threshold"])
            over.add_metric(key, r["crossed"])
        yield from (value, limit, over)


class _GcCollector:
    def __init__(self, policy: GcPolicy):
        self.policy = policy

    def collect(self):
        frozen = GaugeMetricFamily("slmops_cp_gc_frozen_objects", "objects the collector's scans skip (frozen)")
        frozen.add_metric([], gc.get_freeze_count())
        yield frozen
        full = CounterMetricFamily("slmops_cp_gc_full_collections", "full collections made by the policy")
        full.add_metric([], self.policy.full_collections)
        yield full
        pause = GaugeMetricFamily("slmops_cp_gc_full_pause_seconds", "how long the last full collection took")
        pause.add_metric([], self.policy.last_full_pause_s)
        yield pause


class ControlPlaneMetrics:
    def __init__(self, store: Store, gc_policy: GcPolicy | None = None):
        self.registry = CollectorRegistry()
        self.batches = Counter("slmops_cp_telemetry_batches", "telemetry batches received", ["result"],
                               registry=self.registry)
        self.events = Counter("slmops_cp_telemetry_events", "telemetry events received", ["result"],
                              registry=self.registry)
        self.ingest_seconds = Histogram("slmops_cp_telemetry_ingest_seconds", "time to check and store a batch",
                                        registry=self.registry,
                                        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0))
        self.registry.register(_StoreCollector(store))
        if gc_policy is not None:
            self.registry.register(_GcCollector(gc_policy))

    def count_upload(self, accepted: int, duplicates: int, rejected: int, clamped: int) -> None:
        self.batches.labels("stored").inc()
        for result, n in (("accepted", accepted), ("duplicate", duplicates), ("rejected", rejected),
                          ("clamped", clamped)):
            if n:
                self.events.labels(result).inc(n)

    def render(self) -> str:
        return generate_latest(self.registry).decode()
