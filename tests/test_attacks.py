"""One test per attack on update systems (TUF / Uptane threat model), each through the real gRPC path to a
real agent process. Each asserts: the refusal (device state + message naming the attack), the event reported
to the control plane, and that the previously installed model still answers.

The attacker controls what the control plane's gRPC endpoint serves; tests play that attacker by rewriting the
control plane's stored metadata or blobs while it is stopped (re-signing disabled with --resign-interval 0), or
by holding a stolen online key (the key files in the control plane's trust folder).
"""
from __future__ import annotations

import sqlite3
import time

import pytest
from tuf.api.metadata import Metadata, MetaFile

from control_plane.trust_repo import load_signer, rotate_key
from tests.conftest import variant

pytestmark = pytest.mark.e2e
FROZEN = ["--resign-interval", "0"]


class Attack:
    """A cluster with v0 published (never installed), v1 installed and serving, and v2 ready to be assigned."""

    def __init__(self, cluster, tiny_int4, tmp_path, cp_extra=(), cp_env=None, agent_extra=(), v2_extra=None):
        self.c = cluster
        self.cp_extra, self.cp_env = list(cp_extra), cp_env
        cluster.start_cp(self.cp_extra, cp_env)
        cluster.publish(variant(tiny_int4, tmp_path / "v0", 3), "tiny", "v0")
        self.old = self.metadata()  # what a rollback attacker will replay
        self.m1 = cluster.publish(tiny_int4, "tiny", "v1")
        cluster.admin.set_desired("tiny", "v1")
        cluster.start_agent("a1", extra=list(agent_extra))
        cluster.wait_serving("a1", self.m1.ref)
        self.m2 = cluster.publish(variant(tiny_int4, tmp_path / "v2", 11), "tiny", "v2", **(v2_extra or {}))

    def db(self):
        return sqlite3.connect(self.c.cp_dir / "control_plane.db")

    def metadata(self) -> dict[str, bytes]:
        with self.db() as db:
            return {r[0][4:]: bytes.fromhex(r[1]) for r in db.execute("select key, value from meta where key in "
                                                                      "('tuf_targets','tuf_snapshot','tuf_timestamp')")}

    def serve(self, **roles: bytes) -> None:
        """Restart the control plane serving these bytes for the given roles (the attacker's server)."""
        self.c.cp.stop()
        with self.db() as db:
            for role, raw in roles.items():
                db.execute("update meta set value = ? where key = ?", [raw.hex(), f"tuf_{role}"])
        self.c.start_cp(FROZEN, self.cp_env)

    def key(self, role: str):
        return load_signer(self.c.cp_dir / "trust" / "keys" / f"{role}.pem")

    def resign(self, md: Metadata, *signers) -> bytes:
        md.signatures.clear()
        for s in signers:
            md.sign(s, append=True)
        return md.to_bytes()

    def chain(self, targets: bytes, version_bump: int = 1) -> dict[str, bytes]:
        """A snapshot + timestamp correctly signed (stolen online keys) pointing at `targets`."""
        cur = self.metadata()
        snap = Metadata.from_bytes(cur["snapshot"])
        snap.signed.version += version_bump
        t = Metadata.from_bytes(targets)
        snap.signed.meta["targets.json"] = MetaFile(t.signed.version, len(targets), _sha(targets))
        sraw = self.resign(snap, self.key("snapshot"))
        ts = Metadata.from_bytes(cur["timestamp"])
        ts.signed.version += version_bump
        ts.signed.snapshot_meta = MetaFile(snap.signed.version, len(sraw), _sha(sraw))
        return {"targets": targets, "snapshot": sraw, "timestamp": self.resign(ts, self.key("timestamp"))}

    def assign_and_expect_refusal(self, version: str, words: str):
        self.c.admin.set_desired("tiny", version)
        dev = self.c.wait_for(lambda: (d := self.c.device("a1")).state == "error" and d,
                              what=f"the refusal of {version}")
        assert words in dev.message, dev.message
        assert dev.current.version == self.m1.version
        status, body = self.c.chat("a1")
        assert status == 200 and body["model"] == self.m1.ref, body
        self.c.wait_for(lambda: self.events("verify_failed"), what="the verify_failed event at the control plane")
        return dev.message

    def metadata_files(self, version: str):
        """The files of a published version, from its manifest as the control plane stored it."""
        from slmops.manifest import Manifest

        with self.db() as db:
            raw = db.execute("select manifest from models where name = 'tiny' and version = ?", [version]).fetchone()[0]
        return Manifest.from_json(raw).files

    def events(self, name: str) -> list[str]:
        with self.db() as db:
            return [r[0] for r in db.execute("select detail from telemetry where kind='event' and name=?", [name])]


