"""Model slots and admission. The serving slot is swapped atomically: a request takes a reference to the
slot it starts on and finishes there, new requests see the new slot, and the old engine is released once its
last request ended (drained). Admission is a bounded queue in front of a fixed number of generation slots.
When two models do not fit in memory the reconciler pauses admission (bounded), drains, unloads, loads,
and reopens: requests wait through the pause instead of failing.
Each slot keeps the figures probation judges a new model by (requests, errors, latencies).
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

from slmops.errors import RequestInvalid
from slmops.manifest import Manifest


class QueueFull(Exception):
    """Too many requests waiting: answer 429 with Retry-After."""


class NotReady(Exception):
    """No model is serving yet: answer 503."""


@dataclass
class Slot:
    engine: object
    manifest: Manifest
    loaded_at: float
    inflight: int = 0
    requests: int = 0
    errors: int = 0
    latencies_ms: list = field(default_factory=list)

    def error_ratio(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


class Runtime:
    def __init__(self, max_concurrent: int, max_queue: int, max_pause_s: float = 10.0):
        self._lock = threading.Lock()
        self._drained = threading.Condition(self._lock)
        self._slot: Slot | None = None
        self._gen = threading.BoundedSemaphore(max_concurrent)
        self._open = threading.Event()
        self._open.set()
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self.max_pause_s = max_pause_s
        self._waiting = 0
        self._running = 0

    @property
    def slot(self) -> Slot | None:
        return self._slot

    @property
    def queue_depth(self) -> int:
        return self._waiting

    def swap(self, engine, manifest: Manifest) -> Slot | None:
        """Makes `engine` the serving slot; the previous one is unloaded in the background once drained."""
        with self._lock:
            old, self._slot = self._slot, Slot(engine, manifest, time.time())
        if old is not None:
            threading.Thread(target=self._unload_when_drained, args=(old,), daemon=True,
                             name=f"unload-{old.manifest.version}").start()
        return old

    def _unload_when_drained(self, old: Slot, timeout: float = 600.0) -> None:
        with self._drained:
            self._drained.wait_for(lambda: old.inflight == 0, timeout)
        close = getattr(old.engine, "close", None)
        if close:
            close()

    # -- drain-then-load, for when two models do not fit in memory
    def pause(self) -> None:
        self._open.clear()

    def resume(self) -> None:
        self._open.set()

    def drain_and_unload(self, timeout: float) -> Slot | None:
        """With admission paused: wait for in-flight requests, then drop the current slot."""
        with self._drained:
            slot = self._slot
            if slot is None:
                return None
            self._drained.wait_for(lambda: slot.inflight == 0, timeout)
            self._slot = None
        close = getattr(slot.engine, "close", None)
        if close:
            close()
        return slot

    @contextmanager
    def admit(self, wait_s: float):
        """A generation slot on the current model, or QueueFull/NotReady."""
        if not self._open.wait(min(wait_s, self.max_pause_s)):
            raise NotReady("model swap in progress (paused longer than allowed)")
        with self._lock:
            slot = self._slot
            if slot is None:
                raise NotReady("no model is loaded yet")
            if self._waiting >= self.max_queue and self._running >= self.max_concurrent:
                raise QueueFull(f"{self._waiting} requests already waiting")
            self._waiting += 1
            slot.inflight += 1
        acquired = False
        t0 = time.monotonic()
        failed = False
        try:
            acquired = self._gen.acquire(timeout=wait_s)
            with self._lock:
                self._waiting -= 1
                if acquired:
                    self._running += 1
            if not acquired:
                raise QueueFull(f"no generation slot freed within {wait_s:.0f} s")
            yield slot
        except (RequestInvalid, QueueFull, GeneratorExit):
            raise  # the client's doing, not the model's
        except Exception:
            failed = True
            raise
        finally:
            with self._lock:
                slot.inflight -= 1
                if acquired:
                    self._running -= 1
                    slot.requests += 1
                    slot.errors += failed
                    if not failed:
                        slot.latencies_ms.append((time.monotonic() - t0) * 1000)
                        del slot.latencies_ms[:-1000]
                self._drained.notify_all()
            if acquired:
                self._gen.release()
