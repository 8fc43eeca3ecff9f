"""The control plane's state: models, devices, enrollment tokens, admin tokens, rollouts, audit and telemetry,
in one SQLite file (the embedded default: sqlite-utils, WAL) or in PostgreSQL (`--state postgresql://...`).
The SQL is written once for both (control_plane/sqldb.py is the dialect seam); the schema is versioned and
migrated on start (control_plane/migrations.py). All access goes through Store, which serialises this process's
writers with a lock and wakes desired-state watchers when a device's desired model changes. What must hold
across processes sharing one database (one-use enrollment tokens, telemetry sequence numbers, counters) is
decided by the database itself: conditional updates and `insert or ignore` on primary keys, not the lock.
"""
from __future__ import annotations

import hashlib
import json
import pathlib
import secrets
import threading
import time
from dataclasses import dataclass

from control_plane import migrations
from control_plane.sqldb import StateConfig, open_state
from slmops.errors import RequestInvalid

SCHEMA_VERSION = migrations.LATEST
TELEMETRY_COLUMNS = ("device_id", "seq", "ts_ms", "kind", "name", "model", "latency_ms", "first_token_ms",
                     "tokens_in", "tokens_out", "outcome", "detail", "received_ms", "adapter", "vals")


def now_ms() -> int:
    return int(time.time() * 1000)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# Public ids of tokens: a prefix of the stored hash, so listing and revoking never need (or show) the secret.
ENROLL_ID_PREFIX, API_ID_PREFIX, ID_HEX = "tok_", "api_", 12


def enroll_token_id(th: str) -> str:
    return ENROLL_ID_PREFIX + th[:ID_HEX]


def api_token_id(th: str) -> str:
    return API_ID_PREFIX + th[:ID_HEX]


def _hash_prefix(token_id: str, prefix: str) -> str | None:
    h = token_id[len(prefix):] if token_id.startswith(prefix) else ""
    return h if len(h) == ID_HEX and all(c in "0123456789abcdef" for c in h) else None


class LastAdminToken(RequestInvalid):
    """Revoking this API token would leave no live admin token."""


@dataclass(frozen=True)
class DesiredState:
    name: str
    version: str
    revision: int