def _sha(data: bytes) -> dict:
    import hashlib

    return {"sha256": hashlib.sha256(data).hexdigest()}


def test_arbitrary_software(cluster, tiny_int4, tmp_path):
    a = Attack(cluster, tiny_int4, tmp_path)
    changed = next(f for f in a.m2.files if f.path == "genai_config.json")
    blob = cluster.cp_dir / "blobs" / changed.sha256[:2] / changed.sha256
    data = bytearray(blob.read_bytes())
    data[5] ^= 0x20
    blob.write_bytes(bytes(data))
    msg = a.assign_and_expect_refusal("v2", "arbitrary software")
    assert "genai_config.json" in msg


def test_untrusted_key(cluster, tiny_int4, tmp_path):
    a = Attack(cluster, tiny_int4, tmp_path)
    from securesystemslib.signer import CryptoSigner
    t = Metadata.from_bytes(a.metadata()["targets"])
    t.signed.version += 1
    forged = a.resign(t, CryptoSigner.generate_ed25519())  # the attacker's own key
    a.serve(**a.chain(forged))
    a.assign_and_expect_refusal("v2", "untrusted signature")


def test_below_threshold(cluster, tiny_int4, tmp_path):
    a = Attack(cluster, tiny_int4, tmp_path)
    cluster.cp.stop()
    trust = cluster.cp_dir / "trust"
    rotate_key(trust, "targets", [trust / "keys" / "root.pem"], threshold=2, extra_keys=1)
    cluster.start_cp(FROZEN)  # re-signs targets with both new keys (root v2)
    # the device learns root v2 (threshold 2) while installing a legitimate update
    cluster.admin.set_desired("tiny", "v2")
    cluster.wait_serving("a1", a.m2.ref)
    a.m1 = a.m2
    v3 = cluster.publish(variant(tiny_int4, tmp_path / "v3", 13), "tiny", "v3")
    t = Metadata.from_bytes(a.metadata()["targets"])
    t.signed.version += 1
    one_key = a.resign(t, load_signer(trust / "keys" / "targets.pem"))  # 1 of the 2 required signatures
    a.serve(**a.chain(one_key))
    a.assign_and_expect_refusal(v3.version, "untrusted signature")


def test_rollback(cluster, tiny_int4, tmp_path):
    a = Attack(cluster, tiny_int4, tmp_path)
    a.serve(**a.old)  # metadata from before v1: every version is older than what the device trusts
    a.assign_and_expect_refusal("v0", "rollback")


def test_fast_forward(cluster, tiny_int4, tmp_path):
    a = Attack(cluster, tiny_int4, tmp_path)
    a.serve(**a.chain(a.metadata()["targets"], version_bump=10**9))  # stolen snapshot/timestamp keys
    a.assign_and_expect_refusal("v2", "fast-forward")


def test_freeze(cluster, tiny_int4, tmp_path):
    a = Attack(cluster, tiny_int4, tmp_path, cp_extra=["--timestamp-expiry", "3", "--resign-interval", "0"])
    time.sleep(4)  # the timestamp the server keeps handing out has now expired
    a.assign_and_expect_refusal("v2", "freeze")


def test_mix_and_match(cluster, tiny_int4, tmp_path):
    a = Attack(cluster, tiny_int4, tmp_path)
    cur = a.metadata()
    a.serve(targets=a.old["targets"], snapshot=cur["snapshot"], timestamp=cur["timestamp"])
    a.assign_and_expect_refusal("v2", "mix-and-match")


def test_endless_data(cluster, tiny_int4, tmp_path):
    a = Attack(cluster, tiny_int4, tmp_path)
    changed = next(f for f in a.m2.files if f.path == "genai_config.json")
    blob = cluster.cp_dir / "blobs" / changed.sha256[:2] / changed.sha256
    blob.write_bytes(blob.read_bytes() + b" " * (1 << 20))
    a.assign_and_expect_refusal("v2", "endless data")


def test_slow_retrieval(cluster, tiny_int4, tmp_path):
    a = Attack(cluster, tiny_int4, tmp_path, cp_env={"SLMOPS_DEBUG_DOWNLOAD_DELAY_S": "0"},
               agent_extra=["--min-download-rate", "100000"])
    import os
    big = variant(tiny_int4, tmp_path / "v9", 19)
    (big / "extra.bin").write_bytes(os.urandom(1 << 20))  # 16 chunks of 64 KiB that no earlier version has
    cluster.publish(big, "tiny", "v9")
    a.c.cp.stop()
    a.c.start_cp(env={"SLMOPS_DEBUG_DOWNLOAD_DELAY_S": "1.0"})  # 64 KiB per second from now on
    a.assign_and_expect_refusal("v9", "slow retrieval")


