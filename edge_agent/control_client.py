"""The agent's side of the gRPC contract: one channel, typed stubs, the device token on every call, and
transport errors mapped to TransportError (retryable) or ArtifactInvalid/refusals (not retryable). Given several
control-plane addresses (replicas of one control plane), a transport error moves the channel to the next one;
the caller's usual retry then reaches it."""
from __future__ import annotations

import json
import pathlib
import random
import threading
from dataclasses import dataclass
from typing import Iterator, Sequence

import grpc

from edge_agent import device_identity
from slmops.errors import TransportError
from slmops.v1 import (artifacts_pb2, artifacts_pb2_grpc, common_pb2, fleet_pb2, fleet_pb2_grpc, telemetry_pb2,
                       telemetry_pb2_grpc)

RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED,
             grpc.StatusCode.ABORTED, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
             grpc.StatusCode.CANCELLED}


class Refused(Exception):
    """The control plane answered and said no (bad token, not found, permission): retrying will not help."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(f"{code.name}: {details}")
        self.code = code


def map_rpc_error(e: grpc.RpcError, what: str) -> Exception:
    code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
    details = e.details() if hasattr(e, "details") else str(e)
    if code in RETRYABLE:
        return TransportError(f"{what}: {code.name}: {details}")
    return Refused(code, f"{what}: {details}")


class Backoff:
    """Exponential backoff with full jitter, capped."""

    def __init__(self, initial: float, maximum: float):
        self.initial, self.maximum, self.attempt = initial, maximum, 0

    def next(self) -> float:
        delay = min(self.maximum, self.initial * (2 ** self.attempt))
        self.attempt += 1
        return random.uniform(delay / 2, delay)

    def reset(self) -> None:
        self.attempt = 0


@dataclass(frozen=True)
class _Conn:
    address: str
    channel: grpc.Channel
    fleet: fleet_pb2_grpc.FleetStub
    artifacts: artifacts_pb2_grpc.ArtifactsStub
    telemetry: telemetry_pb2_grpc.TelemetryStub


class ControlClient:
    def __init__(self, addresses: str | Sequence[str], ca_pem: bytes | None = None,
                 key_path: pathlib.Path | None = None):
        """TLS pinned to `ca_pem` (plaintext only without it: loopback development); every call signed with the
        key made on this device (edge_agent/device_identity.py). `addresses`: HOST:PORT, or several (a list or
        comma separated), tried in turn."""
        self.addresses = tuple(a.strip() for a in addresses.split(",")) if isinstance(addresses, str) \
            else tuple(addresses)
        self.key = device_identity.load_or_create_key(key_path)
        self.token = ""
        self._ca, self._at, self._lock = ca_pem, 0, threading.Lock()
        self._conn = self._open(self.addresses[0])

    def _open(self, address: str) -> _Conn:
        ch = device_identity.open_channel(address, self._ca, device_identity.DeviceSigner(self.key, lambda: self.token),
                                          [("grpc.max_receive_message_length", 8 << 20)])
        return _Conn(address, ch, fleet_pb2_grpc.FleetStub(ch), artifacts_pb2_grpc.ArtifactsStub(ch),
                     telemetry_pb2_grpc.TelemetryStub(ch))

    @property
    def address(self) -> str:
        return self._conn.address

    def _error(self, conn: _Conn, e: grpc.RpcError, what: str) -> Exception:
        """The error to raise; a transport error on the channel in use moves to the next address (once, however
        many calls fail on that channel at the same moment)."""
        err = map_rpc_error(e, f"{what} ({conn.address})")
        if isinstance(err, TransportError) and len(self.addresses) > 1:
            with self._lock:
                if self._conn is conn:
                    self._at = (self._at + 1) % len(self.addresses)
                    self._conn = self._open(self.addresses[self._at])
                    conn.channel.close()
        return err

    def _md(self):
        return (("authorization", f"Bearer {self.token}"),)

    def enroll(self, token: str, name: str, hardware: common_pb2.Hardware, agent_version: str):
        c = self._conn
        try:
            return c.fleet.Enroll(fleet_pb2.EnrollRequest(enroll_token=token, device_name=name,
                                                          hardware=hardware, agent_version=agent_version,
                                                          device_public_key=device_identity.public_raw(self.key)),
                                  timeout=10)
        except grpc.RpcError as e:
            raise self._error(c, e, "enroll") from e

    def watch(self, device_id: str) -> Iterator[fleet_pb2.DesiredState]:
        c = self._conn
        try:
            yield from c.fleet.WatchDesiredState(fleet_pb2.WatchRequest(device_id=device_id), metadata=self._md())
        except grpc.RpcError as e:
            raise self._error(c, e, "watch desired state") from e

    def report(self, device_id: str, name: str, version: str, state: str, message: str = "",
               hardware: common_pb2.Hardware | None = None) -> None:
        c = self._conn
        try:
            c.fleet.ReportStatus(fleet_pb2.StatusReport(
                device_id=device_id, current=common_pb2.ModelRef(name=name, version=version), state=state,
                message=message, hardware=hardware), metadata=self._md(), timeout=10)
        except grpc.RpcError as e:
            raise self._error(c, e, "report status") from e

    def trust_metadata(self, trusted_root_version: int) -> artifacts_pb2.TrustMetadata:
        c = self._conn
        try:
            return c.artifacts.GetTrustMetadata(
                artifacts_pb2.TrustMetadataRequest(trusted_root_version=trusted_root_version),
                metadata=self._md(), timeout=30)
        except grpc.RpcError as e:
            raise self._error(c, e, "get trust metadata") from e

    def download(self, sha256: str, offset: int) -> Iterator[bytes]:
        c = self._conn
        try:
            for chunk in c.artifacts.Download(artifacts_pb2.DownloadRequest(sha256=sha256, offset=offset),
                                              metadata=self._md(), timeout=3600):
                yield chunk.data
        except grpc.RpcError as e:
            raise self._error(c, e, f"download {sha256[:12]}…") from e

    def upload(self, device_id: str, events: list[dict]) -> telemetry_pb2.UploadAck:
        batch = telemetry_pb2.TelemetryBatch(device_id=device_id, events=[
            telemetry_pb2.TelemetryEvent(seq=e["seq"], ts_unix_ms=e["ts_ms"], kind=e["kind"], name=e["name"],
                                         model=e["model"], latency_ms=e["latency_ms"],
                                         first_token_ms=e["first_token_ms"], tokens_in=e["tokens_in"],
                                         tokens_out=e["tokens_out"], outcome=e["outcome"], detail=e["detail"],
                                         adapter=e.get("adapter") or "",
                                         values=json.loads(e["vals"]) if e.get("vals") else {})
            for e in events])
        c = self._conn
        try:
            return c.telemetry.Upload(batch, metadata=self._md(), timeout=30)
        except grpc.RpcError as e:
            raise self._error(c, e, "upload telemetry") from e

    def close(self) -> None:
        self._conn.channel.close()