class Store:
    @property
    def db(self):
        """This thread's connection: a sqlite_utils.Database, or sqldb.PgDatabase (the same calls)."""
        return self._dbs.get()

    def __init__(self, state: StateConfig | str | pathlib.Path):
        """`state`: a SQLite file path (or sqlite:///PATH), a postgresql:// URL, or a StateConfig."""
        self.state = StateConfig.of(state)
        self._dbs, self.dialect = open_state(self.state)
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._wakers: dict[str, set] = {}   # device id -> its watch streams' wake-ups (objects with .set())
        self.rollouts_changed = threading.Event()             # set by admin rollout actions; the driver waits on it
        self.rollouts_lock = threading.RLock()                # one rollout change at a time (driver vs operators)
        self.listener = None   # PostgreSQL: hears other control planes' changes (started by the first watch)
        self.leader = self.dialect.lease(self.state)   # .held(): this one drives rollouts and rollups
        self._create()

    def _create(self) -> None:
        with self._lock:
            migrations.migrate(self.db, self.dialect)

    def transaction(self):
        """One database transaction on this thread's connection (a context manager)."""
        return self.dialect.transaction(self.db)

    # ---- meta / fleet default -------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        rows = list(self.db.query("select value from meta where key = ?", [key]))
        return rows[0]["value"] if rows else None

    def get_metas(self, keys: list[str]) -> dict[str, str]:
        """Several meta values read in one statement: one consistent set even while another replica writes."""
        return {r["key"]: r["value"] for r in self.db.query(
            f"select key, value from meta where key in ({','.join('?' * len(keys))})", list(keys))}

    def exclusive(self, key: int):
        """A section one control plane on this database runs at a time (sqldb: a PostgreSQL advisory lock)."""
        return self.dialect.exclusive(self.db, key)

    def set_meta(self, key: str, value: str) -> None:
        with self._lock:
            self.db["meta"].upsert({"key": key, "value": value}, pk="key")

    def claim_meta(self, key: str, value: str) -> str:
        """Stores `value` under `key` unless one is stored already (another process may have written it first);
        returns what is stored."""
        with self._lock:
            self.db.execute("insert into meta (key, value) values (?, ?) on conflict (key) do nothing", [key, value])
            return self.get_meta(key)

    def next_counter(self, key: str) -> int:
        """Adds one to the integer kept under `key` in meta and returns it, atomically in the database (two
        processes never get the same number)."""
        with self._lock:
            row = self.db.execute("insert into meta (key, value) values (?, '1') on conflict (key) do update "
                                  "set value = cast(cast(meta.value as integer) + 1 as text) returning value",
                                  [key]).fetchone()
        return int(row[0])

    # ---- admin tokens -----------------------------------------------------------------------------
    def create_admin_token(self, role: str = "admin") -> str:
        token = "slm_admin_" + secrets.token_urlsafe(24)
        with self._lock:
            self.db["admin_tokens"].insert({"token_hash": token_hash(token), "role": role, "created_ms": now_ms()})
        return token

    def admin_role(self, token: str) -> str | None:
        p = self.admin_principal(token)
        return p["role"] if p else None

    # ---- enrollment -------------------------------------------------------------------------------
    def create_enroll_token(self, uses: int = 1, ttl_s: int = 86400, labels: dict | None = None,
                            created_by: str = "") -> tuple[str, int]:
        """A new enrollment token (the secret is returned once; only its hash is kept). `labels` are applied to
        every device that enrolls with it."""
        token = "slm_enroll_" + secrets.token_urlsafe(18)
        expires = now_ms() + ttl_s * 1000
        with self._lock:
            self.db["enroll_tokens"].insert({"token_hash": token_hash(token), "uses_left": uses, "uses": uses,
                                             "expires_ms": expires, "created_ms": now_ms(),
                                             "labels": json.dumps(labels or {}, sort_keys=True),
                                             "created_by": created_by, "revoked_ms": 0})
        return token, expires

    def enroll_tokens(self) -> list[dict]:
        """Every enrollment token, oldest first, with its public token_id (never the secret)."""
        return [self._enroll_info(r) for r in self.db.query("select * from enroll_tokens order by created_ms")]

    def revoke_enroll_token(self, token_id: str) -> dict | None:
        """Marks the token revoked (it enrolls no further device); None when no token has this id."""
        h = _hash_prefix(token_id, ENROLL_ID_PREFIX)
        with self._lock:
            rows = list(self.db.query("select * from enroll_tokens where substr(token_hash, 1, ?) = ?",
                                      [ID_HEX, h])) if h else []
            if len(rows) != 1:
                return None
            if not rows[0].get("revoked_ms"):
                self.db.execute("update enroll_tokens set revoked_ms = ? where token_hash = ?",
                                [now_ms(), rows[0]["token_hash"]])
            return self._enroll_info(self._one("enroll_tokens", rows[0]["token_hash"]))

    def _one(self, table: str, th: str) -> dict:
        return next(iter(self.db.query(f"select * from {table} where token_hash = ?", [th])))

    @staticmethod
    def _enroll_info(r: dict) -> dict:
        return {"token_id": enroll_token_id(r["token_hash"]), "uses_left": r["uses_left"],
                "uses": r.get("uses") or 0, "expires_ms": r["expires_ms"], "created_ms": r["created_ms"],
                "labels": json.loads(r.get("labels") or "{}"), "revoked": bool(r.get("revoked_ms")),
                "created_by": r.get("created_by") or ""}

    def consume_enroll_token(self, token: str) -> str | None:
        """Uses one use of `token`. Returns None on success, or why it was refused. One conditional update
        decides: two control planes redeeming the last use at once cannot both succeed (the database's row
        lock makes the second re-read the row and find no use left)."""
        th, now = token_hash(token), now_ms()
        with self._lock:
            if self.db.execute("update enroll_tokens set uses_left = uses_left - 1 where token_hash = ? and "
                               "uses_left > 0 and expires_ms >= ? and coalesce(revoked_ms, 0) = 0",
                               [th, now]).rowcount == 1:
                return None
            rows = list(self.db.query("select * from enroll_tokens where token_hash = ?", [th]))
            if not rows:
                return "unknown enrollment token"
            row = rows[0]
            if row.get("revoked_ms"):
                return "enrollment token revoked"
            if row["expires_ms"] < now:
                return "enrollment token expired"
            return "enrollment token already used up"

    def add_device(self, name: str, hardware: dict, agent_version: str) -> tuple[str, str]:
        device_id = "dev_" + secrets.token_hex(6)
        token = "slm_device_" + secrets.token_urlsafe(24)
        with self._lock:
            default = self.fleet_default()
            self.db["devices"].insert({
                "device_id": device_id, "name": name, "token_hash": token_hash(token),
                "hardware": json.dumps(hardware), "agent_version": agent_version,
                "desired_name": default[0] if default else "", "desired_version": default[1] if default else "",
                "desired_rev": 1, "current_name": "", "current_version": "", "state": "enrolled", "message": "",
                "last_seen_ms": now_ms(), "enrolled_ms": now_ms()})
        return device_id, token

    def device_for_token(self, token: str) -> dict | None:
        rows = list(self.db.query("select * from devices where token_hash = ?", [token_hash(token)]))
        return rows[0] if rows else None

    def device(self, device_id: str) -> dict | None:
        rows = list(self.db.query("select * from devices where device_id = ?", [device_id]))
        return rows[0] if rows else None

    def devices(self) -> list[dict]:
        return list(self.db.query("select * from devices order by enrolled_ms"))

    def delete_device(self, device_id: str) -> dict | None:
        """Removes the device (its token stops working at once) and wakes its watch streams so they end.
        Returns the row as it was, or None when there is no such device. Its stored telemetry stays."""
        with self._lock:
            row = self.device(device_id)
            if row is None:
                return None
            self.db.execute("delete from devices where device_id = ?", [device_id])
            self.db.execute("delete from device_assigned where device_id = ?", [device_id])
            self.dialect.announce(self.db, [device_id])
            self._wake([device_id])
        return row

    REPORTED = ("current_name", "current_version", "state", "message", "hardware")   # what a device may set

    def touch(self, device_id: str, **fields) -> None:
        """The device was seen now; `fields` (of REPORTED) are what it reports about itself."""
        self.report_many([(device_id, fields)])

    def report_many(self, reports: list[tuple[str, dict]]) -> None:
        """touch() for many devices in one transaction, in order (a device's later report wins). A report with
        a state also stamps reported_ms. A device that no longer exists is skipped. Rows are written in device
        id order, as touch_many writes them: two replicas' transactions over the same devices then lock them
        in one order and cannot deadlock (PostgreSQL aborted one such pair at 20,000 agents)."""
        if not reports:
            return
        unknown = {k for _, f in reports for k in f} - set(self.REPORTED)
        if unknown:
            raise ValueError(f"not device-reported fields: {sorted(unknown)}")
        now = now_ms()
        merged: dict[str, dict] = {}
        for device_id, fields in reports:          # a device's later report wins, field by field
            merged.setdefault(device_id, {}).update(fields)
        cols = (*self.REPORTED, "reported_ms")
        rows = [[now, *(f.get(c) if c != "reported_ms" else (now if "state" in f else None) for c in cols), d]
                for d, f in sorted(merged.items())]
        sets = ", ".join(["last_seen_ms = ?", *(f"{c} = coalesce(?, {c})" for c in cols)])
        with self._lock, self.transaction():
            self.dialect.executemany(self.db, f"update devices set {sets} where device_id = ?", rows)

    def touch_many(self, device_ids: list[str]) -> None:
        """Refreshes last_seen for many devices in one transaction (the watch streams' liveness ticks), in device
        id order (see report_many)."""
        if not device_ids:
            return
        now = now_ms()
        with self._lock, self.transaction():
            self.dialect.executemany(self.db, "update devices set last_seen_ms = ? where device_id = ?",
                                     [[now, d] for d in sorted(set(device_ids))])

    # ---- desired state ----------------------------------------------------------------------------
    def fleet_default(self) -> tuple[str, str] | None:
        v = self.get_meta("fleet_default")
        return tuple(v.split("@", 1)) if v else None

    def set_desired(self, name: str, version: str, device_ids: list[str] | None) -> int:
        """Sets the desired model for `device_ids`, or for every device and future enrollments when None."""
        with self._lock:
            if device_ids is None:  # the whole fleet, except devices pinned to a version
                self.set_meta("fleet_default", f"{name}@{version}")
                self.set_meta("fleet_default_ms", str(now_ms()))  # vs completed rollouts: the newer one stands
                device_ids = [d["device_id"] for d in self.devices() if not d.get("pin_name")]
            n = 0
            # one transaction and one statement per 500 devices: a rollout to thousands of devices holds the
            # lock for milliseconds, not seconds. Sorted first, so the chunks lock ascending id ranges, as
            # report_many and touch_many lock rows (within one chunk the order is PostgreSQL's plan's)
            device_ids = sorted(device_ids)
            with self.transaction():
                for i in range(0, len(device_ids), 500):
                    chunk = device_ids[i:i + 500]
                    self._remember_assigned(chunk, name, version)
                    n += self.db.execute(
                        "update devices set desired_name = ?, desired_version = ?, desired_rev = desired_rev + 1 "
                        f"where device_id in ({','.join('?' * len(chunk))})", [name, version, *chunk]).rowcount
            self.dialect.announce(self.db, device_ids)
            self._wake(device_ids)
            return n

    def _remember_assigned(self, device_ids: list[str], name: str, version: str) -> None:
        """Records what these devices were assigned before and what they are assigned now: the versions a
        device may download are the ones the control plane gave it, never ones it claims to run."""
        marks, now = ",".join("?" * len(device_ids)), now_ms()
        self.db.execute("insert or ignore into device_assigned (device_id, name, version, first_ms) "
                        f"select device_id, desired_name, desired_version, ? from devices where device_id in ({marks})"
                        " and desired_name != ''", [now, *device_ids])
        self.db.execute("insert or ignore into device_assigned (device_id, name, version, first_ms) "
                        f"select device_id, ?, ?, ? from devices where device_id in ({marks})",
                        [name, version, now, *device_ids])

    def downloadable(self, dev: dict) -> list[tuple[str, str]]:
        """The model versions whose blobs this device may download: what it is assigned now, and the version it
        reports running only when the control plane assigned that version to it at some point (the current
        model as last verified). An adapter-only version's blobs include its base's (registry._with_base)."""
        refs = [(dev["desired_name"], dev["desired_version"])] if dev.get("desired_name") else []
        cur = (dev.get("current_name") or "", dev.get("current_version") or "")
        if cur[0] and cur not in refs and list(self.db.query(
                "select 1 from device_assigned where device_id = ? and name = ? and version = ?",
                [dev["device_id"], *cur])):
            refs.append(cur)
        return refs

    def desired(self, device_id: str) -> DesiredState | None:
        return self.desired_many([device_id])[0]

    def desired_many(self, device_ids: list[str]) -> list[DesiredState | None]:
        """desired() of each device, in order, 500 a query (a rollout wakes thousands of watches at once)."""
        found: dict[str, DesiredState] = {}
        for i in range(0, len(device_ids), 500):
            chunk = device_ids[i:i + 500]
            for d in self.db.query("select device_id, desired_name, desired_version, desired_rev from devices "
                                   f"where device_id in ({','.join('?' * len(chunk))})", chunk):
                found[d["device_id"]] = DesiredState(d["desired_name"], d["desired_version"], d["desired_rev"])
        return [found.get(d) for d in device_ids]

    def _wake(self, device_ids: list[str] | None) -> None:
        """Wakes the watch streams of these devices (None: of every device) and the threads waiting for a
        change: a change made here, or announced by another control plane on the same database."""
        with self._lock:
            self._changed.notify_all()
            for did in (list(self._wakers) if device_ids is None else device_ids):
                for ev in self._wakers.get(did, ()):
                    ev.set()

    def stop_listening(self) -> None:
        """Stops hearing other control planes' changes (a watch started later starts it again) and gives up the
        leader lease."""
        with self._lock:
            listener, self.listener = self.listener, None
        if listener:
            listener.stop()
        self.leader.release()

    def subscribe(self, device_id: str, waker) -> None:
        """`waker.set()` is called (from whichever thread makes the change) whenever this device's desired
        state changes or the device is deleted, here or on another control plane sharing the database. Each
        watch has its own waker, so a change wakes only the streams of the devices it concerns (ten thousand
        watchers do not stampede on every change)."""
        with self._lock:
            if self.listener is None:
                self.listener = self.dialect.listener(self.state, self._wake, self._dbs) or False
            self._wakers.setdefault(device_id, set()).add(waker)

    def unsubscribe(self, device_id: str, waker) -> None:
        with self._lock:
            waiters = self._wakers.get(device_id, set())
            waiters.discard(waker)
            if not waiters:
                self._wakers.pop(device_id, None)

    def wait_for_change(self, device_id: str, seen_revision: int, timeout: float,
                        wake: threading.Event | None = None) -> DesiredState | None:
        """Blocks until the device's desired revision differs from `seen_revision`, `timeout` passes or `wake`
        is set (for callers on threads; the asyncio server subscribes its own waker)."""
        ev = wake or threading.Event()
        self.subscribe(device_id, ev)
        try:
            cur = self.desired(device_id)
            if cur is None or cur.revision != seen_revision:
                return cur
            ev.wait(timeout)
            return self.desired(device_id)
        finally:
            self.unsubscribe(device_id, ev)

    # ---- models -----------------------------------------------------------------------------------
    def add_model(self, name: str, version: str, manifest: bytes, manifest_sha256: str,
                  precision: str, files: list[dict]) -> None:
        """One transaction: a version is visible with all its files and chunks, or not at all."""
        with self._lock:
            if self.model(name, version) is not None:
                raise KeyError(f"{name}@{version} is already published; versions are immutable")
            with self.transaction():
                self.db.execute("insert into models (name, version, manifest, manifest_sha256, precision, "
                                "total_bytes, created_ms) values (?,?,?,?,?,?,?)",
                                [name, version, manifest, manifest_sha256, precision,
                                 sum(f["size"] for f in files), now_ms()])
                self.dialect.executemany(self.db, "insert into model_files (name, version, path, sha256, size) "
                                         "values (?,?,?,?,?)",
                                         [(name, version, f["path"], f["sha256"], f["size"]) for f in files])
                self.dialect.executemany(self.db, "insert or ignore into model_chunks (name, version, sha256, size) "
                                         "values (?,?,?,?)", [(name, version, sha, size) for f in files
                                                              for sha, size in f.get("chunks", ())])

    def model(self, name: str, version: str) -> dict | None:
        rows = list(self.db.query("select * from models where name = ? and version = ?", [name, version]))
        return rows[0] if rows else None

    def models(self) -> list[dict]:
        return list(self.db.query("select name, version, precision, total_bytes, created_ms from models "
                                  "order by created_ms"))

    def blob_in_model(self, sha256: str, name: str, version: str) -> bool:
        """True when `sha256` is one of the model's files, chunks or its manifest."""
        rows = list(self.db.query("select 1 from model_files where sha256 = ? and name = ? and version = ? union "
                                  "select 1 from model_chunks where sha256 = ? and name = ? and version = ? union "
                                  "select 1 from models where manifest_sha256 = ? and name = ? and version = ?",
                                  [sha256, name, version] * 3))
        return bool(rows)

    # ---- telemetry --------------------------------------------------------------------------------
    def add_telemetry(self, device_id: str, events: list[dict]) -> tuple[int, int]:
        """Stores events once per (device, seq). Returns (newly stored, duplicates)."""
        if not events:
            return 0, 0
        received = now_ms()
        minutes = {(device_id, e["ts_ms"] // 60000 * 60000) for e in events}
        with self._lock, self.transaction():
            # the rows the insert changed, not count(*): counting a device's rows grows with its history; a
            # (device, seq) already stored (a retried upload, maybe through another control plane) changes none
            stored = self.dialect.insert_ignore(self.db, "telemetry", TELEMETRY_COLUMNS, [
                (device_id, e["seq"], e["ts_ms"], e["kind"], e["name"], e["model"], e["latency_ms"],
                 e["first_token_ms"], e["tokens_in"], e["tokens_out"], e["outcome"], e["detail"], received,
                 e.get("adapter", ""), json.dumps(e["values"]) if e.get("values") else "")
                for e in events])
            # an upsert, not insert-or-ignore: writing the mark locks its row, so a rollup rebuild that took
            # the mark (telemetry_views.py) waits for this commit instead of reading the minute without these rows
            self.dialect.executemany(self.db, "insert into telemetry_dirty (device_id, minute_ms) values (?,?) "
                                     "on conflict (device_id, minute_ms) do update set minute_ms = "
                                     "excluded.minute_ms", sorted(minutes))
        return stored, len(events) - stored

    def telemetry(self, device_id: str | None, since_ms: int) -> list[dict]:
        sql = "select * from telemetry where ts_ms >= ?"
        args: list = [since_ms]
        if device_id:
            sql += " and device_id = ?"
            args.append(device_id)
        return list(self.db.query(sql + " order by device_id, seq", args))


    # ---- fleet: labels, pins, device keys, API tokens, rollouts, audit (issue 6) -------------------
    def finish_enrollment(self, device_id: str, enroll_token: str, public_key: str) -> None:
        """Applies the enrollment token's labels to the new device and records the key made on the device."""
        rows = list(self.db.query("select labels from enroll_tokens where token_hash = ?", [token_hash(enroll_token)]))
        labels = (rows[0]["labels"] if rows else "") or "{}"
        with self._lock:
            self.db["devices"].update(device_id, {"labels": labels, "public_key": public_key})

    def set_labels(self, device_id: str, labels: dict) -> None:
        with self._lock:
            self.db["devices"].update(device_id, {"labels": json.dumps(labels, sort_keys=True)})

    def set_pin(self, device_id: str, name: str, version: str) -> None:
        """Pins a device to name@version (rollouts leave it alone), or unpins it with empty strings."""
        with self._lock:
            self.db["devices"].update(device_id, {"pin_name": name, "pin_version": version})
        if name:
            self.set_desired(name, version, [device_id])

    def create_api_token(self, role: str, name: str, created_by: str = "") -> str:
        token = "slm_admin_" + secrets.token_urlsafe(24)
        with self._lock:
            self.db["admin_tokens"].insert({"token_hash": token_hash(token), "role": role, "name": name,
                                            "created_ms": now_ms(), "created_by": created_by, "revoked_ms": 0})
        return token

    def admin_principal(self, token: str) -> dict | None:
        """{"name", "role"} of a live API token (None when unknown or revoked); a token without a name is named
        by its hash prefix. Looked up on every call, so a revocation counts from the next call on."""
        th = token_hash(token)
        rows = list(self.db.query("select role, name from admin_tokens where token_hash = ? "
                                  "and coalesce(revoked_ms, 0) = 0", [th]))
        return {"name": rows[0]["name"] or f"token:{th[:10]}", "role": rows[0]["role"]} if rows else None

    def api_tokens(self) -> list[dict]:
        return [self._api_info(r) for r in self.db.query("select * from admin_tokens order by created_ms")]

    def revoke_api_token(self, token_id: str) -> dict | None:
        """Marks the API token revoked; None when no token has this id. Raises LastAdminToken rather than
        leave the control plane without a live admin token. The live admin tokens are locked while they are
        counted (SQLite: the write transaction; PostgreSQL: `for update`), so two control planes revoking the last
        two at once cannot both succeed."""
        h = _hash_prefix(token_id, API_ID_PREFIX)
        with self._lock:
            rows = list(self.db.query("select * from admin_tokens where substr(token_hash, 1, ?) = ?",
                                      [ID_HEX, h])) if h else []
            if len(rows) != 1:
                return None
            row = rows[0]
            if not row.get("revoked_ms"):
                with self.transaction():
                    if row["role"] == "admin":
                        live = [r[0] for r in self.db.execute(
                            "select token_hash from admin_tokens where role = 'admin' and coalesce(revoked_ms, 0) = 0"
                            + self.dialect.for_update).fetchall()]
                        if not set(live) - {row["token_hash"]}:
                            raise LastAdminToken(f"{token_id} is the last live admin token; create another admin "
                                                 "token before revoking it")
                    self.db.execute("update admin_tokens set revoked_ms = ? where token_hash = ? and "
                                    "coalesce(revoked_ms, 0) = 0", [now_ms(), row["token_hash"]])
            return self._api_info(self._one("admin_tokens", row["token_hash"]))

    @staticmethod
    def _api_info(r: dict) -> dict:
        th = r["token_hash"]
        return {"token_id": api_token_id(th), "role": r["role"], "name": r.get("name") or f"token:{th[:10]}",
                "created_ms": r["created_ms"], "revoked": bool(r.get("revoked_ms")),
                "created_by": r.get("created_by") or ""}

    def save_rollout(self, rollout_id: str, status: str, state: str, created_by: str = "",
                     expect: str | None = None) -> bool:
        """Writes a rollout's row. With `expect` (the state it was read with) the row is written only if it
        still holds that state, decided by the database (one conditional update), so a change another
        control plane made since the read is never overwritten. Returns whether it was written."""
        with self._lock:
            if expect is not None:
                return self.db.execute("update rollouts set status = ?, state = ?, updated_ms = ? "
                                       "where rollout_id = ? and state = ?",
                                       [status, state, now_ms(), rollout_id, expect]).rowcount == 1
            row = {"rollout_id": rollout_id, "status": status, "state": state, "updated_ms": now_ms()}
            if self.rollout_row(rollout_id) is None:
                row.update(created_by=created_by, created_ms=now_ms())
                self.db["rollouts"].insert(row)
            else:
                self.db["rollouts"].update(rollout_id, row)
            return True

    def rollout_row(self, rollout_id: str) -> dict | None:
        rows = list(self.db.query("select * from rollouts where rollout_id = ?", [rollout_id]))
        return rows[0] if rows else None

    def rollout_rows(self, statuses: tuple[str, ...] = ()) -> list[dict]:
        if statuses:
            marks = ",".join("?" * len(statuses))
            return list(self.db.query(f"select * from rollouts where status in ({marks}) order by created_ms",
                                      list(statuses)))
        return list(self.db.query("select * from rollouts order by created_ms"))

    def audit(self, who: str, role: str, action: str, target: str, result: str, detail: str = "") -> None:
        with self._lock:
            self.db.execute("insert into audit (ts_ms, who, role, action, target, result, detail) "
                            "values (?,?,?,?,?,?,?)", [now_ms(), who, role, action, target[:300], result,
                                                       detail[:1000]])

    def audit_log(self, limit: int = 100, action: str = "", actor: str = "", since_ms: int = 0) -> list[dict]:
        """Newest first; each filter applies when given: the action, the actor (the "who"), a start time."""
        terms = [(t, v) for t, v in (("action = ?", action), ("who = ?", actor), ("ts_ms >= ?", since_ms)) if v]
        where = (" where " + " and ".join(t for t, _ in terms)) if terms else ""
        return list(self.db.query(f"select * from audit{where} order by id desc limit ?",
                                  [v for _, v in terms] + [limit]))
