"""kill -9 of the replica that drives a rollout, mid-rollout (issue #16 part 3): two control-plane processes over
one PostgreSQL, one S3-protocol store and one data folder (tests/pg_fixtures.py), four real agents given both
addresses, a three-wave rollout v1 -> v2 with a soak between waves, and chat traffic all along. The replica whose
/metrics says it holds the leader lease (`slmops_cp_leader 1`) is SIGKILLed while a wave is half installed.

What must hold: the other replica reports the lease within seconds and finishes the rollout; every agent serves
v2; each agent was told v1 and then v2, nothing else (its own log, one line per assignment) and the rollout
assigned each device once; every telemetry event an agent numbered is stored exactly once unless it still waits
in the agent's outbox (its SQLite file, read after it stopped), none was dropped, and the per-minute rollups
count each request once."""
from __future__ import annotations

import re
import time
import urllib.request

import pytest

from control_plane.admin_client import AdminClient, wait_healthy
from control_plane.procs import free_port, start_control_plane
from tests.conftest import variant
from tests.fleet_checks import Traffic, check_telemetry_stored_once
from tests.pg_fixtures import pg_url, s3_server  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.e2e, pytest.mark.pg, pytest.mark.timeout(420)]

AGENTS = ("t1", "t2", "t3", "t4")
AGENT_EXTRA = ["--probation", "1", "--resync", "2"]   # probation short: the waves are what takes the time
TAKEOVER_S = 10.0


def leader_gauge(http_port: int) -> float | None:
    """slmops_cp_leader from a replica's /metrics; None when it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=3) as r:
            text = r.read().decode()
    except OSError:
        return None
    return float(re.search(r"^slmops_cp_leader (\S+)$", text, re.M).group(1))


def told(log_text: str) -> list[tuple[str, int]]:
    """(version, desired revision) of each assignment the agent logged, in order."""
    return [(m.group(1), int(m.group(2)))
            for m in re.finditer(r"told to run tiny@(\S+) \(desired revision (\d+)\)", log_text)]


def test_killing_the_replica_that_drives_a_rollout_mid_wave_hands_it_over(cluster, tiny_int4, tmp_path,
                                                                          pg_url, s3_server):  # noqa: F811
    bucket = s3_server.new_bucket()
    shared = ["--state", pg_url, "--blobs", f"s3://{bucket}/fleet", "--s3-endpoint", s3_server.endpoint]
    http = {1: free_port(), 2: free_port()}
    cluster.start_cp(shared + ["--http", str(http[1])])
    m1 = cluster.publish(tiny_int4, "tiny", "v1")
    m2 = cluster.publish(variant(tiny_int4, tmp_path / "v2", 7), "tiny", "v2")
    cluster.admin.set_desired("tiny", "v1")
    port2 = free_port()
    second = start_control_plane(cluster.cp_dir, port2, cluster.logs / "second", shared + ["--http", str(http[2])])
    cluster.procs.append(second)
    wait_healthy(f"127.0.0.1:{port2}", timeout=60)
    procs, grpc_ports = {1: cluster.cp, 2: second}, {1: cluster.cp_port, 2: port2}
    token = cluster.admin.enroll_token(uses=len(AGENTS)).token
    for i, name in enumerate(AGENTS):   # half of them start on each replica
        first, other = (1, 2) if i % 2 == 0 else (2, 1)
        cluster.start_agent(name, token=token, extra=AGENT_EXTRA,
                            cp_address=f"127.0.0.1:{grpc_ports[first]},127.0.0.1:{grpc_ports[other]}")
    for name in AGENTS:
        cluster.wait_serving(name, m1.ref, timeout=120)

    gauges = cluster.wait_for(lambda: (g := {i: leader_gauge(p) for i, p in http.items()}) and
                              None not in g.values() and sorted(g.values()) == [0, 1] and g,
                              timeout=30, what="one replica leading")
    leader = next(i for i, v in gauges.items() if v == 1)
    survivor = 3 - leader
    token_text = (cluster.cp_dir / "admin-token").read_text().strip()
    admin = AdminClient(f"127.0.0.1:{grpc_ports[survivor]}", token_text)
    traffic = Traffic(cluster, AGENTS)
    try:
        # created on the replica that does not drive: the leader finds it in the database
        r = admin.create_rollout("tiny", "v2", {"all_devices": True}, "waves",
                                 waves=[{"devices": 1}, {"devices": 2}], gate={"min_soak_seconds": 3})
        before = cluster.wait_for(lambda: (x := admin.rollout(r.rollout_id)).wave == 1 and x.pending >= 1 and x,
                                  timeout=120, what="the second wave half installed")
        procs[leader].kill()   # SIGKILL: no clean release of the lease, no last pass
        killed_at = time.time()
        assert before.status == "running" and before.assigned == 2, before

        cluster.wait_for(lambda: leader_gauge(http[survivor]) == 1, timeout=TAKEOVER_S,
                         what=f"replica {survivor} taking the leader lease")
        took_s = time.time() - killed_at
        done = cluster.wait_for(lambda: (x := admin.rollout(r.rollout_id)).status in ("completed", "halted") and x,
                                timeout=150, what="the rollout finishing on the other replica")
        assert done.status == "completed", done
        assert done.succeeded == len(AGENTS) and done.failed == 0
        for name in AGENTS:
            cluster.wait_serving(name, m2.ref, timeout=60)
        time.sleep(1.5)   # a few requests on v2 after the rollout, uploaded (every 0.5 s) before the agents stop
    finally:
        traffic.close()
    devices = {d.name: d for d in admin.devices()}
    assert len(devices) == len(AGENTS) and all(d.current.version == "v2" for d in devices.values())

    # told once each: one assignment per device in the rollout, and each agent's own record says v1 then v2
    assert sorted(d.device_id for d in done.devices) == sorted(d.device_id for d in devices.values())
    assert {(d.previous.version, d.target.version, d.outcome) for d in done.devices} == {("v1", "v2", "succeeded")}
    for name in AGENTS:
        p, _ = cluster.agents[name]
        p.stop()
        seen = told(p.log_path.read_text(errors="replace"))
        assert [v for v, _ in seen] == ["v1", "v2"], f"{name} was told {seen}"
        assert seen[0][1] < seen[1][1]

    # telemetry: every numbered event stored exactly once, unless it still waits in the outbox, and counted once
    # in the per-minute rollups, which the killed replica was keeping until then
    stored = check_telemetry_stored_once(pg_url, cluster, admin, devices, killed_at)
    assert sum(1 for t, _, s in traffic.sent if t > killed_at and s == 200) >= len(AGENTS)
    print(f"lease taken {took_s:.1f} s after the kill; {stored} events stored; "
          f"{len(traffic.sent)} chats")
    admin.close()
