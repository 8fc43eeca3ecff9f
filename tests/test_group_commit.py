"""Status reports are written in groups (control_plane/group_commit.py): what queued while a write ran goes in
the next write. The grouping is checked by counting writes, never by timing."""
from __future__ import annotations

import asyncio
import concurrent.futures
import time

import pytest

from control_plane.group_commit import GroupCommit
from control_plane.server import ControlPlane
from tests.test_cp_attacks import start
from tests.test_fleet_admin import SimDevice


def test_items_queued_during_a_write_go_in_the_next_one_and_an_error_reaches_only_its_batch():
    async def scenario():
        written: list[list[int]] = []
        first_started, release = asyncio.Event(), asyncio.Event()

        async def write(items):
            if not written:
                first_started.set()
                await release.wait()
            written.append(items)
            if 13 in items:
                raise ValueError("disk full")

        gc = GroupCommit(write, max_batch=20)
        first = asyncio.create_task(gc.submit(0))
        await first_started.wait()
        rest = [asyncio.create_task(gc.submit(i)) for i in range(1, 31)]
        leaver = asyncio.create_task(gc.submit(99))
        await asyncio.sleep(0)
        leaver.cancel()                        # a caller that goes away: its item is written all the same
        release.set()
        results = await asyncio.gather(first, *rest, return_exceptions=True)
        assert written == [[0], list(range(1, 21)), [*range(21, 31), 99]]
        assert results[0] is None
        assert all(isinstance(r, ValueError) for r in results[1:21])      # the batch with 13 in it
        assert all(r is None for r in results[21:])
        await gc.submit(7)                     # the writer recovers after a failed batch
        assert written[-1] == [7] and gc.batches == 4

    asyncio.run(scenario())


@pytest.fixture
def cp(tmp_path):
    c: ControlPlane = start(tmp_path)
    yield c
    c.admin.close()
    c.stop(0)


def test_reports_that_arrive_while_the_store_is_busy_are_written_together(cp):
    token = cp.admin.enroll_token(uses=40, ttl_seconds=600).token
    devices = [SimDevice(cp.address, token, f"d{i}", ca_pem=cp.ca_pem) for i in range(40)]
    reports = cp.fleet.reports
    before, submitted = reports.batches, reports.submitted
    with concurrent.futures.ThreadPoolExecutor(40) as pool:
        with cp.store._lock:                   # the store is busy writing: the first report's write waits
            futs = [pool.submit(d.report, "serving") for d in devices]
            deadline = time.monotonic() + 60
            while reports.submitted - submitted < 40 and time.monotonic() < deadline:
                time.sleep(0.05)     # until every report is in the server (the first one or few in a write)
            assert reports.submitted - submitted == 40 and len(reports.pending) >= 30, len(reports.pending)
        for f in futs:
            f.result(timeout=60)
    assert reports.batches - before == 2       # the first write, then everything that queued behind it in one
    listed = cp.admin.devices()
    assert len(listed) == 40 and {d.state for d in listed} == {"serving"}
    for d in devices:
        d.raw.close()



def test_a_batched_read_gives_each_caller_its_own_result(cp):
    async def scenario():
        calls = []

        async def read(items):
            calls.append(items)
            return [i * 10 for i in items]

        gc = GroupCommit(read)
        assert await asyncio.gather(*(gc.submit(i) for i in range(5))) == [0, 10, 20, 30, 40]
        assert calls == [[0, 1, 2, 3, 4]]

    asyncio.run(scenario())
    a, _ = cp.store.add_device("a", {}, "1")
    cp.store.set_desired("m", "v2", [a])
    got = cp.store.desired_many([a, "dev_gone", a])
    assert got[0] == got[2] and (got[0].name, got[0].version) == ("m", "v2") and got[1] is None
