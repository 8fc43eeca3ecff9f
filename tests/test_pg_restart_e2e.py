"""PostgreSQL restarted under load (issue #16, faults): one control plane on a PostgreSQL server of its own, two real
agents chatting all along. While the database is down the agents keep answering every chat (they serve locally;
their telemetry waits in their outboxes), the control plane names the database it cannot reach instead of
hanging, and when the database is back the control plane reconnects by itself: an operator's change reaches
both agents through their watch streams, and every telemetry event the agents numbered is stored exactly once."""
from __future__ import annotations

import time

import grpc
import pytest

from control_plane.admin_client import AdminError
from tests.conftest import variant
from tests.fleet_checks import Traffic, check_telemetry_stored_once
from tests.pg_fixtures import own_pg_server

pytestmark = [pytest.mark.e2e, pytest.mark.pg, pytest.mark.timeout(420)]

AGENTS = ("p1", "p2")
DOWN_S = 6.0


@pytest.fixture
def own_pg():
    """A PostgreSQL server of this test's own, which it stops and starts (the session's stays up for the rest)."""
    with own_pg_server() as server:
        yield server


def test_a_postgresql_restart_under_load_loses_nothing_and_the_control_plane_reconnects(cluster, tiny_int4,
                                                                                        tmp_path, own_pg):
    url = own_pg.new_database()
    cluster.start_cp(["--state", url])
    m1 = cluster.publish(tiny_int4, "tiny", "v1")
    m2 = cluster.publish(variant(tiny_int4, tmp_path / "v2", 7), "tiny", "v2")
    cluster.admin.set_desired("tiny", "v1")
    token = cluster.admin.enroll_token(uses=len(AGENTS)).token
    for name in AGENTS:
        cluster.start_agent(name, token=token, extra=["--resync", "2"])
    for name in AGENTS:
        cluster.wait_serving(name, m1.ref, timeout=120)

    traffic = Traffic(cluster, AGENTS)
    try:
        time.sleep(1.0)
        own_pg.stop("fast")   # a clean restart keeps every commit: whatever was acknowledged must survive it
        down_at = time.time()
        with pytest.raises(AdminError) as refused:   # named, and retryable: not UNKNOWN
            cluster.admin.devices()
        assert refused.value.code == grpc.StatusCode.UNAVAILABLE, refused.value
        assert f"PostgreSQL at 127.0.0.1:{own_pg.port}" in refused.value.details, refused.value
        time.sleep(DOWN_S)
        own_pg.start()
        up_at = time.time()
        # the same control plane process, new connections: the operator's change reaches both agents
        cluster.wait_for(lambda: _try(lambda: cluster.admin.set_desired("tiny", "v2")), timeout=60,
                         what="the control plane answering again after the restart")
        for name in AGENTS:
            cluster.wait_serving(name, m2.ref, timeout=120)
        time.sleep(1.5)   # a few requests on v2, uploaded (every 0.5 s) before the agents stop
    finally:
        traffic.close()

    during = [(name, status) for t, name, status in traffic.sent if down_at <= t <= up_at]
    assert len(during) >= len(AGENTS), f"too few chats while the database was down: {during}"
    assert all(status == 200 for _, status in during), f"an agent failed a chat while the database was down: {during}"
    assert all(status == 200 for _, _, status in traffic.sent), [s for s in traffic.sent if s[2] != 200][:5]

    devices = {d.name: d for d in cluster.admin.devices()}
    assert set(devices) == set(AGENTS) and all(d.current.version == "v2" for d in devices.values())
    # the agents' uploads back off (capped, with jitter) while the database is down: wait, bounded, until each one
    # has uploaded again, then stop them and check that nothing was lost or stored twice
    cluster.wait_for(lambda: _uploaded_since(url, [d.device_id for d in devices.values()], up_at), timeout=120,
                     what="every agent uploading telemetry again after the restart")
    for name in AGENTS:
        cluster.agents[name][0].stop()
    stored = check_telemetry_stored_once(url, cluster, cluster.admin, devices, up_at)
    print(f"database down {up_at - down_at:.1f} s; {len(during)} chats answered meanwhile; {stored} events stored")


def _try(call) -> bool:
    try:
        call()
        return True
    except AdminError:
        return False


def _uploaded_since(url: str, device_ids: list[str], since: float) -> bool:
    import psycopg

    with psycopg.connect(url) as c:
        got = c.execute("select count(distinct device_id) from telemetry where device_id = any(%s) "
                        "and received_ms >= %s", [device_ids, int(since * 1000)]).fetchone()[0]
    return got == len(device_ids)
