"""Thin gRPC servicers: decode, authorise, call the store/registry, encode. No decisions live here.

The device services (Fleet, Artifacts, Telemetry) are coroutines on the asyncio server; their store and blob
work goes through the one blocking-work pool (control_plane/offload.py). Admin is plain functions, run on the
server's admin thread pool."""
from __future__ import annotations

import asyncio
import json
import logging
import threading
import time

import grpc

from control_plane import auth, device_input, ingest, rollout_driver, rollups
from control_plane.blobs import BlobStore
from control_plane.group_commit import GroupCommit
from control_plane.fleet_admin import FleetAdmin, bad_labels, device_pb
from control_plane.offload import Offload
from control_plane.pipelines.servicer import PipelineAdmin
from control_plane.registry import Registry
from control_plane.store import Store, enroll_token_id, token_hash
from control_plane.telemetry_views import TelemetryViews
from slmops.errors import ArtifactInvalid, StorageUnavailable
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
log = logging.getLogger("slmops.control_plane")
RESYNC_TICKS = 6      # a watch re-reads its desired state at least every 6 watch ticks, woken or not


class Liveness:
    """Batches the watch streams' last_seen refreshes: each live stream marks its device once per watch tick,
    and one transaction per second writes them all (ten thousand streams would otherwise be a thousand
    single-row UPDATEs a second)."""

    def __init__(self, store: Store, offload: Offload, interval_s: float = 1.0):
        self.store, self.offload, self.interval_s = store, offload, interval_s
        self.marked: set[str] = set()
        self.failures = 0

    def mark(self, device_id: str) -> None:
        self.marked.add(device_id)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            batch, self.marked = list(self.marked), set()
            try:
                await self.offload(self.store.touch_many, batch)
            except Exception:  # keep refreshing; these devices are marked again on their next tick
                self.failures += 1
                if self.failures <= 10 or self.failures % 100 == 0:
                    log.exception("last_seen refresh of %d devices failed (%d failures)", len(batch), self.failures)


