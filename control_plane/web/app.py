"""The dashboard's HTTP routes (Starlette). Every page and JSON route needs an API token (as
`Authorization: Bearer TOKEN`, or the HttpOnly cookie that `/login?token=TOKEN` sets, then redirects so the token
leaves the address bar) whose role is at least the one ROUTE_ROLES names for the route, like the Admin RPCs
(control_plane/auth.py): captured prompts need admin, the rest viewer. `/metrics` (Prometheus) is open, like the
agent's; bind to loopback.
"""
from __future__ import annotations

import html
import json
import time

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from control_plane import auth, rollups
from control_plane.store import Store
from control_plane.telemetry_views import TelemetryViews
from control_plane.web import drift_pages, pages, pipeline_pages

COOKIE = "slmops_admin"
WINDOW_MIN = 60           # device charts
RECENT_MIN = 15           # fleet overview figures
# The least role of each route (by path pattern). Captured prompts and answers are users' data: admin only,
# as no viewer or operator RPC exposes them. Every route but /login and /metrics must be listed here.
ROUTE_ROLES = {"/": "viewer", "/devices/{device_id}": "viewer", "/api/fleet": "viewer",
               "/api/devices/{device_id}/minutes": "viewer", "/api/devices/{device_id}/events": "viewer",
               "/api/captures.jsonl": "admin", "/pipelines": "viewer", "/pipelines/{job_id}": "viewer",
               "/api/pipelines": "viewer", "/api/pipelines/{job_id}": "viewer", "/drift": "viewer",
               "/api/drift": "viewer"}


