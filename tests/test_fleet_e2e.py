"""Rollouts and fleet security with real processes over TLS: a control plane, agents, ONNX models.
A canary that cannot load its model halts the rollout by itself and returns to the old version; a control
plane restart mid-rollout resumes it; refusals carry the right status and land in the audit log."""
from __future__ import annotations

import shutil

import grpc
import pytest

from control_plane.admin_client import AdminClient, AdminError
from tests.conftest import variant

pytestmark = pytest.mark.e2e


def garbage_model(src, dest):
    """Correctly signed once published, but model.onnx is not a model: the agent cannot load it."""
    shutil.copytree(src, dest)
    (dest / "model.onnx").write_bytes(b"this is not an ONNX graph\n" * 64)
    return dest


def start_fleet(cluster, tiny_int4, names, labels=None):
    cluster.tls = True
    cluster.start_cp()
    m1 = cluster.publish(tiny_int4, "tiny", "v1")
    cluster.admin.set_desired("tiny", "v1")
    token = cluster.admin.enroll_token(uses=len(names), labels=labels or {}).token
    for n in names:
        cluster.start_agent(n, token=token)
    for n in names:
        cluster.wait_serving(n, m1.ref, timeout=90)
    return m1


def test_failing_canary_halts_the_rollout_and_returns_to_the_old_version(cluster, tiny_int4, tmp_path):
    m1 = start_fleet(cluster, tiny_int4, ("a1", "a2"), labels={"ring": "beta"})
    assert {d.labels["ring"] for d in cluster.admin.devices()} == {"beta"}
    cluster.publish(garbage_model(tiny_int4, tmp_path / "bad"), "tiny", "v2")

    r = cluster.admin.create_rollout("tiny", "v2", {"labels": {"ring": "beta"}}, "canary", canary={"devices": 1})
    r = cluster.wait_for(lambda: (x := cluster.admin.rollout(r.rollout_id)).status == "halted" and x,
                         timeout=120, what="the rollout halting by itself")
    assert "failure ratio 1/1" in r.reason
    assert len(r.devices) == 1, "the second device must never have been told to install v2"
    canary = r.devices[0]
    assert canary.outcome == "failed" and "tiny@v2" in canary.why
    devices = {d.device_id: d for d in cluster.admin.devices()}
    assert {(d.desired.version, d.current.version) for d in devices.values()} == {("v1", "v1")}
    for name in ("a1", "a2"):
        status, body = cluster.chat(name)
        assert status == 200 and body["model"] == m1.ref
    steps = [e.detail for e in cluster.admin.audit(action="RolloutStep")]
    assert any("-> halted" in s for s in steps), steps


def test_control_plane_restart_mid_rollout_resumes(cluster, tiny_int4, tmp_path):
    start_fleet(cluster, tiny_int4, ("b1", "b2", "b3"))
    m2 = cluster.publish(variant(tiny_int4, tmp_path / "v2", 11), "tiny", "v2")
    r = cluster.admin.create_rollout("tiny", "v2", {"all_devices": True}, "canary", canary={"devices": 1},
                                     gate={"min_soak_seconds": 20})  # the restart must fit in the soak,
    cluster.wait_for(lambda: cluster.admin.rollout(r.rollout_id).succeeded == 1, timeout=90,  # also on a busy
                     what="the canary")                                                     # machine
    cluster.cp.stop()                                   # mid-rollout: the canary soaks, the others wait
    cluster.start_cp()
    back = cluster.admin.rollout(r.rollout_id)
    assert back.status == "running" and back.assigned == 1
    done = cluster.wait_for(lambda: (x := cluster.admin.rollout(r.rollout_id)).status == "completed" and x,
                            timeout=120, what="the resumed rollout completing")
    assert done.succeeded == 3
    for name in ("b1", "b2", "b3"):
        cluster.wait_serving(name, m2.ref, timeout=60)


