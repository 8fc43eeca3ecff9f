"""`--since` values for the CLI, parsed purely against a given clock: "90s", "15m", "2h", "7d", a bare number
of seconds, or an ISO-8601 time ("2026-11-29T10:00", UTC unless it names an offset)."""
from __future__ import annotations

import datetime as dt
import re

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now_ms: int) -> int:
    """Unix ms of the start of the window; 0 for "" (everything). Raises ValueError naming the input."""
    text = text.strip()
    if not text:
        return 0
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhd]?)", text)
    if m:
        return max(0, now_ms - int(float(m.group(1)) * UNITS[m.group(2) or "s"] * 1000))
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--since {text!r}: expected 90s, 15m, 2h, 7d, seconds, or an ISO time") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return int(t.timestamp() * 1000)
