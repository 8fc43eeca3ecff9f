"""Hot-swap benchmark: request latency p50/p99 in steady state vs during a swap, and the time from a new
desired version to the agent serving it. Real control plane + agent processes on loopback.

    .venv/bin/python bench/bench_swap.py                 # SmolLM2-135M int4 (real model)
    .venv/bin/python bench/bench_swap.py --tiny          # tiny model, seconds
Prints a markdown table and writes bench/results/swap.json (swap-tiny.json with --tiny), including a
per-request timeline for bench/make_plots.py.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import Cluster, variant  # noqa: E402  (the loopback harness the e2e tests use)


def pct(values, q):
    v = sorted(values)
    return v[min(len(v) - 1, max(0, round(q / 100 * len(v)) - 1))] if v else float("nan")


def build(tiny: bool, work: pathlib.Path) -> pathlib.Path:
    from training.export import ExportOptions, export_onnx
    if tiny:
        from training.tiny import build_tiny_model
        build_tiny_model(work / "hf", steps=40, log=lambda m: None)
    else:
        from training.model_sources import smollm2_to_hf
        smollm2_to_hf(work / "hf")
    return export_onnx(work / "hf", work / "int4", ExportOptions("int4"), log=lambda m: None)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--steady-s", type=float, default=20.0)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--name", default="", help="result file bench/results/NAME.json (default swap / swap-tiny)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-swap-") as tmp:
        work = pathlib.Path(tmp)
        bundle = build(args.tiny, work)
        c = Cluster(work / "cluster")
        try:
            c.start_cp()
            m1 = c.publish(bundle, "bench", "v1")
            c.admin.set_desired("bench", "v1")
            c.start_agent("a1", extra=["--probation", "0", "--max-concurrent", "2", "--max-queue", "16"])
            c.wait_serving("a1", m1.ref, timeout=120)
            m2 = c.publish(variant(bundle, work / "v2", 7), "bench", "v2")
            samples, stop = [], threading.Event()

            def client():
                while not stop.is_set():
                    t0 = time.monotonic()
                    status, body = c.chat("a1", max_tokens=args.max_tokens)
                    samples.append((t0, time.monotonic(), status, body.get("model") if isinstance(body, dict) else ""))

            threads = [threading.Thread(target=client, daemon=True) for _ in range(args.clients)]
            for t in threads:
                t.start()
            time.sleep(args.steady_s)
            t_set = time.monotonic()
            c.admin.set_desired("bench", "v2")
            c.wait_serving("a1", m2.ref, timeout=300)
            t_serving = time.monotonic()
            time.sleep(args.steady_s / 2)
            stop.set()
            for t in threads:
                t.join(60)
        finally:
            c.stop()
    steady = [(e - s) * 1000 for s, e, st, _ in samples if e < t_set]
    during = [(e - s) * 1000 for s, e, st, _ in samples if e >= t_set and s <= t_serving]
    failed = [x for x in samples if x[2] != 200]
    res = {"model": "tiny" if args.tiny else "SmolLM2-135M-Instruct int4", "clients": args.clients,
           "requests": len(samples), "failed": len(failed),
           "steady_p50_ms": pct(steady, 50), "steady_p99_ms": pct(steady, 99),
           "swap_p50_ms": pct(during, 50), "swap_p99_ms": pct(during, 99), "swap_requests": len(during),
           "desired_to_serving_s": t_serving - t_set,
           # every request, for the latency-during-a-swap plot (bench/make_plots.py): seconds relative to
           # set_desired(v2) (negative = before), latency, HTTP status, the model@version that answered
           "timeline": [[round(s - t_set, 3), round((e - s) * 1000, 1), st, model] for s, e, st, model in samples],
           "command": " ".join([".venv/bin/python", "bench/bench_swap.py", *sys.argv[1:]])}
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / f"{args.name or 'swap' + ('-tiny' if args.tiny else '')}.json").write_text(json.dumps(res, indent=1))
    print(f"| model | clients | requests (failed) | steady p50 / p99 ms | during swap p50 / p99 ms (n) | "
          f"desired -> serving s |\n|---|---|---|---|---|---|\n| {res['model']} | {args.clients} | "
          f"{res['requests']} ({res['failed']}) | {res['steady_p50_ms']:.0f} / {res['steady_p99_ms']:.0f} | "
          f"{res['swap_p50_ms']:.0f} / {res['swap_p99_ms']:.0f} ({res['swap_requests']}) | "
          f"{res['desired_to_serving_s']:.2f} |")


if __name__ == "__main__":
    main()
