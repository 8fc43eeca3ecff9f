"""Batched generation: concurrent requests to one model share one generator instead of taking turns.

onnxruntime-genai holds the GIL while it computes a token, so generators in one process only alternate; decode on
CPU is bound by reading the weights, and a generator with `batch_size` B reads them once for B tokens. A worker
thread takes the oldest queued job, waits a few ms for more when the engine was busy a moment ago (a client that
just got its answer is about to ask again), and runs every compatible queued job as one static batch
(docs/ARCHITECTURE.md, "Serving"). A job that arrives while a batch runs joins the next one: onnxruntime-genai's
static batches cannot take a new row, and its dynamic batching (Engine API) needs paged attention, which has no CPU
kernel. The choice of jobs is `pick`, a pure function; the engine runs the batch (`run_batch`).
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

log = logging.getLogger("slmops.agent.batching")

END = object()   # a member's queue: text pieces (str), then END or the exception that ended it


@dataclass
class Member:
    """One sequence of a batch: its own stream of pieces, stop condition and cancellation."""
    out: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    generation: object = None       # engine.Generation, filled as it goes


@dataclass
class Job:
    """One request: `n` members with the same prompt and settings (n > 1: OpenAI's `n`)."""
    tokens: list
    params: object                  # engine.SamplingParams
    adapter: str | None
    cancelled: Callable[[], bool]
    members: list

    @property
    def rows(self) -> int:
        return len(self.members)


def batch_key(params, adapter: str | None) -> tuple | None:
    """Jobs with equal keys may share a batch (one generator has one set of search options and one adapter).
    None: the job runs alone: under guidance (the grammar is per generator and its end is only seen as the
    generator's end), or sampled with a seed (a seed promises the same answer again; neighbours would change it)."""
    if params.guidance or (params.temperature > 0 and params.seed is not None):
        return None
    sampled = params.temperature > 0
    return (adapter, params.repetition_penalty, sampled) + (
        (params.temperature, params.top_p, params.top_k) if sampled else ())


def pick(waiting: list[Job], max_rows: int, context_length: int) -> list[Job]:
    """The oldest job and, in arrival order, every later one that fits beside it: the same key, rows within
    max_rows, and every row's budget within the context at the batch's padded prompt length."""
    if not waiting:
        return []
    first = waiting[0]
    chosen, key = [first], batch_key(first.params, first.adapter)
    if key is None:
        return chosen
    rows, width = first.rows, len(first.tokens)
    budget = first.params.max_new_tokens
    for job in waiting[1:]:
        if batch_key(job.params, job.adapter) != key or rows + job.rows > max_rows:
            continue
        w, b = max(width, len(job.tokens)), max(budget, job.params.max_new_tokens)
        if w + b > context_length:
            continue
        chosen.append(job)
        rows, width, budget = rows + job.rows, w, b
    return chosen


class Batcher:
    """Worker threads that run batches of queued jobs through `run_batch(jobs)`. `run_batch` delivers pieces and
    END to each member; an exception it raises is handed to every member of that batch still open (and
    logged), and the worker goes on with the next batch."""

    RECENT_S = 0.5   # the engine counts as busy this long after a batch: the window is waited then

    def __init__(self, run_batch: Callable[[list[Job]], None], max_rows: int, context_length: int,
                 wait_s: float = 0.01, workers: int = 1, on_batch: Callable[[int], None] | None = None,
                 name: str = "batch"):
        self.run_batch = run_batch
        self.max_rows = max(1, max_rows)
        self.context_length = context_length
        self.wait_s = wait_s
        self.on_batch = on_batch
        self._waiting: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._busy_until = 0.0
        self._running = 0
        self.batches = 0
        self.rows = 0
        self._threads = [threading.Thread(target=self._work, daemon=True, name=f"{name}-{i}")
                         for i in range(max(1, workers))]
        for t in self._threads:
            t.start()

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError("the engine is closed")
            self._waiting.append(job)
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            left, self._waiting = list(self._waiting), deque()
            self._cond.notify_all()
        for job in left:
            for m in job.members:
                m.out.put(RuntimeError("the engine closed before the request ran"))

    def _next(self) -> list[Job] | None:
        with self._cond:
            while not self._waiting and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            # Busy a moment ago (or now): wait briefly for the clients whose answers just ended to ask again.
            if self.wait_s > 0 and (self._running or time.monotonic() < self._busy_until):
                deadline = time.monotonic() + self.wait_s
                while sum(j.rows for j in self._waiting) < self.max_rows and not self._closed:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            waiting = [j for j in self._waiting if not j.cancelled()]
            for j in self._waiting:
                if j.cancelled():
                    for m in j.members:
                        m.generation.finish_reason = "cancelled"
                        m.out.put(END)
            jobs = pick(waiting, self.max_rows, self.context_length)
            taken = {id(j) for j in jobs}
            self._waiting = deque(j for j in waiting if id(j) not in taken)
            if jobs:
                self._running += 1
            return jobs

    def _work(self) -> None:
        while True:
            jobs = self._next()
            if jobs is None:
                return
            if not jobs:
                continue
            rows = sum(j.rows for j in jobs)
            self.batches += 1
            self.rows += rows
            try:
                if self.on_batch:
                    self.on_batch(rows)
                self.run_batch(jobs)
            except Exception as e:  # this batch's members get the error; the worker serves the next batch
                log.error("a batch of %d failed: %s: %s", rows, type(e).__name__, e)
                for j in jobs:
                    for m in j.members:
                        m.out.put(e)
            finally:
                with self._cond:
                    self._running -= 1
                    self._busy_until = time.monotonic() + self.RECENT_S
