"""Many simulated agents against a real control plane: how many hold a watch stream, and how long a
rollout takes to reach all of them.

    .venv/bin/python bench/bench_fleet.py --agents 1000 --hold 30
    .venv/bin/python bench/bench_fleet.py --agents 10000 --hold 30
    .venv/bin/python bench/bench_fleet.py --agents 1000 --hold 5 --replicas 2 --state postgresql --kill-leader-after 5

One control plane process (TLS, as in production) and one asyncio process with N grpc.aio channels, one
per simulated agent. Each agent enrolls with a key pair made here, reports "serving m@v1", opens
Fleet.WatchDesiredState and, when told to run another version, reports it serves it (no download: the
subject is the control plane's fleet path). Measured: enrollment rate, streams held for --hold seconds,
time from CreateRollout until every agent was told (client side) and until the rollout completed (every
device reported serving, as seen by the engine), control plane threads and RSS, and the latency of
grpc.health.v1 Health/Check (from its own thread and channel, every 0.5 s) while the streams are held and during
the rollout. An agent whose enrollment or stream fails is counted, not fatal: the report says where it stopped.

Replicas (`--replicas N --state postgresql`): a throwaway PostgreSQL server in a temp folder (tests/pg_fixtures.py
PgServer), N control planes over it as docs/ARCHITECTURE.md deploys them (each its own --data-dir, the first
one's identity given to the others by `slmops control-plane copy-identity`, one --state URL; one shared blob
folder, --blobs DIR, since they run on one machine), every agent given all the addresses and starting on replica
i % N. With several addresses an agent fails over as the real one does (edge_agent/control_client.py): a call
or stream that fails retryably moves its channel to the next address, and the watch re-attaches there after a
backoff with jitter (edge_agent/reconciler.py). `--kill-leader-after S`: S seconds after CreateRollout the
replica holding the leader lease (the PostgreSQL advisory lock sqldb.LEADER_LOCK, read from pg_locks) is
SIGKILLed; reported: how long until another replica held the lease, whether the rollout completed, how many
agents re-attached, and whether any agent was told two different versions after v1 (its own record of every
assignment its watch delivered). `--workers K`: the agents in K processes (each holds one socket per agent,
and this machine's open-file limit is per process).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import pathlib
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import grpc
import psutil
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from control_plane.admin_client import AdminClient, AdminError, wait_healthy
from control_plane.gc_policy import GcPolicy
from control_plane.procs import free_port, start_control_plane
from edge_agent.control_client import RETRYABLE, Backoff
from edge_agent.device_identity import sign_call
from slmops.manifest import manifest_for_dir
from grpc_health.v1 import health_pb2, health_pb2_grpc

from slmops.v1 import common_pb2, fleet_pb2, fleet_pb2_grpc


def signed_md(key: Ed25519PrivateKey, token: str, method: str, request):
    """Bearer token + the request-bound device signature the control plane checks (edge_agent.device_identity)."""
    return [("authorization", f"Bearer {token}"), *sign_call(key, token, f"/slmops.v1.Fleet/{method}", request)]


class SimAgent:
    said = 0

    def __init__(self, i: int, addresses: list[str], ca_pem: bytes):
        self.i, self.addresses, self.ca_pem = i, addresses, ca_pem
        self.at = i % len(addresses)          # agent i starts on replica i % N
        self._open()
        self.key = Ed25519PrivateKey.generate()
        self.device_id = self.token = ""
        self.current = ("", "")
        self.told: dict[str, float] = {}      # version -> when the watch first delivered it
        self.told_seq: list[list] = []        # [version, revision] of each new assignment, in order
        self.reported: dict[str, float] = {}  # version -> when the control plane answered "serving" it
        self.streaming = False
        self.error = ""
        self.retries, self.retried = 0, 0
        self.failed_calls: list[tuple[float, float]] = []   # (when, how long the call had run) of failed reports
        self.attaches, self.moves = 0, 0      # watch streams opened; channels moved to the next address
        self.closing: list = []

    def _open(self) -> None:
        self.channel = grpc.aio.secure_channel(self.addresses[self.at], grpc.ssl_channel_credentials(self.ca_pem))
        self.stub = fleet_pb2_grpc.FleetStub(self.channel)

    def failover(self, channel, e: grpc.aio.AioRpcError) -> None:
        """As edge_agent/control_client.py: a retryable error on the channel in use moves it to the next address
        (once, however many calls failed on it)."""
        if len(self.addresses) > 1 and e.code() in RETRYABLE and channel is self.channel:
            self.at = (self.at + 1) % len(self.addresses)
            self.moves += 1
            self.closing.append(asyncio.ensure_future(channel.close()))
            self._open()

    def say(self, what: str) -> None:
        """The first errors, as they happen, on stderr (the report counts them all)."""
        SimAgent.said += 1
        if SimAgent.said <= 10:
            print(f"agent {self.i}: {what}", file=sys.stderr, flush=True)

    async def enroll(self, enroll_token: str) -> None:
        pub = self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        r = await self.stub.Enroll(fleet_pb2.EnrollRequest(
            enroll_token=enroll_token, device_name=f"sim{self.i:05d}", agent_version="bench",
            hardware=common_pb2.Hardware(hardware_class="cpu"), device_public_key=pub), timeout=120)
        self.device_id, self.token = r.device_id, r.device_token

    async def report(self, state: str) -> None:
        req = fleet_pb2.StatusReport(device_id=self.device_id, state=state,
                                     current=common_pb2.ModelRef(name=self.current[0], version=self.current[1]))
        channel = self.channel
        try:
            await self.stub.ReportStatus(req, metadata=signed_md(self.key, self.token, "ReportStatus", req),
                                         timeout=120)
        except grpc.aio.AioRpcError as e:
            self.failover(channel, e)
            raise

    async def report_retrying(self, state: str) -> None:
        """As the real agent does (edge_agent/control_client.py RETRYABLE): a retryable failure is retried with
        backoff and jitter, up to `retries` times."""
        for attempt in range(self.retries + 1):
            t = time.monotonic()
            try:
                return await self.report(state)
            except grpc.aio.AioRpcError as e:
                self.failed_calls.append((time.monotonic(), time.monotonic() - t))
                if attempt == self.retries or e.code() not in RETRYABLE:
                    raise
                self.retried += 1
                await asyncio.sleep(min(8.0, 0.5 * 2 ** attempt) * (0.5 + random.random()))

    async def watch(self) -> None:
        """Holds the watch stream. With one address a failed stream ends the agent (counted); with several it
        re-attaches on the next address after a backoff with jitter (0.5 s doubling to 15 s, as the agent's
        defaults), as edge_agent/reconciler.py does."""
        backoff = Backoff(0.5, 15.0)
        try:
            while True:
                channel = self.channel
                try:
                    await self._watch_once(backoff)
                    if len(self.addresses) == 1:
                        self.error = "watch ended by the server"
                        self.say(self.error)
                        return
                except grpc.aio.AioRpcError as e:
                    if len(self.addresses) == 1 or e.code() not in RETRYABLE:
                        self.error = f"watch {e.code().name}: {e.details()}"
                        self.say(self.error)
                        return
                    self.failover(channel, e)
                except _ReportFailed:
                    return
                except asyncio.CancelledError:
                    if asyncio.current_task().cancelling() or channel is self.channel:
                        raise                  # the bench is over
                    # a report failed over and closed this stream's channel (grpc.aio cancels its calls): the
                    # real agent's sync channel ends the stream with CANCELLED, and it re-attaches; so does this
                self.streaming = False
                await asyncio.sleep(backoff.next())
        except asyncio.CancelledError:
            pass                           # the bench is over
        finally:
            self.streaming = False

    async def _watch_once(self, backoff: Backoff) -> None:
        req = fleet_pb2.WatchRequest(device_id=self.device_id)
        call = self.stub.WatchDesiredState(req, metadata=signed_md(self.key, self.token, "WatchDesiredState", req))
        self.attaches += 1
        async for d in call:
            self.streaming = True
            backoff.reset()                # as the real agent: a delivery resets its reconnect backoff
            ref = (d.model.name, d.model.version)
            self.told.setdefault(ref[1], time.monotonic())
            if not self.told_seq or self.told_seq[-1][0] != ref[1]:
                self.told_seq.append([ref[1], d.revision])
            if ref[0] and ref != self.current:
                self.current = ref
                try:
                    await self.report_retrying("serving")
                    self.reported.setdefault(ref[1], time.monotonic())
                except grpc.aio.AioRpcError as e:
                    call.cancel()
                    if len(self.addresses) > 1 and e.code() in RETRYABLE:
                        self.current = ("", "")   # not reported: report again once re-attached
                        raise                     # the channel moved: re-attach there after a backoff
                    self.error = f"report {e.code().name}: {e.details()}"
                    self.say(f"{self.error} {e.debug_error_string()}")
                    raise _ReportFailed() from e

    def record(self) -> dict:
        return {"i": self.i, "enrolled": bool(self.device_id), "told_seq": self.told_seq, "error": self.error,
                "retried": self.retried, "failed_calls": self.failed_calls, "attaches": self.attaches,
                "moves": self.moves}


class _ReportFailed(Exception):
    pass


class Swarm:
    """The simulated agents of one process: agents `ids` of the fleet, over `addresses`."""

    def __init__(self, ids: range, addresses: list[str], ca_pem: bytes, report_retries: int):
        self.agents = [SimAgent(i, addresses, ca_pem) for i in ids]
        for a in self.agents:
            a.retries = report_retries
        self.tasks: list[asyncio.Task] = []

    async def bring_up(self, token: str, concurrency: int) -> None:
        sem = asyncio.Semaphore(concurrency)

        async def one(a: SimAgent):
            async with sem:
                try:
                    await a.enroll(token)
                    await a.report("starting")
                except grpc.aio.AioRpcError as e:
                    a.error = f"enroll/report {e.code().name}: {e.details()}"
                    return
            self.tasks.append(asyncio.create_task(a.watch()))

        await asyncio.gather(*(one(a) for a in self.agents))

    async def counts(self) -> dict:
        live = [a for a in self.agents if a.device_id]
        told = [a.told["v2"] for a in live if "v2" in a.told]
        rep = [a.reported["v2"] for a in live if "v2" in a.reported]
        return {"live": len(live), "streaming": sum(a.streaming for a in self.agents),
                "on_v1": sum(a.current == ("m", "v1") for a in live), "told_v2": len(told),
                "told_v2_last": max(told, default=0.0), "reported_v2": len(rep), "reported_v2_last": max(rep, default=0.0),
                "errors": sorted({a.error for a in self.agents if a.error})[:3]}

    async def records(self) -> list[dict]:
        return [a.record() for a in self.agents]

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await asyncio.gather(*(c for a in self.agents for c in a.closing), return_exceptions=True)
        await asyncio.gather(*(a.channel.close() for a in self.agents), return_exceptions=True)


def _worker(conn, ids: range, addresses: list[str], ca_pem: bytes, report_retries: int) -> None:
    """A --workers process: a Swarm driven by the coordinator's commands over a pipe."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    async def serve():
        gc_task = asyncio.create_task(GcPolicy().run())   # as in run(): no collector stalls in the simulated agents
        swarm = Swarm(ids, addresses, ca_pem, report_retries)
        loop = asyncio.get_running_loop()
        while True:
            cmd, *a = await loop.run_in_executor(None, conn.recv)
            result = await getattr(swarm, cmd)(*a)
            conn.send(result)
            if cmd == "close":
                gc_task.cancel()
                return

    asyncio.run(serve())


