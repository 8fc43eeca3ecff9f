"""Thin gRPC servicers: decode, authorise, call the store/registry, encode. No decisions live here."""
from __future__ import annotations

import json
import threading
import time

import grpc

from control_plane import auth, device_input, ingest, rollout_driver, rollups
from control_plane.blobs import BlobStore
from control_plane.fleet_admin import FleetAdmin, bad_labels, device_pb
from control_plane.pipelines.servicer import PipelineAdmin
from control_plane.registry import Registry
from control_plane.store import Store, enroll_token_id, token_hash
from control_plane.telemetry_views import TelemetryViews
from slmops.errors import ArtifactInvalid
from slmops.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    artifacts_pb2,
    artifacts_pb2_grpc,
    common_pb2,
    fleet_pb2,
    fleet_pb2_grpc,
    telemetry_pb2,
    telemetry_pb2_grpc,
)

MAX_EVENTS_PER_BATCH = ingest.MAX_EVENTS_PER_BATCH


class FleetServicer(fleet_pb2_grpc.FleetServicer):
    def __init__(self, store: Store, registry: Registry, watch_tick_s: float = 1.0, allow_keyless: bool = False):
        self.store = store
        self.registry = registry
        self.tick = watch_tick_s
        self.allow_keyless = allow_keyless

    def Enroll(self, request, context):
        try:  # the whole request is checked before a use of the token is spent
            facts = device_input.enrollment(request, self.allow_keyless)
        except device_input.DeviceInputInvalid as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        refused = self.store.consume_enroll_token(request.enroll_token)
        if refused:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, refused)
        device_id, token = self.store.add_device(facts["name"], facts["hardware"], facts["agent_version"])
        self.store.finish_enrollment(device_id, request.enroll_token, request.device_public_key.hex())
        rollout_driver.assign_standing(self.store, device_id)  # labels are known now: completed rollouts count
        root_version = self.registry.repo.state.root_version
        return fleet_pb2.EnrollResponse(device_id=device_id, device_token=token,
                                        trusted_root=self.registry.repo.root_bytes(root_version))

    def WatchDesiredState(self, request, context):
        dev = auth.require_device(self.store, context, request.device_id)
        wake = threading.Event()
        context.add_callback(wake.set)  # the stream ended: stop waiting at once, free the thread
        seen = -1
        while context.is_active():
            wake.clear()
            cur = self.store.wait_for_change(dev["device_id"], seen, self.tick, wake)
            if cur is None:
                return
            if cur.revision != seen:
                seen = cur.revision
                yield fleet_pb2.DesiredState(model=common_pb2.ModelRef(name=cur.name, version=cur.version),
                                             revision=cur.revision)
            self.store.touch(dev["device_id"])

    def ReportStatus(self, request, context):
        dev = auth.require_device(self.store, context, request.device_id)
        try:
            fields = device_input.status(request, device_input.json_object(dev.get("hardware")))
        except device_input.DeviceInputInvalid as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        if "hardware" in fields:
            fields["hardware"] = json.dumps(fields["hardware"])
        self.store.touch(dev["device_id"], **fields)
        return common_pb2.Empty()


class ArtifactsServicer(artifacts_pb2_grpc.ArtifactsServicer):
    def __init__(self, store: Store, blobs: BlobStore, repo, download_delay_s: float = 0.0):
        self.store = store
        self.blobs = blobs
        self.repo = repo
        self.download_delay_s = download_delay_s  # debug/test only: simulates a slow link

    def GetTrustMetadata(self, request, context):
        auth.require_device(self.store, context)
        if request.trusted_root_version < 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "trusted_root_version must not be negative")
        roots, cur = self.repo.snapshot_for_device(request.trusted_root_version)
        return artifacts_pb2.TrustMetadata(roots=roots, timestamp=cur["timestamp"], snapshot=cur["snapshot"],
                                           targets=cur["targets"])

    def Download(self, request, context):
        dev = auth.require_device(self.store, context)
        if not any(self.store.blob_in_model(request.sha256, n, v) for n, v in self.store.downloadable(dev)):
            context.abort(grpc.StatusCode.PERMISSION_DENIED,
                          f"blob {request.sha256[:12]}… is not part of a model assigned to this device")
        try:
            size = self.blobs.size(request.sha256)
        except (FileNotFoundError, ArtifactInvalid):
            context.abort(grpc.StatusCode.NOT_FOUND, f"blob {request.sha256[:12]}… is missing")
        if request.offset < 0 or request.offset > size or request.length < 0:
            context.abort(grpc.StatusCode.OUT_OF_RANGE,
                          f"offset {request.offset}/length {request.length} outside blob of {size} bytes")
        offset = request.offset
        chunk_size = 64 << 10 if self.download_delay_s else 1 << 20
        for data in self.blobs.read(request.sha256, request.offset, request.length, chunk_size):
            if self.download_delay_s:
                time.sleep(self.download_delay_s)
            yield artifacts_pb2.BlobChunk(offset=offset, data=data)
            offset += len(data)


