"""An agent given several control-plane addresses (`--control-plane A,B`: replicas of one control plane) moves to
the next one when the one it uses stops answering: real processes over loopback, a real tiny ONNX model.

The replica case runs two control-plane processes over one PostgreSQL and one S3-protocol store (tests/pg_fixtures.py),
each with a data folder of its own (the second given the first's identity by `slmops control-plane copy-identity`:
trust root and keys, TLS CA; its own server certificate and admin token), TLS throughout."""
from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

from control_plane.admin_client import AdminClient, wait_healthy
from control_plane.procs import free_port, start_control_plane
from tests.conftest import variant
from tests.pg_fixtures import pg_url, s3_server  # noqa: F401  (fixtures)

pytestmark = pytest.mark.e2e


def test_an_address_that_does_not_answer_is_passed_over(cluster, tiny_int4):
    cluster.start_cp()
    m = cluster.publish(tiny_int4, "tiny", "v1")
    cluster.admin.set_desired("tiny", "v1")
    dead = free_port()   # nothing listens there
    p, _ = cluster.start_agent("a1", cp_address=f"127.0.0.1:{dead},{cluster.address}")
    cluster.wait_serving("a1", m.ref, timeout=90)
    log = p.log_tail(200)
    assert f"127.0.0.1:{dead}" in log, "the agent did not say which address failed:\n" + log


@pytest.mark.pg
@pytest.mark.timeout(600)
def test_the_agent_fails_over_to_another_replica_and_follows_it(cluster, tiny_int4, tmp_path, pg_url,  # noqa: F811
                                                                s3_server):  # noqa: F811
    bucket = s3_server.new_bucket()
    shared = ["--state", pg_url, "--blobs", f"s3://{bucket}/fleet", "--s3-endpoint", s3_server.endpoint]
    cluster.tls = True   # the agent pins the first replica's CA; the second must chain to it
    cluster.start_cp(shared)
    m1 = cluster.publish(tiny_int4, "tiny", "v1")
    m2 = cluster.publish(variant(tiny_int4, tmp_path / "v2", 7), "tiny", "v2")
    cluster.admin.set_desired("tiny", "v1")
    port2, second_dir = free_port(), tmp_path / "second-cp"   # a data folder of its own, with the shared identity
    copied = subprocess.run([str(pathlib.Path(sys.executable).with_name("slmops")), "control-plane", "copy-identity",
                             str(cluster.cp_dir), str(second_dir)], capture_output=True, text=True, timeout=120)
    assert copied.returncode == 0, copied.stderr
    second = start_control_plane(second_dir, port2, cluster.logs / "second", shared, tls=True)
    cluster.procs.append(second)
    wait_healthy(f"127.0.0.1:{port2}", timeout=60, ca_pem=cluster.ca.read_bytes())
    cluster.start_agent("a1", cp_address=f"{cluster.address},127.0.0.1:{port2}")
    cluster.wait_serving("a1", m1.ref, timeout=90)

    cluster.cp.kill()   # SIGKILL the replica the agent uses
    admin2 = AdminClient(f"127.0.0.1:{port2}", (second_dir / "admin-token").read_text().strip(),
                         (second_dir / "keys" / "ca.pem").read_bytes())
    try:
        admin2.set_desired("tiny", "v2")
        cluster.wait_serving("a1", m2.ref, timeout=120)   # told by the other replica, fetched from the shared store
        cluster.wait_for(lambda: next((d for d in admin2.devices() if d.name == "a1"), None) is not None
                         and next(d for d in admin2.devices() if d.name == "a1").current.version == "v2",
                         timeout=60, what="the other replica seeing a1 report v2")
    finally:
        admin2.close()


@pytest.mark.parametrize("addresses, message", [
    ("127.0.0.1:1,127.0.0.1:1", "names an address twice"),
    ("127.0.0.1:1,nohost", "HOST:PORT"),
    (",".join(f"127.0.0.1:{p}" for p in range(1, 18)), "at most 16"),
    ("127.0.0.1:1,10.0.0.5:50051", "--insecure-loopback-dev needs a loopback --control-plane"),
])
def test_control_plane_address_lists_are_checked(tmp_path, addresses, message):
    from edge_agent.config import AgentConfig
    from slmops.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        AgentConfig(control_plane=addresses, data_dir=tmp_path, insecure_loopback_dev=True)
    assert AgentConfig(control_plane="127.0.0.1:1,localhost:2", data_dir=tmp_path,
                       insecure_loopback_dev=True).control_plane_hosts() == ["127.0.0.1", "localhost"]
