"""Latency and decode speed across prompt lengths, short to the agent's prompt limit, through the agent's
OpenAI HTTP API (streamed chat completions), and what happens beyond the limit (413). Real control plane +
agent processes on loopback.

    .venv/bin/python bench/bench_prompt_lengths.py --model smollm2-int4 --runs 3     # the checklist run
    .venv/bin/python bench/bench_prompt_lengths.py --model tiny --runs 1             # a quick check of the script

The agent refuses a prompt longer than min(max_prompt_tokens = 2048, context_length - 1) tokens with 413
`context_length_exceeded` (edge_agent/serving.py), and a body over 1 MiB with 413 before parsing
(edge_agent/http_api.py). SmolLM2's context is 8192, so its limit is the agent's 2048; the tiny model's is 511.
Prompts are a filler text cut to a target token count with the bundle's tokenizer; the token count the agent
reports (usage.prompt_tokens) is what is recorded. Per length: first-token latency (request sent -> first
content chunk), total latency, decode tokens/s ((completion tokens - 1) / (end of stream - first chunk)),
median of --runs after one warm-up. Writes bench/results/prompt-lengths-MODEL.json.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time

import httpx

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import machine, serving_agent, write_result  # noqa: E402

FILLER = ("The Kestrel K2 is an industrial edge gateway. It collects readings from sensors on the factory floor, "
          "buffers them when the uplink is down, and forwards them to the plant's data platform. Error codes "
          "appear on its front display; the manual lists what each one means and how to clear it. ")
QUESTION = "\n\nIn one sentence: what does the text above describe?"
AGENT_PROMPT_LIMIT = 2048  # edge_agent/config.py max_prompt_tokens (no CLI flag)


class Prompts:
    """Builds a user message whose rendered chat prompt has about N tokens (the bundle's own tokenizer)."""

    def __init__(self, bundle: pathlib.Path):
        from tokenizers import Tokenizer

        from slmops.chat_format import CHATML, ChatFormat
        self.tok = Tokenizer.from_file(str(bundle / "tokenizer.json"))
        self.chat = ChatFormat.from_dict(CHATML)
        self.words = (FILLER * 400).split(" ")
        self.offset = 0  # agent count - local count, set by calibrate()

    def count(self, content: str) -> int:
        text = self.chat.render([{"role": "user", "content": content}])
        return len(self.tok.encode(text, add_special_tokens=False).ids) + self.offset

    def content(self, n_words: int) -> str:
        return " ".join(self.words[:n_words]) + QUESTION

    def for_tokens(self, target: int) -> str:
        lo, hi = 0, len(self.words)
        while hi - lo > 1:  # the largest word count whose prompt has <= target tokens
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if self.count(self.content(mid)) <= target else (lo, mid)
        return self.content(lo)


def stream_once(url: str, content: str, max_tokens: int) -> dict:
    t0 = time.perf_counter()
    first = None
    usage, finish, status, err = None, None, None, None
    with httpx.stream("POST", url + "/v1/chat/completions", timeout=600,
                      json={"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
                            "temperature": 0, "stream": True}) as r:
        status = r.status_code
        if status != 200:
            r.read()
            err = r.json().get("error", {})
        else:
            for line in r.iter_lines():
                if not line.startswith("data: {"):
                    continue
                d = json.loads(line[6:])
                if d.get("usage"):
                    usage = d["usage"]
                    finish = d["choices"][0].get("finish_reason")
                elif d["choices"][0]["delta"].get("content"):
                    first = first or time.perf_counter()
    end = time.perf_counter()
    out = {"status": status, "total_ms": (end - t0) * 1000}
    if err is not None:
        return {**out, "error": err}
    n = usage["completion_tokens"] if usage else 0
    return {**out, "prompt_tokens": usage["prompt_tokens"] if usage else None, "completion_tokens": n,
            "finish_reason": finish, "first_token_ms": (first - t0) * 1000 if first else None,
            # decode: first content chunk -> end of the stream (as bench_serving.py); chunks can arrive batched
            "decode_tok_s": (n - 1) / (end - first) if first and n > 1 and end > first else None}


def med(rows: list[dict], key: str):
    xs = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(xs) if xs else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny", help="tiny | smollm2-int4 | smollm2-int8")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--lengths", default="", help="comma-separated prompt token targets (default: 16, 32, ... "
                                                  "doubling, plus 75%%, 90%% and 100%% of the limit)")
    ap.add_argument("--workdir", type=pathlib.Path, default=None, help="keep/reuse the exported model here")
    args = ap.parse_args()
    started, m0 = time.monotonic(), machine()
    rows, beyond = [], []
    with serving_agent(args.model, args.workdir, "bench-plen-", extra=["--max-concurrent", "1"]) as \
            (bundle, _, port, ref):
        genai = json.loads((bundle / "genai_config.json").read_text())
        context = int(genai["model"].get("context_length") or genai["search"]["max_length"])
        limit = min(AGENT_PROMPT_LIMIT, context - 1)
        prompts = Prompts(bundle)
        url = f"http://127.0.0.1:{port}"
        probe_text = prompts.content(5)
        probe = stream_once(url, probe_text, 1)
        prompts.offset = probe["prompt_tokens"] - prompts.count(probe_text)
        print(f"serving {ref}; context {context}, prompt limit {limit} tokens; tokenizer offset "
              f"{prompts.offset:+d}")
        if args.lengths:
            targets = [int(x) for x in args.lengths.split(",")]
        else:
            targets, t = [], 16
            while t < limit:
                targets.append(t)
                t *= 2
            targets += [int(limit * 0.75), int(limit * 0.9), limit]
        targets = sorted({min(t, limit) for t in targets})
        shortest = prompts.count(prompts.content(0))
        if targets[0] < shortest:  # the chat template and the question alone are longer: start there
            targets = sorted({max(t, shortest) for t in targets})
        print("| prompt tokens | first token ms | total ms | decode tok/s | completion tokens |\n|---|---|---|---|---|")
        for target in targets:
            content = prompts.for_tokens(target)
            stream_once(url, content, args.max_tokens)  # warm-up
            runs = [stream_once(url, content, args.max_tokens) for _ in range(args.runs)]
            bad = [r for r in runs if r["status"] != 200]
            row = {"target_tokens": target, "prompt_tokens": runs[0].get("prompt_tokens"),
                   "status": sorted({r["status"] for r in runs}),
                   "first_token_ms": med(runs, "first_token_ms"), "total_ms": med(runs, "total_ms"),
                   "decode_tok_s": med(runs, "decode_tok_s"), "completion_tokens": med(runs, "completion_tokens"),
                   "finish_reason": runs[0].get("finish_reason"), "failed": len(bad), "runs": runs}
            rows.append(row)
            f = lambda v, p=0: "-" if v is None else f"{v:.{p}f}"  # noqa: E731
            print(f"| {row['prompt_tokens']} | {f(row['first_token_ms'])} | {f(row['total_ms'])} | "
                  f"{f(row['decode_tok_s'], 1)} | {f(row['completion_tokens'])} |"
                  + (f" FAILED {bad[0]}" if bad else ""), flush=True)
        # Beyond the limit: one token over, twice the limit, and a body over the 1 MiB cap.
        over = [("limit + 1 token", prompts.for_tokens(limit + 1)),
                ("2 x limit", prompts.for_tokens(2 * limit)),
                ("body over 1 MiB", "x " * (600 * 1024))]
        for what, content in over:
            r = stream_once(url, content, args.max_tokens)
            counted = prompts.count(content) if len(content) < 200_000 else None
            beyond.append({"case": what, "prompt_tokens_local_count": counted, "body_bytes": len(content),
                           **{k: r.get(k) for k in ("status", "total_ms", "error", "prompt_tokens")}})
            print(f"{what}: {counted or '-'} tokens -> HTTP {r['status']} "
                  f"{(r.get('error') or {}).get('code')}: {(r.get('error') or {}).get('message', '')[:100]} "
                  f"({r['total_ms']:.0f} ms)")
        # The agent still serves after the refusals.
        after = stream_once(url, prompts.for_tokens(16), 8)
    res = {"bench": "prompt_lengths", "model": args.model, "ref": ref, "context_length": context,
           "agent_prompt_limit": limit, "max_tokens": args.max_tokens, "runs": args.runs, "temperature": 0,
           "lengths": rows, "beyond_limit": beyond, "served_after_refusals": after["status"] == 200}
    write_result(f"prompt-lengths-{args.model}", res, started, m0)


if __name__ == "__main__":
    main()
