"""`slmops audit`: who did what on the Admin API, when, and the result (needs role admin)."""
from __future__ import annotations

import pathlib
from typing import Optional

import typer

from cli.common import CP_DATA_OPT, CP_OPT, JSON_OPT, TOKEN_OPT, admin, call, emit, fail, since_ms, when


def audit(limit: int = typer.Option(50, help="newest entries to show"),
          action: str = typer.Option("", help="only this RPC, e.g. CreateRollout"),
          actor: str = typer.Option("", help="only calls by this token holder (the 'who' column)"),
          since: str = typer.Option("", help="only since: 90s, 15m, 2h, 7d or an ISO time"),
          as_json: bool = JSON_OPT, control_plane: str = CP_OPT, admin_token: Optional[str] = TOKEN_OPT,
          cp_data_dir: Optional[pathlib.Path] = CP_DATA_OPT):
    """The audit log, newest first: who did what, when, and the result (refusals included)."""
    if limit < 1:
        fail("--limit must be at least 1")
    start = since_ms(since)
    c = admin(control_plane, admin_token, cp_data_dir)
    emit(call(lambda: c.audit(limit, action, actor, start)),
         [("when", lambda e: when(e.ts_unix_ms, "%m-%d %H:%M:%S")), ("who", lambda e: e.who[:14]),
          ("action", lambda e: e.action), ("target", lambda e: e.target[:18]), ("result", lambda e: e.result)],
         as_json)
