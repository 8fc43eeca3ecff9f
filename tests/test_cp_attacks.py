"""Attacks on the control plane from a device's credentials or from the network (issue 18, control-plane half),
each sent through the real interface (gRPC over loopback TLS, the dashboard over HTTP) to a real in-process
control plane. Each asserts the refusal and that legitimate calls still work. The simulated devices sign with
the agent's own signer (edge_agent/device_identity.py)."""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from control_plane import auth
from control_plane.admin_client import AdminClient
from control_plane.limits import StreamLimits
from control_plane.procs import free_port
from control_plane.server import ControlPlane, ControlPlaneConfig
from edge_agent import device_identity
from slmops.v1 import artifacts_pb2, artifacts_pb2_grpc, common_pb2, fleet_pb2, fleet_pb2_grpc, telemetry_pb2
from slmops.v1 import telemetry_pb2_grpc
from tests.test_fleet_admin import SimDevice


def start(tmp_path, **cfg) -> ControlPlane:
    c = ControlPlane(ControlPlaneConfig(data_dir=tmp_path / "cp", listen="127.0.0.1:0", **cfg))
    port = c.start()
    c.ca_pem = (tmp_path / "cp" / "keys" / "ca.pem").read_bytes()
    c.address = f"127.0.0.1:{port}"
    c.admin = AdminClient(c.address, c.admin_token_path.read_text().strip(), c.ca_pem)
    return c


@pytest.fixture
def cp(tmp_path):
    c = start(tmp_path)
    yield c
    c.admin.close()
    c.stop(0)


def model_with_blob(cp, name: str, version: str, data: bytes) -> str:
    """A published version whose one file is `data` (stored in the blob store); returns the file's sha256."""
    sha, size = cp.blobs.put_stream([data])
    cp.store.add_model(name, version, b"{}", "00" * 32, "int4", [{"path": "model.onnx", "sha256": sha, "size": size}])
    return sha


def download(dev: SimDevice, sha: str) -> bytes:
    stream = artifacts_pb2_grpc.ArtifactsStub(dev.channel).Download(artifacts_pb2.DownloadRequest(sha256=sha),
                                                                     metadata=dev.md(), timeout=10)
    return b"".join(c.data for c in stream)


def enroll(cp, token: str, name: str = "d", key: bytes | None = b"k" * 32, agent_version: str = "sim",
           **kw) -> fleet_pb2.EnrollResponse:
    with grpc.secure_channel(cp.address, grpc.ssl_channel_credentials(cp.ca_pem)) as ch:
        return fleet_pb2_grpc.FleetStub(ch).Enroll(fleet_pb2.EnrollRequest(
            enroll_token=token, device_name=name, device_public_key=key or b"", agent_version=agent_version, **kw),
            timeout=10)


def uses_left(cp, token_id: str) -> int:
    return next(t.uses_left for t in cp.admin.enroll_tokens() if t.token_id == token_id)


# ---- item 1: downloads follow what the control plane assigned, not what a device claims -------------
def test_a_device_claiming_a_model_it_was_never_assigned_cannot_download_it(cp):
    v1 = model_with_blob(cp, "m", "v1", b"weights of v1")
    v2 = model_with_blob(cp, "m", "v2", b"weights of v2")
    secret = model_with_blob(cp, "secret", "v1", b"someone else's model")
    dev = SimDevice(cp.address, cp.admin.enroll_token().token, "d", ca_pem=cp.ca_pem)
    cp.admin.set_desired("m", "v1", [dev.device_id])
    assert download(dev, v1) == b"weights of v1"
    dev.current = common_pb2.ModelRef(name="secret", version="v1")     # the lie
    dev.report("serving")
    with pytest.raises(grpc.RpcError) as e:
        download(dev, secret)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED and "not part of a model assigned" in e.value.details()
    # the version it was assigned before stays downloadable while it moves on (a file re-fetched at start-up)
    dev.current = common_pb2.ModelRef(name="m", version="v1")
    dev.report("serving")
    cp.admin.set_desired("m", "v2", [dev.device_id])
    assert download(dev, v1) == b"weights of v1" and download(dev, v2) == b"weights of v2"


