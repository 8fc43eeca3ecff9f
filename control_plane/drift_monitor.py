"""The I/O around control_plane/drift.py: reads a version's telemetry and its training data profile from the
store, evaluates every signal (`evaluate`, for `slmops drift`), and, on the telemetry job's tick, re-checks the
versions in service (`DriftMonitor.check`): the latest values go into `drift_latest` (Prometheus gauges read it,
control_plane/cp_metrics.py) and a signal that crosses its threshold adds a `drift_threshold_crossed` event
(device "control-plane") that the dashboard and `slmops devices`/events views list.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict
from typing import Callable

from control_plane import drift
from control_plane.store import Store, now_ms
from slmops import text_profile
from slmops.errors import ConfigError

log = logging.getLogger("slmops.control_plane.drift")
SOURCE = "control-plane"        # the device id of the control plane's own events
MAX_ROWS = 200_000              # bound on one evaluation's telemetry read
HISTORY_DAYS = 7                # drift_history (the dashboard's charts) keeps this long


class UnknownVersion(ConfigError):
    """A drift query names a version that is not published."""


def decode_capture(row: dict) -> dict | None:
    try:
        pair = json.loads(row["detail"])
    except ValueError:
        return None   # truncated at ingest
    if not isinstance(pair, dict):
        return None
    return {"ts_ms": row["ts_ms"], "prompt": text_profile.prompt_text(pair),
            "finish_reason": str(pair.get("finish_reason", ""))}


def version_rows(store: Store, ref: str, from_ms: int, to_ms: int, device_ids: list[str] | None = None,
                 newest: bool = False) -> list[dict]:
    """The version's telemetry in [from_ms, to_ms), in time order; at most MAX_ROWS (the oldest, or the newest)."""
    sql = ("select device_id, ts_ms, kind, name, latency_ms, tokens_in, tokens_out, outcome, detail, vals "
           "from telemetry where ts_ms >= ? and ts_ms < ? and model = ? "
           "and kind in ('request', 'golden', 'capture', 'event')")
    args: list = [from_ms, to_ms, ref]
    if device_ids is not None:
        sql += f" and device_id in ({','.join('?' * len(device_ids))})"
        args += device_ids
    rows = list(store.db.query(sql + f" order by ts_ms {'desc' if newest else ''} limit ?", args + [MAX_ROWS]))
    return rows[::-1] if newest else rows


def first_seen(store: Store, ref: str) -> int | None:
    """When the version first reported telemetry (its rollout), remembered so that the baseline window stays where
    it was after raw telemetry past its retention is deleted (then the baseline has no rows: "not enough data")."""
    if "drift_versions" in store.db.table_names():
        rows = list(store.db.query("select first_seen_ms from drift_versions where model = ?", [ref]))
        if rows:
            return rows[0]["first_seen_ms"]
    got = store.db.execute("select min(ts_ms) from telemetry where model = ? and kind = 'request'", [ref]).fetchone()
    return got[0] if got and got[0] is not None else None


def profile_of(store: Store, name: str, version: str) -> dict | None:
    row = store.model(name, version)
    if row is None:
        published = sorted(m["version"] for m in store.models() if m["name"] == name)
        raise UnknownVersion(f"no published version {name}@{version}"
                             + (f" (published: {', '.join(published)})" if published else f" (no model {name!r})"))
    return (json.loads(row["manifest"]).get("metrics") or {}).get("data_profile")


def evaluate(store: Store, name: str, version: str, now: int, baseline_s: float = 7200, window_s: float = 3600,
             th: drift.Thresholds = drift.Thresholds(), device_ids: list[str] | None = None,
             embed: Callable[[list[str]], list[list[float]]] | None = None) -> dict:
    """Every signal of NAME@VERSION (optionally only on `device_ids`, a device group). Raises UnknownVersion."""
    profile = profile_of(store, name, version)
    ref = f"{name}@{version}"
    seen = first_seen(store, ref)
    first = seen if seen is not None else now
    w = drift.Windows.after_rollout(first, now, baseline_s, window_s)
    window_from = now - int(window_s * 1000)
    base = version_rows(store, ref, w.baseline_from_ms, w.baseline_to_ms, device_ids)
    latest = version_rows(store, ref, window_from, now + 1, device_ids, newest=True)
    recent = [r for r in latest if r["ts_ms"] >= w.recent_from_ms]
    caps_b = [c for c in map(decode_capture, (r for r in base if r["kind"] == "capture")) if c]
    caps_r = [c for c in map(decode_capture, (r for r in recent if r["kind"] == "capture")) if c]
    # The input-vs-training signals use all captures of the last window, from the rollout on if it is younger.
    caps_in = [c for c in map(decode_capture, (r for r in latest if r["kind"] == "capture")) if c]
    prompts = [c["prompt"] for c in caps_in]

    def kind(rs, k):
        return [r for r in rs if r["kind"] == k]

    def scores(rs):
        out = []
        for r in rs:
            if r["kind"] == "event" and r["name"] == "feedback" and r["vals"]:
                v = json.loads(r["vals"]).get("score")
                if isinstance(v, (int, float)):
                    out.append(float(v))
        return out
    signals = (drift.input_signals(profile, prompts, th, f"captures of the last {window_s:g} s",
                                   embed(prompts) if embed and prompts else ([] if embed else None))
               + drift.request_signals(kind(base, "request"), kind(recent, "request"), th, w)
               + drift.capture_output_signals(caps_b, caps_r, th, w)
               + drift.quality_signals(kind(base, "golden"), kind(recent, "golden"), scores(base), scores(recent),
                                       th, w))
    return {"model": ref, "first_seen_ms": seen or 0, "now_ms": now,
            "baseline": w.baseline_text(), "window": w.recent_text(), "has_profile": bool(profile),
            "signals": [asdict(s) for s in signals]}


