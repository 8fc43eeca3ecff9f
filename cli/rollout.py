"""`slmops rollout create|list|status|pause|resume|abort|set`: which device runs which version.

Order of precedence for what a device is told to run (highest first): its pin (`devices pin`); an unfinished
rollout that holds it; the newest of `rollout set` (fleet-wide or per device) and completed rollouts whose
selector matches it — a completed rollout stays the standing assignment for devices that match it later."""
from __future__ import annotations

import pathlib
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from cli.common import (CP_DATA_OPT, CP_OPT, JSON_OPT, TOKEN_OPT, admin, call, console, emit, fail, labels,
                        model_ref, ref, to_dict, wave)

rollout_app = typer.Typer(no_args_is_help=True, help="Decide which device runs which version.")
COLOR = {"completed": "green", "halted": "red", "aborted": "yellow", "halting": "red", "paused": "yellow"}


def selector_text(r) -> str:
    sel = [f"{k}={v}" for k, v in sorted(r.selector.labels.items())] + [f"hw={h}" for h in r.selector.hardware_classes]
    return ", ".join(sel) or ("all devices" if r.selector.all_devices else "-")


def print_rollout(r, devices: bool = False, out: Console | None = None) -> None:
    out = out or Console()
    waves = ", ".join(f"{w.devices}" if w.devices else f"{w.percent:g}%" for w in r.waves)
    out.print(f"[bold]{r.rollout_id}[/] {ref(r.model)}  [{COLOR.get(r.status, 'cyan')}]{r.status}[/]  wave "
              f"{r.wave + 1}/{len(r.waves)} ({waves})  selector {selector_text(r)}"
              + (f"  variants {dict(r.variants)}" if r.variants else "")
              + (f"  limit {r.max_devices_per_minute}/min" if r.max_devices_per_minute else ""), soft_wrap=True)
    out.print(f"assigned {r.assigned}  succeeded {r.succeeded}  failed {r.failed}  pending {r.pending}"
              + (f"  — {r.reason}" if r.reason else "") + f"  (by {r.created_by or '?'})", soft_wrap=True)
    if devices and r.devices:
        t = Table("device", "wave", "target", "previous", "outcome", "why")
        for a in r.devices:
            t.add_row(a.device_id, str(a.wave + 1), ref(a.target), ref(a.previous), a.outcome, a.why[:30])
        out.print(t)


@rollout_app.command("create")
def create(model: str = typer.Argument(..., help="NAME@VERSION"),
           label: List[str] = typer.Option([], "--label", help="selector KEY=VALUE (repeat)"),
           hw: List[str] = typer.Option([], "--hw", help="selector hardware class: cpu, gpu, npu (repeat)"),
           all_devices: bool = typer.Option(False, "--all", help="select every device"),
           canary: str = typer.Option("", help="canary size: N devices or N%, then everyone"),
           waves: str = typer.Option("", help="cumulative waves, e.g. 1%,10%,50%,100%"),
           per_minute: int = typer.Option(0, help="at most this many devices per minute (0 = no limit)"),
           soak: float = typer.Option(0, help="seconds a wave soaks before the next"),
           max_failure_ratio: Optional[float] = typer.Option(None, help="halt and roll back above this"),
           max_error_rate: Optional[float] = typer.Option(None, help="a device erring more has failed"),
           max_p95_ms: Optional[float] = typer.Option(None, help="next wave waits above this p95 latency"),
           min_golden_pass: Optional[float] = typer.Option(None, help="halt below this golden pass rate (0..1)"),
           min_feedback: Optional[float] = typer.Option(None, help="halt below this mean feedback score (0..1)"),
           variant: List[str] = typer.Option([], "--variant", help="HWCLASS=VERSION (repeat)"),
           as_json: bool = JSON_OPT, control_plane: str = CP_OPT, admin_token: Optional[str] = TOKEN_OPT,
           cp_data_dir: Optional[pathlib.Path] = CP_DATA_OPT):
    """Roll NAME@VERSION out to the selected devices: all at once, a canary, or health-gated waves. The rollout id
    goes to stdout (for scripts), what it will do to stderr."""
    name, version = model_ref(model)
    if canary and waves:
        fail("give --canary or --waves, not both")
    if per_minute < 0 or soak < 0:
        fail("--per-minute and --soak must not be negative")
    gate = {"min_soak_seconds": soak}
    for k, v in (("max_failure_ratio", max_failure_ratio), ("max_error_rate", max_error_rate),
                 ("max_p95_latency_ms", max_p95_ms), ("min_golden_pass_ratio", min_golden_pass),
                 ("min_feedback_score", min_feedback)):
        if v is not None:
            gate[k] = v
    sel = {"labels": labels(label), "hardware_classes": hw, "all_devices": all_devices}
    plan = dict(canary=wave(canary) if canary else None,
                waves=[wave(w.strip()) for w in waves.split(",") if w.strip()], max_per_minute=per_minute,
                gate=gate, variants=labels(variant, "--variant"))
    c = admin(control_plane, admin_token, cp_data_dir)
    r = call(lambda: c.create_rollout(name, version, sel, "canary" if canary else "waves" if waves else "all",
                                      **plan))
    if as_json:
        import json
        print(json.dumps(to_dict(r), indent=1))
    else:
        print_rollout(r, out=console)
        print(r.rollout_id)