def test_a_device_cannot_change_its_hardware_class_to_match_another_selector(cp):
    dev = SimDevice(cp.address, cp.admin.enroll_token().token, "d", hw="cpu", ca_pem=cp.ca_pem)
    dev.fleet.ReportStatus(fleet_pb2.StatusReport(device_id=dev.device_id, state="serving",
                                                  hardware=common_pb2.Hardware(hardware_class="gpu", ram_bytes=7)),
                           metadata=dev.md(), timeout=10)
    got = cp.admin.device(dev.device_id)
    assert got.hardware.hardware_class == "cpu" and got.hardware.ram_bytes == 7    # other facts do update
    assert len(cp.admin.select_devices(hardware_classes=["gpu"])) == 0
    assert [d.device_id for d in cp.admin.select_devices(hardware_classes=["cpu"])] == [dev.device_id]


# ---- item 6: every device-supplied field bounded; one device can never break ListDevices --------------
def test_oversized_device_fields_are_refused_and_list_devices_still_answers(cp):
    t = cp.admin.enroll_token(uses=2)
    with pytest.raises(grpc.RpcError) as e:
        enroll(cp, t.token, name="n" * (4 << 20))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "device_name is" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        enroll(cp, t.token, hardware=common_pb2.Hardware(execution_providers=["x" * 100]))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "execution_providers" in e.value.details()
    assert uses_left(cp, t.token_id) == 2                                    # refusals spent no use
    dev = SimDevice(cp.address, t.token, "d", ca_pem=cp.ca_pem)
    with pytest.raises(grpc.RpcError) as e:
        dev.report("s" * (5 << 20))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "state is 5242880 characters" in e.value.details()
    dev.report("error", "m" * 100_000)                                       # free text is clamped, not refused
    assert len(cp.admin.device(dev.device_id).message) == 2000
    # a row stored before these limits existed (written through the store, as an older control plane did)
    cp.store.touch(dev.device_id, state="x" * (5 << 20), hardware=json.dumps({"arch": "a" * (1 << 20)}))
    listed = cp.admin.devices()
    assert [len(d.state) for d in listed] == [64] and not listed[0].HasField("hardware")
    ack = telemetry_pb2_grpc.TelemetryStub(dev.channel).Upload(telemetry_pb2.TelemetryBatch(
        device_id=dev.device_id, events=[telemetry_pb2.TelemetryEvent(
            seq=s, ts_unix_ms=int(time.time() * 1000), kind="sample", name="resources", values=v)
            for s, v in ((1, {"k" * (6 << 20): 1.0}), (2, {"cpu_percent": 3.0}))]), metadata=dev.md(), timeout=10)
    assert (ack.accepted, ack.rejected) == (1, 1) and "sample value names must be 1-64 characters" in ack.detail


# ---- item 7: signatures bound to the request; no key-less enrollment unless asked for -----------------
def test_a_captured_device_signature_does_not_replay(cp):
    dev = SimDevice(cp.address, cp.admin.enroll_token().token, "d", ca_pem=cp.ca_pem)
    stub = fleet_pb2_grpc.FleetStub(dev.raw)                                # no signer: the attacker's link
    report = fleet_pb2.StatusReport(device_id=dev.device_id, state="serving")
    captured = dev.md() + device_identity.sign_call(dev.key, dev.token, "/slmops.v1.Fleet/ReportStatus", report)
    stub.ReportStatus(report, metadata=captured, timeout=10)               # the original call
    cases = [(lambda: stub.ReportStatus(report, metadata=captured, timeout=10), "replayed device signature"),
             (lambda: stub.ReportStatus(fleet_pb2.StatusReport(device_id=dev.device_id, state="error"),
                                        metadata=captured, timeout=10), "does not verify"),
             (lambda: next(stub.WatchDesiredState(fleet_pb2.WatchRequest(device_id=dev.device_id),
                                                  metadata=captured, timeout=10)), "does not verify")]
    for call, why in cases:
        with pytest.raises(grpc.RpcError) as e:
            call()
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED and why in e.value.details()
    stale = dev.md() + [(k, v) for k, v in device_identity.sign_call(dev.key, dev.token,
                                                                     "/slmops.v1.Fleet/ReportStatus", report)]
    stale = [(k, str(int(v) - auth.MAX_SIG_SKEW_MS - 1000) if k == auth.TS_HEADER else v) for k, v in stale]
    with pytest.raises(grpc.RpcError) as e:
        stub.ReportStatus(report, metadata=stale, timeout=10)
    assert "is not within 300 s" in e.value.details()
    dev.report("serving")                                                   # the device itself carries on
    assert dev.desired().revision >= 1
    log = [(a.action, a.result, a.detail) for a in cp.admin.audit(limit=20)]
    assert ("ReportStatus", "UNAUTHENTICATED", "replayed device signature: this nonce was already used") in log


