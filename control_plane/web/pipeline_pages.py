"""The dashboard's pipeline views (read-only), rendered from the pipeline tables' plain rows (pure: no store, no
clock). `summary` is also the JSON shape of /api/pipelines; `detail` that of /api/pipelines/{job_id}."""
from __future__ import annotations

import json

from control_plane.pipelines import plan
from control_plane.web.pages import _clock, esc, layout

STYLE = """<style>
.chips{display:flex;gap:3px;flex-wrap:wrap}.chip{font-size:11px;padding:1px 6px;border-radius:9px;
background:#e2e8f0;color:#334155;white-space:nowrap}.chip.s-done,.chip.s-skipped{background:#dcfce7;color:#166534}
.chip.s-running{background:#dbeafe;color:#1e40af}.chip.s-failed{background:#fee2e2;color:#991b1b}
.chip.s-cancelled{background:#fef3c7;color:#92400e}.status-succeeded,.status-completed{color:#16a34a}
.status-failed,.status-halted,.status-rolled_back,.status-aborted{color:#dc2626}.status-running{color:#2563eb}
pre{background:#f1f5f9;padding:8px;overflow-x:auto;font-size:12px;margin:4px 0;white-space:pre-wrap}
.reason{color:#991b1b;white-space:pre-wrap}td pre{max-width:480px}
</style>"""
FINISHED_STAGE = (plan.STAGE_DONE, plan.SKIPPED)


def _json(text: str) -> dict:
    try:
        return json.loads(text or "{}")
    except ValueError:
        return {"unparsed": text}


def current_stage(job: dict, stages: list[dict]) -> dict | None:
    """The stage the job is at: the running one; the next pending one while queued/running; the one that
    failed or was cancelled; None when every stage is finished."""
    for st in stages:
        if st["status"] in (plan.STAGE_RUNNING, plan.STAGE_FAILED, plan.STAGE_CANCELLED):
            return st
    if job["status"] in plan.TERMINAL:
        return None
    return next((st for st in stages if st["status"] == plan.PENDING), None)


def rollout_info(r) -> dict | None:
    """A control_plane.rollouts.Rollout, in the few words the pipeline views show."""
    if r is None:
        return None
    c = r.counts()
    return {"rollout_id": r.rollout_id, "status": r.status, "reason": r.reason, "model": f"{r.spec.name}@"
            f"{r.spec.version}", "wave": min(r.wave + 1, len(r.spec.waves)), "waves": len(r.spec.waves),
            "assigned": c["assigned"], "succeeded": c["succeeded"], "pending": c["pending"], "failed": c["failed"]}


def summary(job: dict, stages: list[dict], rollout: dict | None = None) -> dict:
    started = [st["started_ms"] for st in stages if st["started_ms"]]
    cur = current_stage(job, stages)
    return {
        "job_id": job["job_id"], "name": job["name"], "status": job["status"], "reason": job["reason"] or "",
        "submitted_by": job["submitted_by"] or "", "created_ms": job["created_ms"],
        "started_ms": min(started) if started else 0,
        "finished_ms": job["updated_ms"] if job["status"] in plan.TERMINAL else 0,
        "resumes": job["resumes"] or 0, "published": job["published"] or "", "rollout_id": job["rollout_id"] or "",
        "rollout": rollout,
        "current_stage": {"index": cur["idx"], "kind": cur["kind"], "status": cur["status"]} if cur else None,
        "progress": {"finished": sum(st["status"] in FINISHED_STAGE for st in stages), "total": len(stages)},
        "stages": [{"index": st["idx"], "kind": st["kind"], "status": st["status"], "cached": bool(st["cached"]),
                    "started_ms": st["started_ms"] or 0, "finished_ms": st["finished_ms"] or 0,
                    "attempts": st["attempts"] or 0} for st in stages]}


