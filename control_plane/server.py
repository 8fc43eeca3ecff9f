"""Wires the control plane together: data folder, keys, store, blob store, gRPC services, health.

The gRPC server is asyncio (`grpc.aio`), on an event loop in its own thread ("grpc-aio"): every device call and
stream (Enroll, WatchDesiredState, ReportStatus, GetTrustMetadata, Download, Telemetry Upload) and health are
coroutines, so an open watch stream costs no thread; their store and blob work goes through one bounded pool
(`max_workers` threads, control_plane/offload.py). The Admin service's handlers are plain functions run on a
second pool of `admin_workers` threads (grpc.aio's migration_thread_pool), so the CLI's sync client is
unchanged and a slow admin call never holds a device's thread. Limits: control_plane/limits.py.""" 
from __future__ import annotations

import asyncio
import logging
import os
import pathlib
import shutil
import signal
import threading
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from control_plane import identity, tls
from control_plane.auth import AuditInterceptor, DeviceAuth
from control_plane.blobs import BlobConfig, open_blobs
from control_plane.gc_policy import GcPolicy
from control_plane.limits import StreamGate, StreamLimitInterceptor, StreamLimits
from control_plane.offload import Offload
from control_plane.registry import Registry
from control_plane.rollout_driver import RolloutDriver
from control_plane.servicers import AdminServicer, ArtifactsServicer, FleetServicer, Liveness, TelemetryServicer
from control_plane.sqldb import StateConfig
from control_plane.store import Store
from control_plane.telemetry_views import TelemetryJob, TelemetryViews
from control_plane.trust_repo import Expiry, Repository, init_trust
from slmops.errors import ConfigError
from slmops.v1 import admin_pb2_grpc, artifacts_pb2_grpc, fleet_pb2_grpc, telemetry_pb2_grpc

log = logging.getLogger("slmops.control_plane")
SERVICES = ("slmops.v1.Fleet", "slmops.v1.Artifacts", "slmops.v1.Telemetry", "slmops.v1.Admin")