class _Bell:
    """Sets asyncio.Events of one loop from any thread, many per loop wake-up: a rollout wakes ten thousand
    watches from the driver's thread, which would otherwise be ten thousand call_soon_threadsafe writes."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.lock, self.pending, self.rung = loop, threading.Lock(), [], False

    def ring(self, event: asyncio.Event) -> None:
        with self.lock:
            self.pending.append(event)
            if self.rung:
                return
            self.rung = True
        try:
            self.loop.call_soon_threadsafe(self._flush)
        except RuntimeError:   # the loop has closed: the server has stopped and its streams with it
            pass

    def _flush(self) -> None:
        with self.lock:
            events, self.pending, self.rung = self.pending, [], False
        for e in events:
            e.set()


class _LoopWaker:
    """What the store calls (from any thread) on a change: sets an asyncio.Event on its loop."""
    __slots__ = ("bell", "event")

    def __init__(self, bell: _Bell, event: asyncio.Event):
        self.bell, self.event = bell, event

    def set(self) -> None:
        self.bell.ring(self.event)


def _enroll(store: Store, registry: Registry, request, facts: dict) -> tuple[str, fleet_pb2.EnrollResponse | None]:
    """Spends a use of the token and adds the device: ("", response) or (why refused, None)."""
    refused = store.consume_enroll_token(request.enroll_token)
    if refused:
        return refused, None
    device_id, token = store.add_device(facts["name"], facts["hardware"], facts["agent_version"])
    store.finish_enrollment(device_id, request.enroll_token, request.device_public_key.hex())
    rollout_driver.assign_standing(store, device_id)  # labels are known now: completed rollouts count
    root_version = registry.repo.state.root_version
    return "", fleet_pb2.EnrollResponse(device_id=device_id, device_token=token,
                                        trusted_root=registry.repo.root_bytes(root_version))


class FleetServicer(fleet_pb2_grpc.FleetServicer):
    def __init__(self, store: Store, registry: Registry, offload: Offload, liveness: Liveness,
                 watch_tick_s: float = 1.0, allow_keyless: bool = False):
        self.store = store
        self.registry = registry
        self.offload = offload
        self.liveness = liveness
        self.tick = watch_tick_s
        self.allow_keyless = allow_keyless
        self.reports = GroupCommit(lambda reports: offload(store.report_many, reports))
        self.bell: _Bell | None = None
        self.reads = GroupCommit(lambda ids: offload(store.desired_many, ids))   # watches woken at once

    async def Enroll(self, request, context):
        try:  # the whole request is checked before a use of the token is spent
            facts = device_input.enrollment(request, self.allow_keyless)
        except device_input.DeviceInputInvalid as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        refused, response = await self.offload(_enroll, self.store, self.registry, request, facts)
        if refused:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, refused)
        return response

    async def WatchDesiredState(self, request, context):
        dev = await auth.require_device(context, request.device_id)
        device_id = dev["device_id"]
        wake = asyncio.Event()
        if self.bell is None:
            self.bell = _Bell(asyncio.get_running_loop())
        waker = _LoopWaker(self.bell, wake)
        self.store.subscribe(device_id, waker)   # a change (or the device's deletion) wakes this stream
        try:
            seen, ticks = -1, 0
            while True:
                wake.clear()
                cur = await self.reads.submit(device_id)
                if cur is None:
                    return          # the device was deleted
                if cur.revision != seen:
                    seen = cur.revision
                    yield fleet_pb2.DesiredState(model=common_pb2.ModelRef(name=cur.name, version=cur.version),
                                                 revision=cur.revision)
                while not wake.is_set() and ticks < RESYNC_TICKS:   # a quiet stream only marks its device live;
                    try:                                             # it re-reads on a change, and every few ticks
                        await asyncio.wait_for(wake.wait(), self.tick)
                    except asyncio.TimeoutError:
                        ticks += 1
                    self.liveness.mark(device_id)
                ticks = 0
        finally:
            self.store.unsubscribe(device_id, waker)

    async def ReportStatus(self, request, context):
        dev = await auth.require_device(context, request.device_id)
        try:
            fields = device_input.status(request, device_input.json_object(dev.get("hardware")))
        except device_input.DeviceInputInvalid as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        if "hardware" in fields:
            fields["hardware"] = json.dumps(fields["hardware"])
        await self.reports.submit((dev["device_id"], fields))   # with the reports that queued meanwhile
        return common_pb2.Empty()


def _download_check(store: Store, blobs: BlobStore, dev: dict, request) -> tuple[grpc.StatusCode | None, str, int]:
    """(None, "", size) when this device may download this range of this blob; otherwise the refusal."""
    if not any(store.blob_in_model(request.sha256, n, v) for n, v in store.downloadable(dev)):
        return (grpc.StatusCode.PERMISSION_DENIED,
                f"blob {request.sha256[:12]}… is not part of a model assigned to this device", 0)
    try:
        size = blobs.size(request.sha256)
    except (FileNotFoundError, ArtifactInvalid):
        return grpc.StatusCode.NOT_FOUND, f"blob {request.sha256[:12]}… is missing", 0
    except StorageUnavailable as e:
        return grpc.StatusCode.UNAVAILABLE, str(e), 0
    if request.offset < 0 or request.offset > size or request.length < 0:
        return (grpc.StatusCode.OUT_OF_RANGE,
                f"offset {request.offset}/length {request.length} outside blob of {size} bytes", 0)
    return None, "", size


class ArtifactsServicer(artifacts_pb2_grpc.ArtifactsServicer):
    def __init__(self, store: Store, blobs: BlobStore, repo, offload: Offload, download_delay_s: float = 0.0):
        self.store = store
        self.blobs = blobs
        self.repo = repo
        self.offload = offload
        self.download_delay_s = download_delay_s  # debug/test only: simulates a slow link

    async def GetTrustMetadata(self, request, context):
        await auth.require_device(context)
        if request.trusted_root_version < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "trusted_root_version must not be negative")
        roots, cur = await self.offload(self.repo.snapshot_for_device, request.trusted_root_version)
        return artifacts_pb2.TrustMetadata(roots=roots, timestamp=cur["timestamp"], snapshot=cur["snapshot"],
                                           targets=cur["targets"])

    async def Download(self, request, context):
        dev = await auth.require_device(context)
        code, why, _ = await self.offload(_download_check, self.store, self.blobs, dev, request)
        if code is not None:
            await context.abort(code, why)
        offset = request.offset
        chunk_size = 64 << 10 if self.download_delay_s else 1 << 20
        chunks = self.blobs.read(request.sha256, request.offset, request.length, chunk_size)
        try:
            while (data := await self.offload(next, chunks, None)) is not None:
                if self.download_delay_s:
                    await asyncio.sleep(self.download_delay_s)
                yield artifacts_pb2.BlobChunk(offset=offset, data=data)
                offset += len(data)
        finally:
            await self.offload(chunks.close)   # closes the file on a pool thread, not the event loop


class TelemetryServicer(telemetry_pb2_grpc.TelemetryServicer):
    """Upload: the device may only report for itself; each event is checked (control_plane/ingest.py), valid
    ones are stored once per (device, seq), the rest are counted and named in the acknowledgement."""

    def __init__(self, store: Store, offload: Offload, views: TelemetryViews | None = None, metrics=None):
        self.store = store
        self.offload = offload
        self.views = views or TelemetryViews(store)
        self.metrics = metrics

    async def Upload(self, request, context):
        t0 = time.perf_counter()
        dev = await auth.require_device(context, request.device_id)
        now = int(time.time() * 1000)
        try:
            verdict = ingest.check_batch(request.events, now, self.views.raw_cutoff(now))
        except ingest.BatchRefused as e:
            if self.metrics:
                self.metrics.batches.labels("refused").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        accepted, dups = await self.offload(self._store_batch, dev["device_id"], verdict.events)
        if self.metrics:
            self.metrics.count_upload(accepted, dups, verdict.rejected, verdict.clamped)
            self.metrics.ingest_seconds.observe(time.perf_counter() - t0)
        return telemetry_pb2.UploadAck(accepted=accepted, duplicates=dups, rejected=verdict.rejected,
                                       detail=verdict.detail, clamped=verdict.clamped)

    def _store_batch(self, device_id: str, events) -> tuple[int, int]:
        accepted, dups = self.store.add_telemetry(device_id, events)
        self.store.touch(device_id)
        return accepted, dups


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
        except StorageUnavailable as e:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
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
        except StorageUnavailable as e:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
        return admin_pb2.BlobList(sha256=missing)

    def PublishModel(self, request, context):
        auth.require_admin(self.store, context)
        try:
            m = self.registry.publish(request.manifest_json)
        except ArtifactInvalid as e:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        except StorageUnavailable as e:   # nothing was published: the model row is added after every blob
            context.abort(grpc.StatusCode.UNAVAILABLE, f"not published: {e}")
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
