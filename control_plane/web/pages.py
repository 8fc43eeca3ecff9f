"""The dashboard's HTML, rendered from plain dicts (pure: no store, no clock). One small inline script
refreshes the page body in place; everything else is server-rendered so the page works without it."""
from __future__ import annotations

import html
import time

from control_plane.web.charts import line_chart

esc = html.escape

STYLE = """
.bar{width:120px;height:8px;background:#e2e8f0;border-radius:4px}.bar div{height:8px;background:#16a34a;border-radius:4px}
body{font:14px system-ui,sans-serif;margin:0;color:#111;background:#f8fafc}
header{background:#0f172a;color:#fff;padding:10px 20px}header a{color:#fff;text-decoration:none;font-weight:600}
main{padding:16px 20px}section{background:#fff;border:1px solid #e2e8f0;border-radius:6px;padding:12px 16px;
margin-bottom:16px}h2{font-size:16px;margin:0 0 8px}table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #e2e8f0;font-variant-numeric:tabular-nums}
th{font-weight:600;color:#475569}.health-healthy{color:#16a34a}.health-degraded{color:#d97706}
.health-error,.health-offline{color:#dc2626}.charts{display:flex;flex-wrap:wrap;gap:12px}
.chart{background:#fff;border:1px solid #e2e8f0}.chart-title{font-weight:600;font-size:12px}
.tick,.legend{font-size:11px;fill:#475569}.axis{stroke:#94a3b8}.nodata{fill:#94a3b8}
.kpis{display:flex;gap:24px}.kpi b{display:block;font-size:22px}.muted{color:#64748b}
.outcome-error,.outcome-fail{color:#dc2626}
"""

REFRESH_JS = """
(function(){var s=document.body.dataset.refresh|0;if(!s)return;setInterval(function(){
fetch(location.href,{credentials:'same-origin'}).then(function(r){return r.ok?r.text():null}).then(function(t){
if(!t)return;var d=new DOMParser().parseFromString(t,'text/html');var m=d.querySelector('main');
if(m)document.querySelector('main').innerHTML=m.innerHTML;})},s*1000);})();
"""


def _ago(ms: int, now_ms: int) -> str:
    s = max(0, (now_ms - ms) // 1000)
    return f"{s} s ago" if s < 120 else f"{s // 60} min ago" if s < 7200 else f"{s // 3600} h ago"


def _clock(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000))


def _ref(name: str, version: str) -> str:
    return f"{name}@{version}" if name else "-"


def layout(title: str, body: str, refresh_s: int = 15) -> str:
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f'<style>{STYLE}</style></head><body data-refresh="{refresh_s}"><header><a href="/">SLMOps</a> '
            f'<span class="muted">&middot; {esc(title)}</span> <nav style="float:right"><a href="/">fleet</a> '
            f'&middot; <a href="/pipelines">pipelines</a> &middot; <a href="/drift">drift</a></nav></header><main>{body}</main>'
            f'<script>{REFRESH_JS}</script></body></html>')


def login_page(message: str = "") -> str:
    msg = f'<p class="outcome-error">{esc(message)}</p>' if message else ""
    return layout("sign in", f'<section><h2>Admin token</h2>{msg}<form method="get" action="/login">'
                             '<input type="password" name="token" size="48" autofocus> <button>Sign in</button>'
                             '</form><p class="muted">The token is in the control plane\'s data folder '
                             '(admin-token).</p></section>', refresh_s=0)


def events_table(events: list[dict], now_ms: int, show_device: bool) -> str:
    rows = "".join(
        f'<tr class="event" data-kind="{esc(e["kind"])}" data-name="{esc(e["name"])}">'
        f'<td title="{esc(_clock(e["ts_ms"]))}">{esc(_ago(e["ts_ms"], now_ms))}</td>'
        + (f'<td><a href="/devices/{esc(e["device_id"])}">{esc(e["device_id"])}</a></td>' if show_device else "")
        + f'<td>{esc(e["kind"])}</td><td>{esc(e["name"])}</td><td>{esc(e["model"] or "-")}</td>'
        f'<td class="outcome-{esc(e["outcome"])}">{esc(e["outcome"])}</td><td>{esc(e["detail"][:160])}</td></tr>'
        for e in events)
    head = "<tr><th>when</th>" + ("<th>device</th>" if show_device else "") + \
           "<th>kind</th><th>name</th><th>model</th><th>outcome</th><th>detail</th></tr>"
    return f'<table id="events">{head}{rows}</table>' if events else '<p id="events" class="muted">no events</p>'


