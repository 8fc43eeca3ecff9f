"""`slmops telemetry summary`: what the fleet reported."""
from __future__ import annotations

import pathlib
from typing import Optional

import typer

from cli.common import CP_DATA_OPT, CP_OPT, JSON_OPT, TOKEN_OPT, admin, call, emit, since_ms

telemetry_app = typer.Typer(no_args_is_help=True, help="What the fleet reported.")


def print_telemetry(rows, as_json: bool = False) -> None:
    emit(rows, [("device", lambda r: r.device_id), ("req", lambda r: r.requests), ("err", lambda r: r.errors),
                ("p50 ms", lambda r: f"{r.p50_latency_ms:.0f}"), ("p95 ms", lambda r: f"{r.p95_latency_ms:.0f}"),
                ("tok out", lambda r: r.tokens_out), ("tok/s", lambda r: f"{r.tokens_per_s:.1f}"),
                ("events", lambda r: r.events)], as_json)


@telemetry_app.command("summary")
def summary(device: str = typer.Option("", help="one device id"),
            since: str = typer.Option("", help="90s, 15m, 2h, 7d, seconds or an ISO time ('' = all)"),
            as_json: bool = JSON_OPT, control_plane: str = CP_OPT, admin_token: Optional[str] = TOKEN_OPT,
            cp_data_dir: Optional[pathlib.Path] = CP_DATA_OPT):
    """Per device: requests, errors, p50/p95 latency, tokens, tokens/s, other events."""
    c = admin(control_plane, admin_token, cp_data_dir)
    print_telemetry(call(lambda: c.telemetry(device, since_ms(since))), as_json)