def test_keyless_enrollment_is_refused_unless_the_control_plane_allows_it(cp, tmp_path):
    t = cp.admin.enroll_token(uses=1)
    with pytest.raises(grpc.RpcError) as e:
        enroll(cp, t.token, key=None)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "key-less enrollment" in e.value.details()
    assert uses_left(cp, t.token_id) == 1
    assert enroll(cp, t.token).device_id                                    # with a key: enrolled
    dev_cp = start(tmp_path / "dev", allow_keyless_enrollment=True)         # the explicit opt-in
    try:
        assert enroll(dev_cp, dev_cp.admin.enroll_token().token, key=None).device_id
    finally:
        dev_cp.admin.close()
        dev_cp.stop(0)


# ---- item 10: a malformed enroll request spends no use of the token -----------------------------------
def test_a_malformed_enroll_request_does_not_use_up_the_token(cp):
    t = cp.admin.enroll_token(uses=1)
    for kw, why in (({"name": ""}, "device_name is required"),
                    ({"key": b"short"}, "raw 32-byte Ed25519 key"),
                    ({"hardware": common_pb2.Hardware(ram_bytes=-1)}, "must be non-negative"),
                    ({"agent_version": "v" * 65}, "agent_version is 65 characters")):
        with pytest.raises(grpc.RpcError) as e:
            enroll(cp, t.token, **kw)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and why in e.value.details()
    assert uses_left(cp, t.token_id) == 1
    SimDevice(cp.address, t.token, "good", ca_pem=cp.ca_pem)
    assert uses_left(cp, t.token_id) == 0 and [d.name for d in cp.admin.devices()] == ["good"]


# ---- item 3: one token or one address cannot hold the streams or the pool -------------------------------------
def watch(dev: SimDevice, stub=None):
    s = (stub or dev.fleet).WatchDesiredState(fleet_pb2.WatchRequest(device_id=dev.device_id), metadata=dev.md(),
                                              timeout=30)
    next(s)                                  # the stream is open and has answered
    return s


def test_one_device_token_cannot_starve_the_pool_with_watch_streams(tmp_path):
    cp = start(tmp_path, max_workers=4)                  # 4 threads for store work: a waiting stream holds none
    try:
        thief = SimDevice(cp.address, cp.admin.enroll_token().token, "thief", ca_pem=cp.ca_pem)
        streams = [watch(thief) for _ in range(40)]                    # more than the pool could hold
        assert cp.stream_gate.count("watch") == 2                      # a newer stream replaced the oldest
        with pytest.raises(grpc.RpcError) as e:
            next(streams[0])
        assert e.value.code() == grpc.StatusCode.CANCELLED
        other = SimDevice(cp.address, cp.admin.enroll_token().token, "other", ca_pem=cp.ca_pem)
        mine = watch(other)                                            # another device still gets through
        assert len(cp.admin.devices()) == 2                            # and Admin calls are answered
        with grpc.secure_channel(cp.address, grpc.ssl_channel_credentials(cp.ca_pem)) as ch:
            status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        for s in [*streams, mine]:
            s.cancel()
    finally:
        cp.admin.close()
        cp.stop(0)


def settle(cp, count: int) -> None:
    """Waits until the server has released closed streams (each on its own thread), at most 10 s."""
    deadline = time.monotonic() + 10
    while cp.stream_gate.count() > count and time.monotonic() < deadline:
        time.sleep(0.05)


def test_one_address_cannot_hold_every_stream_and_health_watches_are_capped(tmp_path):
    cp = start(tmp_path, stream_limits=StreamLimits(total_streams=64, streams_per_peer=3, health_watch_per_peer=2))
    try:
        with grpc.secure_channel(cp.address, grpc.ssl_channel_credentials(cp.ca_pem)) as ch:
            health = health_pb2_grpc.HealthStub(ch)                    # no token needed: unauthenticated
            watches = [health.Watch(health_pb2.HealthCheckRequest(), timeout=30) for _ in range(2)]
            for w in watches:
                assert next(w).status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.RpcError) as e:
                next(health.Watch(health_pb2.HealthCheckRequest(), timeout=30))
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "at most 2 health watch streams per address" in e.value.details()
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == \
                health_pb2.HealthCheckResponse.SERVING
            for w in watches:
                w.cancel()
        settle(cp, 0)
        token = cp.admin.enroll_token(uses=4).token
        devs = [SimDevice(cp.address, token, f"d{i}", ca_pem=cp.ca_pem) for i in range(4)]
        open_ = [watch(d) for d in devs[:3]]
        with pytest.raises(grpc.RpcError) as e:
            watch(devs[3])
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "at most 3 open streams per address" in e.value.details()
        assert len(cp.admin.devices()) == 4                            # unary calls are still answered
        open_[0].cancel()
        settle(cp, 2)
        fourth = watch(devs[3])                                        # a closed stream frees its slot
        for s in [*open_[1:], fourth]:
            s.cancel()
    finally:
        cp.admin.close()
        cp.stop(0)


