"""The state database seam: one SQL text, two databases.

The control plane's SQL is written once (control_plane/store.py, telemetry_views.py, drift_monitor.py,
cp_metrics.py, migrations.py), in the subset SQLite and PostgreSQL share, with `?` placeholders and SQLite's
`insert or ignore`. The embedded default is one SQLite file (sqlite-utils over WAL, one connection per thread,
slmops/sqlite_conn.py); `--state postgresql://...` puts the same tables in PostgreSQL through psycopg 3.
`PgDatabase` answers the part of sqlite-utils' Database/Table API the code uses (query, execute, db[table].create,
insert, insert_all, upsert, update, create_index, table_names) and rewrites each statement once:
`?` -> `%s`, a literal `%` -> `%%`, `insert or ignore into ...` -> `insert into ... on conflict do nothing`,
and SQLite's DDL types to PostgreSQL's (integer -> bigint: times are milliseconds).

What differs beyond the text lives in a Dialect (transactions, `for update`, executemany's row count, the lock
that lets one of several control planes starting at once apply the migrations, and the desired-state change
announcements: on PostgreSQL a change made by one control plane is a NOTIFY on DESIRED_CHANNEL that a listener
thread in every other one (`Listener`) turns into wake-ups of its watch streams; SQLite, one process, needs none).
The leader lease (`Lease`): of several control planes on one PostgreSQL, the one holding a session advisory lock
(LEADER_LOCK, on a connection of its own) drives rollouts and telemetry rollups; when its process dies, PostgreSQL
drops the session and with it the lock, and the next replica to ask takes it. On SQLite it is always held.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import pathlib
import re
import threading
import urllib.parse
from dataclasses import dataclass
from typing import Callable

from slmops.errors import ConfigError, StorageUnavailable

PG_SCHEMES = ("postgresql", "postgres")
MIGRATION_LOCK = 0x534C4D4F   # pg_advisory_xact_lock key ("SLMO"): one control plane migrates at a time
TRUST_LOCK = 0x534C4D51       # pg_advisory_xact_lock key ("SLMQ"): one replica signs trust metadata at a time
LEADER_LOCK = 0x534C4D50      # pg_try_advisory_lock key ("SLMP"): the replica that drives rollouts and rollups
DESIRED_CHANNEL = "slmops_desired"   # NOTIFY payload: comma-separated device ids, or "*" (too many to list)
NOTIFY_MAX_PAYLOAD = 7000            # PostgreSQL's limit is 8000 bytes
log = logging.getLogger("slmops.control_plane.sqldb")


@dataclass(frozen=True)
class StateConfig:
    """Where the control plane keeps its state: a SQLite file (the default, DATA_DIR/control_plane.db) or a
    PostgreSQL URL (`postgresql://USER[:PASSWORD]@HOST:PORT/DB`; libpq's PG* environment variables fill gaps)."""
    url: str
    connect_timeout_s: int = 5

    def __post_init__(self) -> None:
        if not self.url or len(self.url) > 2000:
            raise ConfigError("--state must be a SQLite file path or a postgresql:// URL (at most 2000 chars)")
        if not 1 <= self.connect_timeout_s <= 300:
            raise ConfigError("the state connect timeout must be 1..300 s")
        if self.kind == "postgresql":
            u = urllib.parse.urlsplit(self.url)
            if not u.path.strip("/") and not u.hostname:
                raise ConfigError(f"--state {self.display()!r}: name the host and database "
                                  "(postgresql://USER@HOST:PORT/DB)")

    @classmethod
    def of(cls, value: "StateConfig | str | pathlib.Path") -> "StateConfig":
        return value if isinstance(value, StateConfig) else cls(str(value))

    @property
    def kind(self) -> str:
        scheme = self.url.split("://", 1)[0].lower() if "://" in self.url else ""
        if scheme in PG_SCHEMES:
            return "postgresql"
        if scheme not in ("", "sqlite"):
            raise ConfigError(f"--state {self.url[:80]!r}: unknown scheme {scheme!r} (a path, sqlite:///PATH "
                              "or postgresql://...)")
        return "sqlite"

    @property
    def sqlite_path(self) -> pathlib.Path:
        return pathlib.Path(self.url[len("sqlite://"):] if self.url.startswith("sqlite://") else self.url)

    def display(self) -> str:
        """The URL without its password (for messages and logs)."""
        if self.kind != "postgresql":
            return str(self.sqlite_path)
        u = urllib.parse.urlsplit(self.url)
        netloc = u.netloc.rsplit("@", 1)
        if len(netloc) == 2 and ":" in netloc[0]:
            return urllib.parse.urlunsplit(u._replace(netloc=netloc[0].split(":", 1)[0] + ":***@" + netloc[1]))
        return self.url

    def where(self) -> str:
        """HOST:PORT/DB, the part of an unreachable-database message an operator acts on."""
        u = urllib.parse.urlsplit(self.url)
        return f"{u.hostname or 'localhost'}:{u.port or 5432}/{u.path.strip('/') or '(default database)'}"


# ---- SQLite -------------------------------------------------------------------------------------------------
class SqliteDialect:
    name = "sqlite"
    for_update = ""   # the transaction already holds the file's write lock

    @contextlib.contextmanager
    def transaction(self, db):
        """One write transaction on this thread's connection (isolation_level=None: statements autocommit
        otherwise). `immediate`: the write lock is taken at the start, so what it reads stays true until it
        commits (two processes never both act on the same read)."""
        db.execute("begin immediate")
        try:
            yield
        except BaseException:
            db.execute("rollback")
            raise
        db.execute("commit")

    def executemany(self, db, sql: str, rows) -> int:
        """Runs `sql` once per row; returns the rows changed (an ignored insert changes none)."""
        return db.conn.executemany(sql, rows).rowcount

    def insert_ignore(self, db, table: str, columns: tuple[str, ...], rows) -> int:
        """Inserts `rows` (tuples in `columns` order), skipping any whose key is already stored; returns how
        many were new."""
        return self.executemany(db, f"insert or ignore into {_q(table)} ({', '.join(map(_q, columns))}) "
                                    f"values ({', '.join('?' * len(columns))})", rows)

    def lock_migrations(self, db) -> None:
        pass   # the transaction's write lock on the file already serialises migrating processes

    def exclusive(self, db, key: int):
        """A section only one control plane on this database runs at a time: on SQLite there is one process,
        whose own locks already suffice (and sqlite-utils' writes would commit an outer transaction early)."""
        return contextlib.nullcontext()

    def announce(self, db, device_ids) -> None:
        pass   # one process: the store's own wake-ups are all there is

    def listener(self, cfg: "StateConfig", wake: Callable[[list[str] | None], None], dbs) -> None:
        return None

    def lease(self, cfg: "StateConfig") -> "Lease":
        return Lease(None)


# ---- PostgreSQL ---------------------------------------------------------------------------------------------
class PostgresDialect:
    name = "postgresql"
    for_update = " for update"   # appended to a select inside a transaction: lock the rows it read

    @contextlib.contextmanager
    def transaction(self, db):
        with db.conn.transaction():
            yield

    def executemany(self, db, sql: str, rows) -> int:
        rows = [_clean_params(r) for r in rows]
        if not rows:
            return 0
        with _lost(db.where), db.conn.cursor() as cur:
            cur.executemany(pg_sql(sql, True), rows)
            return cur.rowcount

    def insert_ignore(self, db, table: str, columns: tuple[str, ...], rows) -> int:
        """As SqliteDialect.insert_ignore, through COPY into a temporary staging table and one
        `insert ... select ... on conflict do nothing`: measured 1.7x an executemany of single-row inserts on a
        500-event telemetry batch (docs/BENCHMARKS.md, Telemetry). The staging table (one per connection, emptied
        at each commit) lives inside a transaction of its own, a savepoint when the caller's is open."""
        stage, cols = db.staging(table), ", ".join(map(_q, columns))
        with _lost(db.where), db.conn.transaction(), db.conn.cursor() as cur:
            with cur.copy(f"copy {stage} ({cols}) from stdin") as copy:
                for r in rows:
                    copy.write_row(_clean_params(r))
            cur.execute(f"insert into {_q(table)} ({cols}) select {cols} from {stage} on conflict do nothing")
            stored = cur.rowcount
            cur.execute(f"delete from {stage}")   # a savepoint's rows would otherwise wait for the outer commit
            return stored

    def lock_migrations(self, db) -> None:
        db.execute("select pg_advisory_xact_lock(?)", [MIGRATION_LOCK])

    @contextlib.contextmanager
    def exclusive(self, db, key: int):
        """One transaction holding advisory lock `key`: another control plane's same section waits, then sees
        what this one committed."""
        with self.transaction(db):
            db.execute("select pg_advisory_xact_lock(?)", [key])
            yield

    def announce(self, db, device_ids) -> None:
        """Tells every control plane on this database that these devices' desired state changed (delivered
        when the surrounding transaction, if any, commits)."""
        payload = ",".join(device_ids)
        if not payload:
            return
        db.execute("select pg_notify(?, ?)", [DESIRED_CHANNEL, payload if len(payload) <= NOTIFY_MAX_PAYLOAD
                                              else "*"])

    def listener(self, cfg: "StateConfig", wake: Callable[[list[str] | None], None], dbs: "PgThreadLocal"
                 ) -> "Listener":
        return Listener(cfg, wake, dbs.pids)

    def lease(self, cfg: "StateConfig") -> "Lease":
        return Lease(cfg)


# The lease's connection finds out about a dead peer in seconds, not the kernel's default two hours: the server
# drops the session of a leader whose host vanished (idle 5 s + 3 probes 2 s apart, so its lock frees in about
# 11 s), and a leader cut off from the server fails its next check within 10 s (tcp_user_timeout) and stops
# driving. Over a Unix socket the server ignores the keepalive settings (a local peer cannot vanish that way).
LEASE_KEEPALIVE = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3,
                   "tcp_user_timeout": 10_000,
                   "options": "-c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 -c tcp_keepalives_count=3"}


