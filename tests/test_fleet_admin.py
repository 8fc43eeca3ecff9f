"""The fleet's admin API in one in-process control plane with simulated devices (raw gRPC, no agent
processes): rollouts driven to completion and to a halt, labels, pins, selectors, roles, audit, refusals."""
from __future__ import annotations

import time

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from control_plane import auth
from control_plane.admin_client import AdminClient, AdminError
from control_plane.server import ControlPlane, ControlPlaneConfig
from edge_agent import device_identity
from slmops.v1 import common_pb2, fleet_pb2, fleet_pb2_grpc


class SimDevice:
    """A device that enrolls with a key pair made here, signs every call with the agent's own signer
    (edge_agent/device_identity.py) and reports what it is told. `raw` is the same link without the signer."""

    def __init__(self, address: str, enroll_token: str, name: str, hw: str = "cpu", fail_versions=(),
                 ca_pem: bytes | None = None):
        self.raw = grpc.secure_channel(address, grpc.ssl_channel_credentials(ca_pem))
        self.key = Ed25519PrivateKey.generate()
        self.token = ""
        self.channel = grpc.intercept_channel(self.raw, device_identity.DeviceSigner(self.key, lambda: self.token))
        self.fleet = fleet_pb2_grpc.FleetStub(self.channel)
        pub = self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        r = self.fleet.Enroll(fleet_pb2.EnrollRequest(enroll_token=enroll_token, device_name=name,
                                                      hardware=common_pb2.Hardware(hardware_class=hw),
                                                      agent_version="sim", device_public_key=pub), timeout=10)
        self.device_id, self.token = r.device_id, r.device_token
        self.fail_versions = set(fail_versions)
        self.current = common_pb2.ModelRef()

    def md(self):
        return [("authorization", f"Bearer {self.token}")]

    def report(self, state: str, message: str = "", device_id: str | None = None):
        self.fleet.ReportStatus(fleet_pb2.StatusReport(device_id=device_id or self.device_id, current=self.current,
                                                       state=state, message=message), metadata=self.md(),
                                timeout=10)

    def desired(self) -> fleet_pb2.DesiredState:
        stream = self.fleet.WatchDesiredState(fleet_pb2.WatchRequest(device_id=self.device_id),
                                              metadata=self.md(), timeout=10)
        first = next(stream)
        stream.cancel()
        return first

    def act(self) -> None:
        """Installs (or fails to install) the desired model, like an agent would."""
        want = self.desired().model
        if (want.name, want.version) == (self.current.name, self.current.version) or not want.name:
            return
        if want.version in self.fail_versions:
            self.report("error", f"load_failed for {want.name}@{want.version}: garbage model.onnx")
        else:
            self.current = common_pb2.ModelRef(name=want.name, version=want.version)
            self.report("serving")


@pytest.fixture
def cp(tmp_path, cp_backend):   # embedded, then PostgreSQL + S3 (-m pg)
    c = ControlPlane(ControlPlaneConfig(data_dir=tmp_path / "cp", listen="127.0.0.1:0", rollout_interval_s=0.1,
                                        **cp_backend))
    port = c.start()
    for v in ("v1", "v2", "v3-gpu"):
        c.store.db["models"].insert({"name": "m", "version": v, "manifest": b"{}", "precision": "int4",
                                     "total_bytes": 1, "created_ms": int(time.time() * 1000)})
    c.ca_pem = (tmp_path / "cp" / "keys" / "ca.pem").read_bytes()          # TLS by default, CA pinned
    admin = AdminClient(f"127.0.0.1:{port}", c.admin_token_path.read_text().strip(), c.ca_pem)
    c.address, c.admin = f"127.0.0.1:{port}", admin
    yield c
    admin.close()
    c.stop(0)


def fleet(cp, n: int, labels=None, **kw) -> list[SimDevice]:
    token = cp.admin.enroll_token(uses=n, labels=labels or {}).token
    devs = [SimDevice(cp.address, token, f"d{i}", ca_pem=cp.ca_pem, **kw) for i in range(n)]
    cp.admin.set_desired("m", "v1", [d.device_id for d in devs])
    for d in devs:
        d.act()
    return devs


