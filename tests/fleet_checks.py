"""What the fleet fault e2e tests (replica takeover, PostgreSQL restart) check the same way: chat traffic that
flows through the fault, and that every telemetry event an agent numbered is stored exactly once and counted once
in the rollups."""
from __future__ import annotations

import sqlite3
import threading
import time


def outbox(db_path) -> tuple[int, set[int], int]:
    """(the last seq the agent gave an event, the seqs still waiting to be uploaded, events it dropped)."""
    c = sqlite3.connect(db_path)
    try:
        last = c.execute("select seq from sqlite_sequence where name = 'outbox'").fetchone()
        waiting = {r[0] for r in c.execute("select seq from outbox")}
        dropped = c.execute("select value from kv where key = 'telemetry_dropped'").fetchone()
    finally:
        c.close()
    return (last[0] if last else 0), waiting, int(dropped[0]) if dropped else 0


class Traffic:
    """Chats with every named agent in turn on a thread of its own, so that telemetry flows through a fault;
    `sent` holds (time, agent, HTTP status or 0 for no answer)."""

    def __init__(self, cluster, names: tuple[str, ...]):
        self.cluster, self.names, self.stop, self.sent = cluster, names, threading.Event(), []
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.is_set():
            for name in self.names:
                try:
                    status, _ = self.cluster.chat(name, max_tokens=4)
                except OSError:
                    status = 0
                self.sent.append((time.time(), name, status))
            self.stop.wait(0.3)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


def check_telemetry_stored_once(pg_url: str, cluster, admin, devices: dict, since: float) -> int:
    """Every event each stopped agent in `devices` (name -> Device) numbered is in PostgreSQL exactly once unless it
    still waits in the agent's outbox, none was dropped, some arrived after `since` (epoch seconds), and the
    per-minute rollups count each request once. Returns how many events are stored."""
    import psycopg

    with psycopg.connect(pg_url) as c:
        rows = c.execute("select device_id, seq, count(*), max(received_ms) from telemetry "
                         "where device_id = any(%s) group by device_id, seq",
                         [[d.device_id for d in devices.values()]]).fetchall()
        requests = dict(c.execute("select device_id, count(*) from telemetry where kind = 'request' "
                                  "group by device_id").fetchall())
    stored: dict[str, dict[int, int]] = {}
    after: dict[str, int] = {}
    for device_id, seq, n, received_ms in rows:
        stored.setdefault(device_id, {})[seq] = n
        after[device_id] = after.get(device_id, 0) + (received_ms >= since * 1000)
    for name, d in devices.items():
        last, waiting, dropped = outbox(cluster.root / name / "agent.db")
        have = stored.get(d.device_id, {})
        assert dropped == 0, f"{name} dropped {dropped} events from its outbox"
        assert set(have.values()) == {1}, f"{name}: a (device, seq) stored more than once"
        assert max(have) <= last, f"{name}: the store holds seqs the agent never gave out"
        missing = set(range(1, last + 1)) - waiting - set(have)
        assert not missing, f"{name}: {len(missing)} acknowledged events are not stored, e.g. {sorted(missing)[:5]}"
        assert after.get(d.device_id, 0) > 0, f"{name}: nothing uploaded after the fault"
        assert sum(m.requests for m in admin.rollups(d.device_id)) == requests[d.device_id] > 0, name
    return len(rows)
