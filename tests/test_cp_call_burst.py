"""A burst of calls that arrives while the control plane's event loop is busy waits for it instead of being
cancelled (issue 16: at 3,000 simulated agents a fifth of the `serving v2` reports came back CANCELLED).

gRPC core queues a call that arrives before the asyncio server has asked for the next one; beyond
`grpc.server.max_pending_requests` (default 1,000) it cancels arrivals at random, and every one beyond the hard
limit (3,000). The control plane sizes that queue to its stream budget (`ControlPlaneConfig.max_pending_calls`,
default `max_streams`): one call per connected agent at once is what a rollout or a restart brings. Here the
server's loop is held busy while the calls arrive, so they all queue."""
from __future__ import annotations

import asyncio
import collections
import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from control_plane.server import ControlPlane, ControlPlaneConfig
from slmops.errors import ConfigError

STREAMS_PER_CONNECTION = 64     # ControlPlaneConfig.max_streams_per_connection: more would queue in the client


def burst(tmp_path, connections: int, **cfg) -> collections.Counter:
    """Health/Check outcomes of `connections` x 64 calls sent while the server's event loop is blocked."""
    cp = ControlPlane(ControlPlaneConfig(data_dir=tmp_path / "cp", listen="127.0.0.1:0", insecure_loopback_dev=True,
                                         **cfg))
    port = cp.start()
    busy, release = threading.Event(), threading.Event()

    def hold_the_loop() -> None:     # as a loop busy with other work would: no call is taken off the queue
        busy.set()
        release.wait(60)

    async def send() -> collections.Counter:
        # a subchannel per channel: otherwise channels to one address share one connection (64 streams)
        chans = [grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
                 for _ in range(connections)]
        try:
            await asyncio.wait_for(asyncio.gather(*(c.channel_ready() for c in chans)), 60)
            cp.loop.call_soon_threadsafe(hold_the_loop)
            assert await asyncio.to_thread(busy.wait, 30)
            calls = [health_pb2_grpc.HealthStub(c).Check(health_pb2.HealthCheckRequest(), timeout=120)
                     for c in chans for _ in range(STREAMS_PER_CONNECTION)]
            await asyncio.sleep(3)       # they go out and queue in the server (its loop is blocked)
            release.set()
            out = await asyncio.gather(*calls, return_exceptions=True)
            return collections.Counter("OK" if isinstance(r, health_pb2.HealthCheckResponse) else
                                       r.code().name if isinstance(r, grpc.aio.AioRpcError) else repr(r)
                                       for r in out)
        finally:
            release.set()
            await asyncio.gather(*(c.close() for c in chans))

    try:
        return asyncio.run(send())
    finally:
        release.set()
        cp.stop(0)


def test_a_burst_larger_than_grpcs_default_backlog_is_served_not_cancelled(tmp_path):
    outcomes = burst(tmp_path, connections=50)                  # 3,200 calls: past gRPC's hard limit of 3,000
    assert outcomes == {"OK": 50 * STREAMS_PER_CONNECTION}, outcomes


def test_the_backlog_stays_bounded(tmp_path):
    outcomes = burst(tmp_path, connections=10, max_pending_calls=100)   # 640 calls, room for 100
    assert outcomes["OK"] >= 100, outcomes
    assert outcomes["OK"] < 10 * STREAMS_PER_CONNECTION, outcomes       # the rest refused, not queued without end


def test_a_negative_backlog_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="max_pending_calls"):
        ControlPlaneConfig(data_dir=tmp_path, max_pending_calls=-1)