@dataclass(frozen=True)
class ControlPlaneConfig:
    data_dir: pathlib.Path
    listen: str = "127.0.0.1:50051"
    max_workers: int = 32          # threads for blocking store/blob work of device calls (streams hold none)
    admin_workers: int = 16        # threads running Admin calls (the admin service is plain functions)
    max_streams: int = 20_000      # open streams in all (watch, download, health watch, pipeline logs)
    streams_per_peer: int = 0      # per peer address; 0 = 3/4 of max_streams
    watch_tick_s: float = 10.0     # a watch re-checks liveness and refreshes last_seen this often (changes wake it)
    rollout_interval_s: float = 1.0
    insecure_loopback_dev: bool = False  # plaintext gRPC; refused unless listening on loopback
    tls_names: tuple[str, ...] = ()     # extra DNS names / IPs for the server certificate
    http: str = ""                 # dashboard + /metrics: "PORT" (loopback) or "HOST:PORT"; "" = off
    rollup_interval_s: float = 10.0
    expiry: Expiry = Expiry()      # lifetime of each role's signed metadata
    refresh_s: float = 5.0         # how often to re-sign what is about to expire and pick up new roots
    # SLMOPS_DEBUG_DOWNLOAD_DELAY_S: seconds slept per 64 KiB chunk served (tests of slow retrieval only)
    download_delay_s: float = float(os.environ.get("SLMOPS_DEBUG_DOWNLOAD_DELAY_S", "0") or 0)
    pipeline_jobs: int = 1         # pipelines run at once, each stage in a worker process (control_plane/pipelines)
    # Devices that enroll without a key pair are refused unless this is on; it lets their bearer token alone
    # authenticate them (no request signatures), so keep it for development only.
    allow_keyless_enrollment: bool = False
    stream_limits: StreamLimits | None = None   # None: StreamLimits.for_total(max_streams, streams_per_peer)
    keepalive_s: float = 60.0      # the server pings each connection this often; no answer in keepalive_timeout_s
    keepalive_timeout_s: float = 20.0   # closes it (and ends its streams: half-open agents free their slots)
    idle_connection_s: float = 300.0    # a connection with no call open for this long is closed
    max_streams_per_connection: int = 64
    # Calls that have arrived and wait for the event loop to take them (gRPC core holds them). gRPC's default
    # (grpc.server.max_pending_requests 1,000, cancelling at random above it and every arrival past 3,000) came
    # back CANCELLED to a fifth of 3,000 agents reporting at once after a rollout; one call per connected agent
    # at once is what a rollout or a restart brings, so the queue is as deep as the stream budget. 0 = max_streams.
    max_pending_calls: int = 0
    # Where state and blobs live (docs/ARCHITECTURE.md, "Deployment shapes"). "" = embedded: DATA_DIR/control_plane.db
    # and DATA_DIR/blobs. Else a SQLite path or postgresql://USER@HOST:PORT/DB; a folder or s3://BUCKET/PREFIX.
    state: str = ""
    blobs: str = ""
    s3_endpoint: str = ""          # the S3-compatible store's URL (SeaweedFS, Garage, ...); "" = AWS's default
    gc_freeze_s: float = 1.0       # long-lived objects frozen out of the collector's scans this often; 0 = off
    gc_full_s: float = 600.0       # one full collection (frozen objects too) this often (control_plane/gc_policy.py)

    def __post_init__(self) -> None:
        self.state_config()
        self.blob_config()
        host, _, port = self.listen.rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ConfigError(f"--listen {self.listen!r} must be HOST:PORT")
        if self.max_workers < 1 or self.admin_workers < 1:
            raise ConfigError(f"max_workers ({self.max_workers}) and admin_workers ({self.admin_workers}) "
                              "must be at least 1")
        if self.max_streams < 1 or not 0 <= self.streams_per_peer <= self.max_streams:
            raise ConfigError(f"max_streams ({self.max_streams}) must be positive and streams_per_peer "
                              f"({self.streams_per_peer}) between 0 (3/4 of max_streams) and max_streams")
        if self.gc_freeze_s < 0 or self.gc_full_s <= 0:
            raise ConfigError(f"gc_freeze_s ({self.gc_freeze_s}) must be 0 (off) or positive and gc_full_s "
                              f"({self.gc_full_s}) positive")
        if self.max_pending_calls < 0:
            raise ConfigError(f"max_pending_calls ({self.max_pending_calls}) must be 0 (max_streams) or positive")
        if min(self.keepalive_s, self.keepalive_timeout_s, self.idle_connection_s) <= 0 or \
                self.max_streams_per_connection < 1:
            raise ConfigError("keepalive_s, keepalive_timeout_s, idle_connection_s and max_streams_per_connection "
                              "must be positive")
        self.limits()   # a bad stream budget is refused here, not when the server starts
        if self.insecure_loopback_dev and host.strip("[]") not in ("127.0.0.1", "::1", "localhost"):
            raise ConfigError(f"--insecure-loopback-dev needs a loopback --listen, not {self.listen!r}: "
                              "beyond loopback the control plane serves TLS only")
        if self.http:
            from control_plane.web.server import parse_http
            parse_http(self.http)

    def state_config(self) -> StateConfig:
        return StateConfig.of(self.state or pathlib.Path(self.data_dir) / "control_plane.db")

    def blob_config(self) -> BlobConfig:
        return BlobConfig(self.blobs or str(pathlib.Path(self.data_dir) / "blobs"), endpoint_url=self.s3_endpoint)

    def limits(self) -> StreamLimits:
        return self.stream_limits or StreamLimits.for_total(self.max_streams, self.streams_per_peer)

    def pending_calls(self) -> int:
        return self.max_pending_calls or self.max_streams


