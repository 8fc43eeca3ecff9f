"""Runs queued pipelines: at most `max_jobs` at a time, one thread each, every worker stage in its own process.

The queue is the pipeline_jobs table, so it survives a restart. On start, jobs a stopped control plane left
running are resumed (their leftover workers are killed first; stages already done are skipped by key) or,
after MAX_RESUMES interruptions, failed with the reason; a job being cancelled becomes cancelled.
A worker that crashes, is killed (out of memory) or times out fails its job with the log tail; other jobs and
the control plane carry on. Cancel stops the worker's process group; its staging folder is deleted, so partial
outputs are never used or published.
"""
from __future__ import annotations

import hashlib
import json
import logging
import pathlib
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass

from control_plane.pipelines import delivery, executor, plan
from control_plane.pipelines.jobs import Jobs
from control_plane.pipelines.recipe import Pipeline, PipelineInvalid, loads
from control_plane.pipelines.worker import RESULT
from control_plane.store import now_ms

log = logging.getLogger("slmops.pipelines")
JOB_LOG = -1   # log lines about the job itself, not one stage


class StageError(Exception):
    """The stage failed; the message (with the log tail for workers) is recorded."""


class _Cancelled(Exception):
    pass


class _Shutdown(Exception):
    """The control plane is stopping: leave the job running, the next start resumes it."""


@dataclass(frozen=True)
class ManagerConfig:
    data_dir: pathlib.Path
    max_jobs: int = 1            # pipelines running at once (each runs one stage at a time)
    poll_s: float = 0.2
    stop_grace_s: float = 5.0

    def __post_init__(self) -> None:
        if not 1 <= self.max_jobs <= 64:
            raise ValueError(f"pipeline max_jobs={self.max_jobs} must be in [1, 64]")


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _paths(outputs: dict) -> list[str]:
    found = []
    for k, v in outputs.items():
        if isinstance(v, dict):
            found += _paths(v)
        elif isinstance(v, str) and (k.endswith("_dir") or k in ("fp32", "fp16", "int8", "int4")):
            found.append(v)
    return found


