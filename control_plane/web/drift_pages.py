"""The dashboard's drift view (pure: plain rows in, HTML out): `/drift` lists each version the telemetry job
checked with its signals over threshold; `/drift?model=NAME@VERSION` draws one chart per signal, its value over
time against its threshold, from `drift_history` (control_plane/drift_monitor.py)."""
from __future__ import annotations

import html
import urllib.parse

from control_plane.web.charts import line_chart
from control_plane.web.pages import layout

esc = html.escape


def _link(ref: str) -> str:
    return f'<a href="/drift?model={urllib.parse.quote(ref)}">{esc(ref)}</a>'


def drift_page(latest: list[dict], ref: str, history: list[dict], window_min: int) -> str:
    by_model: dict[str, list[dict]] = {}
    for r in latest:
        by_model.setdefault(r["model"], []).append(r)
    rows = "".join(
        f'<tr data-model="{esc(m)}"><td>{_link(m)}</td><td>{len(rs)}</td>'
        f'<td class="{"outcome-fail" if any(r["crossed"] for r in rs) else ""}">'
        f'{esc(", ".join(r["signal"] for r in rs if r["crossed"]) or "none")}</td></tr>'
        for m, rs in sorted(by_model.items()))
    body = (f'<section id="drift-models"><h2>Drift per model version</h2><table><tr><th>version</th>'
            f'<th>signals with data</th><th>over threshold</th></tr>{rows}</table>'
            f'{"" if rows else "<p class=muted>no drift check yet (the telemetry job checks versions in service every 30 s)</p>"}'
            f'<p class="muted">Baselines: input signals vs the training data profile; the rest vs the first hours '
            f'after the rollout. All signals: <code>slmops drift</code>.</p></section>')
    if ref:
        signals: dict[str, list[dict]] = {}
        for h in history:
            signals.setdefault(h["signal"], []).append(h)
        now_state = {r["signal"]: r for r in by_model.get(ref, [])}
        charts = []
        for name, pts in sorted(signals.items()):
            end = max(pts[-1]["ts_ms"], pts[0]["ts_ms"] + 60_000)   # a single check still gets a visible line
            series = [("value", [(p["ts_ms"], p["value"]) for p in pts]),
                      ("threshold", [(pts[0]["ts_ms"], pts[-1]["threshold"]), (end, pts[-1]["threshold"])])]
            over = now_state.get(name, {}).get("crossed")
            charts.append(f'<div class="drift-signal" data-signal="{esc(name)}" data-crossed="{int(bool(over))}">'
                          f'{line_chart(f"drift-{name}", name + (" (over threshold)" if over else ""), series)}'
                          f'</div>')
        body += (f'<section id="drift-charts"><h2>{esc(ref)}: the last {window_min} min</h2><div class="charts">'
                 f'{"".join(charts) or "<p class=muted>no checked values in this window</p>"}</div></section>')
    return layout(f"drift {ref}" if ref else "drift", body)