class RemoteSwarm:
    """The same calls as Swarm, answered by a --workers process."""

    def __init__(self, ids: range, addresses: list[str], ca_pem: bytes, report_retries: int):
        ctx = multiprocessing.get_context("spawn")   # no fork after grpc started threads
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child, ids, addresses, ca_pem, report_retries), daemon=True)
        self.proc.start()
        self.lock = asyncio.Lock()

    async def _call(self, *cmd):
        async with self.lock:
            self.conn.send(cmd)
            return await asyncio.to_thread(self.conn.recv)

    async def bring_up(self, token: str, concurrency: int) -> None:
        return await self._call("bring_up", token, concurrency)

    async def counts(self) -> dict:
        return await self._call("counts")

    async def records(self) -> list[dict]:
        return await self._call("records")

    async def close(self) -> None:
        if self.proc.is_alive():
            try:
                await asyncio.wait_for(self._call("close"), 60)
            except (asyncio.TimeoutError, EOFError, OSError):
                pass
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()


async def fleet_counts(swarms) -> dict:
    parts = await asyncio.gather(*(s.counts() for s in swarms))
    out = {k: sum(p[k] for p in parts) for k in ("live", "streaming", "on_v1", "told_v2", "reported_v2")}
    out["told_v2_last"] = max(p["told_v2_last"] for p in parts)
    out["reported_v2_last"] = max(p["reported_v2_last"] for p in parts)
    out["errors"] = sorted({e for p in parts for e in p["errors"]})[:3]
    return out


