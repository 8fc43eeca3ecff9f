"""The agent's update lifecycle with real processes: kill in every state, hot swap under load, probation
rollback, crash-on-load cap, sideload, full disk, corrupt file at start-up."""
from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import threading

import pytest

from control_plane.procs import http_json
from tests.conftest import variant

pytestmark = pytest.mark.e2e
PROBATION = ["--probation", "2", "--resync", "1"]


def setup_v1(cluster, tiny_int4, agent_extra=(), env=None):
    cluster.start_cp()
    m1 = cluster.publish(tiny_int4, "tiny", "v1")
    cluster.admin.set_desired("tiny", "v1")
    cluster.start_agent("a1", extra=PROBATION + list(agent_extra), env=env)
    cluster.wait_serving("a1", m1.ref)
    return m1


def agent_db(cluster, name="a1"):
    return sqlite3.connect(cluster.root / name / "agent.db")


def kv(cluster, key, name="a1"):
    with agent_db(cluster, name) as db:
        row = db.execute("select value from kv where key = ?", [key]).fetchone()
    return json.loads(row[0]) if row else None


def events(cluster, name="a1"):
    """Event names still in the agent's outbox plus those already uploaded to the control plane."""
    with sqlite3.connect(cluster.cp_dir / "control_plane.db") as db:
        up = [r[0] for r in db.execute("select name from telemetry where kind = 'event'")]
    with agent_db(cluster, name) as db:
        local = [r[0] for r in db.execute("select name from outbox where kind = 'event'")]
    return up + local


def broken_variant(src, dest):
    """Loads and passes its short golden prompt, but fails every prompt beyond the positions it really has."""
    bad = variant(src, dest, 5)
    cfg = json.loads((bad / "genai_config.json").read_text())
    cfg["model"]["context_length"] = cfg["search"]["max_length"] = 4096  # beyond the 512 positions it has
    (bad / "genai_config.json").write_text(json.dumps(cfg))
    return bad


def fail_probation(cluster, until):
    long_prompt = "Kestrel K2 " * 300   # ~600 tokens: fails on the broken model
    for _ in range(40):
        cluster.chat("a1", long_prompt, max_tokens=4)
        cluster.chat("a1", max_tokens=4)
        if until():
            return
    raise AssertionError("probation did not fail")


@pytest.mark.parametrize("state", ["fetching_metadata", "fetching_chunks", "verifying", "installing", "loading",
                                   "smoke_test", "switching", "probation", "rolling_back"])
def test_sigkill_in_every_state_comes_back_consistent(cluster, tiny_int4, tmp_path, state):
    pause = {"SLMOPS_TEST_PAUSE_IN_STATE": f"{state}@v2"}
    p = None
    if state == "rolling_back":   # v2 must fail probation to get there
        m1 = setup_v1(cluster, tiny_int4, agent_extra=["--probation", "30"], env=pause)
        m2 = cluster.publish(broken_variant(tiny_int4, tmp_path / "v2"), "tiny", "v2")
        cluster.admin.set_desired("tiny", "v2")
        cluster.wait_serving("a1", m2.ref)
        p, port = cluster.agents["a1"]
        fail_probation(cluster, lambda: f"pausing in state {state}" in p.log_tail(40))
    else:
        m1 = setup_v1(cluster, tiny_int4, env=pause)
        m2 = cluster.publish(variant(tiny_int4, tmp_path / "v2", 5), "tiny", "v2")
        cluster.admin.set_desired("tiny", "v2")
        p, port = cluster.agents["a1"]
    cluster.wait_for(lambda: f"pausing in state {state}" in p.log_tail(40), what=f"the agent to reach {state}")
    assert kv(cluster, "update")["state"] == state  # saved before acting
    p2, _ = cluster.restart_agent("a1", kill=True, extra=PROBATION)
    # whatever it serves right after the restart is a whole, verified version ...
    def serving():
        status, body = http_json(f"http://127.0.0.1:{port}/readyz", timeout=2) if p2.alive() else (0, {})
        return status == 200 and body["model"]
    first = cluster.wait_for(lambda: _try(serving), what="the restarted agent to serve")
    assert first in (m1.ref, m2.ref)
    status, body = cluster.chat("a1")
    assert status == 200 and body["model"] in (m1.ref, m2.ref)
    # ... and it finishes the update it was killed in
    if state == "rolling_back":
        cluster.wait_serving("a1", m1.ref, timeout=60)
        cluster.wait_for(lambda: kv(cluster, "update")["state"] == "rolled_back", what="the rollback to finish")
        assert kv(cluster, "current") == {"name": "tiny", "version": "v1"}
        status, body = cluster.chat("a1")
        assert status == 200 and body["model"] == m1.ref
    else:
        cluster.wait_serving("a1", m2.ref, timeout=60)
        cluster.wait_for(lambda: kv(cluster, "update")["state"] == "committed", what="the update to commit")
        assert kv(cluster, "current") == {"name": "tiny", "version": "v2"}
    assert not list((cluster.root / "a1" / "models" / "tiny").glob(".staging-*"))
    assert "Traceback" not in p2.log_path.read_text(errors="replace")


def _try(fn):
    try:
        return fn()
    except OSError:
        return None