def test_held_health_watches_and_one_addresss_watch_streams_do_not_starve_another_device_or_admin(tmp_path):
    """The attacker (127.0.0.1) holds every health watch it may and opens watch streams from many enrolled devices
    until its address's budget is spent; a legitimate device on another address (::1) still enrolls, reports,
    fetches trust metadata and is told a new desired version on its open stream, and Admin and Health/Check
    answer on both addresses while every attacking stream is still held."""
    port = free_port()
    cp = ControlPlane(ControlPlaneConfig(data_dir=tmp_path / "cp", listen=f"localhost:{port}", max_streams=64,
                                         streams_per_peer=24))
    cp.start()
    ca = (tmp_path / "cp" / "keys" / "ca.pem").read_bytes()
    v4, v6 = f"127.0.0.1:{port}", f"[::1]:{port}"
    admin4 = AdminClient(v4, cp.admin_token_path.read_text().strip(), ca)
    held: list = []
    try:
        with grpc.secure_channel(v4, grpc.ssl_channel_credentials(ca)) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            refused = []
            for _ in range(12):                                          # unauthenticated, long-lived
                w = health.Watch(health_pb2.HealthCheckRequest(), timeout=60)
                try:
                    assert next(w).status == health_pb2.HealthCheckResponse.SERVING
                    held.append(w)
                except grpc.RpcError as e:
                    refused.append((e.code(), e.details()))
            assert len(held) == 4 and len(refused) == 8                  # health_watch_per_peer
            assert {r for r in refused} == {(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                             "at most 4 health watch streams per address")}
            token = admin4.enroll_token(uses=30).token
            thieves = [SimDevice(v4, token, f"thief{i}", ca_pem=ca) for i in range(30)]
            too_many = []
            for t in thieves:
                try:
                    held.append(watch(t))
                except grpc.RpcError as e:
                    too_many.append((e.code(), e.details()))
            assert len(held) == 24 and len(too_many) == 10              # the address's budget: 24 streams
            assert set(too_many) == {(grpc.StatusCode.RESOURCE_EXHAUSTED, "at most 24 open streams per address")}
            for _ in range(5):                                           # one device, many streams: 2 kept
                try:
                    held.append(watch(thieves[0]))
                except grpc.RpcError as e:
                    assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED   # its own address is full already
            assert cp.stream_gate.count("watch") == 20 and cp.stream_gate.count("health") == 4

            legit = SimDevice(v6, admin4.enroll_token().token, "legit", ca_pem=ca)   # another address
            legit.report("serving")
            trust = artifacts_pb2_grpc.ArtifactsStub(legit.channel).GetTrustMetadata(
                artifacts_pb2.TrustMetadataRequest(trusted_root_version=0), metadata=legit.md(), timeout=10)
            assert trust.timestamp
            mine = watch(legit)
            model_with_blob(cp, "m", "v2", b"weights")
            admin6 = AdminClient(v6, cp.admin_token_path.read_text().strip(), ca)
            assert admin6.set_desired("m", "v2", [legit.device_id]) == 1
            told = next(mine)                                            # woken by the change on its stream
            assert (told.model.name, told.model.version) == ("m", "v2")
            assert len(admin4.devices()) == 31 and len(admin6.devices()) == 31   # Admin answers on both
            for addr in (v4, v6):
                with grpc.secure_channel(addr, grpc.ssl_channel_credentials(ca)) as c:
                    assert health_pb2_grpc.HealthStub(c).Check(health_pb2.HealthCheckRequest(), timeout=10).status \
                        == health_pb2.HealthCheckResponse.SERVING
            thieves[1].report("serving")                                 # unary calls from the full address too
            assert cp.stream_gate.count("health") == 4 and cp.stream_gate.count("watch") == 21  # all still held
            mine.cancel()
            admin6.close()
            for h in held:
                h.cancel()
            for t in thieves:
                t.raw.close()
            legit.raw.close()
    finally:
        admin4.close()
        cp.stop(0)


