"""Inline SVG line charts, rendered on the server (nothing external loads in the browser). Pure: series of
(unix ms, value) points in, SVG text out."""
from __future__ import annotations

import html
import time

WIDTH, HEIGHT, PAD_L, PAD_R, PAD_T, PAD_B = 560, 180, 56, 12, 24, 26
COLORS = ("#2563eb", "#dc2626", "#16a34a", "#9333ea")


def _fmt(v: float) -> str:
    if abs(v) >= 1e9:
        return f"{v / 1e9:.1f}G"
    if abs(v) >= 1e6:
        return f"{v / 1e6:.1f}M"
    if abs(v) >= 1e3:
        return f"{v / 1e3:.1f}k"
    return f"{v:.0f}" if v == int(v) else f"{v:.1f}"


def _clock(ms: int) -> str:
    return time.strftime("%H:%M", time.localtime(ms / 1000))


def line_chart(chart_id: str, title: str, series: list[tuple[str, list[tuple[int, float]]]], unit: str = "") -> str:
    """An SVG with one polyline (and dots) per series; an empty chart says "no data" instead of drawing axes."""
    esc = html.escape
    pts = [p for _, s in series for p in s]
    head = (f'<svg id="{esc(chart_id)}" class="chart" role="img" viewBox="0 0 {WIDTH} {HEIGHT}" '
            f'width="{WIDTH}" height="{HEIGHT}" data-points="{len(pts)}" xmlns="http://www.w3.org/2000/svg">'
            f'<title>{esc(title)}</title><text x="{PAD_L}" y="15" class="chart-title">{esc(title)}'
            f'{" (" + esc(unit) + ")" if unit else ""}</text>')
    if not pts:
        return head + f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle" class="nodata">no data</text></svg>'
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y1 = max(max(p[1] for p in pts), 1e-9)
    x1 = x1 if x1 > x0 else x0 + 60_000
    w, h = WIDTH - PAD_L - PAD_R, HEIGHT - PAD_T - PAD_B

    def sx(x):
        return PAD_L + (x - x0) / (x1 - x0) * w

    def sy(y):
        return PAD_T + h - (y / y1) * h

    out = [head, f'<line x1="{PAD_L}" y1="{PAD_T + h}" x2="{PAD_L + w}" y2="{PAD_T + h}" class="axis"/>',
           f'<line x1="{PAD_L}" y1="{PAD_T}" x2="{PAD_L}" y2="{PAD_T + h}" class="axis"/>',
           f'<text x="{PAD_L - 4}" y="{PAD_T + 4}" text-anchor="end" class="tick">{_fmt(y1)}</text>',
           f'<text x="{PAD_L - 4}" y="{PAD_T + h}" text-anchor="end" class="tick">0</text>',
           f'<text x="{PAD_L}" y="{HEIGHT - 8}" class="tick">{_clock(x0)}</text>',
           f'<text x="{PAD_L + w}" y="{HEIGHT - 8}" text-anchor="end" class="tick">{_clock(x1)}</text>']
    for i, (label, s) in enumerate(series):
        color = COLORS[i % len(COLORS)]
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in s)
        out.append(f'<polyline class="series" data-series="{esc(label)}" fill="none" stroke="{color}" '
                   f'stroke-width="2" points="{coords}"/>')
        out += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{color}"><title>{esc(label)} '
                f'{_clock(x)}: {_fmt(y)}</title></circle>' for x, y in s]
        out.append(f'<text x="{PAD_L + w - 4 - 90 * i}" y="15" text-anchor="end" fill="{color}" '
                   f'class="legend">{esc(label)}</text>')
    return "".join(out) + "</svg>"