def test_hot_swap_under_load_drops_no_request(cluster, tiny_int4, tmp_path):
    m1 = setup_v1(cluster, tiny_int4)
    m2 = cluster.publish(variant(tiny_int4, tmp_path / "v2", 5), "tiny", "v2")
    results, stop = [], threading.Event()

    def client():
        while not stop.is_set():
            status, body = cluster.chat("a1", max_tokens=8)
            results.append((status, body.get("model") if isinstance(body, dict) else None))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        cluster.wait_for(lambda: len(results) >= 8, what="load before the swap")
        cluster.admin.set_desired("tiny", "v2")
        cluster.wait_serving("a1", m2.ref)
        n = len(results)
        cluster.wait_for(lambda: len(results) >= n + 8, what="load after the swap")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    failures = [r for r in results if r[0] != 200]
    assert not failures, failures[:5]
    models = [r[1] for r in results]
    assert m1.ref in models and m2.ref in models


def test_probation_rolls_back_a_bad_model(cluster, tiny_int4, tmp_path):
    m1 = setup_v1(cluster, tiny_int4, agent_extra=["--probation", "20"])
    m2 = cluster.publish(broken_variant(tiny_int4, tmp_path / "v2"), "tiny", "v2")
    cluster.admin.set_desired("tiny", "v2")
    cluster.wait_serving("a1", m2.ref)  # loads and passes its (short) golden prompt
    fail_probation(cluster, lambda: kv(cluster, "current") == {"name": "tiny", "version": "v1"})
    cluster.wait_serving("a1", m1.ref, timeout=40)
    dev = cluster.wait_for(lambda: (d := cluster.device("a1")).message.startswith("rolled back") and d,
                           what="the rollback report")
    assert "requests failed" in dev.message
    assert "rollback" in events(cluster)
    assert kv(cluster, "update")["state"] == "rolled_back"
    status, body = cluster.chat("a1")
    assert status == 200 and body["model"] == m1.ref


def test_crash_on_load_is_capped_and_not_retried(cluster, tiny_int4, tmp_path):
    env = {"SLMOPS_TEST_CRASH_ON_LOAD": "v2"}
    m1 = setup_v1(cluster, tiny_int4, env=env)
    cluster.publish(variant(tiny_int4, tmp_path / "v2", 5), "tiny", "v2")
    cluster.admin.set_desired("tiny", "v2")
    for attempt in range(2):  # like systemd: the process dies while loading v2 and is started again
        p, _ = cluster.agents["a1"]
        cluster.wait_for(lambda: not p.alive(), what=f"crash {attempt + 1}")
        assert p.popen.returncode == 70
        cluster.restart_agent("a1", extra=PROBATION, env=env)
    cluster.wait_serving("a1", m1.ref)
    cluster.wait_for(lambda: "v2" in (kv(cluster, "bad") or {}).get("tiny@v2", "") or kv(cluster, "bad"),
                     what="v2 marked bad")
    p, _ = cluster.agents["a1"]
    dev = cluster.wait_for(lambda: (d := cluster.device("a1")).state == "error" and d, what="the report")
    assert "crash loop" in dev.message or "marked bad" in dev.message
    assert p.alive()
    status, body = cluster.chat("a1")
    assert status == 200 and body["model"] == m1.ref


def test_sideload_bundle_installs_without_control_plane(cluster, tiny_int4, tmp_path):
    m1 = setup_v1(cluster, tiny_int4)
    m2 = cluster.publish(variant(tiny_int4, tmp_path / "v2", 5), "tiny", "v2")
    out = tmp_path / "tiny-v2.slmops.tar"
    r = subprocess.run([sys.executable, "-m", "cli", "models", "bundle", "tiny", "v2", "--out", str(out),
                        "--cp-data-dir", str(cluster.cp_dir)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    cluster.cp.stop()  # air-gapped from here on
    tampered = tmp_path / "evil.slmops.tar"
    data = bytearray(out.read_bytes())
    idx = data.find(b'"context_length"')
    data[idx + 1] = ord("C")  # one byte of genai_config.json inside the tar
    tampered.write_bytes(bytes(data))
    sideload = cluster.root / "a1" / "sideload"
    shutil.copy(tampered, sideload / "evil.slmops.tar.part")
    (sideload / "evil.slmops.tar.part").rename(sideload / "evil.slmops.tar")
    cluster.wait_for(lambda: "verify_failed" in events(cluster), what="the tampered bundle refusal")
    status, body = cluster.chat("a1")
    assert body["model"] == m1.ref
    shutil.copy(out, sideload / out.name)
    cluster.wait_serving("a1", m2.ref)
    assert "sideload" in events(cluster)


def test_full_disk_refuses_update_and_keeps_serving(cluster, tiny_int4, tmp_path):
    m1 = setup_v1(cluster, tiny_int4)
    cluster.restart_agent("a1", extra=PROBATION + ["--min-free-disk-mb", str(10**9)])  # a petabyte must stay free
    cluster.wait_serving("a1", m1.ref)
    cluster.publish(variant(tiny_int4, tmp_path / "v2", 5), "tiny", "v2")
    cluster.admin.set_desired("tiny", "v2")
    dev = cluster.wait_for(lambda: (d := cluster.device("a1")).state == "error" and d, what="disk refusal")
    assert "disk_full" in dev.message and "must stay free" in dev.message
    status, body = cluster.chat("a1")
    assert status == 200 and body["model"] == m1.ref
    assert not list((cluster.root / "a1" / "blobs").glob("*.part"))


def test_corrupt_file_at_startup_is_detected_and_refetched(cluster, tiny_int4):
    m1 = setup_v1(cluster, tiny_int4)
    p, _ = cluster.agents["a1"]
    p.stop()
    target = cluster.root / "a1" / "models" / "tiny" / "v1" / "model.onnx.data"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    cluster.restart_agent("a1", extra=PROBATION)
    cluster.wait_serving("a1", m1.ref)
    assert "restore_failed" in events(cluster)
    status, body = cluster.chat("a1")
    assert status == 200
