"""`slmops dataset from-captures OUT`: captured traffic -> train.jsonl + heldout.jsonl (+ dataset.json) that the
training recipes read (control_plane/capture_dataset.py). Run on the control plane's machine: it reads the
control plane's data folder, like `models bundle` and `drift`."""
from __future__ import annotations

import json
import pathlib
import time
from typing import List

import typer

from cli.common import JSON_OPT, STATE_OPT_HELP, console, cp_store, fail, labels

dataset_app = typer.Typer(no_args_is_help=True, help="Datasets made from what the fleet saw.")


@dataset_app.command("from-captures")
def from_captures(out: pathlib.Path = typer.Argument(..., help="folder for train.jsonl, heldout.jsonl, dataset.json"),
                  cp_data_dir: pathlib.Path = typer.Option(..., help="the control plane's data folder"),
                  state: str = typer.Option("", help=STATE_OPT_HELP),
                  model: str = typer.Option("", help="only captures of NAME or NAME@VERSION"),
                  label: List[str] = typer.Option([], "--label", help="only devices with KEY=VALUE (repeatable)"),
                  since: str = typer.Option("", help="window start: 90s, 15m, 2h, 7d or an ISO time ('' = all)"),
                  until: str = typer.Option("", help="window end, the same forms ('' = now)"),
                  min_chars: int = typer.Option(1, help="shortest prompt kept (characters)"),
                  max_chars: int = typer.Option(4000, help="longest prompt kept (characters)"),
                  script: str = typer.Option("any", help="any, or latin: prompts mostly in Latin letters"),
                  language: str = typer.Option("any", help="any, or en/de/fr/es/it/nl/pt: drop prompts identified "
                                                           "as another language (function-word heuristic, "
                                                           "slmops/language.py; undetermined ones are kept)"),
                  heldout: float = typer.Option(0.2, help="share held out (by prompt hash, repeatable)"),
                  seed: int = typer.Option(0, help="changes which prompts are held out"),
                  min_records: int = typer.Option(2, help="refuse fewer distinct records than this"),
                  exclude_data: List[pathlib.Path] = typer.Option([], "--exclude-data",
                                                                  help="training JSONL whose prompts count as "
                                                                       "duplicates (repeatable)"),
                  replay: List[pathlib.Path] = typer.Option([], "--replay",
                                                            help="original training JSONL to mix into train.jsonl "
                                                                 "(repeatable; rehearsal against forgetting)"),
                  replay_share: float = typer.Option(0.25, help="with --replay: share of train.jsonl that is "
                                                                "replayed originals (seeded by --seed)"),
                  as_json: bool = JSON_OPT):
    """Captures (devices whose capture is on) -> a deduplicated, re-redacted dataset with provenance per record."""
    from control_plane import capture_dataset as cd
    from control_plane.drift_monitor import devices_labelled
    from slmops.errors import ConfigError
    from slmops.since import parse_since

    now = int(time.time() * 1000)
    try:
        since_ms = parse_since(since, now) if since else 0
        until_ms = parse_since(until, now) if until else 0
    except ValueError as e:
        fail(str(e))
    for opt, paths in (("--exclude-data", exclude_data), ("--replay", replay)):
        for p in paths:
            if not p.is_file():
                fail(f"{opt} {p}: no such file")
    store = cp_store(cp_data_dir, state)
    group = labels(label)
    devices = tuple(devices_labelled(store, group)) if group else None
    try:
        f = cd.Filters(since_ms, until_ms, model, devices, min_chars, max_chars, script, language, heldout, seed,
                       min_records)
        rp = cd.Replay(tuple(str(p) for p in replay), replay_share) if replay else None
        known = cd.known_prompts(exclude_data)
        originals = cd.read_originals(rp.files) if rp else []
        res = cd.from_store(store, f, known)
        if rp:
            res = cd.replay(res, originals, rp, seed)
    except ValueError as e:   # a line of --exclude-data that is not JSON
        fail(f"--exclude-data: {e}")
    except ConfigError as e:
        fail(str(e))
    info = cd.write(res, out, f)
    if as_json:
        print(json.dumps(info, indent=1))
    console.print(f"wrote {out}/train.jsonl ({len(res.train)}) and heldout.jsonl ({len(res.heldout)}): "
                  f"{res.summary()}", soft_wrap=True, highlight=False)
