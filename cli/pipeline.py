"""`slmops pipeline submit|list|status|logs|cancel`: pipelines run by the control plane, over the Admin API.
Imports only typer/rich until a command runs."""
from __future__ import annotations
from slmops.yaml_text import load_yaml

import json
import os
import pathlib
import time
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from cli.common import (CP_DATA_OPT, CP_OPT, JSON_OPT, TOKEN_OPT, admin, call, console, emit, fail, labels, wave,
                        when)

pipeline_app = typer.Typer(no_args_is_help=True,
                           help="Pipelines: a recipe trained, evaluated, exported, gated, published and rolled "
                                "out by the control plane.")
STATUS_STYLE = {"done": "green", "skipped": "cyan", "running": "yellow", "failed": "red", "cancelled": "magenta",
                "succeeded": "bold green", "queued": "dim", "pending": "dim", "cancelling": "magenta"}


def _styled(status: str) -> str:
    return f"[{STATUS_STYLE.get(status, 'white')}]{status}[/]"


def with_rollout(recipe: dict, strategy: str, labels: dict, all_devices: bool, canary: str, waves: str,
                 soak: float) -> dict:
    """The recipe with its rollout stage replaced by the one given on the command line."""
    stage: dict = {"strategy": strategy, "selector": {"labels": labels, "all_devices": all_devices}}
    if canary:
        stage["canary"] = wave(canary)
    if waves:
        stage["waves"] = [wave(w.strip()) for w in waves.split(",") if w.strip()]
    if soak:
        stage["gate"] = {"min_soak_seconds": soak}
    stages = [s for s in recipe.get("stages") or [] if not (isinstance(s, dict) and "rollout" in s)]
    return {**recipe, "stages": [*stages, {"rollout": stage}]}


@pipeline_app.command("submit")
def submit(recipe: pathlib.Path,
           rollout: str = typer.Option("", help="add (or replace) a rollout stage: all, canary or waves"),
           selector: List[str] = typer.Option([], "--selector", help="rollout selector KEY=VALUE (repeat)"),
           all_devices: bool = typer.Option(False, "--all", help="roll out to every device"),
           canary: str = typer.Option("", help="canary size: N devices or N%"),
           waves: str = typer.Option("", help="cumulative waves, e.g. 10%,50%,100%"),
           soak: float = typer.Option(0, help="seconds each wave soaks before the next"),
           follow: bool = typer.Option(False, "--follow", "-f", help="show progress per stage until it finishes"),
           control_plane: str = CP_OPT, admin_token: Optional[str] = TOKEN_OPT,
           cp_data_dir: Optional[pathlib.Path] = CP_DATA_OPT):
    """Send a pipeline recipe to the control plane (checked in full first; every error is listed)."""
    import yaml

    if not recipe.is_file():
        fail(f"no recipe at {recipe}")
    text = recipe.read_text()
    if rollout:
        try:
            d = load_yaml(text)
        except yaml.YAMLError as e:
            fail(f"{recipe} is not valid YAML: {e}")
        if not isinstance(d, dict):
            fail(f"{recipe} must be a mapping with name and stages")
        text = f"# {recipe} with --rollout {rollout}\n" + yaml.safe_dump(
            with_rollout(d, rollout, labels(selector, "--selector"), all_devices, canary, waves, soak), sort_keys=False)
    c = admin(control_plane, admin_token, cp_data_dir)
    p = call(lambda: c.submit_pipeline(text, os.getcwd()))
    console.print(f"queued pipeline [bold]{p.job_id}[/] ({p.name}): {' -> '.join(s.kind for s in p.stages)}")
    print(p.job_id)
    if follow:
        p = watch(c, p.job_id)
        if p.status != "succeeded":
            raise typer.Exit(1)