def test_serve_stream_budget_flags_apply_and_a_bad_budget_is_refused(tmp_path):
    """`slmops control-plane serve --max-streams 4 --streams-per-peer 2`, as an operator would run it."""
    import subprocess
    import sys

    from control_plane.admin_client import wait_healthy
    from control_plane.procs import start_control_plane

    bad = subprocess.run([sys.executable, "-m", "cli", "control-plane", "serve", "--data-dir", str(tmp_path / "bad"),
                          "--max-streams", "4", "--streams-per-peer", "9"], capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "streams_per_peer (9) between 0" in bad.stdout + bad.stderr
    assert "Traceback" not in bad.stdout + bad.stderr
    port = free_port()
    proc = start_control_plane(tmp_path / "cp", port, tmp_path / "logs", tls=True,
                               extra=["--max-streams", "4", "--streams-per-peer", "2"])
    try:
        address, ca_file = f"127.0.0.1:{port}", tmp_path / "cp" / "keys" / "ca.pem"
        deadline = time.monotonic() + 60
        while not ca_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        ca = ca_file.read_bytes()
        wait_healthy(address, 60, ca)
        admin = AdminClient(address, (tmp_path / "cp" / "admin-token").read_text().strip(), ca)
        with grpc.secure_channel(address, grpc.ssl_channel_credentials(ca)) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            first = health.Watch(health_pb2.HealthCheckRequest(), timeout=30)
            assert next(first).status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.RpcError) as e:                     # 4 streams: 4 // 8 -> 1 health watch
                next(health.Watch(health_pb2.HealthCheckRequest(), timeout=30))
            assert e.value.details() == "too many health watch streams (1 open)"
            token = admin.enroll_token(uses=2).token
            a, b = (SimDevice(address, token, n, ca_pem=ca) for n in ("a", "b"))
            held = watch(a)                                              # the address's second stream
            with pytest.raises(grpc.RpcError) as e:
                watch(b)
            assert e.value.details() == "at most 2 open streams per address"
            for s in (first, held):
                s.cancel()
            a.raw.close()
            b.raw.close()
        admin.close()
    finally:
        proc.stop()


# ---- item 8: captured prompts need the admin role on the dashboard ------------------------------------
def test_a_viewer_token_cannot_download_captured_prompts(tmp_path):
    cp = start(tmp_path, http=str(free_port()))
    try:
        dev = SimDevice(cp.address, cp.admin.enroll_token().token, "d", ca_pem=cp.ca_pem)
        pair = '{"messages": [{"role": "user", "content": "my password is hunter2"}], "response": "ok"}'
        telemetry_pb2_grpc.TelemetryStub(dev.channel).Upload(telemetry_pb2.TelemetryBatch(
            device_id=dev.device_id, events=[telemetry_pb2.TelemetryEvent(
                seq=1, ts_unix_ms=int(time.time() * 1000), kind="capture", name="chat", detail=pair)]),
            metadata=dev.md(), timeout=10)
        base = f"http://127.0.0.1:{cp.http.port}"

        def get(path: str, token: str) -> tuple[int, bytes]:
            req = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {token}"})
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    return r.status, r.read()
            except urllib.error.HTTPError as e:
                return e.code, e.read()

        viewer, operator = (cp.admin.api_token(r, n).token for r, n in (("viewer", "vera"), ("operator", "otto")))
        for token, name in ((viewer, "vera"), (operator, "otto")):
            status, body = get("/api/captures.jsonl", token)
            assert status == 403 and b"hunter2" not in body
            assert f"/api/captures.jsonl needs role admin; {name} has role".encode() in body
        assert get("/api/fleet", viewer)[0] == 200 and get("/", viewer)[0] == 200      # viewers keep their pages
        status, body = get("/api/captures.jsonl", cp.admin_token_path.read_text().strip())
        assert status == 200 and b"hunter2" in body
        vera_id = next(t.token_id for t in cp.admin.api_tokens() if t.name == "vera")
        cp.admin.revoke_api_token(vera_id)
        assert get("/api/fleet", viewer)[0] == 401                                    # revoked: refused at once
    finally:
        cp.admin.close()
        cp.stop(0)


