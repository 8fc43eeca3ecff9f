"""One SQLite connection per thread (sqlite-utils over WAL). A single connection shared by gRPC/HTTP worker
threads breaks sqlite-utils' savepoints ("no such savepoint"); per-thread connections don't, and WAL lets
readers run while one writer writes."""
from __future__ import annotations

import pathlib
import sqlite3
import threading

import sqlite_utils


class ThreadLocalDB:
    def __init__(self, path: pathlib.Path):
        self.path = str(path)
        self._local = threading.local()
        self.get().enable_wal()

    def get(self) -> sqlite_utils.Database:
        db = getattr(self._local, "db", None)
        if db is None:
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=30000")
            db = self._local.db = sqlite_utils.Database(conn)
        return db
