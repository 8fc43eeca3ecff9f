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
                                                             "int8), k_quant_mixed"),
           fallback: bool = typer.Option(True, help="when the precision fails the quality gate, try the next "
                                                    "(int4 -> int8 -> fp16 -> fp32)"),
           gate_examples: int = typer.Option(0, help="eval examples for the gate (0 = all)"),
           adapter: List[str] = typer.Option([], help="NAME=PEFT_DIR (repeat): export the base with LoRA slots "
                                                      "and each adapter as adapters/NAME.onnx_adapter")):
    """Export to ONNX (onnxruntime-genai builder), run the quality gate against fp32 and keep the first
    precision that passes; writes gate.json (needed by `models publish`) and gate_report.json."""
    from rich.table import Table as _Table

    from training.export import ExportError, ExportOptions
    from training.quality_gate import GateError, GateThresholds, from_recipe, select_precision

    try:
        if source.is_file():
            model_dir, opts, thresholds = from_recipe(source)
        else:
            model_dir, opts, thresholds = source, {}, GateThresholds()
        given = dict(precision=precision, execution_provider=execution_provider, int4_block_size=int4_block_size,
                     int4_symmetric=int4_symmetric, int4_accuracy_level=int4_accuracy_level, int4_algo=int4_algo)
        opts.update({k: v for k, v in given.items() if v is not None})
        first = opts.pop("precision", "int4")
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
        report = select_precision(model_dir, out_dir, first, base, thresholds, log=console.print, **build)
        if not fallback and report["chosen"] != first:
            import shutil

            shutil.rmtree(out_dir, ignore_errors=True)
            fail(f"{first} failed the quality gate and --no-fallback was given: {report['why']}")
    except (ExportError, GateError) as e:
        fail(str(e))
    t = _Table("precision", "size MB", "vs fp32", "perplexity", "accuracy", "greedy agreement", "gate")
    ref_bytes = report["reference_bytes"]
    t.add_row("fp32 (reference)", f"{ref_bytes / 1e6:.2f}", "100%", f"{report['reference']['perplexity']:.3f}",
              f"{report['reference']['accuracy']:.1%}", "-", "reference")
    for row in report["tried"]:
        mt = row["metrics"] or {}
        size = row["bytes"]  # None when the variant could not even be built here
        t.add_row(row["precision"], f"{size / 1e6:.2f}" if size else "-", f"{size / ref_bytes:.0%}" if size else "-",
                  f"{mt.get('perplexity', float('nan')):.3f}", f"{mt.get('accuracy', float('nan')):.1%}",
                  f"{mt.get('greedy_agreement', float('nan')):.1%}", "passed" if row["passed"] else "failed")
    console.print(t)
    console.print(f"chose {report['chosen']} ({report['why']}) -> {out_dir} in {time.monotonic() - t0:.1f} s")


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


