"""The one way the control plane's coroutines run blocking work (SQLite, blob files, signing): a bounded pool of
threads. The gRPC server is asyncio (control_plane/server.py): a watch stream is a coroutine that costs no thread
while it waits, and only the moments it touches the store borrow one of these `workers` threads. Each thread
keeps its own SQLite connection (slmops/sqlite_conn.py), so the pool also bounds the connections.

The pool's queue is bounded by the callers, not here: every device call is admitted by control_plane/limits.py
first (streams per device, per address and in all; unary calls per device), so at most that many wait.
"""
from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

from slmops.errors import ConfigError

T = TypeVar("T")


class Offload:
    def __init__(self, workers: int, name: str = "store"):
        if workers < 1:
            raise ConfigError(f"the blocking-work pool needs at least 1 thread, not {workers}")
        self.workers = workers
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)

    async def __call__(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Runs fn(*args, **kwargs) on the pool and awaits its result (or its exception)."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
