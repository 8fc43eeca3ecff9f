"""Telemetry ingest throughput: a real control-plane process on loopback, D enrolled devices uploading
batches of B request events in parallel (pre-built, so the figure is the server's), then a check that the
store holds every event exactly once. `--backends sqlite,postgresql` runs the same upload against the embedded
SQLite file and against a PostgreSQL 15 server this bench starts for itself (initdb/pg_ctl in a temp folder,
tests/pg_fixtures.py: fsync and synchronous_commit off, as in the tests), one after the other in one run.

    .venv/bin/python bench/bench_telemetry_ingest.py --devices 4 --batches 50 --batch-size 500
    .venv/bin/python bench/bench_telemetry_ingest.py --backends sqlite,postgresql
"""
from __future__ import annotations

import argparse
import contextlib
import pathlib
import sys
import tempfile
import threading
import time

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from control_plane.admin_client import AdminClient, wait_healthy  # noqa: E402
from control_plane.procs import free_port, start_control_plane  # noqa: E402
from control_plane.store import Store  # noqa: E402
from edge_agent.device_identity import sign_call  # noqa: E402
from slmops.v1 import common_pb2, fleet_pb2, fleet_pb2_grpc, telemetry_pb2, telemetry_pb2_grpc  # noqa: E402


def batches(device_id: str, n_batches: int, size: int, t0_ms: int) -> list[telemetry_pb2.TelemetryBatch]:
    out, seq = [], 0
    for _ in range(n_batches):
        events = []
        for _ in range(size):
            seq += 1
            events.append(telemetry_pb2.TelemetryEvent(
                seq=seq, ts_unix_ms=t0_ms + seq, kind="request", name="chat", model="tiny@v1",
                latency_ms=80.0 + seq % 50, first_token_ms=12.0, tokens_in=30, tokens_out=40, outcome="ok"))
        out.append(telemetry_pb2.TelemetryBatch(device_id=device_id, events=events))
    return out


@contextlib.contextmanager
def state_for(backend: str, root: pathlib.Path):
    """The control plane's --state for this backend ('' = the data folder's SQLite file)."""
    if backend == "sqlite":
        yield ""
        return
    from tests.pg_fixtures import PgServer

    server = PgServer(pathlib.Path(tempfile.mkdtemp(prefix="slmops-bench-pg-")))
    try:
        yield server.new_database()
    finally:
        server.stop()


def run(args, backend: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        root, port = pathlib.Path(tmp), free_port()
        with state_for(backend, root) as state:
            cp = start_control_plane(root / "cp", port, root / "logs", ["--state", state] if state else [])
            try:
                return upload_all(args, root, port, state or root / "cp" / "control_plane.db", backend)
            finally:
                cp.stop()


def upload_all(args, root: pathlib.Path, port: int, state, backend: str) -> float:
    address = f"127.0.0.1:{port}"
    wait_healthy(address, timeout=60)
    admin = AdminClient(address, (root / "cp" / "admin-token").read_text().strip())
    token = admin.enroll_token(uses=args.devices).token
    channel = grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 8 << 20)])
    fleet, tel = fleet_pb2_grpc.FleetStub(channel), telemetry_pb2_grpc.TelemetryStub(channel)
    keys = [Ed25519PrivateKey.generate() for _ in range(args.devices)]  # devices enroll with a key pair
    devices = [fleet.Enroll(fleet_pb2.EnrollRequest(
        enroll_token=token, device_name=f"bench-{i}", hardware=common_pb2.Hardware(), agent_version="bench",
        device_public_key=k.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)), timeout=30)
        for i, k in enumerate(keys)]
    now = int(time.time() * 1000) - 3_600_000
    work = {d.device_id: batches(d.device_id, args.batches, args.batch_size, now) for d in devices}
    accepted, errors = [0] * len(devices), []

    def upload(i, d):
        try:
            for b in work[d.device_id]:
                md = [("authorization", f"Bearer {d.device_token}"),
                      *sign_call(keys[i], d.device_token, "/slmops.v1.Telemetry/Upload", b)]
                accepted[i] += tel.Upload(b, metadata=md, timeout=60).accepted
        except grpc.RpcError as e:
            errors.append(e)

    threads = [threading.Thread(target=upload, args=(i, d)) for i, d in enumerate(devices)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise SystemExit(f"upload failed: {errors[0]}")
    total = args.devices * args.batches * args.batch_size
    stored = Store(state).db.execute("select count(*) from telemetry").fetchone()[0]
    print(f"[{backend}] devices={args.devices} batches/device={args.batches} batch_size={args.batch_size}")
    print(f"[{backend}] sent {total} events in {wall:.2f} s: {total / wall:,.0f} events/s "
          f"({args.devices * args.batches / wall:,.0f} batches/s)")
    print(f"[{backend}] acknowledged as new: {sum(accepted)}; rows stored: {stored}")
    if sum(accepted) != total or stored != total:
        raise SystemExit("store does not hold every event exactly once")
    admin.close()
    channel.close()
    return total / wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=4)
    ap.add_argument("--batches", type=int, default=50, help="batches per device")
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--backends", default="sqlite", help="comma separated: sqlite, postgresql")
    args = ap.parse_args()
    rates = {b: run(args, b) for b in args.backends.split(",")}
    if len(rates) > 1:
        base = next(iter(rates.values()))
        print("ratios vs the first: " + ", ".join(f"{b} {r / base:.2f}x" for b, r in rates.items()))


if __name__ == "__main__":
    main()
