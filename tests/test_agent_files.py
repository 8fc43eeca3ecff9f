"""Every secret the agent writes on disk is owner-only: agent.db (device token, trusted metadata) with its WAL
files, and the identity folder (device key, pinned CA). Checked on the files a real agent process wrote."""
from __future__ import annotations

import os
import stat

import pytest

pytestmark = pytest.mark.e2e


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_agent_db_and_identity_files_are_owner_only(cluster, tiny_int4):
    cluster.start_cp()
    m1 = cluster.publish(tiny_int4, "tiny", "v1")
    cluster.admin.set_desired("tiny", "v1")
    cluster.start_agent("a1")
    cluster.wait_serving("a1", m1.ref)
    data = cluster.root / "a1"
    secrets = [data / "agent.db", data / "identity" / "device-key.pem"] + \
        [p for p in (data / "agent.db-wal", data / "agent.db-shm") if p.exists()]
    for p in secrets:
        assert mode(p) == 0o600, f"{p.name} is {oct(mode(p))}"
    assert mode(data / "identity") & 0o077 == 0
    # an agent.db left 0644 by an older agent is made owner-only at the next start
    p, _ = cluster.agents["a1"]
    p.stop()
    os.chmod(data / "agent.db", 0o644)
    cluster.restart_agent("a1")
    cluster.wait_serving("a1", m1.ref)
    assert mode(data / "agent.db") == 0o600
    status, body = cluster.chat("a1", max_tokens=4)
    assert status == 200 and body["model"] == m1.ref
