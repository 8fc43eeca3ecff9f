"""Many simulated agents against one real control plane: how many hold a watch stream, and how long a
rollout takes to reach all of them.

    .venv/bin/python bench/bench_fleet.py --agents 1000 --hold 30
    .venv/bin/python bench/bench_fleet.py --agents 10000 --hold 30

One control plane process (TLS, as in production) and one asyncio process with N grpc.aio channels, one
per simulated agent. Each agent enrolls with a key pair made here, reports "serving m@v1", opens
Fleet.WatchDesiredState and, when told to run another version, reports it serves it (no download: the
subject is the control plane's fleet path). Measured: enrollment rate, streams held for --hold seconds,
time from CreateRollout until every agent was told (client side) and until the rollout completed (every
device reported serving, as seen by the engine), control plane threads and RSS, and the latency of
grpc.health.v1 Health/Check (from its own thread and channel, every 0.5 s) while the streams are held and during
the rollout. An agent whose enrollment or stream fails is counted, not fatal: the report says where it stopped.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import random
import resource
import statistics
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

from control_plane.admin_client import AdminClient, wait_healthy
from control_plane.procs import free_port, start_control_plane
from edge_agent.control_client import RETRYABLE
from edge_agent.device_identity import sign_call
from slmops.manifest import manifest_for_dir
from grpc_health.v1 import health_pb2, health_pb2_grpc

from slmops.v1 import common_pb2, fleet_pb2, fleet_pb2_grpc


def signed_md(key: Ed25519PrivateKey, token: str, method: str, request):
    """Bearer token + the request-bound device signature the control plane checks (edge_agent.device_identity)."""
    return [("authorization", f"Bearer {token}"), *sign_call(key, token, f"/slmops.v1.Fleet/{method}", request)]


class SimAgent:
    said = 0

    def __init__(self, i: int, address: str, ca_pem: bytes):
        self.i = i
        self.channel = grpc.aio.secure_channel(address, grpc.ssl_channel_credentials(ca_pem))
        self.stub = fleet_pb2_grpc.FleetStub(self.channel)
        self.key = Ed25519PrivateKey.generate()
        self.device_id = self.token = ""
        self.current = ("", "")
        self.told: dict[str, float] = {}      # version -> when the watch delivered it
        self.reported: dict[str, float] = {}  # version -> when the control plane answered "serving" it
        self.streaming = False
        self.error = ""
        self.retries, self.retried = 0, 0
        self.failed_calls: list[tuple[float, float]] = []   # (when, how long the call had run) of failed reports

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
        await self.stub.ReportStatus(req, metadata=signed_md(self.key, self.token, "ReportStatus", req), timeout=120)

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
        try:
            req = fleet_pb2.WatchRequest(device_id=self.device_id)
            call = self.stub.WatchDesiredState(req, metadata=signed_md(self.key, self.token, "WatchDesiredState",
                                                                       req))
            async for d in call:
                self.streaming = True
                ref = (d.model.name, d.model.version)
                self.told.setdefault(ref[1], time.monotonic())
                if ref[0] and ref != self.current:
                    self.current = ref
                    try:
                        await self.report_retrying("serving")
                        self.reported.setdefault(ref[1], time.monotonic())
                    except grpc.aio.AioRpcError as e:
                        self.error = f"report {e.code().name}: {e.details()}"
                        self.say(f"{self.error} {e.debug_error_string()}")
                        call.cancel()
                        return
            self.error = "watch ended by the server"
            self.say(self.error)
        except grpc.aio.AioRpcError as e:
            self.error = f"watch {e.code().name}: {e.details()}"
            self.say(self.error)
        except asyncio.CancelledError:
            pass                           # the bench is over
        finally:
            self.streaming = False


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


async def run(args) -> dict:
    work = pathlib.Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    port = free_port()
    streams = args.max_streams or args.agents + 100    # every agent from one loopback address
    extra = ["--max-streams", str(streams), "--streams-per-peer", str(streams)]
    if args.max_workers:
        extra += ["--max-workers", str(args.max_workers)]
    cp = start_control_plane(work / "cp", port, work / "logs", tls=True, extra=extra)
    address = f"127.0.0.1:{port}"
    out: dict = {"agents": args.agents, "max_workers": args.max_workers or "default", "max_streams": streams}
    probe = None
    agents: list[SimAgent] = []
    tasks: list[asyncio.Task] = []
    try:
        ca_file = work / "cp" / "keys" / "ca.pem"
        for _ in range(300):
            if ca_file.exists():
                break
            await asyncio.sleep(0.1)
        ca = ca_file.read_bytes()
        wait_healthy(address, 60, ca)
        admin = AdminClient(address, (work / "cp" / "admin-token").read_text().strip(), ca)
        probe = HealthProbe(address, ca)
        probe.thread.start()
        for v in ("v1", "v2"):
            b = fake_bundle(work / "bundles", v)
            admin.publish(b, manifest_for_dir(b, "m", v, "int4"))
        admin.set_desired("m", "v1")
        token = admin.enroll_token(uses=args.agents, ttl_seconds=3600).token

        agents = [SimAgent(i, address, ca) for i in range(args.agents)]
        for a in agents:
            a.retries = args.report_retries
        sem = asyncio.Semaphore(args.concurrency)

        async def bring_up(a: SimAgent):
            async with sem:
                try:
                    await a.enroll(token)
                    await a.report("starting")
                except grpc.aio.AioRpcError as e:
                    a.error = f"enroll/report {e.code().name}: {e.details()}"
                    return
            tasks.append(asyncio.create_task(a.watch()))

        t0 = time.monotonic()
        probe.phase = "enrolling"
        await asyncio.gather(*(bring_up(a) for a in agents))
        out["enroll_s"] = round(time.monotonic() - t0, 2)
        out["enroll_failed"] = sum(1 for a in agents if not a.device_id)
        live = [a for a in agents if a.device_id]
        deadline = time.monotonic() + 300
        while sum(a.streaming for a in live) < len(live) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        out["streams_open_s"] = round(time.monotonic() - t0, 2)
        out["streams"] = sum(a.streaming for a in agents)
        while sum(a.current == ("m", "v1") for a in live) < len(live) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        out["cp_after_connect"] = cp_stats(cp.popen.pid)

        probe.phase = "held"
        await asyncio.sleep(args.hold)
        out["health_while_held"] = probe.summary("held")
        probe.phase = "rollout"
        out["held_s"] = args.hold
        out["streams_after_hold"] = sum(a.streaming for a in agents)
        out["errors_after_hold"] = sorted({a.error for a in agents if a.error})[:3]

        waves = [{"percent": float(w)} for w in args.waves.split(",")] if args.waves else []
        t1 = time.monotonic()
        r = await asyncio.to_thread(admin.create_rollout, "m", "v2", {"all_devices": True},
                                    "waves" if waves else "all", waves=waves)
        while time.monotonic() < t1 + args.rollout_timeout:
            told = sum("v2" in a.told for a in live)
            if told == len(live) and "told_all_s" not in out:
                out["told_all_s"] = round(max(a.told["v2"] for a in live) - t1, 2)
            if sum("v2" in a.reported for a in live) == len(live) and "reported_all_s" not in out:
                out["reported_all_s"] = round(max(a.reported["v2"] for a in live) - t1, 2)   # answered, client side
            st = await asyncio.to_thread(admin.rollout, r.rollout_id)
            if st.status in ("completed", "halted", "aborted"):
                break
            await asyncio.sleep(1)   # GetRollout lists every device: polled fast it loads the control plane
        out["rollout"] = {"strategy": f"waves {args.waves}" if waves else "all at once", "status": st.status,
                          "succeeded": st.succeeded, "failed": st.failed,
                          "completed_s": round(time.monotonic() - t1, 2)}
        out["health_during_rollout"] = probe.summary("rollout")
        out["cp_after_rollout"] = cp_stats(cp.popen.pid)
        out["streams_at_end"] = sum(a.streaming for a in agents)
        out["report_retries"] = sum(a.retried for a in agents)
        fails = sorted((when - t1, took) for a in agents for when, took in a.failed_calls)
        if fails:   # when the failed reports failed (s after CreateRollout) and how long each call had run (s)
            q = [0, len(fails) // 2, len(fails) - 1]
            out["failed_reports"] = {"n": len(fails), "at_s (first, median, last)": [round(fails[i][0], 1) for i in q],
                                     "call_s (min, median, max)": [round(x, 2) for x in (
                                         min(f[1] for f in fails), statistics.median(f[1] for f in fails),
                                         max(f[1] for f in fails))]}
        out["agent_errors_at_end"] = {"count": sum(1 for a in agents if a.error),
                                      "kinds": sorted({a.error[:120] for a in agents if a.error})[:3]}
        admin.close()
    finally:
        if probe:
            probe.stop.set()
            probe.channel.close()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(a.channel.close() for a in agents), return_exceptions=True)
        cp.stop()
        out["log_tail"] = [line for line in cp.log_tail(5).splitlines() if "ERROR" in line][:3]
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
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)   # one socket per agent here and in the control plane
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(json.dumps(asyncio.run(run(args)), indent=1))


if __name__ == "__main__":
    main()