def build_app(store: Store, views: TelemetryViews, metrics_render=None) -> Starlette:
    def token_of(request: Request) -> str:
        got = request.headers.get("authorization", "")
        return got[7:] if got.startswith("Bearer ") else request.cookies.get(COOKIE, "")

    def guarded(path: str, page):
        """`page` behind the role ROUTE_ROLES names for `path`: 401 without a live token, 403 below the role."""
        need = ROUTE_ROLES[path]

        def route(request: Request):
            t = token_of(request)
            who = store.admin_principal(t) if t else None
            if who is None:
                if request.url.path.startswith("/api/"):
                    return JSONResponse({"error": "missing or unknown admin token (Authorization: Bearer TOKEN)"},
                                        status_code=401)
                return HTMLResponse(pages.login_page(), status_code=401)
            if not auth.role_at_least(who["role"], need):
                why = f"{path} needs role {need}; {who['name']} has role {who['role']}"
                if request.url.path.startswith("/api/"):
                    return JSONResponse({"error": why}, status_code=403)
                return HTMLResponse(pages.layout("forbidden", f"<section>{html.escape(why)}</section>", 0),
                                    status_code=403)
            return page(request)
        return route

    def with_health(d: dict, now: int, recent: dict) -> dict:
        return {**d, "health": rollups.device_health(d["state"], d["last_seen_ms"], now, recent.get(d["device_id"]))}

    def recent_figures(now: int, device_id: str | None = None) -> dict[str, dict]:
        since = now - RECENT_MIN * 60_000
        out = rollups.summarize(store.telemetry(device_id, since))
        for m in views.minutes(device_id, since, now):
            if m["golden_failed"]:
                out.setdefault(m["device_id"], {})["golden_failed"] = \
                    out.get(m["device_id"], {}).get("golden_failed", 0) + m["golden_failed"]
        return out

    def fleet_data(now: int) -> tuple[list[dict], dict]:
        recent = recent_figures(now)
        return [with_health(d, now, recent) for d in store.devices()], recent

    def login(request: Request):
        t = request.query_params.get("token", "")
        if not t or store.admin_role(t) is None:
            return HTMLResponse(pages.login_page("unknown admin token" if t else ""), status_code=401)
        nxt = request.query_params.get("next", "/")
        r = RedirectResponse(nxt if nxt.startswith("/") and not nxt.startswith("//") else "/", status_code=303)
        r.set_cookie(COOKIE, t, httponly=True, samesite="strict", max_age=12 * 3600)
        return r

    def fleet(request: Request):
        now = _now_ms()
        devices, recent = fleet_data(now)
        return HTMLResponse(pages.fleet_page(devices, store.models(), recent, views.events(None, 0, 25), now,
                                             RECENT_MIN, recent_rollouts()))

    def recent_rollouts(limit: int = 5) -> list:
        from control_plane.rollouts import from_json

        rows = sorted(store.rollout_rows(), key=lambda r: r.get("created_ms") or 0, reverse=True)[:limit]
        return [from_json(r["state"]) for r in rows]

    def device(request: Request):
        d = store.device(request.path_params["device_id"])
        if d is None:
            return HTMLResponse(pages.layout("not found", "<section>no such device</section>", 0), status_code=404)
        now = _now_ms()
        window = _int_param(request, "minutes", WINDOW_MIN, 1, 60 * 24 * 7)
        since = now - window * 60_000
        summary = rollups.summarize(store.telemetry(d["device_id"], since)).get(d["device_id"], {})
        d = with_health(d, now, recent_figures(now, d["device_id"]))
        return HTMLResponse(pages.device_page(d, views.minutes(d["device_id"], since, now),
                                              views.events(d["device_id"], 0, 50), views.latest_sample(d["device_id"]),
                                              summary, now, window))

    def api_fleet(request: Request):
        devices, recent = fleet_data(_now_ms())
        keep = ("device_id", "name", "state", "message", "health", "current_name", "current_version",
                "desired_name", "desired_version", "last_seen_ms", "agent_version")
        return JSONResponse({"devices": [{k: d[k] for k in keep} | {"recent": recent.get(d["device_id"], {})}
                                         for d in devices], "models": store.models()})

    def api_minutes(request: Request):
        now = _now_ms()
        window = _int_param(request, "minutes", WINDOW_MIN, 1, 60 * 24 * 90)
        return JSONResponse({"minutes": views.minutes(request.path_params["device_id"], now - window * 60_000, now)})

    def api_events(request: Request):
        limit = _int_param(request, "limit", 100, 1, 1000)
        rows = views.events(request.path_params["device_id"], 0, limit)
        return JSONResponse({"events": [{k: v for k, v in r.items() if k != "vals"} for r in rows]})

    def api_captures(request: Request):
        lines = (json.dumps(row, ensure_ascii=False) + "\n" for row in views.captures())
        return Response("".join(lines), media_type="application/x-ndjson",
                        headers={"Content-Disposition": 'attachment; filename="captures.jsonl"'})

    # ---- pipelines (read-only; the pipeline tables live in the same SQLite file) --------------------------------
    made: list = []

    def pipeline_jobs():
        if not made:   # once: Jobs creates the tables only if they do not exist yet (the manager made them)
            from control_plane.pipelines.jobs import Jobs

            made.append(Jobs(store))
        return made[0]

    def pipeline_rollout(job: dict):
        if not job["rollout_id"]:
            return None
        from control_plane import rollout_driver

        return pipeline_pages.rollout_info(rollout_driver.load(store, job["rollout_id"]))

    def pipeline_rows(request: Request) -> tuple[list[dict], str]:
        jobs = pipeline_jobs()
        status = request.query_params.get("status", "")
        rows = jobs.jobs((status,) if status else (), _int_param(request, "limit", 50, 1, 1000))
        return [pipeline_pages.summary(j, jobs.stages(j["job_id"]), pipeline_rollout(j)) for j in rows], status

    def pipeline_detail(request: Request) -> dict | None:
        jobs = pipeline_jobs()
        job = jobs.job(request.path_params["job_id"])
        if job is None:
            return None
        return pipeline_pages.detail(job, jobs.stages(job["job_id"]),
                                     jobs.log_tail(job["job_id"], _int_param(request, "lines", 200, 1, 5000)),
                                     pipeline_rollout(job))

    def pipelines(request: Request):
        rows, status = pipeline_rows(request)
        return HTMLResponse(pipeline_pages.list_page(rows, status))

    def pipeline(request: Request):
        d = pipeline_detail(request)
        if d is None:
            return HTMLResponse(pages.layout("not found", "<section>no such pipeline</section>", 0), status_code=404)
        return HTMLResponse(pipeline_pages.detail_page(d))

    def api_pipelines(request: Request):
        return JSONResponse({"pipelines": pipeline_rows(request)[0]})

    def api_pipeline(request: Request):
        d = pipeline_detail(request)
        if d is None:
            return JSONResponse({"error": f"no pipeline {request.path_params['job_id']!r}"}, status_code=404)
        return JSONResponse({"pipeline": d})

    # ---- drift (what the telemetry job's last checks kept, control_plane/drift_monitor.py) ------------------
    def drift_data(request: Request) -> tuple[list[dict], str, list[dict], int]:
        from control_plane import drift_monitor

        window = _int_param(request, "minutes", WINDOW_MIN, 1, 60 * 24 * 7)
        ref = request.query_params.get("model", "")[:200]
        hist = drift_monitor.history(store, ref, _now_ms() - window * 60_000) if ref else []
        return drift_monitor.latest(store), ref, hist, window

    def drift(request: Request):
        return HTMLResponse(drift_pages.drift_page(*drift_data(request)))

    def api_drift(request: Request):
        latest, ref, hist, window = drift_data(request)
        return JSONResponse({"latest": latest, "model": ref, "history": hist, "minutes": window})

    def metrics(request: Request):
        return PlainTextResponse(metrics_render() if metrics_render else "", media_type="text/plain; version=0.0.4")

    pages_by_path = {"/": fleet, "/devices/{device_id}": device, "/api/fleet": api_fleet,
                     "/api/devices/{device_id}/minutes": api_minutes, "/api/devices/{device_id}/events": api_events,
                     "/api/captures.jsonl": api_captures, "/pipelines": pipelines, "/pipelines/{job_id}": pipeline,
                     "/api/pipelines": api_pipelines, "/api/pipelines/{job_id}": api_pipeline, "/drift": drift,
                     "/api/drift": api_drift}
    if set(pages_by_path) != set(ROUTE_ROLES):
        raise RuntimeError("every dashboard route needs its role in ROUTE_ROLES")
    return Starlette(routes=[Route("/login", login), Route("/metrics", metrics),
                             *(Route(path, guarded(path, page)) for path, page in pages_by_path.items())])


def _now_ms() -> int:
    return int(time.time() * 1000)


def _int_param(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    try:
        return max(lo, min(hi, int(request.query_params.get(name, default))))
    except ValueError:
        return default
