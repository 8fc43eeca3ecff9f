"""Pure decisions of the pipeline runner: stage keys and the job / stage state tables.

A stage's key is the sha256 of its kind, settings, the contents of its data files and the key of the stage
before it, so a stage whose key is already done (in this job or any earlier one) is skipped, and a changed
dataset or recipe re-runs that stage and everything after it. Rollouts are keyed per job: a new job always
rolls out (resuming one job finds its own rollout again).
"""
from __future__ import annotations

import hashlib
import json

from control_plane.pipelines.recipe import Pipeline

# ---- job states ----------------------------------------------------------------------------------------------
QUEUED, RUNNING, CANCELLING, SUCCEEDED, FAILED, CANCELLED = (
    "queued", "running", "cancelling", "succeeded", "failed", "cancelled")
TERMINAL = (SUCCEEDED, FAILED, CANCELLED)
START, DONE, FAIL, CANCEL, STOPPED, RESTART, GIVE_UP = (
    "start", "done", "fail", "cancel", "stopped", "restart", "give_up")
JOB_TRANSITIONS = {
    (QUEUED, START): RUNNING,
    (QUEUED, CANCEL): CANCELLED,
    (RUNNING, DONE): SUCCEEDED,
    (RUNNING, FAIL): FAILED,
    (RUNNING, CANCEL): CANCELLING,
    (CANCELLING, STOPPED): CANCELLED,
    (CANCELLING, DONE): CANCELLED,        # the last stage finished while the worker was being stopped
    (CANCELLING, FAIL): CANCELLED,
    (RUNNING, RESTART): QUEUED,           # the control plane restarted mid-job: resume (done stages are skipped)
    (RUNNING, GIVE_UP): FAILED,           # ... unless it was interrupted MAX_RESUMES times already
    (CANCELLING, RESTART): CANCELLED,
}
MAX_RESUMES = 3

# ---- stage states --------------------------------------------------------------------------------------------
PENDING, STAGE_RUNNING, STAGE_DONE, SKIPPED, STAGE_FAILED, STAGE_CANCELLED = (
    "pending", "running", "done", "skipped", "failed", "cancelled")


class TransitionRefused(Exception):
    pass


def next_status(status: str, event: str) -> str:
    nxt = JOB_TRANSITIONS.get((status, event))
    if nxt is None:
        raise TransitionRefused(f"a {status} pipeline cannot {event}")
    return nxt


def on_restart(status: str, resumes: int) -> str:
    """What a job left unfinished by a control plane that stopped becomes when the control plane starts."""
    if status == RUNNING and resumes >= MAX_RESUMES:
        return next_status(status, GIVE_UP)
    return next_status(status, RESTART)


# ---- keys ------------------------------------------------------------------------------------------------------
def _canonical(value) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()


def stage_keys(p: Pipeline, file_hash, job_id: str) -> list[str]:
    """One key per stage, chained. `file_hash(path) -> hex` is the I/O seam."""
    keys, prev = [], ""
    for s in p.stages:
        h = hashlib.sha256()
        h.update(_canonical({"kind": s.kind, "config": s.config, "prev": prev,
                             "executor": s.executor.kind if s.kind != "train" else s.executor.__dict__,
                             "files": sorted((f.rsplit("/", 1)[-1], file_hash(f)) for f in s.data_files),
                             "job": job_id if s.kind == "rollout" else ""}))
        prev = h.hexdigest()
        keys.append(prev)
    return keys


def version_for(template: str, gate_key: str, job_id: str) -> str:
    return template.format(hash=gate_key[:10], job=job_id)


def log_tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.splitlines()[-lines:])


def exit_reason(returncode: int, memory_mb: int) -> str:
    """Why a worker process ended badly, in words."""
    import signal

    if returncode < 0:
        sig = signal.Signals(-returncode).name if -returncode in signal.Signals._value2member_map_ else -returncode
        hint = " (out of memory? the kernel's OOM killer sends SIGKILL)" if returncode == -9 else ""
        return f"the worker was killed by {sig}{hint}"
    hint = f" (memory limit {memory_mb} MB)" if memory_mb else ""
    return f"the worker exited with status {returncode}{hint}"