def devices_labelled(store: Store, labels: dict) -> list[str]:
    """The device group a drift query is limited to: every device carrying all of `labels`."""
    out = []
    for d in store.devices():
        have = json.loads(d.get("labels") or "{}")
        if all(have.get(k) == v for k, v in labels.items()):
            out.append(d["device_id"])
    return out


def versions_in_service(store: Store, since_ms: int) -> list[tuple[str, str]]:
    rows = store.db.query("select distinct model from telemetry where kind = 'request' and ts_ms >= ? "
                          "and model like '%@%'", [since_ms])
    return sorted(tuple(r["model"].split("@", 1)) for r in rows)


class DriftMonitor:
    """Re-checks the versions served in the last window; keeps their latest values; events on crossings."""

    def __init__(self, store: Store, baseline_s: float = 7200, window_s: float = 3600,
                 th: drift.Thresholds = drift.Thresholds()):
        self.store, self.baseline_s, self.window_s, self.th = store, baseline_s, window_s, th
        # its tables: control_plane/migrations.py (version 2)

    def check(self, now: int | None = None) -> list[str]:
        """Returns the crossings reported by this check (one event each)."""
        now = now if now is not None else now_ms()
        reported = []
        for name, version in versions_in_service(self.store, now - int(self.window_s * 1000)):
            try:
                rep = evaluate(self.store, name, version, now, self.baseline_s, self.window_s, self.th)
            except UnknownVersion:
                continue   # telemetry naming a version never published here
            if rep["first_seen_ms"]:
                with self.store._lock:
                    self.store.db.execute("insert or ignore into drift_versions (model, first_seen_ms) values (?, ?)",
                                          [rep["model"], rep["first_seen_ms"]])
            reported += self._save(rep, now)
        return reported

    def _save(self, rep: dict, now: int) -> list[str]:
        ref, out, events = rep["model"], [], []
        was = {r["signal"]: r["crossed"] for r in self.store.db.query(
            "select signal, crossed from drift_latest where model = ?", [ref])}
        with self.store._lock:
            for s in rep["signals"]:
                if s["value"] is None:
                    continue
                self.store.db["drift_history"].insert({"model": ref, "signal": s["name"], "ts_ms": now,
                                                       "value": s["value"], "threshold": s["threshold"]})
                self.store.db["drift_latest"].upsert(
                    {"model": ref, "signal": s["name"], "grp": s["group"], "value": s["value"],
                     "threshold": s["threshold"], "crossed": int(s["crossed"]), "ts_ms": now},
                    pk=("model", "signal"))
                if s["crossed"] and not was.get(s["name"]):
                    why = (f"{s['name']} {s['value']:.3f} > {s['threshold']:g} ({s['window']} vs "
                           f"{s['baseline']})")
                    out.append(f"{ref}: {why}")
                    events.append({"seq": self._next_seq(), "ts_ms": now, "kind": "event",
                                   "name": "drift_threshold_crossed", "model": ref, "latency_ms": 0.0,
                                   "first_token_ms": 0.0, "tokens_in": 0, "tokens_out": 0, "outcome": "drift",
                                   "detail": why[:2000], "values": {"value": s["value"],
                                                                    "threshold": s["threshold"]}})
            self.store.db.execute("delete from drift_history where ts_ms < ?", [now - HISTORY_DAYS * 86_400_000])
        self.store.add_telemetry(SOURCE, events)
        for line in out:
            log.warning("drift: %s", line)
        return out

    def _next_seq(self) -> int:
        return self.store.next_counter("drift_event_seq")   # atomic: two control planes never share a seq


def latest(store: Store) -> list[dict]:
    """The values the last check kept (for the gauges); [] before the first check."""
    if "drift_latest" not in store.db.table_names():
        return []
    return list(store.db.query("select * from drift_latest order by model, signal"))


def history(store: Store, ref: str, since_ms: int) -> list[dict]:
    """One version's checked values over time (the dashboard's charts); [] before the first check."""
    if "drift_history" not in store.db.table_names():
        return []
    return list(store.db.query("select signal, ts_ms, value, threshold from drift_history where model = ? and "
                               "ts_ms >= ? order by ts_ms", [ref, since_ms]))