def rollouts_section(rollouts: list) -> str:
    """rollouts: control_plane.rollouts.Rollout objects, newest first."""
    if not rollouts:
        return '<p id="rollouts" class="muted">no rollouts yet</p>'
    rows = []
    for r in rollouts:
        c = r.counts()
        waves = len(r.spec.waves)
        pct = 100 * c["succeeded"] / c["assigned"] if c["assigned"] else 0
        rows.append(
            f'<tr class="rollout" data-rollout-id="{esc(r.rollout_id)}" data-status="{esc(r.status)}">'
            f'<td>{esc(r.rollout_id)}</td><td>{esc(_ref(r.spec.name, r.spec.version))}</td>'
            f'<td class="status-{esc(r.status)}">{esc(r.status)}</td><td>{min(r.wave + 1, waves)} / {waves}</td>'
            f'<td>{c["assigned"]}</td><td class="succeeded">{c["succeeded"]}</td><td>{c["pending"]}</td>'
            f'<td>{c["failed"]}</td><td><div class="bar"><div style="width:{pct:.0f}%"></div></div></td>'
            f'<td>{esc(r.reason[:100])}</td><td>{esc(_clock(r.created_ms))}</td></tr>')
    return ('<table id="rollouts"><tr><th>rollout</th><th>model</th><th>status</th><th>wave</th><th>assigned</th>'
            '<th>serving</th><th>pending</th><th>failed</th><th>progress</th><th>reason</th><th>created</th></tr>'
            + "".join(rows) + "</table>")


def fleet_page(devices: list[dict], models: list[dict], recent: dict[str, dict], events: list[dict],
               now_ms: int, window_min: int, rollouts: list = ()) -> str:
    """devices: store rows + "health"; recent: per device figures for the last `window_min` minutes."""
    counts: dict[str, int] = {}
    for d in devices:
        counts[d["health"]] = counts.get(d["health"], 0) + 1
    kpis = "".join(f'<div class="kpi" data-kpi="{k}"><b>{counts.get(k, 0)}</b>{k}</div>'
                   for k in ("healthy", "degraded", "error", "offline"))
    total_req = sum(r.get("requests", 0) for r in recent.values())
    kpis = f'<div class="kpi" data-kpi="devices"><b>{len(devices)}</b>devices</div>{kpis}' \
           f'<div class="kpi" data-kpi="requests"><b>{total_req}</b>requests ({window_min} min)</div>'
    rows = []
    for d in devices:
        r = recent.get(d["device_id"], {})
        rows.append(
            f'<tr class="device" data-device-id="{esc(d["device_id"])}" data-health="{esc(d["health"])}">'
            f'<td><a href="/devices/{esc(d["device_id"])}">{esc(d["name"])}</a></td><td>{esc(d["device_id"])}</td>'
            f'<td class="health-{esc(d["health"])}">{esc(d["health"])}</td><td>{esc(d["state"])}</td>'
            f'<td class="current">{esc(_ref(d["current_name"], d["current_version"]))}</td>'
            f'<td>{esc(_ref(d["desired_name"], d["desired_version"]))}</td>'
            f'<td>{esc(_ago(d["last_seen_ms"], now_ms))}</td>'
            f'<td class="requests">{r.get("requests", 0)}</td><td>{r.get("errors", 0)}</td>'
            f'<td>{r.get("p95_latency_ms", 0):.0f}</td><td>{r.get("tokens_per_s", 0):.1f}</td>'
            f'<td>{esc(d["message"][:80])}</td></tr>')
    devices_html = ('<table id="devices"><tr><th>name</th><th>device</th><th>health</th><th>state</th>'
                    '<th>current</th><th>desired</th><th>last seen</th>'
                    f'<th>requests ({window_min} min)</th><th>errors</th><th>p95 ms</th><th>tok/s</th>'
                    '<th>message</th></tr>' + "".join(rows) + "</table>") if devices else \
        '<p id="devices" class="muted">no devices enrolled yet</p>'
    on = {}
    for d in devices:
        if d["current_name"]:
            key = (d["current_name"], d["current_version"])
            on[key] = on.get(key, 0) + 1
    versions = "".join(
        f'<tr class="model" data-ref="{esc(_ref(m["name"], m["version"]))}"><td>{esc(m["name"])}</td>'
        f'<td>{esc(m["version"])}</td><td>{esc(m["precision"])}</td><td>{m["total_bytes"] / 1e6:.2f}</td>'
        f'<td>{on.get((m["name"], m["version"]), 0)}</td></tr>' for m in models)
    versions_html = ('<table id="models"><tr><th>model</th><th>version</th><th>precision</th><th>MB</th>'
                     f'<th>devices serving</th></tr>{versions}</table>') if models else \
        '<p id="models" class="muted">no models published</p>'
    body = (f'<section><div class="kpis">{kpis}</div></section>'
            f'<section><h2>Devices</h2>{devices_html}</section>'
            f'<section><h2>Model versions</h2>{versions_html}</section>'
            f'<section id="rollout-progress"><h2>Rollout progress</h2>{rollouts_section(list(rollouts))}</section>'
            f'<section><h2>Recent events</h2>{events_table(events, now_ms, show_device=True)}</section>')
    return layout("fleet", body)