def fake_bundle(root: pathlib.Path, version: str) -> pathlib.Path:
    d = root / version
    d.mkdir(parents=True)
    (d / "model.onnx").write_bytes(f"bench {version}".encode())
    (d / "genai_config.json").write_text(json.dumps({"bench": version}))
    (d / "tokenizer.json").write_text("{}")
    return d


class HealthProbe:
    """Health/Check every 0.5 s on its own thread and channel; latencies (s) per phase."""

    def __init__(self, address: str, ca_pem: bytes):
        self.channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(ca_pem))
        self.stub = health_pb2_grpc.HealthStub(self.channel)
        self.phase, self.samples, self.failures = "", {}, {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.wait(0.5):
            if not self.phase:
                continue
            t = time.perf_counter()
            try:
                self.stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
                self.samples.setdefault(self.phase, []).append(time.perf_counter() - t)
            except grpc.RpcError as e:
                if not self.stop.is_set():
                    self.failures.setdefault(self.phase, []).append(e.code().name)

    def summary(self, phase: str) -> dict:
        xs = sorted(self.samples.get(phase, []))
        if not xs:
            return {"n": 0, "failed": len(self.failures.get(phase, []))}
        return {"n": len(xs), "p50_ms": round(statistics.median(xs) * 1000, 1),
                "max_ms": round(xs[-1] * 1000, 1), "failed": len(self.failures.get(phase, []))}


def cp_stats(pid: int) -> dict:
    p = psutil.Process(pid)
    return {"threads": p.num_threads(), "rss_mb": round(p.memory_info().rss / 1e6), "cpu_s": round(
        sum(p.cpu_times()[:2]), 1)}


def pg_stats(data_dir: pathlib.Path) -> dict:
    """The PostgreSQL server's processes (postmaster + backends): count, RSS summed (shared buffers counted in
    each process that touched them), CPU seconds."""
    main = psutil.Process(int((data_dir / "postmaster.pid").read_text().split()[0]))
    procs = [main, *main.children()]
    return {"processes": len(procs), "rss_mb_summed": round(sum(p.memory_info().rss for p in procs) / 1e6),
            "cpu_s": round(sum(sum(p.cpu_times()[:2]) for p in procs), 1)}


class Replicas:
    """N control-plane processes: one on SQLite (embedded, as before) or N over one PostgreSQL database, started
    as docs/ARCHITECTURE.md (Deployment shapes) deploys replicas."""

    def __init__(self, work: pathlib.Path, n: int, state: str, extra: list[str]):
        self.work, self.procs, self.ports, self.dirs, self.killed = work, [], [], [], set()
        self.pg = None
        self.state_url = ""
        shared: list[str] = []
        if state == "postgresql":
            from tests.pg_fixtures import PgServer   # initdb/pg_ctl in a temp folder, a free loopback port

            self.pg_root = pathlib.Path(tempfile.mkdtemp(prefix="slmops-bench-pg-"))
            self.pg = PgServer(self.pg_root)
            self.state_url = self.pg.new_database()
            shared = ["--state", self.state_url, "--blobs", str(work / "blobs")]
        for i in range(n):
            d = work / ("cp" if n == 1 and not self.pg else f"cp{i}")
            if i > 0:   # the first one's identity: trust root and keys, TLS CA
                r = subprocess.run([sys.executable, "-m", "cli", "control-plane", "copy-identity",
                                    str(self.dirs[0]), str(d)], cwd=ROOT, capture_output=True, text=True, timeout=120)
                if r.returncode != 0:
                    raise RuntimeError(f"copy-identity failed: {r.stdout}{r.stderr}")
            port = free_port()
            log_dir = work / "logs" if n == 1 else work / "logs" / f"r{i}"
            self.procs.append(start_control_plane(d, port, log_dir, tls=True, extra=[*shared, *extra]))
            self.ports.append(port)
            self.dirs.append(d)
            self.wait_ready(i)

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.ports]

    def wait_ready(self, i: int) -> None:
        ca_file = self.dirs[i] / "keys" / "ca.pem"
        deadline = time.monotonic() + 60
        while not (ca_file.exists() and (self.dirs[i] / "admin-token").exists()):
            if not self.procs[i].alive() or time.monotonic() > deadline:
                raise RuntimeError(f"replica {i} did not start:\n{self.procs[i].log_tail()}")
            time.sleep(0.1)
        wait_healthy(self.addresses[i], 60, ca_file.read_bytes())

    def ca(self) -> bytes:
        return (self.dirs[0] / "keys" / "ca.pem").read_bytes()

    def admin(self, i: int) -> AdminClient:
        return AdminClient(self.addresses[i], (self.dirs[i] / "admin-token").read_text().strip(), self.ca())

    def alive(self) -> list[int]:
        return [i for i in range(len(self.procs)) if i not in self.killed]

    def stats(self) -> dict:
        """One replica: its stats (as before); several: per replica (killed ones left out), and PostgreSQL's."""
        if len(self.procs) == 1 and not self.pg:
            return cp_stats(self.procs[0].popen.pid)
        out = {f"replica{i}": cp_stats(self.procs[i].popen.pid) for i in self.alive()}
        out["postgresql"] = pg_stats(self.pg.data)
        return out

    def lease_holder(self) -> int | None:
        """The replica whose session holds the leader lease (sqldb.LEADER_LOCK, a session advisory lock): the
        holder's backend in pg_locks, its client port matched to a replica's sockets. None: nobody holds it."""
        import psycopg

        from control_plane.sqldb import LEADER_LOCK

        with psycopg.connect(self.state_url, autocommit=True) as c:
            row = c.execute("select a.client_port from pg_locks l join pg_stat_activity a on a.pid = l.pid "
                            "where l.locktype = 'advisory' and l.granted and l.classid::bigint = %s "
                            "and l.objid::bigint = %s", [LEADER_LOCK >> 32, LEADER_LOCK & 0xFFFFFFFF]).fetchone()
        if row is None:
            return None
        for i in self.alive():
            try:
                p = psutil.Process(self.procs[i].popen.pid)
                if any(c.laddr and c.laddr.port == row[0] for c in p.net_connections("tcp")):
                    return i
            except psutil.Error:
                pass
        return None

    def kill(self, i: int) -> None:
        self.procs[i].kill()
        self.killed.add(i)

    def stop(self) -> list[str]:
        errors = []
        for p in self.procs:
            p.stop()
            errors += [line for line in p.log_tail(5).splitlines() if "ERROR" in line][:3]
        if self.pg:
            self.pg.stop()
            shutil.rmtree(self.pg_root, ignore_errors=True)
        return errors[:3]


