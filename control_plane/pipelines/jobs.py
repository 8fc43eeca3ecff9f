"""The pipeline tables in the control plane's state (SQLite or PostgreSQL): jobs (the persisted queue), stages
(inputs, outputs, metrics, message, worker pid) and log lines. Their schema is migration 3
(control_plane/migrations.py)."""
from __future__ import annotations

import json
import secrets
import threading

from control_plane.pipelines import plan
from control_plane.store import Store, now_ms


class Jobs:
    def __init__(self, store: Store):
        self.store = store
        self.lock = threading.RLock()   # one status change at a time (manager threads vs Admin RPCs)

    @property
    def db(self):
        return self.store.db

    # ---- jobs ----------------------------------------------------------------------------------------------
    def add(self, name: str, recipe: str, base_dir: str, kinds: list[str], who: str) -> str:
        job_id = "pl_" + secrets.token_hex(4)
        t = now_ms()
        with self.lock:
            self.db["pipeline_jobs"].insert({"job_id": job_id, "name": name, "status": plan.QUEUED, "reason": "",
                                             "recipe": recipe, "base_dir": base_dir, "submitted_by": who,
                                             "created_ms": t, "updated_ms": t, "resumes": 0, "published": "",
                                             "rollout_id": ""})
            self.db["pipeline_stages"].insert_all([
                {"job_id": job_id, "idx": i, "kind": k, "key": "", "status": plan.PENDING, "inputs": "{}",
                 "outputs": "{}", "metrics": "{}", "message": "", "started_ms": 0, "finished_ms": 0,
                 "worker_pid": 0, "attempts": 0, "cached": 0} for i, k in enumerate(kinds)])
        return job_id

    def job(self, job_id: str) -> dict | None:
        rows = list(self.db.query("select * from pipeline_jobs where job_id = ?", [job_id]))
        return rows[0] if rows else None

    def jobs(self, statuses: tuple[str, ...] = (), limit: int = 100) -> list[dict]:
        where = f"where status in ({','.join('?' * len(statuses))})" if statuses else ""
        return list(self.db.query(f"select * from pipeline_jobs {where} order by created_ms desc limit ?",
                                  [*statuses, limit]))

    def queued(self) -> list[dict]:
        return list(self.db.query("select * from pipeline_jobs where status = ? order by created_ms", [plan.QUEUED]))

    def transition(self, job_id: str, event: str, reason: str | None = None) -> str:
        """Applies the state table; TransitionRefused when the job's status does not allow the event."""
        with self.lock:
            job = self.job(job_id)
            status = plan.next_status(job["status"], event)
            fields = {"status": status, "updated_ms": now_ms()}
            if reason is not None:
                fields["reason"] = reason
            self.db["pipeline_jobs"].update(job_id, fields)
            return status

    def update(self, job_id: str, **fields) -> None:
        with self.lock:
            self.db["pipeline_jobs"].update(job_id, {**fields, "updated_ms": now_ms()})

    # ---- stages ----------------------------------------------------------------------------------------------
    def stages(self, job_id: str) -> list[dict]:
        return list(self.db.query("select * from pipeline_stages where job_id = ? order by idx", [job_id]))

    def set_stage(self, job_id: str, idx: int, **fields) -> None:
        for k in ("inputs", "outputs", "metrics"):
            if k in fields and not isinstance(fields[k], str):
                fields[k] = json.dumps(fields[k], default=str)
        with self.lock:
            self.db["pipeline_stages"].update((job_id, idx), fields)

    def done_with_key(self, key: str) -> dict | None:
        """The latest finished stage (any job) with this key: its outputs can be reused."""
        rows = list(self.db.query("select * from pipeline_stages where key = ? and status = ? "
                                  "order by finished_ms desc limit 1", [key, plan.STAGE_DONE]))
        return rows[0] if rows else None

    # ---- logs ------------------------------------------------------------------------------------------------
    def log(self, job_id: str, idx: int, lines: list[str]) -> None:
        if not lines:
            return
        t = now_ms()
        self.db["pipeline_logs"].insert_all([{"job_id": job_id, "idx": idx, "ts_ms": t, "line": ln[:4000]}
                                             for ln in lines])

    def log_tail(self, job_id: str, lines: int = 200) -> list[dict]:
        """The job's last `lines` log lines, oldest first."""
        rows = list(self.db.query("select * from pipeline_logs where job_id = ? order by id desc limit ?",
                                  [job_id, lines]))
        return rows[::-1]

    def logs(self, job_id: str, after_id: int = 0, limit: int = 1000) -> list[dict]:
        return list(self.db.query("select * from pipeline_logs where job_id = ? and id > ? order by id limit ?",
                                  [job_id, after_id, limit]))
