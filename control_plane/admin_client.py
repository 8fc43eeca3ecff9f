"""A typed client for the Admin API, used by the CLI, the demo and tests."""
from __future__ import annotations

import pathlib
import time
from typing import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from slmops.manifest import Manifest
from slmops.v1 import admin_pb2, admin_pb2_grpc, common_pb2

CHUNK = 1 << 20


class AdminError(Exception):
    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(f"{code.name}: {details}")
        self.code, self.details = code, details


def wait_healthy(address: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while True:
            try:
                if stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2).status == \
                        health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"control plane at {address} not healthy after {timeout:.0f} s")
            time.sleep(0.2)


class AdminClient:
    def __init__(self, address: str, token: str):
        self.channel = grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 8 << 20)])
        self.stub = admin_pb2_grpc.AdminStub(self.channel)
        self.md = (("authorization", f"Bearer {token}"),)

    def _call(self, fn, req, **kw):
        try:
            return fn(req, metadata=self.md, timeout=kw.pop("timeout", 60), **kw)
        except grpc.RpcError as e:
            raise AdminError(e.code(), e.details()) from e

    def upload_file(self, path: pathlib.Path, sha256: str, progress: Callable[[int], None] | None = None):
        def chunks():
            with open(path, "rb") as f:
                first = True
                while data := f.read(CHUNK):
                    if progress:
                        progress(len(data))
                    yield admin_pb2.BlobUpload(data=data, expected_sha256=sha256 if first else "")
                    first = False
        return self._call(self.stub.UploadBlob, chunks(), timeout=3600)

    def publish(self, bundle_dir: pathlib.Path, manifest: Manifest,
                progress: Callable[[int], None] | None = None) -> admin_pb2.PublishResponse:
        for f in manifest.files:
            self.upload_file(pathlib.Path(bundle_dir) / f.path, f.sha256, progress)
        return self._call(self.stub.PublishModel, admin_pb2.PublishRequest(manifest_json=manifest.to_json()))

    def models(self):
        return self._call(self.stub.ListModels, common_pb2.Empty()).versions

    def set_desired(self, name: str, version: str, device_ids=()) -> int:
        return self._call(self.stub.SetDesiredVersion, admin_pb2.SetDesiredRequest(
            model=common_pb2.ModelRef(name=name, version=version), device_ids=list(device_ids))).devices_updated

    def enroll_token(self, uses: int = 1, ttl_seconds: int = 86400) -> admin_pb2.EnrollToken:
        return self._call(self.stub.CreateEnrollToken,
                          admin_pb2.CreateEnrollTokenRequest(uses=uses, ttl_seconds=ttl_seconds))

    def devices(self):
        return self._call(self.stub.ListDevices, common_pb2.Empty()).devices

    def telemetry(self, device_id: str = "", since_unix_ms: int = 0):
        return self._call(self.stub.QueryTelemetry, admin_pb2.TelemetryQuery(
            device_id=device_id, since_unix_ms=since_unix_ms)).devices

    def rollups(self, device_id: str = "", since_unix_ms: int = 0, until_unix_ms: int = 0):
        return self._call(self.stub.QueryRollups, admin_pb2.RollupQuery(
            device_id=device_id, since_unix_ms=since_unix_ms, until_unix_ms=until_unix_ms)).minutes

    def events(self, device_id: str = "", since_unix_ms: int = 0, limit: int = 0):
        return self._call(self.stub.ListEvents, admin_pb2.EventQuery(
            device_id=device_id, since_unix_ms=since_unix_ms, limit=limit)).events

    def close(self) -> None:
        self.channel.close()
