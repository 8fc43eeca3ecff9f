"""The `slmops` command: every group, wired together. `slmops --help` lists them."""
from __future__ import annotations

import typer

from cli.agent import agent_app
from cli.audit import audit
from cli.dataset import dataset_app
from cli.devices import devices_app
from cli.drift import drift
from cli.jobs import demo, export
from cli.models import models_app
from cli.pipeline import pipeline_app
from cli.rollout import rollout_app
from cli.server import cp_app, keys_app
from cli.telemetry import telemetry_app
from cli.tokens import tokens_app
from slmops import __version__
from training.cli import train_app  # typer/rich only; torch is imported per command

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="SLMOps: small language models for fleets of edge devices.")
for _name, _sub in (("control-plane", cp_app), ("agent", agent_app), ("models", models_app),
                    ("devices", devices_app), ("tokens", tokens_app), ("rollout", rollout_app),
                    ("telemetry", telemetry_app), ("train", train_app), ("keys", keys_app),
                    ("pipeline", pipeline_app), ("dataset", dataset_app)):
    app.add_typer(_sub, name=_name)
app.command("export")(export)
app.command("demo")(demo)
app.command("audit")(audit)
app.command("drift")(drift)


def _version(value: bool):
    if value:
        print(f"slmops {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="print the version and exit")):
    pass


def main() -> None:
    app()
