"""Per-device-per-minute rollups (pure arithmetic and the dirty-minute rebuild, late uploads included),
retention, health words, --since parsing and the SVG charts."""
from __future__ import annotations

import pytest

from control_plane import rollups
from control_plane.store import Store
from control_plane.telemetry_views import Retention, TelemetryViews
from control_plane.web.charts import line_chart
from slmops.since import parse_since

T0 = 1_800_000_000_000 - 1_800_000_000_000 % 60_000  # a minute boundary


def req(seq, ts, latency=100.0, first=20.0, out=8, outcome="ok"):
    return {"seq": seq, "ts_ms": ts, "kind": "request", "name": "chat", "model": "tiny@v1", "latency_ms": latency,
            "first_token_ms": first, "tokens_in": 4, "tokens_out": out, "outcome": outcome, "detail": ""}


def sample(seq, ts, cpu, rss):
    return {**req(seq, ts), "kind": "sample", "name": "resources", "values": {"cpu_percent": cpu, "rss_bytes": rss}}


def test_minute_rollup_arithmetic():
    events = [req(i, T0, latency=100.0 * i, first=0.0, out=10) for i in range(1, 11)] + \
             [req(11, T0, outcome="error"), sample(12, T0, 10.0, 5e7), sample(13, T0, 30.0, 7e7),
              {**req(14, T0), "kind": "golden", "outcome": "fail"}, {**req(15, T0), "kind": "golden", "outcome": "pass"}]
    r = rollups.minute_rollup(events)
    assert (r["requests"], r["errors"], r["golden_failed"]) == (11, 1, 1)
    assert (r["p50_latency_ms"], r["p95_latency_ms"]) == (500.0, 1000.0)
    assert r["tokens_per_s"] == pytest.approx(100 / 5.5)
    assert (r["cpu_percent"], r["rss_bytes"]) == (20.0, 7e7)
    empty = rollups.minute_rollup([])
    assert (empty["requests"], empty["cpu_percent"], empty["rss_bytes"]) == (0, -1.0, -1.0)


def test_health_words():
    now = T0
    assert rollups.device_health("serving", now - 10 * 60_000, now, None) == "offline"
    assert rollups.device_health("error", now, now, None) == "error"
    assert rollups.device_health("serving", now, now, {"errors": 1}) == "degraded"
    assert rollups.device_health("serving", now, now, {"golden_failed": 2}) == "degraded"
    assert rollups.device_health("serving", now, now, {"errors": 0}) == "healthy"


@pytest.fixture
def views(state_url):   # SQLite, then PostgreSQL (-m pg)
    store = Store(state_url)
    return store, TelemetryViews(store, Retention(raw_days=1, rollup_days=30))


def test_rollups_are_rebuilt_for_late_events_of_an_earlier_minute(views):
    store, v = views
    store.add_telemetry("d1", [req(1, T0 + 1000), req(2, T0 + 61_000, latency=300)])
    rows = v.minutes("d1", T0, T0 + 3 * 60_000)
    assert [(r["minute_ms"], r["requests"]) for r in rows] == [(T0, 1), (T0 + 60_000, 1)]
    # the device was offline: its older events arrive later and land in the first minute again
    store.add_telemetry("d1", [req(3, T0 + 5000, latency=900), req(4, T0 + 6000, outcome="error")])
    first = v.minutes("d1", T0, T0 + 3 * 60_000)[0]
    assert (first["requests"], first["errors"], first["p95_latency_ms"]) == (3, 1, 900.0)
    assert v.refresh() == 0  # nothing left dirty
    store.add_telemetry("d1", [req(3, T0 + 5000)])  # a re-sent duplicate changes nothing
    assert v.minutes("d1", T0, T0 + 60_000)[0]["requests"] == 3


def test_an_event_stored_while_its_minute_is_rebuilt_is_counted_by_the_next_rebuild(views, monkeypatch):
    """Ingest (another thread, another replica) may store an event in a minute while the rebuild of that minute
    runs: the minute must stay dirty, or that event is never counted. (Taking the dirty mark after reading the
    minute's events lost it: 1 request instead of 2.)"""
    import threading

    store, v = views
    store.add_telemetry("d1", [req(1, T0 + 1000)])
    real, uploads = rollups.minute_rollup, []

    def with_an_upload_meanwhile(events):
        if not uploads:   # an upload lands right after the rebuild read the minute's events
            t = threading.Thread(target=lambda: store.add_telemetry("d1", [req(2, T0 + 2000)]))
            uploads.append(t)
            t.start()
            t.join(0.5)   # finished, unless the rebuild's transaction holds it back until it commits
        return real(events)

    monkeypatch.setattr(rollups, "minute_rollup", with_an_upload_meanwhile)
    v.refresh()
    uploads[0].join(30)
    assert not uploads[0].is_alive()
    assert v.minutes("d1", T0, T0 + 60_000)[0]["requests"] == 2
    assert v.refresh() == 0


def test_retention_keeps_rollups_longer_than_raw_events(views):
    store, v = views
    store.add_telemetry("d1", [req(1, T0), req(2, T0 + 2 * 86_400_000)])
    v.refresh()
    assert v.apply_retention(now=T0 + int(1.5 * 86_400_000)) == (1, 0)
    assert [r["seq"] for r in store.telemetry("d1", 0)] == [2]
    assert len(v.minutes("d1", 0, T0 + 3 * 86_400_000)) == 2  # the minute of the deleted event keeps its rollup
    assert v.apply_retention(now=T0 + 40 * 86_400_000) == (1, 2)
    with pytest.raises(ValueError):
        Retention(raw_days=10, rollup_days=5)


def test_events_and_captures_queries(views):
    store, v = views
    store.add_telemetry("d1", [req(1, T0), {**req(2, T0 + 1), "kind": "event", "name": "swap"},
                               {**req(3, T0 + 2), "kind": "capture",
                                "detail": '{"messages": [{"role": "user", "content": "hi"}], "response": "yo"}'},
                               {**req(4, T0 + 3), "kind": "capture", "detail": '{"trunc'}])
    assert [e["name"] for e in v.events("d1", 0)] == ["swap"]
    assert list(v.captures()) == [{"device_id": "d1", "ts_ms": T0 + 2, "model": "tiny@v1", "adapter": "",
                                   "messages": [{"role": "user", "content": "hi"}], "response": "yo"}]


def test_parse_since():
    now = 1_000_000_000_000
    assert parse_since("", now) == 0
    assert parse_since("90", now) == now - 90_000
    assert parse_since("15m", now) == now - 900_000
    assert parse_since("2h", now) == now - 7_200_000
    assert parse_since("7d", now) == now - 7 * 86_400_000
    assert parse_since("2026-01-01T00:00", now) == 1_767_225_600_000
    with pytest.raises(ValueError, match="'yesterday'"):
        parse_since("yesterday", now)


def test_line_chart_draws_each_series_and_escapes_labels():
    svg = line_chart("c1", "latency <ms>", [("p50", [(T0, 10.0), (T0 + 60_000, 20.0)]), ("p95", [(T0, 30.0)])])
    assert svg.startswith('<svg id="c1"') and 'data-points="3"' in svg
    assert svg.count("<polyline") == 2 and "latency &lt;ms&gt;" in svg
    assert "no data" in line_chart("c2", "cpu", [("cpu", [])])