def drive(cp, devs, rollout_id: str, until=("completed", "halted", "aborted"), timeout: float = 20,
          devices: int = 0):
    """Lets the devices act until the rollout's status is one of `until` (and, with `devices`, it has assigned at
    least that many: a rollout is `running` from its creation, before the driver's first step picks the canary)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for d in devs:
            d.act()
        r = cp.admin.rollout(rollout_id)
        if r.status in until and len(r.devices) >= devices:
            return r
        time.sleep(0.1)
    raise AssertionError(f"rollout {rollout_id} still {r.status} with {len(r.devices)} devices: {r.reason}")


def test_canary_then_everyone_with_labels_from_the_enrollment_token(cp):
    devs = fleet(cp, 6, labels={"site": "berlin"})
    assert {d.labels["site"] for d in cp.admin.devices()} == {"berlin"}
    r = cp.admin.create_rollout("m", "v2", {"labels": {"site": "berlin"}}, "canary", canary={"devices": 2})
    assert r.status == "running" and [w.devices or w.percent for w in r.waves] == [2, 100]
    r = drive(cp, devs, r.rollout_id)
    assert r.status == "completed" and r.succeeded == 6
    assert {d.current.version for d in cp.admin.devices()} == {"v2"}
    steps = [e.detail for e in cp.admin.audit(action="RolloutStep")]
    assert any("completed" in s for s in steps) and any("wave 1 of 2 passed" in s for s in steps)


def test_failing_canary_halts_and_returns_to_the_previous_version(cp):
    devs = fleet(cp, 4, fail_versions={"v2"})
    r = cp.admin.create_rollout("m", "v2", {"all_devices": True}, "canary", canary={"devices": 1})
    r = drive(cp, devs, r.rollout_id)
    assert r.status == "halted" and "failure ratio 1/1" in r.reason
    canary = r.devices[0]
    assert canary.outcome == "failed" and "load_failed for m@v2" in canary.why
    assert {(d.desired.version, d.current.version) for d in cp.admin.devices()} == {("v1", "v1")}


def test_pinned_device_and_hardware_variant(cp):
    devs = fleet(cp, 2) + fleet(cp, 1, hw="gpu")
    cp.admin.pin(devs[0].device_id, "m", "v1")
    r = cp.admin.create_rollout("m", "v2", {"all_devices": True}, variants={"gpu": "v3-gpu"})
    r = drive(cp, devs, r.rollout_id)
    got = {d.device_id: d.current.version for d in cp.admin.devices()}
    assert got == {devs[0].device_id: "v1", devs[1].device_id: "v2", devs[2].device_id: "v3-gpu"}
    assert cp.admin.device(devs[0].device_id).pinned.version == "v1"
    assert [d.device_id for d in cp.admin.select_devices(hardware_classes=["gpu"])] == [devs[2].device_id]


def test_pause_resume_abort_from_the_api(cp):
    devs = fleet(cp, 4)
    r = cp.admin.create_rollout("m", "v2", {"all_devices": True}, "waves", waves=[{"devices": 1}],
                                gate={"min_soak_seconds": 60})
    r = cp.admin.rollout_action("pause", r.rollout_id)
    assert r.status == "paused"
    with pytest.raises(AdminError) as e:
        cp.admin.rollout_action("pause", r.rollout_id)
    assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION and "cannot pause a rollout that is paused" in \
        e.value.details
    cp.admin.rollout_action("resume", r.rollout_id)
    drive(cp, devs, r.rollout_id, until=("running",))
    r = cp.admin.rollout_action("abort", r.rollout_id)
    r = drive(cp, devs, r.rollout_id)
    assert r.status == "aborted" and {d.desired.version for d in cp.admin.devices()} == {"v1"}


@pytest.mark.parametrize("kw,code,text", [
    ({"name": "m", "version": "v9", "selector": {"all_devices": True}}, "NOT_FOUND", "no published model m@v9"),
    ({"name": "m", "version": "v2", "selector": {}}, "INVALID_ARGUMENT", "the selector is empty"),
    ({"name": "m", "version": "v2", "selector": {"labels": {"site": "mars"}}}, "FAILED_PRECONDITION",
     "matches no unpinned device"),
    ({"name": "m", "version": "v2", "selector": {"all_devices": True}, "strategy": "canary"}, "INVALID_ARGUMENT",
     "canary size"),
])
def test_bad_rollouts_are_refused_and_audited(cp, kw, code, text):
    fleet(cp, 1)
    with pytest.raises(AdminError) as e:
        cp.admin.create_rollout(**kw)
    assert e.value.code.name == code and text in e.value.details
    last = cp.admin.audit(action="CreateRollout")[0]
    assert last.result == code and text in last.detail and last.who.startswith("token:")


def test_roles_and_missing_tokens_are_refused_and_audited(cp):
    fleet(cp, 1)
    viewer = AdminClient(cp.address, cp.admin.api_token("viewer", "vera").token, cp.ca_pem)
    operator = AdminClient(cp.address, cp.admin.api_token("operator", "otto").token, cp.ca_pem)
    nobody = AdminClient(cp.address, "slm_admin_not-a-token", cp.ca_pem)
    assert len(viewer.devices()) == 1
    with pytest.raises(AdminError) as e:
        viewer.create_rollout("m", "v2", {"all_devices": True})
    assert e.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert "CreateRollout needs role operator; vera has role viewer" in e.value.details
    r = operator.create_rollout("m", "v2", {"all_devices": True})
    assert cp.admin.rollout(r.rollout_id).created_by == "otto"
    with pytest.raises(AdminError) as e:
        operator.api_token("admin", "mallory")
    assert e.value.code == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(AdminError) as e:
        nobody.models()
    assert e.value.code == grpc.StatusCode.UNAUTHENTICATED and "missing or unknown admin token" in e.value.details
    with pytest.raises(AdminError) as e:
        viewer.audit()
    assert e.value.code == grpc.StatusCode.PERMISSION_DENIED
    log = [(a.who, a.action, a.result) for a in cp.admin.audit(limit=50)]
    assert ("vera", "CreateRollout", "PERMISSION_DENIED") in log
    assert ("otto", "CreateRollout", "OK") in log
    assert ("otto", "CreateApiToken", "PERMISSION_DENIED") in log
    assert ("anonymous", "ListModels", "UNAUTHENTICATED") in log
    for c in (viewer, operator, nobody):
        c.close()


def test_enrollment_and_device_refusals_are_audited(cp):
    token = cp.admin.enroll_token(uses=1).token
    expired = cp.admin.enroll_token(uses=1, ttl_seconds=1)
    a = SimDevice(cp.address, token, "a", ca_pem=cp.ca_pem)
    b = fleet(cp, 1)[0]
    cases = []
    for tok, why in ((token, "enrollment token already used up"), ("slm_enroll_wrong", "unknown enrollment token")):
        with pytest.raises(grpc.RpcError) as e:
            SimDevice(cp.address, tok, "x", ca_pem=cp.ca_pem)
        cases.append((e.value.code(), e.value.details(), why))
    time.sleep(1.1)
    with pytest.raises(grpc.RpcError) as e:
        SimDevice(cp.address, expired.token, "y", ca_pem=cp.ca_pem)
    cases.append((e.value.code(), e.value.details(), "enrollment token expired"))
    for code, details, why in cases:
        assert code == grpc.StatusCode.PERMISSION_DENIED and details == why
    with pytest.raises(grpc.RpcError) as e:
        a.report("serving", device_id=b.device_id)          # acting as another device
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert f"device {a.device_id} may not act for device {b.device_id}" in e.value.details()
    unsigned = fleet_pb2_grpc.FleetStub(a.raw)
    report = fleet_pb2.StatusReport(device_id=a.device_id, state="x")
    with pytest.raises(grpc.RpcError) as e:
        unsigned.ReportStatus(report, metadata=a.md())
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED and "signs its calls" in e.value.details()
    signed = device_identity.sign_call(a.key, a.token, "/slmops.v1.Fleet/ReportStatus", report)
    forged = a.md() + [(k, v if k != auth.SIG_HEADER else "00" * 64) for k, v in signed]
    with pytest.raises(grpc.RpcError) as e:
        unsigned.ReportStatus(report, metadata=forged)
    assert "does not verify" in e.value.details()
    log = [(x.who, x.action, x.result, x.detail) for x in cp.admin.audit(limit=50)]
    assert sum(1 for w, act, res, _ in log if act == "Enroll" and res == "PERMISSION_DENIED") == 3
    assert (f"device:{a.device_id}", "ReportStatus", "PERMISSION_DENIED",
            f"device {a.device_id} may not act for device {b.device_id}") in log
    assert any(act == "ReportStatus" and res == "UNAUTHENTICATED" and "does not verify" in d
               for _, act, res, d in log)


def test_plaintext_clients_cannot_talk_to_the_tls_control_plane(cp):
    with grpc.insecure_channel(cp.address) as ch, pytest.raises(grpc.RpcError) as e:
        fleet_pb2_grpc.FleetStub(ch).Enroll(fleet_pb2.EnrollRequest(enroll_token="x", device_name="p"),
                                            timeout=5)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_insecure_mode_is_refused_beyond_loopback(tmp_path):
    from slmops.errors import ConfigError
    with pytest.raises(ConfigError, match="--insecure-loopback-dev needs a loopback --listen"):
        ControlPlaneConfig(data_dir=tmp_path, listen="0.0.0.0:50051", insecure_loopback_dev=True)


def upload_requests(dev: SimDevice, model: str, outcomes: list[str], seq0: int = 1) -> None:
    from slmops.v1 import telemetry_pb2, telemetry_pb2_grpc

    now = int(time.time() * 1000)
    batch = telemetry_pb2.TelemetryBatch(device_id=dev.device_id, events=[
        telemetry_pb2.TelemetryEvent(seq=seq0 + i, ts_unix_ms=now, kind="request", name="chat", model=model,
                                     latency_ms=50.0, first_token_ms=5.0, tokens_in=3, tokens_out=4, outcome=o)
        for i, o in enumerate(outcomes)])
    telemetry_pb2_grpc.TelemetryStub(dev.channel).Upload(batch, metadata=dev.md(), timeout=10)


def test_error_rate_in_telemetry_on_the_new_version_halts_the_rollout(cp):
    devs = fleet(cp, 3)
    r = cp.admin.create_rollout("m", "v2", {"all_devices": True}, "canary", canary={"devices": 1},
                                gate={"min_soak_seconds": 30, "max_error_rate": 0.2, "min_requests": 5})
    drive(cp, devs, r.rollout_id, until=("running",), devices=1)   # the canary serves v2 and soaks...
    cid = cp.admin.rollout(r.rollout_id).devices[0].device_id
    canary = next(d for d in devs if d.device_id == cid)
    canary.act()                                            # ...then fails half of its requests on v2
    upload_requests(canary, "m@v2", ["ok", "error", "error", "ok", "error", "ok"])
    r = drive(cp, devs, r.rollout_id)
    assert r.status == "halted" and "error rate 3/6 on m@v2" in r.devices[0].why
    assert {d.desired.version for d in cp.admin.devices()} == {"v1"}


def test_a_device_cannot_download_blobs_of_models_not_assigned_to_it(cp):
    from slmops.v1 import artifacts_pb2, artifacts_pb2_grpc

    dev = fleet(cp, 1)[0]
    cp.store.db["model_files"].insert({"name": "m", "version": "v3-gpu", "path": "model.onnx", "sha256": "ab" * 32,
                                       "size": 1})
    with pytest.raises(grpc.RpcError) as e:
        list(artifacts_pb2_grpc.ArtifactsStub(dev.channel).Download(
            artifacts_pb2.DownloadRequest(sha256="ab" * 32), metadata=dev.md(), timeout=10))
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED and "not part of a model assigned" in e.value.details()
    log = [(a.who, a.action, a.result) for a in cp.admin.audit(limit=20)]
    assert (f"device:{dev.device_id}", "Download", "PERMISSION_DENIED") in log


def test_a_pinned_device_keeps_its_version_through_fleet_wide_assignment(cp):
    devs = fleet(cp, 2)
    cp.admin.pin(devs[0].device_id, "m", "v1")
    assert cp.admin.set_desired("m", "v2") == 1
    assert {d.device_id: d.desired.version for d in cp.admin.devices()} == {devs[0].device_id: "v1",
                                                                           devs[1].device_id: "v2"}


# ---- tokens and devices: list, revoke, delete -------------------------------------------------------
def test_enroll_tokens_are_listed_by_id_and_a_revoked_one_enrolls_no_device(cp):
    t = cp.admin.enroll_token(uses=3, labels={"site": "oslo"})
    assert t.token_id.startswith("tok_") and t.token_id not in t.token and len(t.token_id) == 16
    SimDevice(cp.address, t.token, "first", ca_pem=cp.ca_pem)
    info = next(i for i in cp.admin.enroll_tokens() if i.token_id == t.token_id)
    assert (info.uses, info.uses_left, dict(info.labels), info.revoked) == (3, 2, {"site": "oslo"}, False)
    assert info.created_by.startswith("token:") and info.expires_unix_ms > info.created_unix_ms > 0
    assert all(t.token not in str(i) for i in cp.admin.enroll_tokens())      # the secret is never listed
    revoked = cp.admin.revoke_enroll_token(t.token_id)
    assert revoked.revoked and revoked.uses_left == 2
    with pytest.raises(grpc.RpcError) as e:
        SimDevice(cp.address, t.token, "second", ca_pem=cp.ca_pem)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED and e.value.details() == "enrollment token revoked"
    assert [d.name for d in cp.admin.devices()] == ["first"]
    assert next(i for i in cp.admin.enroll_tokens() if i.token_id == t.token_id).uses_left == 2
    for bad in ("tok_000000000000", "nonsense", ""):
        with pytest.raises(AdminError) as e:
            cp.admin.revoke_enroll_token(bad)
        assert e.value.code == grpc.StatusCode.NOT_FOUND and f"no enrollment token {bad!r}" in e.value.details
    log = [(a.action, a.result, a.target) for a in cp.admin.audit(limit=20)]
    assert ("RevokeEnrollToken", "OK", f'token_id: "{t.token_id}"') in log


def test_a_revoked_api_token_is_refused_at_once_and_the_last_admin_token_cannot_go(cp):
    op = cp.admin.api_token("operator", "otto")
    assert op.token_id.startswith("api_") and op.token_id not in op.token
    otto = AdminClient(cp.address, op.token, cp.ca_pem)
    assert otto.models() is not None
    listed = {t.token_id: t for t in cp.admin.api_tokens()}
    assert (listed[op.token_id].role, listed[op.token_id].name, listed[op.token_id].revoked) == \
        ("operator", "otto", False)
    assert listed[op.token_id].created_by.startswith("token:")
    with pytest.raises(AdminError) as e:
        otto.api_tokens()                                   # operators may not see tokens
    assert e.value.code == grpc.StatusCode.PERMISSION_DENIED and "ListApiTokens needs role admin" in e.value.details
    with pytest.raises(AdminError) as e:
        otto.revoke_api_token(op.token_id)
    assert e.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert cp.admin.revoke_api_token(op.token_id).revoked
    with pytest.raises(AdminError) as e:
        otto.models()                                       # the same channel, the very next call
    assert e.value.code == grpc.StatusCode.UNAUTHENTICATED
    (root,) = [t for t in cp.admin.api_tokens() if t.role == "admin" and not t.revoked]
    with pytest.raises(AdminError) as e:
        cp.admin.revoke_api_token(root.token_id)
    assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION and "last live admin token" in e.value.details
    second = AdminClient(cp.address, cp.admin.api_token("admin", "ada").token, cp.ca_pem)
    assert second.revoke_api_token(root.token_id).revoked   # another admin exists now: allowed
    with pytest.raises(AdminError) as e:
        cp.admin.models()
    assert e.value.code == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(AdminError) as e:
        second.revoke_api_token("api_ffffffffffff")
    assert e.value.code == grpc.StatusCode.NOT_FOUND and "no API token 'api_ffffffffffff'" in e.value.details
    assert ("ada", "RevokeApiToken", "OK") in [(a.who, a.action, a.result) for a in second.audit(limit=10)]
    for c in (otto, second):
        c.close()


def test_a_deleted_device_loses_its_token_and_leaves_its_rollout(cp):
    devs = fleet(cp, 3)
    r = cp.admin.create_rollout("m", "v2", {"all_devices": True}, "canary", canary={"devices": 1})
    r = drive(cp, devs, r.rollout_id, until=("running",), devices=1)
    canary = next(d for d in devs if d.device_id == cp.admin.rollout(r.rollout_id).devices[0].device_id)
    viewer = AdminClient(cp.address, cp.admin.api_token("viewer", "vera").token, cp.ca_pem)
    with pytest.raises(AdminError) as e:
        viewer.delete_device(canary.device_id)
    assert e.value.code == grpc.StatusCode.PERMISSION_DENIED and "DeleteDevice needs role operator" in e.value.details
    viewer.close()
    gone = cp.admin.delete_device(canary.device_id)
    assert gone.device_id == canary.device_id
    with pytest.raises(grpc.RpcError) as e:
        canary.report("serving")
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(AdminError) as e:
        cp.admin.delete_device(canary.device_id)
    assert e.value.code == grpc.StatusCode.NOT_FOUND and canary.device_id in e.value.details
    rest = [d for d in devs if d is not canary]
    r = drive(cp, rest, r.rollout_id)
    assert r.status == "completed" and r.failed == 0 and r.succeeded == 2     # not counted as a failure
    assert canary.device_id not in {a.device_id for a in r.devices}
    assert {d.device_id for d in cp.admin.devices()} == {d.device_id for d in rest}


def test_audit_filters_by_actor_and_time(cp):
    vera = AdminClient(cp.address, cp.admin.api_token("viewer", "vera").token, cp.ca_pem)
    vera.devices()
    time.sleep(0.01)                                    # rows are stamped in ms: keep the mark off both sides
    mark = int(time.time() * 1000)
    time.sleep(0.01)
    vera.models()
    cp.admin.models()
    by_vera = cp.admin.audit(actor="vera")
    assert [a.action for a in by_vera] == ["ListModels", "ListDevices"]
    assert [a.action for a in cp.admin.audit(actor="vera", since_unix_ms=mark)] == ["ListModels"]
    since = [a.who for a in cp.admin.audit(action="ListModels", since_unix_ms=mark)]
    assert len(since) == 2 and since[0].startswith("token:") and since[1] == "vera"
    assert len(cp.admin.audit(actor="nobody")) == 0
    vera.close()