class ControlPlane:
    def __init__(self, cfg: ControlPlaneConfig):
        self.cfg = cfg
        data = pathlib.Path(cfg.data_dir)
        data.mkdir(parents=True, exist_ok=True)
        self.store = Store(cfg.state_config())
        self.blobs = open_blobs(cfg.blob_config())
        adopt_identity(self.store, data, not cfg.insecure_loopback_dev, cfg.expiry)
        self.repo = Repository(data / "trust", self.store, cfg.expiry)
        self.registry = Registry(self.store, self.blobs, self.repo)
        self._stop_refresh = threading.Event()
        self.admin_token_path = data / "admin-token"
        if not self.admin_token_path.exists():
            token = self.store.create_admin_token("admin")
            fd = os.open(self.admin_token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(token + "\n")
        self.server: grpc.aio.Server | None = None
        self.port: int | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.health = health_aio.HealthServicer()
        self.rollout_driver = RolloutDriver(self.store, cfg.rollout_interval_s)
        from control_plane.cp_metrics import ControlPlaneMetrics
        self.views = TelemetryViews(self.store)
        self.gc_policy = GcPolicy(cfg.gc_freeze_s, cfg.gc_full_s)
        self.metrics = ControlPlaneMetrics(self.store, self.gc_policy)
        self.telemetry_job = TelemetryJob(self.views, cfg.rollup_interval_s)
        self.http = None
        from control_plane.pipelines.manager import ManagerConfig, PipelineManager
        self.pipelines = PipelineManager(self.store, self.registry, self.blobs,
                                         ManagerConfig(data, max_jobs=cfg.pipeline_jobs))

    def start(self) -> int:
        """Starts the gRPC server on its event loop thread and the background jobs; returns the bound port."""
        ready: futures.Future = futures.Future()
        self._loop_thread = threading.Thread(target=self._run_loop, args=(ready,), name="grpc-aio", daemon=True)
        self._loop_thread.start()
        port = ready.result(timeout=60)     # the bind error, if any, is raised here
        self.rollout_driver.start()
        self.pipelines.start()
        self.telemetry_job.thread.start()
        if self.cfg.http:
            from control_plane.web.app import build_app
            from control_plane.web.server import HttpServer, parse_http
            self.http = HttpServer(build_app(self.store, self.views, self.metrics.render), *parse_http(self.cfg.http))
            self.http.start()
            log.info("dashboard on http://%s:%d/", self.http.host, self.http.port)
        threading.Thread(target=self._refresh_loop, name="trust-refresh", daemon=True).start()
        log.info("control plane listening on %s (data %s)", self.cfg.listen.rpartition(":")[0] + f":{port}",
                 self.cfg.data_dir)
        return port

    def _run_loop(self, ready: futures.Future) -> None:
        loop = asyncio.new_event_loop()
        self.loop = loop
        try:
            loop.run_until_complete(self._start_server())
        except BaseException as e:  # noqa: BLE001  (handed to start(), which raises it)
            ready.set_exception(e)
            loop.close()
            return
        ready.set_result(self.port)
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _start_server(self) -> None:
        cfg = self.cfg
        self.offload = Offload(cfg.max_workers)
        self.admin_pool = futures.ThreadPoolExecutor(max_workers=cfg.admin_workers, thread_name_prefix="admin")
        self.stream_gate = StreamGate(cfg.limits())
        self.liveness = Liveness(self.store, self.offload)
        options = [("grpc.max_receive_message_length", 8 << 20),
                   ("grpc.keepalive_time_ms", int(cfg.keepalive_s * 1000)),
                   ("grpc.keepalive_timeout_ms", int(cfg.keepalive_timeout_s * 1000)),
                   ("grpc.keepalive_permit_without_calls", 1),
                   ("grpc.http2.max_pings_without_data", 0),   # keep pinging an idle watch: finds dead peers
                   ("grpc.max_connection_idle_ms", int(cfg.idle_connection_s * 1000)),
                   ("grpc.max_concurrent_streams", cfg.max_streams_per_connection),
                   ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
                   # a burst beyond it is refused outright (CANCELLED, retryable), not dropped at random below it
                   ("grpc.server.max_pending_requests", cfg.pending_calls()),
                   ("grpc.server.max_pending_requests_hard_limit", cfg.pending_calls())]
        server = grpc.aio.server(migration_thread_pool=self.admin_pool, options=options,
                                 interceptors=[AuditInterceptor(self.store, self.offload, DeviceAuth(self.store)),
                                               StreamLimitInterceptor(self.stream_gate)])
        self.fleet = FleetServicer(self.store, self.registry, self.offload, self.liveness, cfg.watch_tick_s,
                                   cfg.allow_keyless_enrollment)
        fleet_pb2_grpc.add_FleetServicer_to_server(self.fleet, server)
        artifacts_pb2_grpc.add_ArtifactsServicer_to_server(
            ArtifactsServicer(self.store, self.blobs, self.repo, self.offload, cfg.download_delay_s), server)
        telemetry_pb2_grpc.add_TelemetryServicer_to_server(
            TelemetryServicer(self.store, self.offload, self.views, self.metrics), server)
        admin = AdminServicer(self.store, self.blobs, self.registry, self.views)
        admin.pipelines = self.pipelines
        admin_pb2_grpc.add_AdminServicer_to_server(admin, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        if cfg.insecure_loopback_dev:
            port = server.add_insecure_port(cfg.listen)
        else:
            creds = tls.server_credentials(pathlib.Path(cfg.data_dir) / "keys", cfg.listen.rpartition(":")[0],
                                           cfg.tls_names)
            port = server.add_secure_port(cfg.listen, creds)
        if port == 0:
            raise ConfigError(f"could not bind {cfg.listen}")
        await server.start()
        for name in ("", *SERVICES):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._liveness_task = asyncio.get_running_loop().create_task(self.liveness.run())
        self._gc_task = asyncio.get_running_loop().create_task(self.gc_policy.run())
        self.server, self.port = server, port

    def _refresh_loop(self) -> None:
        if self.cfg.refresh_s <= 0:
            return  # re-signing disabled: metadata expires unless published again
        while not self._stop_refresh.wait(self.cfg.refresh_s):
            try:
                if self.repo.refresh():
                    log.info("re-signed trust metadata (timestamp v%d)", self.repo.state.timestamp.signed.version)
            except Exception as e:  # keep serving; the next tick retries, devices see expiry if it persists
                log.error("could not refresh signed metadata: %s", e)

    def stop(self, grace: float = 2.0) -> None:
        self.pipelines.stop()   # workers stopped; running jobs stay running and resume on the next start
        self.rollout_driver.stop()
        self.telemetry_job.stop.set()
        if self.http:
            self.http.stop()
        self._stop_refresh.set()
        if self.server and self.loop:
            asyncio.run_coroutine_threadsafe(self._stop_server(grace), self.loop).result(timeout=grace + 30)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._loop_thread.join(timeout=30)
            self.offload.close()
            self.admin_pool.shutdown(wait=False, cancel_futures=True)
            self.server = None
        self.store.stop_listening()

    async def _stop_server(self, grace: float) -> None:
        await self.health.enter_graceful_shutdown()
        self._liveness_task.cancel()
        self._gc_task.cancel()
        await self.server.stop(grace)
        # Streams still open (watches) end here, cancelled and awaited, rather than being destroyed mid-await
        # when the loop closes (which logged "aclose(): asynchronous generator is already running" tracebacks).
        rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in rest:
            t.cancel()
        await asyncio.gather(*rest, return_exceptions=True)


def adopt_identity(store: Store, data: pathlib.Path, tls_on: bool, expiry: Expiry) -> None:
    """This data folder's trust root and TLS CA, made on a first start, checked against and recorded in the
    database (control_plane/identity.py: replicas share one identity); what this start made is removed again when
    another control plane's identity won the database meanwhile, so copy-identity can fill the folder."""
    identity.check(store, data, tls_on)
    made = []
    if not (data / "trust" / "roots" / "1.root.json").exists():
        init_trust(data / "trust", expiry=expiry)
        made.append(data / "trust")
    if tls_on and not (data / "keys" / "ca.pem").exists():
        tls.ensure_ca(data / "keys")
        made.append(data / "keys")
    try:
        identity.claim(store, data, tls_on)
    except ConfigError:
        for path in made:
            shutil.rmtree(path, ignore_errors=True)
        raise


def serve_forever(cfg: ControlPlaneConfig) -> None:
    cp = ControlPlane(cfg)
    cp.start()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(f"control plane serving on {cfg.listen.rpartition(':')[0]}:{cp.port}; "
          f"admin token in {cp.admin_token_path}; state {cfg.state_config().display()}; "
          f"blobs {cfg.blob_config().describe()}", flush=True)
    if cp.http:
        print(f"dashboard on http://{cp.http.host}:{cp.http.port}/ (sign in: /login?token=ADMIN_TOKEN)", flush=True)
    stop.wait()
    cp.stop()
