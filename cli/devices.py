"""`slmops devices list|show|label|pin|unpin|delete`. A device is named by its id or its (unique) name."""
from __future__ import annotations

import json
import pathlib
import time
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from cli.common import (CP_DATA_OPT, CP_OPT, JSON_OPT, TOKEN_OPT, admin, ago, call, console, emit, fail,
                        labels, labels_text, model_ref, ref, since_ms, to_dict, when)
from cli.telemetry import print_telemetry

devices_app = typer.Typer(no_args_is_help=True, help="Devices in the fleet.")
DEVICE_ARG = typer.Argument(..., help="device id or name")


def resolve(c, device: str):
    """The one device whose id or name is `device`."""
    matches = [d for d in call(c.devices) if device in (d.device_id, d.name)]
    if len(matches) != 1:
        fail(f"no device has the id or name {device!r}" if not matches else
             f"{len(matches)} devices are named {device!r}; use the device id: "
             + ", ".join(d.device_id for d in matches))
    return matches[0]


@devices_app.command("list")
def list_(label: List[str] = typer.Option([], "--label", help="only devices with KEY=VALUE (repeat)"),
          hw: List[str] = typer.Option([], "--hw", help="only this hardware class (repeat)"),
          as_json: bool = JSON_OPT, control_plane: str = CP_OPT, admin_token: Optional[str] = TOKEN_OPT,
          cp_data_dir: Optional[pathlib.Path] = CP_DATA_OPT):
    """Devices with what they serve and want; `devices show` has every field."""
    c = admin(control_plane, admin_token, cp_data_dir)
    rows = call(lambda: c.select_devices(labels(label), hw)) if label or hw else call(c.devices)
    emit(rows, [("device", lambda d: d.device_id), ("name", lambda d: d.name[:16]), ("state", lambda d: d.state),
                ("serving", lambda d: ref(d.current)),
                ("desired", lambda d: ref(d.desired) + (" (pin)" if d.pinned.name else "")),
                ("seen", lambda d: ago(d.last_seen_unix_ms))], as_json)


@devices_app.command("show")
def show(device: str = DEVICE_ARG,
         since: str = typer.Option("1h", help="window for the figures: 15m, 2h, 7d, an ISO time"),
         as_json: bool = JSON_OPT, control_plane: str = CP_OPT, admin_token: Optional[str] = TOKEN_OPT,
         cp_data_dir: Optional[pathlib.Path] = CP_DATA_OPT):
    """One device: every field, recent figures, the last minutes and its recent events."""
    c = admin(control_plane, admin_token, cp_data_dir)
    d, window = resolve(c, device), since_ms(since)
    if as_json:
        print(json.dumps(to_dict(d), indent=1))
        return
    out = Console()
    hwinfo = d.hardware
    out.print(f"[bold]{d.name}[/] {d.device_id}\n"
              f"  state      {d.state}" + (f" — {d.message}" if d.message else "") + "\n"
              f"  serving    {ref(d.current)}\n  desired    {ref(d.desired)}\n  pinned     {ref(d.pinned)}\n"
              f"  labels     {labels_text(d.labels)}\n"
              f"  hardware   {hwinfo.hardware_class or '-'}\n"
              f"  agent      {d.agent_version or '-'}\n  last seen  {ago(d.last_seen_unix_ms)}", soft_wrap=True)
    print_telemetry(call(lambda: c.telemetry(d.device_id, window)))
    t = Table("minute", "req", "err", "p50 ms", "p95 ms", "tok/s", "CPU %", "RSS MB", "golden fail",
              title="last minutes")
    for m in list(call(lambda: c.rollups(d.device_id, window)))[-10:]:
        t.add_row(time.strftime("%H:%M", time.localtime(m.minute_unix_ms / 1000)), str(m.requests), str(m.errors),
                  f"{m.p50_latency_ms:.0f}", f"{m.p95_latency_ms:.0f}", f"{m.tokens_per_s:.1f}",
                  f"{m.cpu_percent:.0f}" if m.cpu_percent >= 0 else "-",
                  f"{m.rss_bytes / 1e6:.0f}" if m.rss_bytes >= 0 else "-", str(m.golden_failed))
    out.print(t)
    t = Table("when", "kind", "name", "outcome", "detail", title="recent events")
    for e in call(lambda: c.events(d.device_id, window, 10)):
        t.add_row(when(e.ts_unix_ms, "%H:%M:%S"), e.kind, e.name, e.outcome, e.detail[:40])
    out.print(t)


@devices_app.command("label")
def label_(device: str = DEVICE_ARG, label: List[str] = typer.Argument(..., help="KEY=VALUE (replaces all labels)"),
           control_plane: str = CP_OPT, admin_token: Optional[str] = TOKEN_OPT,
           cp_data_dir: Optional[pathlib.Path] = CP_DATA_OPT):
    """Set a device's labels (rollout selectors match on them)."""
    c = admin(control_plane, admin_token, cp_data_dir)
    new = labels(label)
    d = call(lambda: c.set_labels(resolve(c, device).device_id, new))
    console.print(f"{d.device_id} labels: {labels_text(d.labels)}")


@devices_app.command("pin")
def pin(device: str = DEVICE_ARG, model: str = typer.Argument(..., help="NAME@VERSION"),
        control_plane: str = CP_OPT, admin_token: Optional[str] = TOKEN_OPT,
        cp_data_dir: Optional[pathlib.Path] = CP_DATA_OPT):
    """Pin a device to one version: rollouts and `rollout set` leave it alone until `devices unpin`."""
    name, version = model_ref(model)
    c = admin(control_plane, admin_token, cp_data_dir)
    d = call(lambda: c.pin(resolve(c, device).device_id, name, version))
    console.print(f"{d.device_id} pinned to {ref(d.pinned)}")


@devices_app.command("unpin")
def unpin(device: str = DEVICE_ARG, control_plane: str = CP_OPT, admin_token: Optional[str] = TOKEN_OPT,
          cp_data_dir: Optional[pathlib.Path] = CP_DATA_OPT):
    """Unpin a device: it follows rollouts and the fleet's standing assignments again."""
    c = admin(control_plane, admin_token, cp_data_dir)
    d = call(lambda: c.pin(resolve(c, device).device_id, "", ""))
    console.print(f"{d.device_id} unpinned; desired {ref(d.desired)}")


@devices_app.command("delete")
def delete(device: str = DEVICE_ARG, control_plane: str = CP_OPT, admin_token: Optional[str] = TOKEN_OPT,
           cp_data_dir: Optional[pathlib.Path] = CP_DATA_OPT):
    """Remove a device from the fleet: its token stops working at once (it must enroll again to come back)."""
    c = admin(control_plane, admin_token, cp_data_dir)
    d = call(lambda: c.delete_device(resolve(c, device).device_id))
    console.print(f"deleted {d.device_id} ({d.name})")