# ---- the pure parts, as tables ------------------------------------------------------------------------
def test_stream_gate_decisions():
    from control_plane.limits import DOWNLOAD, HEALTH, UNARY, WATCH, StreamGate

    gate = StreamGate(StreamLimits(total_streams=6, streams_per_peer=4, watch_per_device=2, downloads_per_device=2,
                                   health_watch_per_peer=1, health_watch_total=2))
    ended: list[str] = []
    t1, _, _ = gate.admit(WATCH, "p1", "d1", lambda: ended.append("w1"))
    t2, _, _ = gate.admit(WATCH, "p1", "d1", lambda: ended.append("w2"))
    t3, why, evict = gate.admit(WATCH, "p1", "d1", lambda: ended.append("w3"))
    for end in evict:
        end()
    assert t1 and t3 and not why and ended == ["w1"]                              # the oldest is replaced
    assert gate.admit(DOWNLOAD, "p1", "d1", None)[0] and gate.admit(DOWNLOAD, "p1", "d1", None)[0]
    assert gate.admit(DOWNLOAD, "p2", "d1", None)[1] == "at most 2 downloads at once per device"
    assert gate.admit(DOWNLOAD, "p1", "d9", None)[1] == "at most 4 open streams per address"
    assert gate.admit(HEALTH, "p2", "", None)[0]
    assert gate.admit(HEALTH, "p2", "", None)[1] == "at most 1 health watch streams per address"
    assert gate.admit(HEALTH, "p3", "", None)[0]
    assert gate.admit(HEALTH, "p4", "", None)[1] == "too many health watch streams (2 open)"
    assert gate.admit(WATCH, "p5", "d5", None)[1] == "the control plane holds its maximum of 6 open streams"
    gate.release(t2)
    assert gate.admit(WATCH, "p5", "d5", None)[0] and gate.count(WATCH) == 2
    calls = [gate.admit(UNARY, "p1", "d1", None)[0] for _ in range(16)]       # short calls: per device only
    assert all(calls) and gate.admit(UNARY, "p1", "d1", None)[1] == "at most 16 calls at once per device"
    assert gate.admit(UNARY, "p1", "d2", None)[0]
    gate.release(calls[0])
    assert gate.admit(UNARY, "p1", "d1", None)[0]
    assert StreamLimits.for_total(20_000) == StreamLimits()
    assert StreamLimits.for_total(100, 10).streams_per_peer == 10 and StreamLimits.for_total(8).health_watch_total == 1


def test_replay_cache_decisions():
    cache = auth.ReplayCache(window_ms=1000, per_device=2)
    assert cache.admit("d1", "n1", ts_ms=10_000, now_ms=10_000) is None
    assert cache.admit("d1", "n1", ts_ms=10_000, now_ms=10_500)[1].startswith("replayed device signature")
    assert cache.admit("d2", "n1", ts_ms=10_000, now_ms=10_500) is None            # nonces are per device
    assert cache.admit("d1", "n2", ts_ms=10_400, now_ms=10_500) is None
    code, why = cache.admit("d1", "n3", ts_ms=10_500, now_ms=10_500)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "more than 2 signed calls" in why
    assert cache.admit("d1", "n3", ts_ms=11_100, now_ms=11_100) is None            # n1 left the window
    quiet = auth.ReplayCache(window_ms=1000, per_device=5000)
    for i in range(4095):
        assert quiet.admit(f"gone{i % 3}", f"{i}", ts_ms=0, now_ms=0) is None
    assert quiet.devices() == 3
    assert quiet.admit("busy", "x", ts_ms=5000, now_ms=5000) is None            # the 4096th admit sweeps
    assert quiet.devices() == 1                                                  # quiet devices are dropped


def test_an_idle_connection_is_closed_by_the_server(tmp_path):
    cp = start(tmp_path, idle_connection_s=0.5)
    try:
        ch = grpc.secure_channel(cp.address, grpc.ssl_channel_credentials(cp.ca_pem))
        health = health_pb2_grpc.HealthStub(ch)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == \
            health_pb2.HealthCheckResponse.SERVING
        states: list = []
        ch.subscribe(states.append, try_to_connect=False)
        deadline = time.monotonic() + 20
        while grpc.ChannelConnectivity.IDLE not in states[1:] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert grpc.ChannelConnectivity.IDLE in states[1:], states      # the server sent GOAWAY: not held open
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == \
            health_pb2.HealthCheckResponse.SERVING                       # and a new call reconnects
        ch.close()
    finally:
        cp.admin.close()
        cp.stop(0)