class PipelineManager:
    def __init__(self, store, registry, blobs, cfg: ManagerConfig):
        self.store, self.registry, self.blobs, self.cfg = store, registry, blobs, cfg
        self.jobs = Jobs(store)
        self.work = pathlib.Path(cfg.data_dir) / "pipelines"
        for sub in ("stages", "specs", "logs", "model-cache"):
            (self.work / sub).mkdir(parents=True, exist_ok=True)
        self._threads: dict[str, threading.Thread] = {}
        self._cancel: dict[str, threading.Event] = {}
        self._wake, self._stop = threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None

    # ---- API used by the servicer ---------------------------------------------------------------------------
    def submit(self, text: str, base_dir: str, who: str) -> str:
        """Validates the whole recipe (PipelineInvalid lists every error) and queues it."""
        p = loads(text, base_dir)
        job_id = self.jobs.add(p.name, text, str(base_dir), [s.kind for s in p.stages], who)
        self.jobs.log(job_id, JOB_LOG, [f"queued by {who}: {len(p.stages)} stages "
                                        f"({' -> '.join(s.kind for s in p.stages)})"])
        self._wake.set()
        return job_id

    def cancel(self, job_id: str, who: str) -> str:
        """The job's new status; plan.TransitionRefused when it already finished."""
        with self.jobs.lock:
            status = self.jobs.transition(job_id, plan.CANCEL, f"cancelled by {who}")
            self._cancel.setdefault(job_id, threading.Event()).set()
        self.jobs.log(job_id, JOB_LOG, [f"cancel requested by {who}"])
        return status

    # ---- lifecycle ------------------------------------------------------------------------------------------
    def start(self) -> None:
        self.recover()
        self._thread = threading.Thread(target=self._loop, name="pipelines", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for t in list(self._threads.values()):
            t.join(self.cfg.stop_grace_s + 5)

    def recover(self) -> None:
        for job in self.jobs.jobs((plan.RUNNING, plan.CANCELLING), limit=10_000):
            interrupted = []
            for st in self.jobs.stages(job["job_id"]):
                if st["status"] != plan.STAGE_RUNNING:
                    continue
                marker = f"{job['job_id']}-{st['idx']}.json"
                if st["worker_pid"] and executor.is_our_worker(st["worker_pid"], marker):
                    executor.kill_group(st["worker_pid"])
                keep = st["outputs"] if st["kind"] == "rollout" else "{}"   # a started rollout is followed again
                self.jobs.set_stage(job["job_id"], st["idx"], status=plan.PENDING, worker_pid=0, outputs=keep,
                                    message="interrupted by a control plane restart")
                interrupted.append(f"{st['idx']} {st['kind']}")
            new = plan.on_restart(job["status"], job["resumes"])
            what = f"stage {', '.join(interrupted)}" if interrupted else "between stages"
            reason = {plan.QUEUED: f"resumed after a control plane restart (interrupted {what})",
                      plan.FAILED: f"interrupted by control plane restarts {job['resumes'] + 1} times "
                                   f"(last: {what}); not resumed again",
                      plan.CANCELLED: job["reason"] or "cancelled"}[new]
            self.jobs.update(job["job_id"], status=new, reason=reason, resumes=job["resumes"] + 1)
            self.jobs.log(job["job_id"], JOB_LOG, [reason])
            log.warning("pipeline %s: %s", job["job_id"], reason)

    def _loop(self) -> None:
        while not self._stop.is_set():
            for job_id, t in list(self._threads.items()):
                if not t.is_alive():
                    del self._threads[job_id]
            for job in self.jobs.queued():
                if len(self._threads) >= self.cfg.max_jobs:
                    break
                if job["job_id"] in self._threads:
                    continue
                t = threading.Thread(target=self._run_job, args=(job["job_id"],), name=f"pipeline-{job['job_id']}",
                                     daemon=True)
                self._threads[job["job_id"]] = t
                t.start()
            self._wake.wait(1.0)
            self._wake.clear()

    # ---- one job --------------------------------------------------------------------------------------------
    def _run_job(self, job_id: str) -> None:
        cancel = self._cancel.setdefault(job_id, threading.Event())
        try:
            with self.jobs.lock:
                if self.jobs.job(job_id)["status"] != plan.QUEUED:
                    return  # cancelled while waiting
                self.jobs.transition(job_id, plan.START, "")
            job = self.jobs.job(job_id)
            try:
                p = loads(job["recipe"], job["base_dir"])   # files may have changed since it was queued
            except PipelineInvalid as e:
                raise StageError(str(e)) from e
            keys = plan.stage_keys(p, file_sha256, job_id)
            self._stages(job_id, p, keys, cancel)
            self._finish(job_id, plan.DONE, "")
        except _Shutdown:
            return
        except _Cancelled:
            self._finish(job_id, plan.STOPPED, None)
        except StageError as e:
            self._finish(job_id, plan.FAIL, str(e))
        except Exception as e:  # a bug here must fail this job visibly, not the control plane
            log.exception("pipeline %s", job_id)
            self._finish(job_id, plan.FAIL, f"internal error: {type(e).__name__}: {e}")
        finally:
            self._wake.set()

    def _finish(self, job_id: str, event: str, reason: str | None) -> None:
        with self.jobs.lock:
            status = self.jobs.job(job_id)["status"]
            if status == plan.CANCELLING:
                event, reason = plan.STOPPED, None
            status = self.jobs.transition(job_id, event, reason)
        self.jobs.log(job_id, JOB_LOG, [f"pipeline {status}" + (f": {reason}" if reason else "")])

    def _stages(self, job_id: str, p: Pipeline, keys: list[str], cancel: threading.Event) -> None:
        ctx: dict = {}
        for idx, (stage, key) in enumerate(zip(p.stages, keys)):
            if cancel.is_set():
                raise _Cancelled()
            if self._stop.is_set():
                raise _Shutdown()
            row = self.jobs.stages(job_id)[idx]
            if row["status"] in (plan.STAGE_DONE, plan.SKIPPED) and row["key"] == key:
                ctx.update(json.loads(row["outputs"]))
                continue
            reuse = self.jobs.done_with_key(key) if stage.kind != "rollout" else None
            if reuse and all(pathlib.Path(x).exists() for x in _paths(json.loads(reuse["outputs"]))):
                self.jobs.set_stage(job_id, idx, status=plan.SKIPPED, key=key, cached=1, outputs=reuse["outputs"],
                                    metrics=reuse["metrics"], finished_ms=now_ms(),
                                    message=f"same inputs as {reuse['job_id']} stage {reuse['idx']}; reused")
                self.jobs.log(job_id, idx, [f"stage {idx} {stage.kind}: skipped, same inputs (key {key[:12]}) as "
                                            f"{reuse['job_id']}"])
                ctx.update(json.loads(reuse["outputs"]))
                if stage.kind == "publish":
                    self.jobs.update(job_id, published=ctx["model"])
                continue
            self.jobs.set_stage(job_id, idx, status=plan.STAGE_RUNNING, key=key, inputs=ctx, started_ms=now_ms(),
                                finished_ms=0, attempts=row["attempts"] + 1, message="", cached=0)
            self.jobs.log(job_id, idx, [f"stage {idx} {stage.kind}: running (key {key[:12]})"])
            t0 = time.monotonic()
            try:
                if stage.kind == "publish":
                    outputs, metrics = self._publish(job_id, stage, ctx, keys[idx - 1])
                elif stage.kind == "rollout":
                    outputs, metrics = self._rollout(job_id, idx, stage, ctx, json.loads(row["outputs"]), cancel)
                else:
                    outputs, metrics = self._worker(job_id, idx, stage, key, ctx, cancel)
            except StageError as e:
                self.jobs.set_stage(job_id, idx, status=plan.STAGE_FAILED, message=str(e)[-4000:],
                                    finished_ms=now_ms())
                raise StageError(f"stage {idx} {stage.kind} failed: {e}") from e
            except _Cancelled:
                self.jobs.set_stage(job_id, idx, status=plan.STAGE_CANCELLED, message="cancelled",
                                    finished_ms=now_ms())
                raise
            self.jobs.set_stage(job_id, idx, status=plan.STAGE_DONE, outputs=outputs, metrics=metrics,
                                finished_ms=now_ms(), worker_pid=0,
                                message=f"done in {time.monotonic() - t0:.1f} s")
            self.jobs.log(job_id, idx, [f"stage {idx} {stage.kind}: done in {time.monotonic() - t0:.1f} s"])
            ctx.update(outputs)

    def _worker(self, job_id: str, idx: int, stage, key: str, ctx: dict, cancel) -> tuple[dict, dict]:
        final = self.work / "stages" / key
        staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{key[:16]}.", dir=self.work / "stages"))
        spec_path = self.work / "specs" / f"{job_id}-{idx}.json"
        log_path = self.work / "logs" / f"{job_id}-{idx}.log"
        spec_path.write_text(json.dumps({"kind": stage.kind, "config": stage.config, "inputs": ctx,
                                         "out_dir": str(staging), "cache_dir": str(self.work / "model-cache")}))
        log_path.write_bytes(b"")
        handle = executor.start(spec_path, log_path, self._base_dir(job_id), stage.resources, stage.executor)
        self.jobs.set_stage(job_id, idx, worker_pid=handle.pid)
        self.jobs.log(job_id, idx, [f"worker pid {handle.pid} ({stage.executor.kind}"
                                    + (f", {stage.executor.nproc_per_node} processes" if stage.executor.kind ==
                                       "torchrun" else "") + ")"])
        deadline = time.monotonic() + stage.resources.timeout_s
        offset = 0
        try:
            while True:
                rc = handle.poll()
                offset = self._pump(job_id, idx, log_path, offset, final=rc is not None)
                if rc is not None:
                    break
                if cancel.is_set():
                    handle.stop(self.cfg.stop_grace_s)
                    self._pump(job_id, idx, log_path, offset, final=True)
                    raise _Cancelled()
                if self._stop.is_set():
                    handle.stop(self.cfg.stop_grace_s)
                    raise _Shutdown()
                if time.monotonic() > deadline:
                    handle.stop(self.cfg.stop_grace_s)
                    raise StageError(f"timed out after {stage.resources.timeout_s} s; log tail:\n"
                                     + plan.log_tail(log_path.read_text(errors="replace")))
                time.sleep(self.cfg.poll_s)
            tail = plan.log_tail(log_path.read_text(errors="replace"))
            if rc == 2:
                raise StageError(tail.splitlines()[-1] if tail else "refused")
            if rc != 0 or not (staging / RESULT).exists():
                raise StageError(f"{plan.exit_reason(rc, stage.resources.memory_mb)}; log tail:\n{tail}")
            result = (staging / RESULT).read_text()
            if final.exists():
                shutil.rmtree(final)   # an earlier run whose row was lost; this one is complete
            staging.rename(final)
            result = json.loads(result.replace(json.dumps(str(staging))[1:-1], json.dumps(str(final))[1:-1]))
            return result["outputs"], result["metrics"]
        finally:
            shutil.rmtree(staging, ignore_errors=True)   # partial outputs never outlive a failed/cancelled stage

    def _pump(self, job_id: str, idx: int, path: pathlib.Path, offset: int, final: bool) -> int:
        """Copies the worker's new complete log lines into SQLite; returns the new offset."""
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
        if not final:
            data = data[:data.rfind(b"\n") + 1]
        lines = [ln.replace("\r", "") for ln in data.decode(errors="replace").splitlines() if ln.strip()]
        self.jobs.log(job_id, idx, lines)
        return offset + len(data)

    def _base_dir(self, job_id: str) -> str:
        return self.jobs.job(job_id)["base_dir"]

    def _publish(self, job_id: str, stage, ctx: dict, gate_key: str) -> tuple[dict, dict]:
        name, version = stage.config["name"], plan.version_for(stage.config["version"], gate_key, job_id)
        try:
            out = delivery.publish(self.registry, self.blobs, self.store, ctx["bundle_dir"], name, version)
        except delivery.DeliveryFailed as e:
            raise StageError(str(e)) from e
        self.jobs.update(job_id, published=f"{name}@{version}")
        self.jobs.log(job_id, JOB_LOG, [f"published {name}@{version}"
                                        + (" (already published)" if out.get("already_published") else "")])
        return {"model": f"{name}@{version}", "name": name, "version": version}, out

    def _rollout(self, job_id: str, idx: int, stage, ctx: dict, saved: dict, cancel) -> tuple[dict, dict]:
        cfg, who = stage.config, f"pipeline:{job_id}"
        rollout_id = saved.get("rollout_id")
        if not rollout_id:
            try:
                rollout_id = delivery.start_rollout(self.store, cfg, ctx["name"], ctx["version"], who)
            except (delivery.DeliveryFailed, ValueError) as e:
                raise StageError(str(e)) from e
            self.jobs.set_stage(job_id, idx, outputs={"rollout_id": rollout_id})   # saved before waiting on it
            self.jobs.update(job_id, rollout_id=rollout_id)
            self.jobs.log(job_id, idx, [f"rollout {rollout_id} of {ctx['model']} ({cfg['strategy']}) started"])
        if not cfg["wait"]:
            return {"rollout_id": rollout_id}, {}
        deadline = time.monotonic() + cfg["wait_timeout_s"]
        while (outcome := delivery.rollout_outcome(self.store, rollout_id)) is None:
            if cancel.is_set():
                delivery.abort_rollout(self.store, rollout_id, who)
                self.jobs.log(job_id, idx, [f"rollout {rollout_id} aborted (pipeline cancelled)"])
                raise _Cancelled()
            if self._stop.is_set():
                raise _Shutdown()
            if time.monotonic() > deadline:
                raise StageError(f"rollout {rollout_id} not finished after {cfg['wait_timeout_s']} s "
                                 f"(still running; see `slmops rollout status {rollout_id}`)")
            time.sleep(max(self.cfg.poll_s, 0.5))
        status, reason = outcome
        self.jobs.log(job_id, idx, [f"rollout {rollout_id} {status}" + (f": {reason}" if reason else "")])
        if status != "completed":
            raise StageError(f"rollout {rollout_id} {status}" + (f": {reason}" if reason else ""))
        return {"rollout_id": rollout_id}, {"status": status}