def told_twice(records: list[dict]) -> dict:
    """Each agent's record of what its watch assigned (consecutive repeats, as after a re-attach, are one): v1
    then v2 is right; anything else (a third assignment, v2 then v1, ...) is a device told two different
    versions."""
    bad = [r for r in records if r["enrolled"] and [v for v, _ in r["told_seq"]] not in (["v1"], ["v1", "v2"])]
    return {"agents": len(bad), "first": [(r["i"], r["told_seq"]) for r in bad[:3]]}


async def kill_leader(reps: Replicas, after_s: float, out: dict, on_kill) -> None:
    """SIGKILL the lease holder `after_s` after CreateRollout (`on_kill(i)` first: its health probe stops
    counting); then the time until another replica holds it."""
    await asyncio.sleep(after_s)
    leader = await asyncio.to_thread(reps.lease_holder)
    k = out["kill_leader"] = {"after_s": after_s, "killed_replica": leader}
    if leader is None:
        k["error"] = "no replica held the leader lease"
        return
    on_kill(leader)
    reps.kill(leader)
    t = time.monotonic()
    while time.monotonic() < t + 60:
        holder = await asyncio.to_thread(reps.lease_holder)
        if holder is not None and holder != leader:
            k["lease_taken_by"] = holder
            k["takeover_s"] = round(time.monotonic() - t, 2)
            return
        await asyncio.sleep(0.1)
    k["error"] = "no other replica took the leader lease within 60 s"


