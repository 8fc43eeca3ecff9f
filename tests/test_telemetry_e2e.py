"""Store-and-forward with real processes: agents keep serving while the control plane is down, and after it
comes back every event each agent recorded is stored exactly once. Also the agent's /metrics, parsed with
prometheus_client's parser, counts what the control plane received."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from control_plane.procs import free_port

pytestmark = pytest.mark.e2e

GOLDEN = [{"messages": [{"role": "user", "content": "What does error E17 mean?"}], "max_tokens": 4}]
FAST = ["--sample-interval", "1", "--golden-interval", "2"]


def start_cp_with_http(cluster, http_port: int):
    """The cluster fixture's control plane, with the dashboard/metrics HTTP server on `http_port`."""
    return cluster.start_cp(extra=["--http", f"127.0.0.1:{http_port}"])


def metrics(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def server_seqs(cluster, device_id: str) -> list[int]:
    with sqlite3.connect(cluster.cp_dir / "control_plane.db") as db:
        return [r[0] for r in db.execute("select seq from telemetry where device_id = ? order by seq", [device_id])]


def agent_last_seq(cluster, name: str) -> int:
    with sqlite3.connect(cluster.root / name / "agent.db") as db:
        row = db.execute("select seq from sqlite_sequence where name = 'outbox'").fetchone()
    return row[0] if row else 0


def test_events_survive_a_control_plane_outage_exactly_once(cluster, tiny_int4):
    http_port = free_port()
    start_cp_with_http(cluster, http_port)
    m = cluster.publish(tiny_int4, "tiny", "v1", golden_prompts=GOLDEN)
    cluster.admin.set_desired("tiny", "v1")
    token = cluster.admin.enroll_token(uses=2).token
    names = ("a1", "a2")
    for name in names:
        cluster.start_agent(name, token=token, extra=FAST)
    for name in names:
        cluster.wait_serving(name, m.ref)
    chats = {name: 0 for name in names}

    def chat_all(n: int):
        for _ in range(n):
            for name in names:
                status, body = cluster.chat(name)
                assert status == 200, body
                chats[name] += 1

    chat_all(3)
    ids = {name: cluster.device(name).device_id for name in names}
    cluster.cp.stop()                    # the control plane goes away; devices keep serving
    chat_all(4)
    start_cp_with_http(cluster, http_port)
    chat_all(2)

    for name in names:
        did = ids[name]
        cluster.wait_for(lambda: cluster.admin.telemetry(did) and
                         cluster.admin.telemetry(did)[0].requests == chats[name], timeout=90,
                         what=f"all {chats[name]} requests of {name} after the restart")
        # Every event the agent recorded (requests, samples, golden checks, swap...) has one sequence number;
        # once the server holds the agent's latest, it must hold each of 1..latest exactly once.
        last = agent_last_seq(cluster, name)
        cluster.wait_for(lambda: server_seqs(cluster, did) and server_seqs(cluster, did)[-1] >= last, timeout=60,
                         what=f"{name}'s events through seq {last}")
        seqs = server_seqs(cluster, did)
        assert seqs == list(range(1, seqs[-1] + 1))

        with sqlite3.connect(cluster.cp_dir / "control_plane.db") as db:
            kinds = dict(db.execute("select kind, count(*) from telemetry where device_id = ? group by kind", [did]))
            requests = db.execute("select count(*) from telemetry where device_id = ? and kind = 'request' and "
                                  "model = ? and outcome = 'ok'", [did, m.ref]).fetchone()[0]
        assert requests == chats[name]
        assert kinds["sample"] >= 1 and kinds["golden"] >= 1 and kinds["event"] >= 1

        # The agent's own /metrics counts the same requests the control plane stored.
        got = metrics(cluster.agents[name][1])
        served = sum(v for labels, v in got["slmops_agent_requests_total"]
                     if labels["outcome"] == "ok" and labels["model"] == m.ref)
        assert served == chats[name]
        assert any(v >= 1 for labels, v in got["slmops_agent_golden_checks_total"] if labels["outcome"] == "pass")
        assert dict((lb.get("le"), v) for lb, v in got["slmops_agent_request_latency_seconds_bucket"])["+Inf"] \
            == chats[name]
        assert got["slmops_agent_telemetry_dropped"][0][1] == 0

    minutes = cluster.admin.rollups(ids["a1"])
    assert sum(x.requests for x in minutes) == chats["a1"]
    assert any(x.cpu_percent >= 0 and x.rss_bytes > 0 for x in minutes)
    assert any(e.name == "swap" for e in cluster.admin.events(ids["a1"]))
    cp_metrics = metrics(http_port)
    assert cp_metrics["slmops_cp_devices"][0][1] >= 1

    def cli(*args):
        r = subprocess.run([sys.executable, "-m", "cli", *args, "--control-plane", cluster.address,
                            "--cp-data-dir", str(cluster.cp_dir)], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "COLUMNS": "200",
                                **({} if cluster.tls else {"SLMOPS_INSECURE_LOOPBACK_DEV": "1"})})
        assert r.returncode == 0, r.stderr
        return r.stdout
    shown = cli("devices", "show", "a1", "--since", "1h")
    assert ids["a1"] in shown and m.ref in shown and "last minutes" in shown and "swap" in shown
    assert f"│ {chats['a1']} " in cli("telemetry", "summary", "--device", ids["a1"], "--since", "15m")
