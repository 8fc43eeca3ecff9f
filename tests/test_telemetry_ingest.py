"""Telemetry ingest against a real in-process control plane over gRPC: deduplication, per-event checks that
keep the valid rest of a batch, clamped timestamps, refusals with clear statuses, and the control plane's own
/metrics parsed with prometheus_client's parser."""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from control_plane import ingest
from control_plane.procs import free_port
from control_plane.server import ControlPlane, ControlPlaneConfig
from slmops.v1 import telemetry_pb2, telemetry_pb2_grpc


def ev(seq, ts=None, **kw):
    base = dict(seq=seq, ts_unix_ms=int(time.time() * 1000) if ts is None else ts, kind="request",
                name="chat", model="tiny@v1", latency_ms=120.0, first_token_ms=20.0, tokens_in=5, tokens_out=8,
                outcome="ok")
    return telemetry_pb2.TelemetryEvent(**{**base, **kw})


@pytest.fixture
def cp(tmp_path, cp_backend):   # embedded, then PostgreSQL + S3 (-m pg)
    c = ControlPlane(ControlPlaneConfig(data_dir=tmp_path / "cp", listen="127.0.0.1:0", http=str(free_port()),
                                        **cp_backend,
                                        insecure_loopback_dev=True))
    c.start()
    yield c
    c.stop()


@pytest.fixture
def device(cp):
    did, token = cp.store.add_device("dev-a", {}, "test")
    ch = grpc.insecure_channel(f"127.0.0.1:{cp.port}")
    stub = telemetry_pb2_grpc.TelemetryStub(ch)

    def upload(events, device_id=did, tok=token):
        return stub.Upload(telemetry_pb2.TelemetryBatch(device_id=device_id, events=events),
                           metadata=(("authorization", f"Bearer {tok}"),), timeout=10)
    yield did, upload
    ch.close()


def test_duplicate_upload_is_counted_once(cp, device):
    did, upload = device
    batch = [ev(i) for i in range(1, 101)]
    first = upload(batch)
    assert (first.accepted, first.duplicates, first.rejected) == (100, 0, 0)
    again = upload(batch)  # the acknowledgement was "lost": the agent sends the same batch again
    assert (again.accepted, again.duplicates) == (0, 100)
    overlap = upload([ev(i) for i in range(90, 111)])
    assert (overlap.accepted, overlap.duplicates) == (10, 11)
    rows = cp.store.telemetry(did, 0)
    assert [r["seq"] for r in rows] == list(range(1, 111))


def test_bad_events_are_refused_and_the_rest_of_the_batch_kept(cp, device):
    did, upload = device
    batch = [ev(1), ev(0), ev(2, kind="bogus"), ev(3, latency_ms=float("nan")), ev(4, tokens_out=-1), ev(5),
             ev(5), ev(6, kind="sample", values={"cpu_percent": 12.5, "rss_bytes": 1e8})]
    ack = upload(batch)
    assert (ack.accepted, ack.rejected) == (3, 5)
    for words in ("seq 0: seq must be positive", "unknown kind 'bogus'", "latency_ms nan",
                  "token counts must not be negative", "appears twice"):
        assert words in ack.detail
    rows = {r["seq"]: r for r in cp.store.telemetry(did, 0)}
    assert sorted(rows) == [1, 5, 6]
    assert '"cpu_percent": 12.5' in rows[6]["vals"]


def test_far_future_and_missing_timestamps_are_clamped_to_the_server_clock(cp, device):
    did, upload = device
    now = int(time.time() * 1000)
    ack = upload([ev(1, ts=now + 3600_000 * 24 * 365), ev(2, ts=0), ev(3, ts=now + 60_000)])
    assert (ack.accepted, ack.clamped, ack.rejected) == (3, 2, 0)
    assert "2 timestamp(s) clamped" in ack.detail
    rows = {r["seq"]: r for r in cp.store.telemetry(did, 0)}
    after = int(time.time() * 1000)
    assert now <= rows[1]["ts_ms"] <= after and now <= rows[2]["ts_ms"] <= after
    assert rows[3]["ts_ms"] == now + 60_000  # small clock skew is kept as sent


def test_events_older_than_retention_are_refused(cp, device):
    _, upload = device
    ack = upload([ev(1, ts=int(time.time() * 1000) - 30 * 86_400_000), ev(2)])
    assert (ack.accepted, ack.rejected) == (1, 1)
    assert "older than the retention window" in ack.detail


def test_oversized_batch_is_refused_whole_with_a_clear_status(cp, device):
    did, upload = device
    with pytest.raises(grpc.RpcError) as e:
        upload([ev(i) for i in range(1, ingest.MAX_EVENTS_PER_BATCH + 2)])
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "exceeds" in e.value.details() and "split it" in e.value.details()
    assert cp.store.telemetry(did, 0) == []


def test_a_device_may_not_report_for_another(cp, device):
    _, upload = device
    other, _ = cp.store.add_device("dev-b", {}, "test")
    with pytest.raises(grpc.RpcError) as e:
        upload([ev(1)], device_id=other)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert other in e.value.details()
    assert cp.store.telemetry(other, 0) == []
    with pytest.raises(grpc.RpcError) as e:
        upload([ev(1)], tok="slm_device_forged")
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_control_plane_metrics_parse_and_count_ingest(cp, device):
    _, upload = device
    upload([ev(1), ev(2), ev(0)])
    upload([ev(1)])
    with urllib.request.urlopen(f"http://127.0.0.1:{cp.http.port}/metrics", timeout=10) as r:
        text = r.read().decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(text) for s in fam.samples}
    assert samples[("slmops_cp_telemetry_events_total", (("result", "accepted"),))] == 2
    assert samples[("slmops_cp_telemetry_events_total", (("result", "duplicate"),))] == 1
    assert samples[("slmops_cp_telemetry_events_total", (("result", "rejected"),))] == 1
    assert samples[("slmops_cp_telemetry_batches_total", (("result", "stored"),))] == 2
    assert samples[("slmops_cp_telemetry_rows", ())] == 2
    assert samples[("slmops_cp_devices", (("state", "enrolled"),))] == 1
    assert samples[("slmops_cp_telemetry_ingest_seconds_count", ())] == 2


def test_captures_export_as_jsonl_behind_the_admin_token(cp, device):
    _, upload = device
    pair = '{"messages": [{"role": "user", "content": "E17?"}], "response": "filter"}'
    upload([ev(1, kind="capture", detail=pair), ev(2)])
    url = f"http://127.0.0.1:{cp.http.port}/api/captures.jsonl"
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(url, timeout=10)
    assert e.value.code == 401
    token = cp.admin_token_path.read_text().strip()
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        rows = [json.loads(line) for line in r.read().decode().splitlines()]
    assert [(x["messages"][0]["content"], x["response"], x["model"]) for x in rows] == [("E17?", "filter", "tiny@v1")]


def test_check_event_is_pure_and_names_what_is_wrong():
    now = 1_700_000_000_000
    got, clamped, why = ingest.check_event(ev(7, ts=now, detail="x" * 5000), now)
    assert got["ts_ms"] == now and not clamped and len(got["detail"]) == ingest.MAX_DETAIL
    got, _, _ = ingest.check_event(ev(8, ts=now, kind="capture", detail="y" * 5000), now)
    assert len(got["detail"]) == 5000
    assert ingest.check_event(ev(9, ts=now, values={"cpu": float("inf")}), now)[2] == "sample values must be finite"
