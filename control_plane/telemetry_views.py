"""Telemetry over time, on top of the Store's raw telemetry table: per-device-per-minute rollups kept up to
date from the minutes that ingest marked dirty (late uploads from devices that were offline included),
retention, and the queries behind the Admin API, the CLI and the dashboard. Arithmetic lives in rollups.py.
"""
from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass

from control_plane import rollups
from control_plane.store import Store, now_ms

log = logging.getLogger("slmops.control_plane.telemetry")
DAY_MS = 86_400_000
MINUTE_COLUMNS = ("requests", "errors", "p50_latency_ms", "p95_latency_ms", "tokens_out", "tokens_per_s",
                  "cpu_percent", "rss_bytes", "golden_failed")


@dataclass(frozen=True)
class Retention:
    raw_days: float = 7.0        # raw events (requests, samples, events)
    rollup_days: float = 90.0    # per-minute rollups

    def __post_init__(self) -> None:
        if self.raw_days <= 0 or self.rollup_days < self.raw_days:
            raise ValueError("retention must satisfy 0 < raw_days <= rollup_days")


def _row_event(r: dict) -> dict:
    r = dict(r)
    r["values"] = json.loads(r["vals"]) if r.get("vals") else {}
    return r


class TelemetryViews:
    def __init__(self, store: Store, retention: Retention = Retention()):
        self.store, self.retention = store, retention   # telemetry_minutes: control_plane/migrations.py
        self._refresh_lock = threading.Lock()

    @property
    def db(self):
        return self.store.db   # the calling thread's connection

    # ---- maintenance ------------------------------------------------------------------------------
    def refresh(self, limit: int = 5000) -> int:
        """Recomputes the rollups of dirty minutes from raw events. Returns how many minutes were rebuilt.

        Each minute in one transaction that takes its dirty mark first and reads its events after: an upload
        into that minute meanwhile (another thread, another replica) marks it again and is counted next time,
        where taking the mark last lost it. A mark another refresh (another replica's) took already is left to it."""
        rebuilt = 0
        with self._refresh_lock:
            dirty = list(self.db.query("select device_id, minute_ms from telemetry_dirty limit ?", [limit]))
            for d in dirty:
                with self.store._lock, self.store.transaction():
                    if not self.db.execute("delete from telemetry_dirty where device_id = ? and minute_ms = ?",
                                           [d["device_id"], d["minute_ms"]]).rowcount:
                        continue
                    rows = [_row_event(r) for r in self.db.query(
                        "select kind, outcome, latency_ms, first_token_ms, tokens_out, vals from telemetry "
                        "where device_id = ? and ts_ms >= ? and ts_ms < ?",
                        [d["device_id"], d["minute_ms"], d["minute_ms"] + rollups.MINUTE_MS])]
                    fig = rollups.minute_rollup(rows)
                    self.db["telemetry_minutes"].upsert({**d, **fig}, pk=("device_id", "minute_ms"))
                rebuilt += 1
        return rebuilt

    def apply_retention(self, now: int | None = None) -> tuple[int, int]:
        """Deletes raw events and rollups past their retention. Returns (raw rows, minute rows) deleted."""
        now = now if now is not None else now_ms()
        raw_cut = now - int(self.retention.raw_days * DAY_MS)
        roll_cut = now - int(self.retention.rollup_days * DAY_MS)
        with self.store._lock:
            raw = self.db.execute("delete from telemetry where ts_ms < ?", [raw_cut]).rowcount
            # A minute whose raw events are gone cannot be recomputed: drop its dirty mark, keep the rollup.
            self.db.execute("delete from telemetry_dirty where minute_ms < ?", [raw_cut])
            mins = self.db.execute("delete from telemetry_minutes where minute_ms < ?", [roll_cut]).rowcount
        return raw, mins

    def raw_cutoff(self, now: int | None = None) -> int:
        return (now if now is not None else now_ms()) - int(self.retention.raw_days * DAY_MS)

    # ---- queries ----------------------------------------------------------------------------------
    def minutes(self, device_id: str | None, since_ms: int, until_ms: int = 0) -> list[dict]:
        self.refresh()
        sql = "select * from telemetry_minutes where minute_ms >= ? and minute_ms <= ?"
        args: list = [rollups.minute_of(since_ms), until_ms or now_ms()]
        if device_id:
            sql += " and device_id = ?"
            args.append(device_id)
        return list(self.db.query(sql + " order by minute_ms, device_id", args))

    def events(self, device_id: str | None, since_ms: int, limit: int = 100,
               kinds: tuple[str, ...] = ("event", "golden")) -> list[dict]:
        sql = (f"select * from telemetry where ts_ms >= ? and kind in ({','.join('?' * len(kinds))})")
        args: list = [since_ms, *kinds]
        if device_id:
            sql += " and device_id = ?"
            args.append(device_id)
        return [_row_event(r) for r in self.db.query(sql + " order by ts_ms desc, seq desc limit ?",
                                                     args + [limit])]

    def latest_sample(self, device_id: str) -> dict | None:
        rows = list(self.db.query("select * from telemetry where device_id = ? and kind = 'sample' "
                                  "order by ts_ms desc limit 1", [device_id]))
        return _row_event(rows[0]) if rows else None

    def captures(self, device_id: str | None = None, since_ms: int = 0):
        """Captured prompt/response pairs (opt-in on the agent), one dataset row each."""
        sql = "select device_id, ts_ms, model, adapter, detail from telemetry where kind = 'capture' and ts_ms >= ?"
        args: list = [since_ms]
        if device_id:
            sql += " and device_id = ?"
            args.append(device_id)
        for r in self.db.query(sql + " order by device_id, seq", args):
            try:
                pair = json.loads(r["detail"])
            except ValueError:
                continue  # truncated at ingest: not a usable row
            yield {"device_id": r["device_id"], "ts_ms": r["ts_ms"], "model": r["model"],
                   "adapter": r["adapter"] or "", **pair}


class TelemetryJob:
    """Background thread: rebuild dirty minutes every `interval_s`, re-check drift (control_plane/drift_monitor.py)
    every `drift_every_s`, apply retention every `retention_every_s`."""

    def __init__(self, views: TelemetryViews, interval_s: float = 10.0, retention_every_s: float = 3600.0,
                 drift_every_s: float = 30.0):
        from control_plane.drift_monitor import DriftMonitor

        self.views, self.interval_s, self.retention_every_s = views, interval_s, retention_every_s
        self.drift, self.drift_every_s = DriftMonitor(views.store), drift_every_s
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, name="telemetry-rollups", daemon=True)

    def run(self) -> None:
        last_retention = 0.0
        last_drift = waited = 0.0
        while not self.stop.wait(self.interval_s):
            waited += self.interval_s
            try:
                if not self.views.store.leader.held():   # of several replicas on one database, one rolls up
                    continue
                self.views.refresh()
                if waited - last_drift >= self.drift_every_s:
                    last_drift = waited
                    self.drift.check()
                if waited - last_retention >= self.retention_every_s:
                    last_retention = waited
                    raw, mins = self.views.apply_retention()
                    if raw or mins:
                        log.info("retention: deleted %d raw events and %d minute rollups", raw, mins)
            except Exception:  # keep the job alive; the next tick retries
                log.exception("telemetry rollup job failed")
