"""The agent's local SQLite file: identity, the pinned signing key, what it serves, failed versions and
the telemetry outbox. One writer lock; WAL so the HTTP threads and the uploader do not block each other.
"""
from __future__ import annotations

import json
import os
import pathlib
import threading
import time

import sqlite_utils

from slmops.sqlite_conn import ThreadLocalDB


def private_file(path: pathlib.Path) -> None:
    """Creates `path` owner-only (0600) if missing, and makes an existing one owner-only."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


class AgentState:
    @property
    def db(self) -> sqlite_utils.Database:
        return self._dbs.get()

    def __init__(self, path: pathlib.Path, max_outbox_rows: int = 100_000):
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        private_file(path)   # the device token and trusted metadata live here: owner-only, before SQLite opens it
        self._dbs = ThreadLocalDB(path)
        for sidecar in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            if sidecar.exists():   # SQLite copies the database's mode; older installs were 0644
                os.chmod(sidecar, 0o600)
        self.lock = threading.RLock()
        self.max_outbox_rows = max_outbox_rows
        self.observers: list = []   # called with each recorded event dict (edge_agent/metrics.py counts them)
        with self.lock:
            self.db["kv"].create({"key": str, "value": str}, pk="key", if_not_exists=True)
            self.db.execute(
                "create table if not exists outbox (seq integer primary key autoincrement, ts_ms integer, "
                "kind text, name text, model text, latency_ms real, first_token_ms real, tokens_in integer, "
                "tokens_out integer, outcome text, detail text)")
            cols = {r[1] for r in self.db.execute("pragma table_info(outbox)").fetchall()}
            for col in ("adapter", "vals"):  # outboxes written before these columns existed
                if col not in cols:
                    self.db.execute(f"alter table outbox add column {col} text default ''")

    # ---- key/value --------------------------------------------------------------------------------
    def get(self, key: str, default=None):
        rows = list(self.db.query("select value from kv where key = ?", [key]))
        return json.loads(rows[0]["value"]) if rows else default

    def put(self, key: str, value) -> None:
        with self.lock:
            self.db["kv"].upsert({"key": key, "value": json.dumps(value)}, pk="key")

    # ---- telemetry outbox -------------------------------------------------------------------------
    def record(self, kind: str, name: str, model: str = "", latency_ms: float = 0.0, first_token_ms: float = 0.0,
               tokens_in: int = 0, tokens_out: int = 0, outcome: str = "ok", detail: str = "",
               adapter: str = "", values: dict | None = None, detail_limit: int = 2000) -> None:
        with self.lock:
            self.db.execute(
                "insert into outbox (ts_ms, kind, name, model, latency_ms, first_token_ms, tokens_in, tokens_out, "
                "outcome, detail, adapter, vals) values (?,?,?,?,?,?,?,?,?,?,?,?)",
                [int(time.time() * 1000), kind, name, model, latency_ms, first_token_ms, tokens_in, tokens_out,
                 outcome, detail[:detail_limit], adapter, json.dumps(values) if values else ""])
            count = self.db.execute("select count(*) from outbox").fetchone()[0]
            if count > self.max_outbox_rows:
                drop = count - self.max_outbox_rows
                self.db.execute("delete from outbox where seq in (select seq from outbox order by seq limit ?)",
                                [drop])
                self.put("telemetry_dropped", self.get("telemetry_dropped", 0) + drop)
        for observe in self.observers:
            observe({"kind": kind, "name": name, "model": model, "latency_ms": latency_ms,
                     "first_token_ms": first_token_ms, "tokens_in": tokens_in, "tokens_out": tokens_out,
                     "outcome": outcome, "adapter": adapter})

    def pending(self, limit: int) -> list[dict]:
        return list(self.db.query("select * from outbox order by seq limit ?", [limit]))

    def ack(self, through_seq: int) -> None:
        with self.lock:
            self.db.execute("delete from outbox where seq <= ?", [through_seq])