def test_refusals_over_tls_have_the_right_status_and_are_audited(cluster, tiny_int4):
    cluster.tls = True
    cluster.start_cp()
    cluster.publish(tiny_int4, "tiny", "v1")
    used = cluster.admin.enroll_token(uses=1).token
    cluster.start_agent("c1", token=used)
    cluster.wait_for(lambda: len(cluster.admin.devices()) == 1, timeout=60, what="c1 enrolled")
    p, _ = cluster.start_agent("c2", token=used)        # the same single-use token again
    cluster.wait_for(lambda: "enrollment token already used up" in p.log_tail(80), timeout=60,
                     what="c2 told its token is used up")

    ca = cluster.ca.read_bytes()
    anon = AdminClient(cluster.address, "slm_admin_wrong", ca)
    viewer = AdminClient(cluster.address, cluster.admin.api_token("viewer", "vic").token, ca)
    cases = [(lambda: anon.devices(), grpc.StatusCode.UNAUTHENTICATED, "missing or unknown admin token"),
             (lambda: viewer.create_rollout("tiny", "v1", {"all_devices": True}), grpc.StatusCode.PERMISSION_DENIED,
              "CreateRollout needs role operator; vic has role viewer"),
             (lambda: cluster.admin.create_rollout("tiny", "v7", {"all_devices": True}), grpc.StatusCode.NOT_FOUND,
              "no published model tiny@v7"),
             (lambda: cluster.admin.create_rollout("tiny", "v1", {}), grpc.StatusCode.INVALID_ARGUMENT,
              "the selector is empty")]
    for call, code, text in cases:
        with pytest.raises(AdminError) as e:
            call()
        assert e.value.code == code and text in e.value.details
    log = [(a.who, a.action, a.result) for a in cluster.admin.audit(limit=100)]
    assert ("anonymous", "ListDevices", "UNAUTHENTICATED") in log
    assert ("vic", "CreateRollout", "PERMISSION_DENIED") in log
    assert any(act == "CreateRollout" and res == "NOT_FOUND" for _, act, res in log)
    assert any(act == "CreateRollout" and res == "INVALID_ARGUMENT" for _, act, res in log)
    assert any(w == "device-name:c2" and act == "Enroll" and res == "PERMISSION_DENIED" for w, act, res in log)
    assert any(w == "device-name:c1" and act == "Enroll" and res == "OK" for w, act, res in log)
    for c in (anon, viewer):
        c.close()


def test_device_enrolling_after_a_completed_canary_rollout_gets_its_version(cluster, tiny_int4, tmp_path):
    """A completed rollout is a standing assignment: a device that enrolls later and matches its selector is
    told to run the rollout's version, not the older fleet default; one that does not match keeps the default."""
    start_fleet(cluster, tiny_int4, ("c1", "c2"), labels={"site": "berlin"})
    m2 = cluster.publish(variant(tiny_int4, tmp_path / "v2", 13), "tiny", "v2")
    r = cluster.admin.create_rollout("tiny", "v2", {"labels": {"site": "berlin"}}, "canary", canary={"devices": 1},
                                     gate={"min_soak_seconds": 0.5})
    cluster.wait_for(lambda: cluster.admin.rollout(r.rollout_id).status == "completed", timeout=120,
                     what="the canary -> 100% rollout completing")
    late = cluster.admin.enroll_token(uses=1, labels={"site": "berlin"}).token
    cluster.start_agent("c3", token=late)
    cluster.wait_serving("c3", m2.ref, timeout=90)
    other = cluster.admin.enroll_token(uses=1, labels={"site": "paris"}).token
    cluster.start_agent("c4", token=other)
    cluster.wait_serving("c4", "tiny@v1", timeout=90)  # the selector does not cover it: the fleet default
    cluster.admin.set_desired("tiny", "v1")             # a newer `rollout set` stands over the completed rollout
    third = cluster.admin.enroll_token(uses=1, labels={"site": "berlin"}).token
    cluster.start_agent("c5", token=third)
    cluster.wait_serving("c5", "tiny@v1", timeout=90)