def detail(job: dict, stages: list[dict], logs: list[dict], rollout: dict | None = None) -> dict:
    d = summary(job, stages, rollout)
    d["recipe"] = job["recipe"]
    d["base_dir"] = job["base_dir"]
    for out, st in zip(d["stages"], stages):
        out.update(key=st["key"] or "", message=st["message"] or "", inputs=_json(st["inputs"]),
                   outputs=_json(st["outputs"]), metrics=_json(st["metrics"]))
    d["log_tail"] = [{"id": r["id"], "stage": r["idx"], "ts_ms": r["ts_ms"], "line": r["line"]} for r in logs]
    return d


# ---- HTML ------------------------------------------------------------------------------------------------------
def _when(ms: int) -> str:
    return _clock(ms) if ms else "-"


def _chips(stages: list[dict]) -> str:
    return '<div class="chips">' + "".join(
        f'<span class="chip s-{esc(s["status"])}" data-stage="{s["index"]}" data-kind="{esc(s["kind"])}" '
        f'data-status="{esc(s["status"])}" title="{esc(s["kind"])}: {esc(s["status"])}'
        f'{" (cached)" if s["cached"] else ""}">{s["index"]} {esc(s["kind"])}</span>' for s in stages) + "</div>"


def _rollout_cell(r: dict | None, rollout_id: str) -> str:
    if r is None:
        return esc(rollout_id) if rollout_id else "-"
    return (f'<span class="rollout" data-rollout-id="{esc(r["rollout_id"])}" data-status="{esc(r["status"])}">'
            f'{esc(r["rollout_id"])} <b class="status-{esc(r["status"])}">{esc(r["status"])}</b> '
            f'{r["succeeded"]}/{r["assigned"]} serving</span>')


def list_page(rows: list[dict], status_filter: str = "") -> str:
    """rows: `summary` dicts, newest first."""
    if not rows:
        table = '<p id="pipelines" class="muted">no pipelines yet (`slmops pipeline submit RECIPE`)</p>'
    else:
        trs = []
        for p in rows:
            cur = p["current_stage"]
            cur_txt = f'{cur["index"]} {cur["kind"]} ({cur["status"]})' if cur else "-"
            pr = p["progress"]
            pct = 100 * pr["finished"] / pr["total"] if pr["total"] else 0
            first_line = (p["reason"].splitlines() or [""])[0]
            trs.append(
                f'<tr class="pipeline" data-job-id="{esc(p["job_id"])}" data-status="{esc(p["status"])}">'
                f'<td><a href="/pipelines/{esc(p["job_id"])}">{esc(p["job_id"])}</a></td>'
                f'<td class="name">{esc(p["name"])}</td><td class="status-{esc(p["status"])}">{esc(p["status"])}</td>'
                f'<td class="current">{esc(cur_txt)}</td>'
                f'<td><span class="progress">{pr["finished"]}/{pr["total"]}</span>'
                f'<div class="bar"><div style="width:{pct:.0f}%"></div></div>{_chips(p["stages"])}</td>'
                f'<td>{esc(_when(p["started_ms"]))}</td><td>{esc(_when(p["finished_ms"]))}</td>'
                f'<td class="published">{esc(p["published"] or "-")}</td>'
                f'<td class="rollout-cell">{_rollout_cell(p["rollout"], p["rollout_id"])}</td>'
                f'<td class="reason" title="{esc(p["reason"][:2000])}">{esc(first_line[:160])}</td></tr>')
        table = ('<table id="pipelines"><tr><th>job</th><th>recipe</th><th>status</th><th>current stage</th>'
                 '<th>stages</th><th>started</th><th>finished</th><th>published</th><th>rollout</th>'
                 '<th>reason</th></tr>' + "".join(trs) + "</table>")
    filt = f' <span class="muted">status = {esc(status_filter)}</span>' if status_filter else ""
    return layout("pipelines", f'{STYLE}<section><h2>Pipelines{filt}</h2>{table}</section>')


