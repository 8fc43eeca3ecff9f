"""`slmops train ...`: run a recipe, or build the tiny test model. Wired into cli/main.py as the `train` group.

`slmops train RECIPE` runs a recipe file (the first word is taken as a recipe path unless it names a command),
and the same line runs under `torchrun --nproc-per-node N -m training.cli RECIPE` for DDP.
"""
from __future__ import annotations

import json
import os
import pathlib
import sys

import typer
from rich.console import Console
from typer.core import TyperGroup

console = Console(stderr=True, width=None if sys.stderr.isatty() else 120)


class _RecipeDefault(TyperGroup):
    """Treats `slmops train FILE` as `slmops train run FILE`."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


train_app = typer.Typer(cls=_RecipeDefault, no_args_is_help=True,
                        help="Train models from a recipe: full, LoRA, QLoRA, distillation, search "
                             "(control-plane install).")


def _fail(message: str):
    console.print(f"[bold red]error:[/] {message}", soft_wrap=True)  # never hard-wrapped: logs stay greppable
    raise typer.Exit(1)


@train_app.command("run")
def run(recipe: pathlib.Path,
        output: pathlib.Path | None = typer.Option(None, help="output folder (overrides the recipe's)"),
        set_: list[str] = typer.Option([], "--set", help="override a recipe value, e.g. train.max_steps=5"),
        progress: bool = typer.Option(True, help="show progress bars")):
    """Run one recipe (YAML or TOML). Everything is validated before training starts."""
    from slmops.errors import ConfigError
    from training.recipe import load
    from training.runner import run_recipe

    rank = int(os.environ.get("RANK", "0"))
    log = console.print if rank == 0 else (lambda *a, **k: None)
    try:
        r = load(recipe, set_, str(output) if output else None)
        log(f"recipe {recipe}: method {r.method}, base {r.base.describe()}, output {r.output}")
        summary = run_recipe(r, progress=progress and rank == 0, log=log)
    except ConfigError as e:
        _fail(str(e))
    if rank == 0:
        console.print(f"done: {r.output}")
        print(json.dumps({k: v for k, v in summary.items() if k != "report"}, default=str))


@train_app.command("tiny")
def train_tiny(out_dir: pathlib.Path, steps: int = typer.Option(80), seed: int = typer.Option(0)):
    """Train a tiny Llama (and its tokenizer) on the shipped support dataset; save an HF folder."""
    from training.tiny import build_tiny_model

    summary = build_tiny_model(out_dir, steps=steps, seed=seed, log=console.print)
    console.print(f"saved {out_dir}: {summary['params']:,} params, loss {summary['first_loss']:.2f} -> "
                  f"{summary['last_loss']:.2f}")


if __name__ == "__main__":
    train_app()