class TelemetryServicer(telemetry_pb2_grpc.TelemetryServicer):
    """Upload: the device may only report for itself; each event is checked (control_plane/ingest.py), valid
    ones are stored once per (device, seq), the rest are counted and named in the acknowledgement."""

    def __init__(self, store: Store, views: TelemetryViews | None = None, metrics=None):
        self.store = store
        self.views = views or TelemetryViews(store)
        self.metrics = metrics

    def Upload(self, request, context):
        t0 = time.perf_counter()
        dev = auth.require_device(self.store, context, request.device_id)
        now = int(time.time() * 1000)
        try:
            verdict = ingest.check_batch(request.events, now, self.views.raw_cutoff(now))
        except ingest.BatchRefused as e:
            if self.metrics:
                self.metrics.batches.labels("refused").inc()
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        accepted, dups = self.store.add_telemetry(dev["device_id"], verdict.events)
        self.store.touch(dev["device_id"])
        if self.metrics:
            self.metrics.count_upload(accepted, dups, verdict.rejected, verdict.clamped)
            self.metrics.ingest_seconds.observe(time.perf_counter() - t0)
        return telemetry_pb2.UploadAck(accepted=accepted, duplicates=dups, rejected=verdict.rejected,
                                       detail=verdict.detail, clamped=verdict.clamped)


class AdminServicer(FleetAdmin, PipelineAdmin, admin_pb2_grpc.AdminServicer):  # + pipelines (issue 10)
    def __init__(self, store: Store, blobs: BlobStore, registry: Registry, views: TelemetryViews | None = None):
        self.store = store
        self.blobs = blobs
        self.registry = registry
        self.views = views or TelemetryViews(store)

    def UploadBlob(self, request_iterator, context):
        auth.require_admin(self.store, context)
        expected = {}

        def chunks():
            for i, msg in enumerate(request_iterator):
                if i == 0 and msg.expected_sha256:
                    expected["sha"] = msg.expected_sha256
                yield msg.data

        try:
            # expected_sha256 arrives with the first message, so check after the stream is read.
            digest, size = self.blobs.put_stream(chunks())
        except ArtifactInvalid as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        if expected.get("sha") and expected["sha"] != digest:
            context.abort(grpc.StatusCode.DATA_LOSS, f"uploaded bytes hash to {digest}, expected {expected['sha']}")
        return admin_pb2.BlobRef(sha256=digest, size=size)

    def MissingBlobs(self, request, context):
        auth.require_admin(self.store, context)
        if len(request.sha256) > 100_000:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "ask about at most 100000 blobs at a time")
        try:
            missing = [sha for sha in request.sha256 if not self.blobs.has(sha)]
        except ArtifactInvalid as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        return admin_pb2.BlobList(sha256=missing)

    def PublishModel(self, request, context):
        auth.require_admin(self.store, context)
        try:
            m = self.registry.publish(request.manifest_json)
        except ArtifactInvalid as e:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        row = self.store.model(m.name, m.version)
        return admin_pb2.PublishResponse(model=common_pb2.ModelRef(name=m.name, version=m.version),
                                         manifest_sha256=row["manifest_sha256"])

    def ListModels(self, request, context):
        auth.require_admin(self.store, context)
        return admin_pb2.ModelList(versions=[
            admin_pb2.ModelVersion(model=common_pb2.ModelRef(name=r["name"], version=r["version"]),
                                   precision=r["precision"], total_bytes=r["total_bytes"],
                                   created_unix_ms=r["created_ms"]) for r in self.store.models()])

    def SetDesiredVersion(self, request, context):
        auth.require_admin(self.store, context)
        if self.store.model(request.model.name, request.model.version) is None:
            context.abort(grpc.StatusCode.NOT_FOUND,
                          f"no published model {request.model.name}@{request.model.version}")
        unknown = [d for d in request.device_ids if self.store.device(d) is None]
        if unknown:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown devices: {', '.join(unknown)}")
        n = self.store.set_desired(request.model.name, request.model.version, list(request.device_ids) or None)
        return admin_pb2.SetDesiredResponse(devices_updated=n)

    def CreateEnrollToken(self, request, context):
        auth.require_admin(self.store, context)
        if request.uses < 0 or request.ttl_seconds < 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "uses and ttl_seconds must not be negative")
        bad = bad_labels(request.labels)
        if bad:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, bad)
        uses = request.uses or 1
        who = (auth.admin_principal(self.store, context) or {"name": ""})["name"]
        token, expires = self.store.create_enroll_token(uses, request.ttl_seconds or 86400, dict(request.labels),
                                                        created_by=who)
        return admin_pb2.EnrollToken(token=token, expires_unix_ms=expires, uses=uses,
                                     token_id=enroll_token_id(token_hash(token)))

    def ListDevices(self, request, context):
        auth.require_admin(self.store, context)
        return admin_pb2.DeviceList(devices=[device_pb(d) for d in self.store.devices()])

    def QueryTelemetry(self, request, context):
        auth.require_admin(self.store, context)
        summary = rollups.summarize(self.store.telemetry(request.device_id or None, request.since_unix_ms))
        return admin_pb2.TelemetrySummary(devices=[
            admin_pb2.DeviceTelemetry(device_id=did, **fig) for did, fig in sorted(summary.items())])

    def QueryRollups(self, request, context):
        auth.require_admin(self.store, context)
        rows = self.views.minutes(request.device_id or None, request.since_unix_ms, request.until_unix_ms)
        return admin_pb2.RollupList(minutes=[
            admin_pb2.MinuteRollup(minute_unix_ms=r["minute_ms"], **{k: v for k, v in r.items() if k != "minute_ms"})
            for r in rows])

    def ListEvents(self, request, context):
        auth.require_admin(self.store, context)
        if request.limit < 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "limit must not be negative")
        rows = self.views.events(request.device_id or None, request.since_unix_ms, min(request.limit or 100, 1000))
        return admin_pb2.EventList(events=[
            admin_pb2.TelemetryRecord(device_id=r["device_id"], seq=r["seq"], ts_unix_ms=r["ts_ms"], kind=r["kind"],
                                      name=r["name"], model=r["model"], outcome=r["outcome"], detail=r["detail"],
                                      latency_ms=r["latency_ms"]) for r in rows])