def _pre(value) -> str:
    if not value:
        return '<span class="muted">-</span>'
    return f"<details><summary>{len(value)} field(s)</summary><pre>{esc(json.dumps(value, indent=1))}</pre></details>"


def detail_page(p: dict) -> str:
    """p: a `detail` dict."""
    cur = p["current_stage"]
    cur_txt = f'{cur["index"]} {cur["kind"]}' if cur else "-"
    head = (f'<section id="pipeline" data-job-id="{esc(p["job_id"])}" data-status="{esc(p["status"])}">'
            f'<h2>{esc(p["name"])} <span class="muted">{esc(p["job_id"])}</span></h2>'
            f'<p>status <b class="status status-{esc(p["status"])}">{esc(p["status"])}</b> &middot; stage '
            f'<b class="current">{esc(cur_txt)}</b> &middot; '
            f'<span class="progress">{p["progress"]["finished"]}/{p["progress"]["total"]}</span> stages finished'
            f' &middot; submitted by {esc(p["submitted_by"])} &middot; started {esc(_when(p["started_ms"]))}'
            f' &middot; finished {esc(_when(p["finished_ms"]))}'
            + (f' &middot; resumed {p["resumes"]}x' if p["resumes"] else "") + "</p>"
            f'<p>published <b class="published">{esc(p["published"] or "-")}</b> &middot; rollout '
            f'{_rollout_cell(p["rollout"], p["rollout_id"])}</p>'
            + (f'<p class="reason" id="failure">{esc(p["reason"])}</p>' if p["reason"] else "")
            + f"{_chips(p['stages'])}</section>")
    rows = []
    for s in p["stages"]:
        dur = (s["finished_ms"] - s["started_ms"]) / 1000 if s["finished_ms"] and s["started_ms"] else None
        message = f'<td class="message"><pre>{esc(s["message"])}</pre></td>' if s["message"] else \
            '<td class="message muted">-</td>'
        rows.append(
            f'<tr class="stage" data-stage="{s["index"]}" data-kind="{esc(s["kind"])}" '
            f'data-status="{esc(s["status"])}"><td>{s["index"]}</td><td>{esc(s["kind"])}</td>'
            f'<td class="status-{esc(s["status"])}">{esc(s["status"])}{" (cached)" if s["cached"] else ""}</td>'
            f'<td title="{esc(s["key"])}"><code>{esc(s["key"][:12] or "-")}</code></td><td>{s["attempts"]}</td>'
            f'<td>{esc(_when(s["started_ms"]))}</td><td>{f"{dur:.1f} s" if dur is not None else "-"}</td>'
            f'<td class="inputs">{_pre(s["inputs"])}</td><td class="outputs">{_pre(s["outputs"])}</td>'
            f'<td class="metrics">{_pre(s["metrics"])}</td>{message}</tr>')
    stages = ('<section><h2>Stages</h2><table id="stages"><tr><th>#</th><th>kind</th><th>status</th><th>key</th>'
              '<th>attempts</th><th>started</th><th>took</th><th>inputs</th><th>outputs</th><th>metrics</th>'
              '<th>message</th></tr>' + "".join(rows) + "</table></section>")
    log_lines = "\n".join(f'[{"job" if r["stage"] < 0 else r["stage"]}] {r["line"]}' for r in p["log_tail"])
    logs = (f'<section><h2>Log tail <span class="muted">(last {len(p["log_tail"])} lines; '
            f'`slmops pipeline logs {esc(p["job_id"])}` for all)</span></h2>'
            f'<pre id="log-tail">{esc(log_lines) or "no log lines yet"}</pre></section>')
    recipe = (f'<section><h2>Recipe</h2><p class="muted">relative paths from {esc(p["base_dir"])}</p>'
              f'<pre id="recipe">{esc(p["recipe"])}</pre></section>')
    refresh = 0 if p["status"] in plan.TERMINAL else 5
    return layout(f'pipeline {p["job_id"]}', STYLE + head + stages + logs + recipe, refresh_s=refresh)