def _rollouts_table(rows, as_json: bool) -> None:
    emit(rows, [("rollout", lambda r: r.rollout_id), ("model", lambda r: ref(r.model)[:22]),
                ("status", lambda r: r.status), ("wave", lambda r: f"{r.wave + 1}/{len(r.waves)}"),
                ("ok/fail/wait", lambda r: f"{r.succeeded}/{r.failed}/{r.pending}"),
                ("selector", lambda r: selector_text(r)[:18])], as_json)


@rollout_app.command("list")
def list_(as_json: bool = JSON_OPT, control_plane: str = CP_OPT, admin_token: Optional[str] = TOKEN_OPT,
          cp_data_dir: Optional[pathlib.Path] = CP_DATA_OPT):
    """Every rollout: status, wave, devices succeeded / failed / waiting."""
    c = admin(control_plane, admin_token, cp_data_dir)
    _rollouts_table(call(c.rollouts), as_json)


@rollout_app.command("status")
def status(rollout_id: str = typer.Argument("", help="one rollout, with its devices (default: all rollouts)"),
           wait: bool = typer.Option(False, "--wait", help="wait until the rollout finishes; exit 1 unless it "
                                                          "completed"),
           timeout: float = typer.Option(3600, help="with --wait: seconds before giving up"),
           as_json: bool = JSON_OPT, control_plane: str = CP_OPT, admin_token: Optional[str] = TOKEN_OPT,
           cp_data_dir: Optional[pathlib.Path] = CP_DATA_OPT):
    """Where rollouts stand: status, wave, counts, why they wait or halted."""
    c = admin(control_plane, admin_token, cp_data_dir)
    if not rollout_id:
        _rollouts_table(call(c.rollouts), as_json)
        return
    r = call(lambda: c.rollout(rollout_id))
    if wait:
        import time

        from control_plane.rollouts import TERMINAL as FINISHED

        deadline, last = time.monotonic() + timeout, None
        while r.status not in FINISHED:
            line = f"{r.rollout_id}: {r.status}, wave {r.wave + 1}/{len(r.waves)}, {r.succeeded} ok, {r.failed} failed"
            if line != last:
                console.print(line + (f" — {r.reason}" if r.reason else ""), soft_wrap=True)
                last = line
            if time.monotonic() > deadline:
                fail(f"{r.rollout_id} still {r.status} after {timeout:.0f} s")
            time.sleep(0.5)
            r = call(lambda: c.rollout(rollout_id))
    if as_json:
        import json
        print(json.dumps(to_dict(r), indent=1))
    else:
        print_rollout(r, devices=True)
    if wait and r.status != "completed":
        fail(f"{r.rollout_id} {r.status}" + (f": {r.reason}" if r.reason else ""))


def _action(action: str, doc: str):
    def command(rollout_id: str, control_plane: str = CP_OPT, admin_token: Optional[str] = TOKEN_OPT,
                cp_data_dir: Optional[pathlib.Path] = CP_DATA_OPT):
        c = admin(control_plane, admin_token, cp_data_dir)
        print_rollout(call(lambda: c.rollout_action(action, rollout_id)))
    command.__doc__ = doc
    return command


rollout_app.command("pause")(_action("pause", "Stop assigning devices (health is still watched)."))
rollout_app.command("resume")(_action("resume", "Continue a paused rollout."))
rollout_app.command("abort")(_action("abort", "Stop, and send every assigned device back to its previous model."))


@rollout_app.command("set")
def set_(name: str, version: str,
         device: List[str] = typer.Option([], help="device id (repeat); none = the whole fleet"),
         control_plane: str = CP_OPT, admin_token: Optional[str] = TOKEN_OPT,
         cp_data_dir: Optional[pathlib.Path] = CP_DATA_OPT):
    """Make NAME@VERSION the desired model of the given devices, or of the whole fleet and every device that
    enrolls later (pinned devices and devices in an unfinished rollout keep theirs)."""
    c = admin(control_plane, admin_token, cp_data_dir)
    n = call(lambda: c.set_desired(name, version, device))
    console.print(f"{name}@{version} is now desired on {n} device(s)"
                  + ("" if device else " and on every device that enrolls later"))
