"""`slmops export` (ONNX + quality gate) and `slmops demo` (the main job)."""
from __future__ import annotations

import pathlib
import time
from typing import List, Optional

import typer

from cli.common import console, fail


def export(source: pathlib.Path = typer.Argument(..., help="a recipe file (YAML/JSON) or a Hugging Face folder"),
           out_dir: pathlib.Path = typer.Argument(...),
           precision: Optional[str] = typer.Option(None, help="fp32, fp16, int8 or int4 [recipe, else int4]"),
           execution_provider: Optional[str] = typer.Option(None, help="cpu, cuda or dml [recipe, else cpu]"),
           int4_block_size: Optional[int] = typer.Option(None), int4_symmetric: Optional[bool] = typer.Option(None),
           int4_accuracy_level: Optional[int] = typer.Option(None),
           int4_algo: Optional[str] = typer.Option(None, help="default (RTN), rtn, k_quant, k_quant_last (lm_head "
                                                             "int8), k_quant_mixed; int4 is then tried with this "
                                                             "one setting (recipe 'options')"),
           int4_recipes: Optional[str] = typer.Option(None, help="int4 recipes the gate tries, in order, comma-"
                                                                "separated [gguf_exact,rtn,rtn_mixed,hqq_mixed; gguf_exact only "
                                                                "for a folder made from a GGUF]; see "
                                                                "training/quant_recipes.py"),
           max_attempts: Optional[int] = typer.Option(None, help="the most variants the gate builds and measures "
                                                                "(int4 recipes and fallbacks) [6]"),
           fallback: bool = typer.Option(True, help="when every int4 recipe fails the quality gate, try the next "
                                                    "precision (int8 -> fp16 -> fp32)"),
           gate_examples: int = typer.Option(0, help="eval examples for the gate (0 = all)"),
           adapter: List[str] = typer.Option([], help="NAME=PEFT_DIR (repeat): export the base with LoRA slots "
                                                      "and each adapter as adapters/NAME.onnx_adapter")):
    """Export to ONNX (onnxruntime-genai builder), run the quality gate against fp32 and keep the first
    variant of the search (int4 recipes smallest first, then int8, fp16, fp32) that passes; writes gate.json
    (needed by `models publish`) and gate_report.json (every attempt with its verdict and reasons)."""
    from rich.table import Table as _Table

    from training.export import ExportError, ExportOptions
    from training.quality_gate import GateError, GateThresholds, from_recipe, select_precision
    from training.quant_recipes import plan

    try:
        if source.is_file():
            model_dir, opts, thresholds = from_recipe(source)
        else:
            model_dir, opts, thresholds = source, {}, GateThresholds()
        given = dict(precision=precision, execution_provider=execution_provider, int4_block_size=int4_block_size,
                     int4_symmetric=int4_symmetric, int4_accuracy_level=int4_accuracy_level, int4_algo=int4_algo)
        opts.update({k: v for k, v in given.items() if v is not None})
        first = opts.pop("precision", "int4")
        search = _search_settings(opts, int4_recipes, int4_algo, max_attempts)
        base = ExportOptions(**{**opts, "precision": "fp32"})
        ExportOptions(**{**opts, "precision": first})  # refuse a bad precision/target before any work
        if gate_examples:
            thresholds = GateThresholds(**{**thresholds.__dict__, "max_examples": gate_examples})
        t0 = time.monotonic()
        build = {}
        if adapter:
            from training.adapters import slotted_build

            pairs = [a.partition("=") for a in adapter]
            if any(not n or not d for n, _, d in pairs):
                fail("--adapter takes NAME=PEFT_DIR")
            build = {"build": slotted_build({n: pathlib.Path(d) for n, _, d in pairs})}
        if not fallback:   # only the requested precision's own variants (one the source rules out takes none)
            from training.quant_recipes import unavailable

            skip = unavailable(model_dir, search["int4_recipes"])
            own = [r.name for r in plan(first, base.execution_provider, search["int4_recipes"], 32, skip=skip)
                   if r.precision == first and r.name not in skip]
            if not own:
                fail(f"no {first} recipe applies to {model_dir} and --no-fallback was given: "
                     + "; ".join(f"{n}: {why}" for n, why in skip.items()))
            search["max_attempts"] = min(search["max_attempts"], len(own))
        report = select_precision(model_dir, out_dir, first, base, thresholds, log=console.print, **build, **search)
        if not fallback and report["chosen"] != first:
            import shutil

            shutil.rmtree(out_dir, ignore_errors=True)
            fail(f"{first} failed the quality gate and --no-fallback was given: {report['why']}")
    except (ExportError, GateError) as e:
        fail(str(e))
    t = _Table("variant", "size MB", "vs fp32", "perplexity", "accuracy", "greedy agreement", "gate")
    ref_bytes = report["reference_bytes"]
    t.add_row("fp32 (reference)", f"{ref_bytes / 1e6:.2f}", "100%", f"{report['reference']['perplexity']:.3f}",
              f"{report['reference']['accuracy']:.1%}", "-", "reference")
    for row in report["tried"]:
        mt = row["metrics"] or {}
        size = row["bytes"]  # None when the variant could not even be built here
        label = row["precision"] if row["recipe"] == row["precision"] else f"{row['precision']} ({row['recipe']})"
        t.add_row(label, f"{size / 1e6:.2f}" if size else "-", f"{size / ref_bytes:.0%}" if size else "-",
                  f"{mt.get('perplexity', float('nan')):.3f}", f"{mt.get('accuracy', float('nan')):.1%}",
                  f"{mt.get('greedy_agreement', float('nan')):.1%}", row["verdict"])
    console.print(t)
    console.print(f"chose {report['chosen']}, recipe {report['chosen_recipe']} ({report['why']}) -> {out_dir} in "
                  f"{time.monotonic() - t0:.1f} s")


def _search_settings(opts: dict, int4_recipes: str | None, int4_algo: str | None, max_attempts: int | None) -> dict:
    """select_precision's int4_recipes/max_attempts from the CLI, else the recipe file's export section (taken
    out of `opts`), else the defaults; an explicit --int4-algo alone means int4 is tried with that one setting."""
    from training.quant_recipes import MAX_ATTEMPTS

    names, bound = opts.pop("int4_recipes", None), opts.pop("max_attempts", MAX_ATTEMPTS)
    if int4_recipes is not None:
        names = int4_recipes
    elif int4_algo is not None and names is None:
        names = ["options"]
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    return {"int4_recipes": tuple(names) if names is not None else None,
            "max_attempts": max_attempts if max_attempts is not None else bound}


def demo(tiny: bool = typer.Option(False, "--tiny", help="tiny models trained in seconds (the CI path)"),
         workdir: Optional[pathlib.Path] = typer.Option(None, help="keep everything here (default: a temp dir); "
                                                                   "a re-run reuses trained models"),
         agents: int = typer.Option(3, help="how many agents to start"),
         keep_running: bool = typer.Option(False, help="leave the fleet and dashboard up until Ctrl-C")):
    """The main job end to end on loopback: base -> LoRA -> distilled student -> gated ONNX -> signed ->
    control plane -> agents -> canary + waves under load -> answers, accuracy, sizes, speeds, telemetry."""
    from control_plane.demo import DemoFailed, run_demo

    if agents < 2:
        fail("--agents must be at least 2 (a canary and the rest)")
    try:
        run_demo(tiny=tiny, workdir=workdir, n_agents=agents, console=console, keep_running=keep_running)
    except DemoFailed as e:
        fail(str(e))