def stage_table(p) -> Table:
    t = Table("#", "stage", "status", "time", "detail", title=f"{p.job_id} {p.name}: {_styled(p.status)}"
              + (f" — {p.reason.splitlines()[0][:90]}" if p.reason else ""))
    now = time.time() * 1000
    for s in p.stages:
        took = ((s.finished_unix_ms or now) - s.started_unix_ms) / 1000 if s.started_unix_ms else None
        detail = s.message.splitlines()[0][:80] if s.message else ""
        metrics = json.loads(s.metrics_json or "{}")
        if s.kind == "gate" and metrics.get("chosen"):
            on = f" (measured on its {metrics['evaluated_on']})" if metrics.get("evaluated_on") == "cpu twin" else ""
            detail = f"chose {metrics['chosen']}{on}; {detail}"
        if s.kind == "evaluate" and metrics.get("task_accuracy") is not None:
            detail = f"accuracy {metrics['task_accuracy']:.1%}, ppl {metrics['perplexity']:.2f}; {detail}"
        if s.kind in ("publish", "rollout"):
            out = json.loads(s.outputs_json or "{}")
            detail = f"{out.get('model') or out.get('rollout_id') or ''} {detail}".strip()
        t.add_row(str(s.index), s.kind, _styled(s.status) + (" (cached)" if s.cached else ""),
                  f"{took:.0f} s" if took is not None else "", detail)
    return t


def watch(c, job_id: str, interval: float = 1.0):
    """Live stage table until the job finishes; returns the final Pipeline."""
    from rich.live import Live

    p = call(lambda: c.pipeline(job_id))
    with Live(stage_table(p), console=console, refresh_per_second=2) as live:
        while p.status not in ("succeeded", "failed", "cancelled"):
            time.sleep(interval)
            p = call(lambda: c.pipeline(job_id))
            live.update(stage_table(p))
    if p.status == "failed":
        console.print(f"[red]{p.reason}[/]")
    return p


@pipeline_app.command("list")
def list_(status: str = typer.Option("", help="only this status"), limit: int = typer.Option(50),
          as_json: bool = JSON_OPT, control_plane: str = CP_OPT, admin_token: Optional[str] = TOKEN_OPT,
          cp_data_dir: Optional[pathlib.Path] = CP_DATA_OPT):
    """Pipelines, newest first (`pipeline status JOB` has every stage and the reason)."""
    c = admin(control_plane, admin_token, cp_data_dir)
    emit(call(lambda: c.pipelines(status, limit)),
         [("job", lambda p: p.job_id), ("name", lambda p: p.name[:16]), ("status", lambda p: _styled(p.status)),
          ("stages", lambda p: f"{sum(s.status in ('done', 'skipped') for s in p.stages)}/{len(p.stages)}"),
          ("published", lambda p: p.published[:20] or "-"),
          ("submitted", lambda p: when(p.created_unix_ms, "%m-%d %H:%M"))], as_json)


@pipeline_app.command("status")
def status(job_id: str, watch_: bool = typer.Option(False, "--watch", "-w", help="refresh until it finishes"),
           control_plane: str = CP_OPT, admin_token: Optional[str] = TOKEN_OPT,
           cp_data_dir: Optional[pathlib.Path] = CP_DATA_OPT):
    """One pipeline, stage by stage (status, time, metrics, why it failed)."""
    c = admin(control_plane, admin_token, cp_data_dir)
    p = watch(c, job_id) if watch_ else call(lambda: c.pipeline(job_id))
    Console().print(stage_table(p))
    if p.reason:
        Console().print(p.reason)


@pipeline_app.command("logs")
def logs(job_id: str, follow: bool = typer.Option(False, "--follow", "-f", help="until the job finishes"),
         control_plane: str = CP_OPT, admin_token: Optional[str] = TOKEN_OPT,
         cp_data_dir: Optional[pathlib.Path] = CP_DATA_OPT):
    """The job's log: every stage's worker output and what the runner did."""
    c = admin(control_plane, admin_token, cp_data_dir)
    for line in call(lambda: list(c.pipeline_logs(job_id, follow=False))) if not follow else \
            c.pipeline_logs(job_id, follow=True):
        stamp = time.strftime("%H:%M:%S", time.localtime(line.ts_unix_ms / 1000))
        print(f"{stamp} [{'job' if line.stage < 0 else line.stage}] {line.line}", flush=True)


@pipeline_app.command("cancel")
def cancel(job_id: str, control_plane: str = CP_OPT, admin_token: Optional[str] = TOKEN_OPT,
           cp_data_dir: Optional[pathlib.Path] = CP_DATA_OPT):
    """Stop a pipeline: its worker is stopped and nothing it had half-made is published."""
    c = admin(control_plane, admin_token, cp_data_dir)
    p = call(lambda: c.cancel_pipeline(job_id))
    console.print(f"{p.job_id}: {p.status}")