async def run(args) -> dict:
    work = pathlib.Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    streams = args.max_streams or args.agents + 100    # every agent from one loopback address (after a failover,
    extra = ["--max-streams", str(streams), "--streams-per-peer", str(streams)]   # all of them on one replica)
    if args.max_workers:
        extra += ["--max-workers", str(args.max_workers)]
    if args.gc_freeze is not None:
        extra += ["--gc-freeze", str(args.gc_freeze)]
    # The simulated agents' own full collections stopped this process (and the health probe's thread in it) for
    # up to 1 s at 10,000 agents: the control plane's policy (control_plane/gc_policy.py) is applied here too.
    gc_task = asyncio.create_task(GcPolicy().run())
    reps = Replicas(work, args.replicas, args.state, extra)
    out: dict = {"agents": args.agents, "max_workers": args.max_workers or "default", "max_streams": streams,
                 "gc_freeze": "default" if args.gc_freeze is None else args.gc_freeze}
    if args.replicas > 1 or args.state != "sqlite":
        out.update(replicas=args.replicas, state=args.state, workers=max(1, args.workers))
    probes: list[HealthProbe] = []
    swarms: list = []
    try:
        ca = reps.ca()
        admin = reps.admin(0)
        probes = [HealthProbe(a, ca) for a in reps.addresses]
        for p in probes:
            p.thread.start()

        def set_phase(phase: str) -> None:
            for i, p in enumerate(probes):
                p.phase = phase if i not in reps.killed else ""

        def on_kill(i: int) -> None:
            probes[i].phase = ""

        def health(phase: str):
            if len(probes) == 1:
                return probes[0].summary(phase)
            return {f"replica{i}": p.summary(phase) for i, p in enumerate(probes)}

        for v in ("v1", "v2"):
            b = fake_bundle(work / "bundles", v)
            admin.publish(b, manifest_for_dir(b, "m", v, "int4"))
        admin.set_desired("m", "v1")
        token = admin.enroll_token(uses=args.agents, ttl_seconds=3600).token

        k = max(1, args.workers)
        bounds = [args.agents * w // k for w in range(k + 1)]
        if k == 1:
            swarms = [Swarm(range(args.agents), reps.addresses, ca, args.report_retries)]
        else:
            swarms = [RemoteSwarm(range(bounds[w], bounds[w + 1]), reps.addresses, ca, args.report_retries)
                      for w in range(k)]

        t0 = time.monotonic()
        set_phase("enrolling")
        await asyncio.gather(*(s.bring_up(token, max(1, args.concurrency // k)) for s in swarms))
        out["enroll_s"] = round(time.monotonic() - t0, 2)
        c = await fleet_counts(swarms)
        out["enroll_failed"] = args.agents - c["live"]
        deadline = time.monotonic() + 300
        while c["streaming"] < c["live"] and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            c = await fleet_counts(swarms)
        out["streams_open_s"] = round(time.monotonic() - t0, 2)
        out["streams"] = c["streaming"]
        while c["on_v1"] < c["live"] and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            c = await fleet_counts(swarms)
        out["cp_after_connect"] = reps.stats()

        set_phase("held")
        await asyncio.sleep(args.hold)
        out["health_while_held"] = health("held")
        set_phase("rollout")
        out["held_s"] = args.hold
        c = await fleet_counts(swarms)
        out["streams_after_hold"] = c["streaming"]
        out["errors_after_hold"] = c["errors"]
        live = c["live"]

        waves = [{"percent": float(w)} for w in args.waves.split(",")] if args.waves else []
        t1 = time.monotonic()
        r = await asyncio.to_thread(admin.create_rollout, "m", "v2", {"all_devices": True},
                                    "waves" if waves else "all", waves=waves)
        killer = asyncio.create_task(kill_leader(reps, args.kill_leader_after, out, on_kill)) \
            if args.kill_leader_after is not None else None
        pollers: dict[int, AdminClient] = {0: admin}
        st = None
        while time.monotonic() < t1 + args.rollout_timeout:
            c = await fleet_counts(swarms)
            if c["told_v2"] == live and "told_all_s" not in out:
                out["told_all_s"] = round(c["told_v2_last"] - t1, 2)
            if c["reported_v2"] == live and "reported_all_s" not in out:
                out["reported_all_s"] = round(c["reported_v2_last"] - t1, 2)   # answered, client side
            i = reps.alive()[0]   # read the rollout from a replica that is up
            try:
                st = await asyncio.to_thread((pollers.get(i) or pollers.setdefault(i, reps.admin(i))).rollout,
                                             r.rollout_id)
                if st.status in ("completed", "halted", "aborted") and (killer is None or killer.done()):
                    break
            except (grpc.RpcError, AdminError):
                pass   # that replica was just killed: the next loop asks another
            await asyncio.sleep(1)   # GetRollout lists every device: polled fast it loads the control plane
        if killer is not None and not killer.done():
            killer.cancel()
        out["rollout"] = {"strategy": f"waves {args.waves}" if waves else "all at once",
                          "status": st.status if st else "unknown",
                          "succeeded": st.succeeded if st else 0, "failed": st.failed if st else 0,
                          "completed_s": round(time.monotonic() - t1, 2)}
        out["health_during_rollout"] = health("rollout")
        out["cp_after_rollout"] = reps.stats()
        c = await fleet_counts(swarms)
        out["streams_at_end"] = c["streaming"]
        records = [x for s in swarms for x in await s.records()]
        out["report_retries"] = sum(x["retried"] for x in records)
        if len(reps.addresses) > 1:
            out["reattached_agents"] = sum(1 for x in records if x["attaches"] > 1)
            out["moved_agents"] = sum(1 for x in records if x["moves"] > 0)
            out["told_two_different_versions"] = told_twice(records)
        fails = sorted((when - t1, took) for x in records for when, took in x["failed_calls"])
        if fails:   # when the failed reports failed (s after CreateRollout) and how long each call had run (s)
            q = [0, len(fails) // 2, len(fails) - 1]
            out["failed_reports"] = {"n": len(fails), "at_s (first, median, last)": [round(fails[i][0], 1) for i in q],
                                     "call_s (min, median, max)": [round(x, 2) for x in (
                                         min(f[1] for f in fails), statistics.median(f[1] for f in fails),
                                         max(f[1] for f in fails))]}
        out["agent_errors_at_end"] = {"count": sum(1 for x in records if x["error"]),
                                      "kinds": sorted({x["error"][:120] for x in records if x["error"]})[:3]}
        for a in pollers.values():
            a.close()
    finally:
        for p in probes:
            p.stop.set()
            p.channel.close()
        for s in swarms:
            await s.close()
        out["log_tail"] = reps.stop()
        gc_task.cancel()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", type=int, default=1000)
    ap.add_argument("--hold", type=float, default=30.0, help="seconds all streams are held before the rollout")
    ap.add_argument("--waves", default="", help="e.g. 1,10,50,100 (percent); default all at once")
    ap.add_argument("--concurrency", type=int, default=50, help="enrollments in flight at once")
    ap.add_argument("--max-workers", type=int, default=0,
                    help="control plane threads for store work (default: the control plane's own)")
    ap.add_argument("--report-retries", type=int, default=0,
                    help="retries of a status report that failed retryably, with backoff (the real agent retries)")
    ap.add_argument("--max-streams", type=int, default=0, help="control plane stream budget (default agents+100)")
    ap.add_argument("--rollout-timeout", type=float, default=600.0,
                    help="seconds after CreateRollout to stop waiting for it to complete")
    ap.add_argument("--replicas", type=int, default=1, help="control-plane replicas (more than 1: --state postgresql)")
    ap.add_argument("--state", choices=("sqlite", "postgresql"), default="sqlite",
                    help="sqlite: the data folder's file; postgresql: a throwaway server this bench starts")
    ap.add_argument("--kill-leader-after", type=float, default=None,
                    help="SIGKILL the replica holding the leader lease this many seconds after CreateRollout")
    ap.add_argument("--gc-freeze", type=float, default=None,
                    help="the control plane's --gc-freeze (default: its own; 0: collector policy off)")
    ap.add_argument("--workers", type=int, default=1, help="processes the simulated agents are spread over")
    args = ap.parse_args()
    if args.replicas < 1 or (args.replicas > 1 and args.state != "postgresql"):
        ap.error("--replicas N > 1 needs --state postgresql (replicas share one database)")
    if args.kill_leader_after is not None and args.replicas < 2:
        ap.error("--kill-leader-after needs --replicas 2 or more")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)   # one socket per agent here and in the control plane
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(json.dumps(asyncio.run(run(args)), indent=1))


if __name__ == "__main__":
    main()
