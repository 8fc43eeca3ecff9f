"""The thin end-to-end slice with real processes: control plane, agents, gRPC, SQLite, ONNX, HTTP."""
from __future__ import annotations

import sqlite3

import pytest

from tests.conftest import variant

pytestmark = pytest.mark.e2e


def test_two_agents_serve_published_model_and_report_telemetry(cluster, tiny_int4):
    cluster.start_cp()
    m = cluster.publish(tiny_int4, "tiny", "v1")
    assert cluster.admin.set_desired("tiny", "v1") == 0  # no devices yet: becomes the fleet default
    token = cluster.admin.enroll_token(uses=2).token
    for name in ("a1", "a2"):
        cluster.start_agent(name, token=token)
    for name in ("a1", "a2"):
        cluster.wait_serving(name, m.ref)
        status, body = cluster.chat(name)
        assert status == 200, body
        assert body["model"] == m.ref
        assert body["usage"]["completion_tokens"] > 0
        assert body["choices"][0]["message"]["content"].strip()
    rows = cluster.wait_for(lambda: [r for r in cluster.admin.telemetry() if r.requests >= 1] or None,
                            what="request telemetry")
    cluster.wait_for(lambda: len([r for r in cluster.admin.telemetry() if r.requests >= 1]) == 2,
                     what="telemetry from both agents")
    rows = cluster.admin.telemetry()
    assert all(r.tokens_out > 0 and r.p50_latency_ms > 0 and r.errors == 0 for r in rows)
    devices = {d.name: d for d in cluster.admin.devices()}
    assert {d.current.version for d in devices.values()} == {"v1"}
    assert {d.state for d in devices.values()} == {"serving"}


def test_tampered_blob_is_refused_and_previous_model_keeps_serving(cluster, tiny_int4, tmp_path):
    cluster.start_cp()
    m1 = cluster.publish(tiny_int4, "tiny", "v1")
    cluster.admin.set_desired("tiny", "v1")
    cluster.start_agent("a1")
    cluster.wait_serving("a1", m1.ref)

    v2 = variant(tiny_int4, tmp_path / "v2", 7)
    m2 = cluster.publish(v2, "tiny", "v2")
    changed = next(f for f in m2.files if f.path == "genai_config.json")
    blob = cluster.cp_dir / "blobs" / changed.sha256[:2] / changed.sha256
    data = bytearray(blob.read_bytes())
    data[10] ^= 0xFF  # same size, different bytes: an attacker (or a bad disk) changed the file
    blob.write_bytes(bytes(data))

    cluster.admin.set_desired("tiny", "v2")
    dev = cluster.wait_for(lambda: (d := cluster.device("a1")).state == "error" and d, what="refusal reported")
    assert "verify_failed" in dev.message and "genai_config.json" in dev.message and "sha256" in dev.message
    assert dev.current.version == "v1"
    status, body = cluster.chat("a1")
    assert status == 200 and body["model"] == m1.ref
    db = sqlite3.connect(cluster.cp_dir / "control_plane.db")

    def event_names():  # v1's own events (download, swap, committed) arrive first; the refusal's follows
        return [r[0] for r in db.execute("select name from telemetry where kind = 'event'")]
    names = cluster.wait_for(lambda: "verify_failed" in (n := event_names()) and n,
                             what="the verify_failed event upload")
    assert "verify_failed" in names


def test_agent_retries_until_control_plane_appears(cluster, tiny_int4):
    cluster.start_cp()
    m = cluster.publish(tiny_int4, "tiny", "v1")
    cluster.admin.set_desired("tiny", "v1")
    token = cluster.admin.enroll_token(uses=1).token
    cluster.cp.stop()  # the control plane goes away before the agent starts

    p, _ = cluster.start_agent("late", token=token)
    cluster.wait_for(lambda: "retrying enrollment" in p.log_tail(50), what="the agent saying it retries")
    assert p.alive()
    cluster.start_cp()  # same port, same data
    cluster.wait_serving("late", m.ref, timeout=60)
    status, _ = cluster.chat("late")
    assert status == 200


def test_restarted_agent_serves_from_disk_while_control_plane_is_down(cluster, tiny_int4):
    cluster.start_cp()
    m = cluster.publish(tiny_int4, "tiny", "v1")
    cluster.admin.set_desired("tiny", "v1")
    p, port = cluster.start_agent("a1")
    cluster.wait_serving("a1", m.ref)
    cluster.cp.stop()
    cluster.restart_agent("a1")  # same data dir and port, no token: identity and model come from disk
    cluster.wait_serving("a1", m.ref, timeout=60)
    status, body = cluster.chat("a1")
    assert status == 200 and body["model"] == m.ref
