"""Versioned schema migrations for the control plane's state, the same steps for SQLite and PostgreSQL
(control_plane/sqldb.py renders each). Applied on start, in order, each in one transaction that also records it
in `schema_version`; several control planes starting at once on one PostgreSQL take turns (an advisory lock).

Add a migration by appending to MIGRATIONS (never edit one that has shipped). Version 1 also adopts a SQLite file
made before migrations existed: its tables are kept and the columns added since are added.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from slmops.errors import ConfigError


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    apply: Callable


def _table(db, name: str, cols: dict, pk, indexes=(), unique=()) -> None:
    db[name].create(cols, pk=pk, if_not_exists=True)
    have = db[name].columns_dict
    for col, typ in cols.items():   # tables made before these columns existed
        if col not in have:
            db[name].add_column(col, typ)
    for ix in indexes:
        db[name].create_index(list(ix), if_not_exists=True)
    for ix in unique:
        db[name].create_index(list(ix), unique=True, if_not_exists=True)


def _baseline(db) -> None:
    _table(db, "meta", {"key": str, "value": str}, "key")
    _table(db, "models", {"name": str, "version": str, "manifest": bytes, "manifest_sha256": str,
                          "precision": str, "total_bytes": int, "created_ms": int}, ("name", "version"))
    _table(db, "model_files", {"name": str, "version": str, "path": str, "sha256": str, "size": int},
           ("name", "version", "path"), indexes=[("sha256",)])
    # The chunks of files larger than one chunk (slmops/manifest.py): devices download these by sha256.
    _table(db, "model_chunks", {"name": str, "version": str, "sha256": str, "size": int},
           ("name", "version", "sha256"), indexes=[("sha256",)])
    _table(db, "devices", {"device_id": str, "name": str, "token_hash": str, "hardware": str, "agent_version": str,
                           "desired_name": str, "desired_version": str, "desired_rev": int, "current_name": str,
                           "current_version": str, "state": str, "message": str, "last_seen_ms": int,
                           "enrolled_ms": int, "labels": str, "pin_name": str, "pin_version": str,
                           "reported_ms": int, "public_key": str}, "device_id", unique=[("token_hash",)])
    _table(db, "enroll_tokens", {"token_hash": str, "uses_left": int, "expires_ms": int, "created_ms": int,
                                 "labels": str, "uses": int, "created_by": str, "revoked_ms": int}, "token_hash")
    _table(db, "admin_tokens", {"token_hash": str, "role": str, "created_ms": int, "name": str, "created_by": str,
                                "revoked_ms": int}, "token_hash")
    _table(db, "telemetry", {"device_id": str, "seq": int, "ts_ms": int, "kind": str, "name": str, "model": str,
                             "latency_ms": float, "first_token_ms": float, "tokens_in": int, "tokens_out": int,
                             "outcome": str, "detail": str, "received_ms": int, "adapter": str, "vals": str},
           ("device_id", "seq"), indexes=[("ts_ms",)])
    # (device, minute) pairs whose per-minute rollup must be recomputed (control_plane/telemetry_views.py)
    _table(db, "telemetry_dirty", {"device_id": str, "minute_ms": int}, ("device_id", "minute_ms"))
    _table(db, "device_assigned", {"device_id": str, "name": str, "version": str, "first_ms": int},
           ("device_id", "name", "version"))
    db.execute("insert or ignore into device_assigned (device_id, name, version, first_ms) select device_id, "
               "desired_name, desired_version, 0 from devices where desired_name != ''")
    _table(db, "rollouts", {"rollout_id": str, "status": str, "state": str, "created_by": str, "created_ms": int,
                            "updated_ms": int}, "rollout_id", indexes=[("status",)])
    db.execute("create table if not exists audit (id integer primary key autoincrement, ts_ms integer, "
               "who text, role text, action text, target text, result text, detail text)")


def _views_and_drift(db) -> None:
    """Tables telemetry_views.py and drift_monitor.py used to create for themselves."""
    _table(db, "telemetry_minutes", {"device_id": str, "minute_ms": int, "requests": int, "errors": int,
                                     "p50_latency_ms": float, "p95_latency_ms": float, "tokens_out": int,
                                     "tokens_per_s": float, "cpu_percent": float, "rss_bytes": float,
                                     "golden_failed": int}, ("device_id", "minute_ms"), indexes=[("minute_ms",)])
    _table(db, "drift_latest", {"model": str, "signal": str, "grp": str, "value": float, "threshold": float,
                                "crossed": int, "ts_ms": int}, ("model", "signal"))
    _table(db, "drift_versions", {"model": str, "first_seen_ms": int}, "model")
    if "drift_history" not in db.table_names():
        db.execute("create table drift_history (model text, signal text, ts_ms integer, value real, threshold real)")
    db["drift_history"].create_index(["model", "ts_ms"], if_not_exists=True)


def _pipelines(db) -> None:
    """Tables control_plane/pipelines/jobs.py used to create for itself (outside this lock: two control planes
    starting at once on one PostgreSQL could race there): jobs (the persisted queue), stages, log lines."""
    _table(db, "pipeline_jobs", {"job_id": str, "name": str, "status": str, "reason": str, "recipe": str,
                                 "base_dir": str, "submitted_by": str, "created_ms": int, "updated_ms": int,
                                 "resumes": int, "published": str, "rollout_id": str}, "job_id")
    _table(db, "pipeline_stages", {"job_id": str, "idx": int, "kind": str, "key": str, "status": str, "inputs": str,
                                   "outputs": str, "metrics": str, "message": str, "started_ms": int,
                                   "finished_ms": int, "worker_pid": int, "attempts": int, "cached": int},
           ("job_id", "idx"), indexes=[("key",)])
    _table(db, "pipeline_logs", {"id": int, "job_id": str, "idx": int, "ts_ms": int, "line": str}, "id",
           indexes=[("job_id", "id")])


MIGRATIONS = (
    Migration(1, "baseline: models, devices, tokens, telemetry, rollouts, audit", _baseline),
    Migration(2, "telemetry minute rollups and drift tables", _views_and_drift),
    Migration(3, "pipeline jobs, stages and log lines", _pipelines),
)
LATEST = MIGRATIONS[-1].version


def migrate(db, dialect) -> list[int]:
    """Applies the migrations this database has not had; returns their versions. Refuses a database that a
    newer control plane has migrated past what this one knows."""
    applied = []
    with dialect.transaction(db):
        dialect.lock_migrations(db)   # first: even `create table if not exists` races on PostgreSQL
        db.execute("create table if not exists schema_version (version integer primary key, description text, "
                   "applied_ms integer)")
        done = {r[0] for r in db.execute("select version from schema_version").fetchall()}
        if done and max(done) > LATEST:
            raise ConfigError(f"the state database is at schema version {max(done)}; this control plane knows "
                              f"up to {LATEST}: upgrade it")
        for m in MIGRATIONS:
            if m.version in done:
                continue
            m.apply(db)
            db.execute("insert into schema_version (version, description, applied_ms) values (?, ?, ?)",
                       [m.version, m.description, _now_ms()])
            applied.append(m.version)
    return applied


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)
