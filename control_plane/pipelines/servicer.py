"""The pipeline Admin RPCs (thin): decode, call the manager / tables, encode. A mixin of
servicers.AdminServicer; `self.pipelines` is the PipelineManager (set in server.py). Role checks and audit
rows come from auth.AuditInterceptor (Submit/Cancel: operator; List/Get/Logs: viewer).
"""
from __future__ import annotations

import time

import grpc

from control_plane import auth
from control_plane.pipelines import plan
from control_plane.pipelines.recipe import PipelineInvalid
from slmops.v1 import admin_pb2

FOLLOW_POLL_S = 0.3


def pipeline_pb(job: dict, stages: list[dict], with_recipe: bool = False) -> admin_pb2.Pipeline:
    return admin_pb2.Pipeline(
        job_id=job["job_id"], name=job["name"], status=job["status"], reason=job["reason"] or "",
        submitted_by=job["submitted_by"] or "", created_unix_ms=job["created_ms"], updated_unix_ms=job["updated_ms"],
        published=job["published"] or "", rollout_id=job["rollout_id"] or "", resumes=job["resumes"] or 0,
        recipe_yaml=job["recipe"] if with_recipe else "",
        stages=[admin_pb2.PipelineStage(
            index=s["idx"], kind=s["kind"], status=s["status"], key=s["key"] or "", inputs_json=s["inputs"] or "",
            outputs_json=s["outputs"] or "", metrics_json=s["metrics"] or "", message=s["message"] or "",
            started_unix_ms=s["started_ms"] or 0, finished_unix_ms=s["finished_ms"] or 0, attempts=s["attempts"] or 0,
            cached=bool(s["cached"])) for s in stages])


class PipelineAdmin:
    pipelines = None   # control_plane.pipelines.manager.PipelineManager
    store = None

    def _manager(self, context):
        if self.pipelines is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, "this control plane runs no pipeline manager")
        return self.pipelines

    def _job(self, context, job_id: str) -> dict:
        job = self._manager(context).jobs.job(job_id)
        if job is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no pipeline {job_id!r}")
        return job

    def _pb(self, job_id: str, with_recipe: bool = False) -> admin_pb2.Pipeline:
        jobs = self.pipelines.jobs
        return pipeline_pb(jobs.job(job_id), jobs.stages(job_id), with_recipe)

    def SubmitPipeline(self, request, context):
        m = self._manager(context)
        if not request.base_dir:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "base_dir is required (relative paths start there)")
        who = (auth.admin_principal(self.store, context) or {"name": "?"})["name"]
        try:
            job_id = m.submit(request.recipe_yaml, request.base_dir, who)
        except PipelineInvalid as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        return self._pb(job_id)

    def ListPipelines(self, request, context):
        m = self._manager(context)
        rows = m.jobs.jobs((request.status,) if request.status else (), min(request.limit or 50, 1000))
        return admin_pb2.PipelineList(pipelines=[pipeline_pb(j, m.jobs.stages(j["job_id"])) for j in rows])

    def GetPipeline(self, request, context):
        self._job(context, request.job_id)
        return self._pb(request.job_id, with_recipe=True)

    def CancelPipeline(self, request, context):
        m = self._manager(context)
        job = self._job(context, request.job_id)
        who = (auth.admin_principal(self.store, context) or {"name": "?"})["name"]
        try:
            m.cancel(job["job_id"], who)
        except plan.TransitionRefused as e:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"pipeline {job['job_id']}: {e}")
        return self._pb(job["job_id"])

    def PipelineLogs(self, request, context):
        m = self._manager(context)
        self._job(context, request.job_id)
        after = request.after_id
        while context.is_active():
            rows = m.jobs.logs(request.job_id, after)
            for r in rows:
                yield admin_pb2.PipelineLogLine(id=r["id"], stage=r["idx"], ts_unix_ms=r["ts_ms"], line=r["line"])
                after = r["id"]
            if rows:
                continue
            if not request.follow or m.jobs.job(request.job_id)["status"] in plan.TERMINAL:
                if not m.jobs.logs(request.job_id, after, 1):   # nothing written between the two reads
                    return
                continue
            time.sleep(FOLLOW_POLL_S)
