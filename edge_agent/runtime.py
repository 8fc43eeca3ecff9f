"""Model slots and admission. The serving slot is swapped atomically: a request takes a reference to the
slot it starts on and finishes there, new requests see the new slot, and the old engine is released when
its last request ends. Admission is a bounded queue in front of a fixed number of generation slots.
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

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


class Runtime:
    def __init__(self, max_concurrent: int, max_queue: int):
        self._lock = threading.Lock()
        self._slot: Slot | None = None
        self._gen = threading.BoundedSemaphore(max_concurrent)
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self._waiting = 0
        self._running = 0

    @property
    def slot(self) -> Slot | None:
        return self._slot

    @property
    def queue_depth(self) -> int:
        return self._waiting

    def swap(self, engine, manifest: Manifest) -> Slot | None:
        """Makes `engine` the serving slot; returns the previous one (still finishing its requests)."""
        with self._lock:
            old, self._slot = self._slot, Slot(engine, manifest, time.time())
        return old

    @contextmanager
    def admit(self, wait_s: float):
        """A generation slot on the current model, or QueueFull/NotReady."""
        with self._lock:
            slot = self._slot
            if slot is None:
                raise NotReady("no model is loaded yet")
            if self._waiting >= self.max_queue and self._running >= self.max_concurrent:
                raise QueueFull(f"{self._waiting} requests already waiting")
            self._waiting += 1
            slot.inflight += 1
        acquired = False
        try:
            acquired = self._gen.acquire(timeout=wait_s)
            with self._lock:
                self._waiting -= 1
                if acquired:
                    self._running += 1
            if not acquired:
                raise QueueFull(f"no generation slot freed within {wait_s:.0f} s")
            yield slot
        finally:
            with self._lock:
                slot.inflight -= 1
                if acquired:
                    self._running -= 1
            if acquired:
                self._gen.release()
