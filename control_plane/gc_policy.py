"""The control plane's cyclic garbage collector policy: long-lived objects are frozen out of its scans.

Holding 10,000 watch streams leaves millions of long-lived objects (each stream's coroutine, call, event and device
row); CPython's full collection scans all of them, and with the heap growing it runs every few seconds, so the event
loop stopped for up to 1.5 s at a time (gc.callbacks timings, docs/BENCHMARKS.md Fleet) and Health/Check with it.
So every `freeze_s` what is tracked now is moved to the permanent generation (`gc.freeze()`, a list splice: no
scan); collections then look only at objects younger than that. Reference counting still frees frozen objects;
what a frozen object's cycle would leak is collected every `full_s` by one full collection (unfreeze, collect,
freeze again): one long pause per `full_s` instead of one every few seconds. freeze_s 0 turns the policy off.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import time

log = logging.getLogger("slmops.control_plane")


def next_step(now: float, last_full: float, full_s: float) -> str:
    """What the policy does at `now`: "full" when `full_s` has passed since the last full collection, else
    "freeze"."""
    return "full" if now - last_full >= full_s else "freeze"


class GcPolicy:
    def __init__(self, freeze_s: float = 1.0, full_s: float = 600.0, clock=time.monotonic):
        self.freeze_s, self.full_s, self.clock = freeze_s, full_s, clock
        self.last_full = clock()
        self.freezes = self.full_collections = 0
        self.last_full_pause_s = 0.0

    def step(self) -> str:
        what = next_step(self.clock(), self.last_full, self.full_s)
        if what == "full":
            t = time.perf_counter()
            gc.unfreeze()
            gc.collect()
            self.last_full_pause_s = time.perf_counter() - t
            self.full_collections += 1
            self.last_full = self.clock()
        gc.freeze()
        self.freezes += 1
        return what

    async def run(self) -> None:
        """On the event loop, until cancelled; a failed step is logged and the next one tried (loop capped by the
        sleep)."""
        if self.freeze_s <= 0:
            return
        while True:
            await asyncio.sleep(self.freeze_s)
            try:
                self.step()
            except Exception as e:   # never expected; the policy must not end the server
                log.error("gc policy step failed: %s", e)