def device_page(d: dict, minutes: list[dict], events: list[dict], sample: dict | None, summary: dict,
                now_ms: int, window_min: int) -> str:
    def pts(key, scale=1.0, skip_negative=False):
        return [(m["minute_ms"], m[key] * scale) for m in minutes if not (skip_negative and m[key] < 0)]

    charts = [
        line_chart("chart-latency", "latency", [("p50", pts("p50_latency_ms")), ("p95", pts("p95_latency_ms"))], "ms"),
        line_chart("chart-tokens", "decode speed", [("tokens/s", pts("tokens_per_s"))], "tokens/s"),
        line_chart("chart-requests", "requests and errors", [("requests", pts("requests")),
                                                             ("errors", pts("errors"))], "per minute"),
        line_chart("chart-cpu", "CPU", [("cpu", pts("cpu_percent", skip_negative=True))], "%"),
        line_chart("chart-rss", "memory (RSS)", [("rss", pts("rss_bytes", 1 / 1e6, skip_negative=True))], "MB"),
    ]
    vals = (sample or {}).get("values", {})
    res = (f'CPU {vals.get("cpu_percent", 0):.0f}% &middot; RSS {vals.get("rss_bytes", 0) / 1e6:.0f} MB &middot; '
           f'disk free {vals.get("disk_free_bytes", 0) / 1e9:.1f} GB &middot; queue {vals.get("queue_depth", 0):.0f}'
           f' &middot; telemetry dropped {vals.get("telemetry_dropped", 0):.0f}') if sample else "no resource sample yet"
    s = summary
    body = (f'<section id="device" data-device-id="{esc(d["device_id"])}"><h2>{esc(d["name"])} '
            f'<span class="muted">{esc(d["device_id"])}</span></h2>'
            f'<p>state <b class="state">{esc(d["state"])}</b> &middot; health '
            f'<b class="health-{esc(d["health"])}">{esc(d["health"])}</b> &middot; serving '
            f'<b class="current">{esc(_ref(d["current_name"], d["current_version"]))}</b> &middot; desired '
            f'{esc(_ref(d["desired_name"], d["desired_version"]))} &middot; last seen '
            f'{esc(_ago(d["last_seen_ms"], now_ms))} &middot; agent {esc(d["agent_version"])}</p>'
            f'<p class="muted">{esc(d["message"])}</p>'
            f'<p id="figures">last {window_min} min: <span class="requests">{s.get("requests", 0)}</span> requests, '
            f'{s.get("errors", 0)} errors, p50 {s.get("p50_latency_ms", 0):.0f} ms, p95 '
            f'{s.get("p95_latency_ms", 0):.0f} ms, {s.get("tokens_per_s", 0):.1f} tokens/s</p>'
            f'<p id="resources">{res}</p></section>'
            f'<section><h2>Last {window_min} minutes, per minute</h2><div class="charts">{"".join(charts)}</div>'
            '</section>'
            f'<section><h2>Events</h2>{events_table(events, now_ms, show_device=False)}</section>')
    return layout(d["name"], body)
