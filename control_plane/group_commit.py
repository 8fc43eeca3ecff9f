"""Group commit: many coroutines' small store calls in one blocking call (one transaction, one query).

A rollout to ten thousand devices makes ten thousand status reports within seconds. Written one by one, each is
a trip to the blocking-work pool, a transaction and a wake-up of the event loop; here a caller's item waits while
the write before it runs and goes with everything that queued meanwhile, up to `max_batch` items per call. There
is no timer: a lone report is written at once, and batches grow only when the writes are the bottleneck.

Each caller's await returns when the batch holding its item is written (with its own element of the list the
write returned, if it returned one: batched reads), or raises what the write raised (so a state database that is
down reaches every caller as the same StorageUnavailable a single write would give).
"""
from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable


class GroupCommit:
    def __init__(self, write: Callable[[list], Awaitable[Any]], max_batch: int = 500):
        self.write = write            # async: writes a list of items at once (e.g. Offload of a store method)
        self.max_batch = max_batch
        self.pending: list[tuple[Any, asyncio.Future]] = []
        self.writer: asyncio.Task | None = None
        self.submitted = 0            # items so far
        self.batches = 0              # calls of `write` so far (the tests read both: were items grouped?)

    async def submit(self, item):
        fut = asyncio.get_running_loop().create_future()
        fut.add_done_callback(_retrieved)   # a caller that went away never reads its error: no warning for it
        self.pending.append((item, fut))
        self.submitted += 1
        if self.writer is None or self.writer.done():
            self.writer = asyncio.create_task(self._drain())
        return await asyncio.shield(fut)   # a caller that goes away leaves its item to be written with the others

    async def _drain(self) -> None:
        while self.pending:
            batch, self.pending = self.pending[:self.max_batch], self.pending[self.max_batch:]
            self.batches += 1
            try:
                results = await self.write([item for item, _ in batch])
            except Exception as e:    # every caller of this batch gets the error; the next batch is tried anew
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            for i, (_, fut) in enumerate(batch):
                if not fut.done():
                    fut.set_result(None if results is None else results[i])


def _retrieved(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()
