"""A typed client for the Admin API, used by the CLI, the demo and tests."""
from __future__ import annotations

import pathlib
import time
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from slmops.manifest import Manifest
from slmops.v1 import admin_pb2, admin_pb2_grpc, common_pb2

CHUNK = 1 << 20


class AdminError(Exception):
    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(f"{code.name}: {details}")
        self.code, self.details = code, details


def channel(address: str, ca_pem: bytes | None, options=()) -> grpc.Channel:
    if ca_pem:
        return grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=ca_pem), options)
    return grpc.insecure_channel(address, options)


def wait_healthy(address: str, timeout: float = 30.0, ca_pem: bytes | None = None) -> None:
    deadline = time.monotonic() + timeout
    with channel(address, ca_pem) as ch:
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
    def __init__(self, address: str, token: str, ca_pem: bytes | None = None):
        """TLS pinned to `ca_pem` (the control plane's keys/ca.pem); plaintext only without it (loopback dev)."""
        self.channel = channel(address, ca_pem, [("grpc.max_send_message_length", 8 << 20)])
        self.stub = admin_pb2_grpc.AdminStub(self.channel)
        self.md = (("authorization", f"Bearer {token}"),)
        self.last_upload: dict = {}   # what the last publish moved (see publish)

    def _call(self, fn, req, **kw):
        try:
            return fn(req, metadata=self.md, timeout=kw.pop("timeout", 60), **kw)
        except grpc.RpcError as e:
            raise AdminError(e.code(), e.details()) from e

    def upload_bytes(self, data: bytes, sha256: str):
        pieces = [data[i:i + CHUNK] for i in range(0, len(data), CHUNK)] or [b""]
        return self._call(self.stub.UploadBlob, (admin_pb2.BlobUpload(data=d, expected_sha256=sha256 if i == 0 else "")
                                                 for i, d in enumerate(pieces)), timeout=3600)

    def missing_blobs(self, shas: list[str]) -> set[str]:
        return set(self._call(self.stub.MissingBlobs, admin_pb2.BlobList(sha256=shas)).sha256)

    def publish(self, bundle_dir: pathlib.Path, manifest: Manifest,
                progress: Callable[[int], None] | None = None) -> admin_pb2.PublishResponse:
        """Uploads only the chunks the control plane does not hold yet (a new version of a model shares most of
        its chunks with the last one), then asks it to sign and publish the manifest. `self.last_upload` says
        how many chunks and bytes moved and how many were already there."""
        spans = [(f, sha, off, size) for f in manifest.files for sha, off, size in f.chunk_spans()]
        missing = self.missing_blobs(sorted({sha for _, sha, _, _ in spans}))
        sent, stats = set(), {"chunks": 0, "bytes": 0, "reused_chunks": 0, "reused_bytes": 0}
        for f, sha, off, size in spans:
            if sha not in missing or sha in sent:
                stats["reused_chunks"] += 1
                stats["reused_bytes"] += size
                if progress:
                    progress(size)
                continue
            with open(pathlib.Path(bundle_dir) / f.path, "rb") as fh:
                fh.seek(off)
                data = fh.read(size)
            self.upload_bytes(data, sha)
            sent.add(sha)
            stats["chunks"] += 1
            stats["bytes"] += size
            if progress:
                progress(size)
        self.last_upload = stats
        return self._call(self.stub.PublishModel, admin_pb2.PublishRequest(manifest_json=manifest.to_json()))

    def models(self):
        return self._call(self.stub.ListModels, common_pb2.Empty()).versions

    def set_desired(self, name: str, version: str, device_ids=()) -> int:
        return self._call(self.stub.SetDesiredVersion, admin_pb2.SetDesiredRequest(
            model=common_pb2.ModelRef(name=name, version=version), device_ids=list(device_ids))).devices_updated

    def enroll_token(self, uses: int = 1, ttl_seconds: int = 86400, labels: dict | None = None) -> admin_pb2.EnrollToken:
        return self._call(self.stub.CreateEnrollToken,
                          admin_pb2.CreateEnrollTokenRequest(uses=uses, ttl_seconds=ttl_seconds, labels=labels or {}))

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

    # ---- fleet (issue 6) ----------------------------------------------------------------------
    def create_rollout(self, name: str, version: str, selector: dict | None = None, strategy: str = "all",
                       canary: dict | None = None, waves: list[dict] = (), max_per_minute: int = 0,
                       gate: dict | None = None, variants: dict | None = None) -> admin_pb2.Rollout:
        """selector: {"labels": {...}, "hardware_classes": [...], "all_devices": bool}; waves/canary:
        {"devices": N} or {"percent": P}; gate: HealthGate fields."""
        return self._call(self.stub.CreateRollout, admin_pb2.CreateRolloutRequest(
            model=common_pb2.ModelRef(name=name, version=version), selector=admin_pb2.Selector(**(selector or {})),
            strategy=strategy, canary=admin_pb2.Wave(**canary) if canary else None,
            waves=[admin_pb2.Wave(**w) for w in waves], max_devices_per_minute=max_per_minute,
            gate=admin_pb2.HealthGate(**(gate or {})), variants=variants or {}))

    def rollout(self, rollout_id: str) -> admin_pb2.Rollout:
        return self._call(self.stub.GetRollout, admin_pb2.RolloutRef(rollout_id=rollout_id))

    def rollouts(self):
        return self._call(self.stub.ListRollouts, common_pb2.Empty()).rollouts

    def rollout_action(self, action: str, rollout_id: str) -> admin_pb2.Rollout:
        fn = {"pause": self.stub.PauseRollout, "resume": self.stub.ResumeRollout, "abort": self.stub.AbortRollout}
        return self._call(fn[action], admin_pb2.RolloutRef(rollout_id=rollout_id))

    def pin(self, device_id: str, name: str = "", version: str = "") -> admin_pb2.Device:
        return self._call(self.stub.PinDevice, admin_pb2.PinDeviceRequest(
            device_id=device_id, model=common_pb2.ModelRef(name=name, version=version)))

    def set_labels(self, device_id: str, labels: dict) -> admin_pb2.Device:
        return self._call(self.stub.SetDeviceLabels, admin_pb2.SetDeviceLabelsRequest(device_id=device_id,
                                                                                      labels=labels))

    def device(self, device_id: str) -> admin_pb2.Device:
        return self._call(self.stub.GetDevice, admin_pb2.DeviceRef(device_id=device_id))

    def select_devices(self, labels: dict | None = None, hardware_classes=()) -> list:
        return self._call(self.stub.SelectDevices, admin_pb2.Selector(
            labels=labels or {}, hardware_classes=list(hardware_classes),
            all_devices=not labels and not hardware_classes)).devices

    def api_token(self, role: str, name: str) -> admin_pb2.ApiToken:
        return self._call(self.stub.CreateApiToken, admin_pb2.CreateApiTokenRequest(role=role, name=name))

    def audit(self, limit: int = 100, action: str = "", actor: str = "", since_unix_ms: int = 0):
        return self._call(self.stub.ListAudit, admin_pb2.AuditQuery(limit=limit, action=action, actor=actor,
                                                                    since_unix_ms=since_unix_ms)).entries

    # ---- tokens and devices: list, revoke, delete ---------------------------------------------
    def enroll_tokens(self) -> list:
        """EnrollTokenInfo of every enrollment token (ids, never secrets), oldest first."""
        return list(self._call(self.stub.ListEnrollTokens, common_pb2.Empty()).tokens)

    def revoke_enroll_token(self, token_id: str) -> admin_pb2.EnrollTokenInfo:
        return self._call(self.stub.RevokeEnrollToken, admin_pb2.TokenRef(token_id=token_id))

    def api_tokens(self) -> list:
        """ApiTokenInfo of every API token (ids, never secrets), oldest first."""
        return list(self._call(self.stub.ListApiTokens, common_pb2.Empty()).tokens)

    def revoke_api_token(self, token_id: str) -> admin_pb2.ApiTokenInfo:
        return self._call(self.stub.RevokeApiToken, admin_pb2.TokenRef(token_id=token_id))

    def delete_device(self, device_id: str) -> admin_pb2.Device:
        return self._call(self.stub.DeleteDevice, admin_pb2.DeviceRef(device_id=device_id))

    # ---- pipelines (issue 10) ----------------------------------------------------------------
    def submit_pipeline(self, recipe_yaml: str, base_dir: str) -> admin_pb2.Pipeline:
        return self._call(self.stub.SubmitPipeline, admin_pb2.SubmitPipelineRequest(recipe_yaml=recipe_yaml,
                                                                                    base_dir=base_dir))

    def pipelines(self, status: str = "", limit: int = 0):
        return self._call(self.stub.ListPipelines, admin_pb2.ListPipelinesRequest(status=status,
                                                                                  limit=limit)).pipelines

    def pipeline(self, job_id: str) -> admin_pb2.Pipeline:
        return self._call(self.stub.GetPipeline, admin_pb2.PipelineRef(job_id=job_id))

    def cancel_pipeline(self, job_id: str) -> admin_pb2.Pipeline:
        return self._call(self.stub.CancelPipeline, admin_pb2.PipelineRef(job_id=job_id))

    def pipeline_logs(self, job_id: str, follow: bool = False, after_id: int = 0, timeout: float = 24 * 3600):
        """Yields PipelineLogLine; with follow, until the job finishes."""
        try:
            yield from self.stub.PipelineLogs(admin_pb2.PipelineLogsRequest(job_id=job_id, follow=follow,
                                                                            after_id=after_id),
                                              metadata=self.md, timeout=timeout)
        except grpc.RpcError as e:
            raise AdminError(e.code(), e.details()) from e

    def close(self) -> None:
        self.channel.close()