def test_wrong_software(cluster, tiny_int4, tmp_path):
    a = Attack(cluster, tiny_int4, tmp_path, v2_extra={"execution_provider": "cuda"})
    a.assign_and_expect_refusal("v2", "wrong software")


def test_root_rotation_is_followed(cluster, tiny_int4, tmp_path):
    a = Attack(cluster, tiny_int4, tmp_path)
    trust = cluster.cp_dir / "trust"
    old_ts_key = a.key("timestamp")
    rotate_key(trust, "timestamp", [trust / "keys" / "root.pem"])          # revoke the timestamp key
    rotate_key(trust, "root", [trust / "keys" / "root.pem"])               # and the root key itself
    # the running control plane picks up root v3 and re-signs; the device walks v2, v3
    cluster.admin.set_desired("tiny", "v2")
    cluster.wait_serving("a1", a.m2.ref, timeout=60)
    # metadata signed with the revoked timestamp key is now refused
    v3 = cluster.publish(variant(tiny_int4, tmp_path / "v3", 17), "tiny", "v3")
    a.m1 = a.m2
    ts = Metadata.from_bytes(a.metadata()["timestamp"])
    ts.signed.version += 1
    a.serve(timestamp=a.resign(ts, old_ts_key))
    a.assign_and_expect_refusal(v3.version, "untrusted signature")


def test_trusted_versions_survive_restart(cluster, tiny_int4, tmp_path):
    a = Attack(cluster, tiny_int4, tmp_path)
    cluster.restart_agent("a1")
    cluster.wait_serving("a1", a.m1.ref)
    a.serve(**a.old)
    a.assign_and_expect_refusal("v0", "rollback")


# ---- the control plane against a device's stolen credentials (issue 18, items 1 and 3) -----------------
def stolen_credentials(cluster, name: str):
    """What an attacker who copied the agent's data folder holds: its device token and its signing key."""
    import json

    from edge_agent import device_identity

    with sqlite3.connect(cluster.root / name / "agent.db") as db:
        ident = json.loads(db.execute("select value from kv where key = 'identity'").fetchone()[0])
    key = device_identity.load_or_create_key(cluster.root / name / "identity" / "device-key.pem")
    return ident["device_id"], ident["token"], key


def test_stolen_device_credentials_cannot_starve_the_control_plane_or_fetch_unassigned_models(cluster, tiny_int4,
                                                                                              tmp_path):
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from edge_agent import device_identity
    from slmops.v1 import artifacts_pb2, artifacts_pb2_grpc, common_pb2, fleet_pb2, fleet_pb2_grpc

    a = Attack(cluster, tiny_int4, tmp_path)
    device_id, token, key = stolen_credentials(cluster, "a1")
    raw = grpc.insecure_channel(cluster.address)
    thief = grpc.intercept_channel(raw, device_identity.DeviceSigner(key, lambda: token))
    md = (("authorization", f"Bearer {token}"),)
    fleet = fleet_pb2_grpc.FleetStub(thief)
    # a lie about what it runs does not open v0's blobs (never assigned to this device)
    v0_only = next(f.sha256 for f in a.metadata_files("v0") if f.path == "genai_config.json")
    fleet.ReportStatus(fleet_pb2.StatusReport(device_id=device_id, state="serving",
                                              current=common_pb2.ModelRef(name="tiny", version="v0")),
                       metadata=md, timeout=10)
    with pytest.raises(grpc.RpcError) as e:
        list(artifacts_pb2_grpc.ArtifactsStub(thief).Download(artifacts_pb2.DownloadRequest(sha256=v0_only),
                                                              metadata=md, timeout=10))
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # 40 watch streams on the device's token: only the newest two stay open, the pool is not taken
    streams = []
    for _ in range(40):
        s = fleet.WatchDesiredState(fleet_pb2.WatchRequest(device_id=device_id), metadata=md, timeout=120)
        next(s)
        streams.append(s)
    with pytest.raises(grpc.RpcError) as e:
        next(streams[0])
    assert e.value.code() == grpc.StatusCode.CANCELLED
    assert health_pb2_grpc.HealthStub(raw).Check(health_pb2.HealthCheckRequest(), timeout=10).status == \
        health_pb2.HealthCheckResponse.SERVING
    # the real agent still gets its update through (its reconnect replaces a thief's stream) and serves it
    cluster.admin.set_desired("tiny", "v2")
    cluster.wait_serving("a1", a.m2.ref, timeout=90)
    status, body = cluster.chat("a1")
    assert status == 200 and body["model"] == a.m2.ref
    for s in streams:
        s.cancel()
    raw.close()