class Lease:
    """Whether this control plane is the one that drives rollouts and rollups (`held()`, asked before each pass).
    PostgreSQL: a session advisory lock on a connection of its own, taken when free; a lost connection loses it
    (and the server frees it for the others). `cfg` None (SQLite, one process): always held."""

    def __init__(self, cfg: "StateConfig | None"):
        self.cfg, self._conn, self._lock = cfg, None, threading.Lock()
        self.holder = cfg is None

    def held(self) -> bool:
        if self.cfg is None:
            return True
        with self._lock:
            try:
                if self._conn is None or self._conn.closed or self._conn.broken:
                    self._conn, self.holder = PgThreadLocal.connect(self.cfg, **LEASE_KEEPALIVE), False
                if self.holder:
                    self._conn.execute("select 1")   # still our session: still ours
                else:
                    self.holder = bool(self._conn.execute("select pg_try_advisory_lock(%s)",
                                                          [LEADER_LOCK]).fetchone()[0])
                    if self.holder:
                        log.info("this control plane now drives rollouts and rollups (leader lease taken)")
            except Exception as e:   # the database is away: not the leader until it is back
                if self.holder:
                    log.warning("leader lease lost (%s): %s", self.cfg.where(), e)
                self.holder = False
                if self._conn is not None:
                    self._conn.close()
                self._conn = None
            return self.holder

    def release(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()   # the session ends: the lock with it
            self._conn, self.holder = None, self.cfg is None


class Listener:
    """LISTENs on DESIRED_CHANNEL on its own connection and calls `wake(device_ids)` (None: every device) for each
    announcement, on its own thread. A lost connection is reconnected with a capped backoff; since what was
    announced meanwhile is lost, the first wake after a reconnect is every device. `state` and `errors` say how
    it is doing (never a dead thread: each failure is logged and counted)."""

    BACKOFF_MAX_S = 10.0

    def __init__(self, cfg: "StateConfig", wake: Callable[[list[str] | None], None], own=frozenset()):
        """`own`: the server process ids of this control plane's own connections (a live set): what they
        announced was woken here already, so it is not woken twice."""
        self.cfg, self.wake, self.own = cfg, wake, own
        self.skipped = 0   # announcements of this control plane's own changes, not woken again
        self.state, self.errors, self.last_error = "connecting", 0, ""
        self.listening = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pg-listen", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        delay, first = 0.5, True
        while not self._stop.is_set():
            try:
                conn = PgThreadLocal.connect(self.cfg)
                try:
                    conn.execute(f"listen {DESIRED_CHANNEL}")
                    self.state = "listening"
                    self.listening.set()
                    if not first:
                        self.wake(None)   # what was announced while this was away is lost: everyone re-reads
                    first, delay = False, 0.5
                    while not self._stop.is_set():
                        for n in conn.notifies(timeout=1.0):
                            if n.pid in self.own:
                                self.skipped += 1
                            else:
                                self.wake(None if n.payload == "*" else n.payload.split(","))
                finally:
                    conn.close()
            except Exception as e:   # the database went away (or the wake failed): counted, retried
                self.state, self.errors, self.last_error = "reconnecting", self.errors + 1, f"{type(e).__name__}: {e}"
                self.listening.clear()
                log.warning("state database listener (%s): %s; again in %.1f s", self.cfg.where(), e, delay)
                self._stop.wait(delay)
                delay = min(self.BACKOFF_MAX_S, delay * 2)
        self.state = "stopped"

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


_TYPES = {str: "text", int: "bigint", float: "double precision", bytes: "bytea", bool: "bigint"}
_DDL_TYPES = ((re.compile(r"\binteger primary key autoincrement\b", re.I),
               "bigint generated by default as identity primary key"),
              (re.compile(r"\binteger\b", re.I), "bigint"), (re.compile(r"\breal\b", re.I), "double precision"),
              (re.compile(r"\bblob\b", re.I), "bytea"))
_IGNORE = re.compile(r"^\s*insert\s+or\s+ignore\s+into\b", re.I)


@functools.lru_cache(maxsize=2048)
def pg_sql(sql: str, has_params: bool) -> str:
    """The PostgreSQL text of one statement written for both databases."""
    if re.match(r"\s*create\s+table\b", sql, re.I):
        for pat, repl in _DDL_TYPES:
            sql = pat.sub(repl, sql)
    ignore = bool(_IGNORE.match(sql))
    if ignore:
        sql = _IGNORE.sub("insert into", sql, count=1)
    if has_params:
        out, quoted = [], False
        for ch in sql:   # placeholders and percent signs outside string literals
            if ch == "'":
                quoted = not quoted
                out.append(ch)
            elif ch == "?" and not quoted:
                out.append("%s")
            elif ch == "%":
                out.append("%%")
            else:
                out.append(ch)
        sql = "".join(out)
    return sql + " on conflict do nothing" if ignore else sql


def _clean_params(params) -> list:
    # PostgreSQL text cannot hold NUL; device-sent strings could. U+FFFD keeps the rest of the text.
    return [p.replace("\x00", "\ufffd") if isinstance(p, str) and "\x00" in p else p for p in params]


def _q(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", name):
        raise ValueError(f"not a plain SQL name: {name!r}")
    return f'"{name}"'


class NotFoundError(KeyError):
    """An update named a row that is not there (sqlite_utils.db.NotFoundError's twin)."""


@contextlib.contextmanager
def _lost(where: str):
    """A connection lost mid-call (the server restarted or went away) is StorageUnavailable naming the server;
    the broken connection is replaced on this thread's next call (PgThreadLocal.get)."""
    import psycopg

    try:
        yield
    except psycopg.OperationalError as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise StorageUnavailable(f"lost the state database PostgreSQL at {where}: {reason[:300]}") from e


class PgDatabase:
    """One PostgreSQL connection (autocommit; `Dialect.transaction` groups statements) behind the sqlite-utils
    calls the control plane makes."""

    def __init__(self, conn, where: str = "?"):
        self.conn, self.where = conn, where
        self.pid = conn.info.backend_pid
        self._pks: dict[str, tuple[str, ...]] = {}
        self._staged: set[str] = set()

    def staging(self, table: str) -> str:
        """This connection's temporary copy of `table`'s columns (Dialect.insert_ignore's COPY target)."""
        stage = _q(f"stage_{table}")
        if table not in self._staged:
            self.execute(f"create temporary table if not exists {stage} (like {_q(table)} including defaults) "
                         "on commit delete rows")
            self._staged.add(table)
        return stage

    def execute(self, sql: str, params=None):
        """A cursor with tuple rows (fetchone/fetchall/rowcount), as sqlite3's execute returns."""
        with _lost(self.where):
            if params:
                return self.conn.execute(pg_sql(sql, True), _clean_params(params))
            return self.conn.execute(pg_sql(sql, False))

    def query(self, sql: str, params=None):
        """Rows as dicts, like sqlite-utils' Database.query."""
        from psycopg.rows import dict_row

        with _lost(self.where), self.conn.cursor(row_factory=dict_row) as cur:
            if params:
                cur.execute(pg_sql(sql, True), _clean_params(params))
            else:
                cur.execute(pg_sql(sql, False))
            return iter(cur.fetchall() if cur.description else [])

    def table_names(self) -> list[str]:
        return [r[0] for r in self.execute("select table_name from information_schema.tables where "
                                           "table_schema = current_schema() order by table_name").fetchall()]

    def __getitem__(self, name: str) -> "PgTable":
        return PgTable(self, name)

    def pks(self, table: str) -> tuple[str, ...]:
        if table not in self._pks:
            rows = self.execute(
                "select a.attname from pg_index i join pg_attribute a on a.attrelid = i.indrelid and "
                "a.attnum = any(i.indkey) where i.indrelid = cast(? as regclass) and i.indisprimary "
                "order by array_position(i.indkey, a.attnum)", [table]).fetchall()
            self._pks[table] = tuple(r[0] for r in rows)
        return self._pks[table]


class PgTable:
    def __init__(self, db: PgDatabase, name: str):
        self.db, self.name, self.q = db, name, _q(name)

    def create(self, columns: dict, pk=None, if_not_exists: bool = False, **_) -> "PgTable":
        pks = (pk,) if isinstance(pk, str) else tuple(pk or ())
        cols = []
        for col, typ in columns.items():
            if pks == (col,) and typ is int:   # sqlite's INTEGER PRIMARY KEY numbers rows itself: so does this
                cols.append(f"{_q(col)} bigint generated by default as identity")
            else:
                cols.append(f"{_q(col)} {_TYPES[typ]}")
        if pks:
            cols.append(f"primary key ({', '.join(map(_q, pks))})")
        self.db.execute(f"create table {'if not exists ' if if_not_exists else ''}{self.q} ({', '.join(cols)})")
        return self

    def create_index(self, columns, unique: bool = False, if_not_exists: bool = False, **_) -> "PgTable":
        name = _q(f"idx_{self.name}_{'_'.join(columns)}"[:63])
        self.db.execute(f"create {'unique ' if unique else ''}index {'if not exists ' if if_not_exists else ''}"
                        f"{name} on {self.q} ({', '.join(map(_q, columns))})")
        return self

    @property
    def columns_dict(self) -> dict:
        rows = self.db.execute("select column_name, data_type from information_schema.columns where "
                               "table_schema = current_schema() and table_name = ?", [self.name]).fetchall()
        return {r[0]: r[1] for r in rows}

    def add_column(self, name: str, typ) -> "PgTable":
        self.db.execute(f"alter table {self.q} add column if not exists {_q(name)} {_TYPES[typ]}")
        return self

    def insert(self, row: dict, ignore: bool = False, **_) -> "PgTable":
        return self.insert_all([row], ignore=ignore)

    def insert_all(self, rows, ignore: bool = False, **_) -> "PgTable":
        groups: dict[tuple, list] = {}
        for r in rows:
            groups.setdefault(tuple(r), []).append(list(r.values()))
        for cols, values in groups.items():
            sql = (f"insert into {self.q} ({', '.join(map(_q, cols))}) values ({', '.join(['%s'] * len(cols))})"
                   + (" on conflict do nothing" if ignore else ""))
            with _lost(self.db.where), self.db.conn.cursor() as cur:
                cur.executemany(sql, [_clean_params(v) for v in values])
        return self

    def upsert(self, row: dict, pk, **_) -> "PgTable":
        pks = (pk,) if isinstance(pk, str) else tuple(pk)
        cols = list(row)
        rest = [c for c in cols if c not in pks]
        action = ("do update set " + ", ".join(f"{_q(c)} = excluded.{_q(c)}" for c in rest)) if rest else "do nothing"
        with _lost(self.db.where):
            self.db.conn.execute(f"insert into {self.q} ({', '.join(map(_q, cols))}) values "
                                 f"({', '.join(['%s'] * len(cols))}) on conflict ({', '.join(map(_q, pks))}) "
                                 f"{action}", _clean_params(row.values()))
        return self

    def update(self, pk_values, updates: dict, **_) -> "PgTable":
        pks = self.db.pks(self.name)
        vals = list(pk_values) if isinstance(pk_values, (list, tuple)) else [pk_values]
        if len(vals) != len(pks):
            raise ValueError(f"{self.name}: primary key is {pks}, got {vals!r}")
        if not updates:
            return self
        sets = ", ".join(f"{_q(c)} = %s" for c in updates)
        where = " and ".join(f"{_q(c)} = %s" for c in pks)
        with _lost(self.db.where):
            cur = self.db.conn.execute(f"update {self.q} set {sets} where {where}",
                                       _clean_params([*updates.values(), *vals]))
        if cur.rowcount == 0:
            raise NotFoundError(f"{self.name}: no row {vals!r}")
        return self


class PgThreadLocal:
    """One PostgreSQL connection per thread, like ThreadLocalDB for SQLite; a broken one (the server restarted)
    is replaced on the next call. The store's threads are bounded (control_plane/offload.py), so are these."""

    def __init__(self, cfg: StateConfig):
        self.cfg = cfg
        self._local = threading.local()
        self.pids: set[int] = set()   # the server process ids of these connections (Listener skips their NOTIFYs)
        self.get()   # an unreachable server is reported at start, by name

    def get(self) -> PgDatabase:
        db = getattr(self._local, "db", None)
        if db is None or db.conn.closed or db.conn.broken:
            if db is not None:
                self.pids.discard(db.pid)
            db = self._local.db = PgDatabase(self.connect(self.cfg), self.cfg.where())
            self.pids.add(db.pid)
        return db

    @staticmethod
    def connect(cfg: StateConfig, **libpq):
        """A new autocommit connection (`libpq`: extra connection parameters), or StorageUnavailable /
        ConfigError naming the database."""
        try:
            import psycopg
        except ImportError as e:
            raise ConfigError("--state postgresql:// needs psycopg 3 (pip install 'psycopg[binary]'; "
                              "scripts/setup.sh installs it)") from e
        try:
            return psycopg.connect(cfg.url, autocommit=True, connect_timeout=cfg.connect_timeout_s,
                                   application_name="slmops-control-plane", **libpq)
        except psycopg.OperationalError as e:
            reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise StorageUnavailable(f"cannot reach the state database PostgreSQL at {cfg.where()}: "
                                     f"{reason[:300]}") from e
        except psycopg.ProgrammingError as e:   # a malformed URL
            raise ConfigError(f"--state {cfg.display()!r}: {str(e)[:300]}") from e


def open_state(cfg: StateConfig):
    """(per-thread database getter, dialect) for this config."""
    if cfg.kind == "postgresql":
        return PgThreadLocal(cfg), PostgresDialect()
    from slmops.sqlite_conn import ThreadLocalDB

    path = cfg.sqlite_path
    path.parent.mkdir(parents=True, exist_ok=True)
    return ThreadLocalDB(path), SqliteDialect()
