"""Invalid input under load: valid steady load on one real agent plus a stream of invalid requests of many
kinds (malformed JSON, wrong types, huge prompts and bodies, bad UTF-8, unknown model, abandoned streams,
dropped connections). Counts status codes per kind against the status the API promises; valid requests must
keep succeeding; any 5xx is reported. Real control plane + agent processes on loopback.

    .venv/bin/python bench/bench_invalid_under_load.py --model smollm2-int4 --seconds 300    # the checklist run
    .venv/bin/python bench/bench_invalid_under_load.py --model tiny --seconds 30             # a quick check

Afterwards the agent must still be alive and ready; its log is scanned for tracebacks and ERROR lines, and
its RSS is taken before and after. Exit status 1 when a valid request failed, a 5xx was seen, an invalid
kind got a status other than expected, or the agent is not ready at the end.
Writes bench/results/invalid-under-load-MODEL.json.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import socket
import sys
import threading
import time

import httpx

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import linear_slope, machine, pct, rss_mb, serving_agent, write_result  # noqa: E402

CHAT = "/v1/chat/completions"
MSG = [{"role": "user", "content": "What does error E17 mean on the Kestrel K2?"}]


def j(obj) -> bytes:
    return json.dumps(obj).encode()


def kinds(long_prompt: str) -> dict:
    """kind -> (method, path, raw body or None, expected statuses). `None` body = special handling."""
    return {
        "malformed_json": ("POST", CHAT, b'{"messages": [{"role": "user", "content": "hi"}', {400}),
        "json_not_object": ("POST", CHAT, b"[1, 2, 3]", {400}),
        "empty_body": ("POST", CHAT, b"", {400}),
        "messages_wrong_type": ("POST", CHAT, j({"messages": "hello"}), {400}),
        "messages_empty": ("POST", CHAT, j({"messages": []}), {400}),
        "content_wrong_type": ("POST", CHAT, j({"messages": [{"role": "user", "content": 42}]}), {400}),
        "role_unknown": ("POST", CHAT, j({"messages": [{"role": "robot", "content": "hi"}]}), {400}),
        "max_tokens_string": ("POST", CHAT, j({"messages": MSG, "max_tokens": "ten"}), {400}),
        "max_tokens_negative": ("POST", CHAT, j({"messages": MSG, "max_tokens": -5}), {400}),
        "temperature_out_of_range": ("POST", CHAT, j({"messages": MSG, "temperature": 7}), {400}),
        "stream_not_bool": ("POST", CHAT, j({"messages": MSG, "stream": "yes"}), {400}),
        "tools_unsupported": ("POST", CHAT, j({"messages": MSG, "tools": [{"type": "function"}]}), {400}),
        "bad_utf8": ("POST", CHAT, b'{"messages": [{"role": "user", "content": "caf\xc3\x28 \xff\xfe"}]}', {400}),
        "unknown_model": ("POST", CHAT, j({"messages": MSG, "model": "gpt-9-ultra"}), {404}),
        "unknown_adapter": ("POST", CHAT, j({"messages": MSG, "model": "bench-x:nope"}), {404}),
        "huge_prompt_tokens": ("POST", CHAT, j({"messages": [{"role": "user", "content": long_prompt}]}), {413}),
        "huge_prompt_stream": ("POST", CHAT, j({"messages": [{"role": "user", "content": long_prompt}],
                                                "stream": True}), {413}),
        "huge_body": ("POST", CHAT, j({"messages": [{"role": "user", "content": "x " * (600 * 1024)}]}), {413}),
        "completion_empty_prompt": ("POST", "/v1/completions", j({"prompt": ""}), {400}),
        "completion_prompt_list": ("POST", "/v1/completions", j({"prompt": [1, 2, 3]}), {400}),
        "wrong_method": ("GET", CHAT, None, {405}),
        "unknown_path": ("POST", "/v1/embeddings", j({"input": "hi"}), {404}),
        "abandoned_stream": ("POST", CHAT, j({"messages": MSG, "stream": True, "max_tokens": 256}), {200}),
        "disconnect_before_response": ("POST", CHAT, j({"messages": MSG, "max_tokens": 256}), {None}),
        "truncated_body": ("POST", CHAT, b'{"messages": [{"role": "us', {None}),
    }


def raw_send(port: int, path: str, body: bytes, content_length: int | None = None) -> None:
    """Sends a request over a plain socket and closes it without reading the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {content_length if content_length is not None else len(body)}\r\n\r\n")
        s.sendall(head.encode() + body)


def send_invalid(client: httpx.Client, port: int, kind: str, spec) -> int | None:
    method, path, body, _ = spec
    url = f"http://127.0.0.1:{port}{path}"
    if kind == "abandoned_stream":
        with client.stream("POST", url, content=body, headers={"Content-Type": "application/json"}) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    break  # one chunk, then hang up mid-stream
            return r.status_code
    if kind == "disconnect_before_response":
        raw_send(port, path, body)
        return None
    if kind == "truncated_body":
        raw_send(port, path, body, content_length=len(body) + 500)
        return None
    if method == "GET":
        return client.get(url).status_code
    return client.post(url, content=body, headers={"Content-Type": "application/json"}).status_code


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny", help="tiny | smollm2-int4 | smollm2-int8")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--clients", type=int, default=2, help="valid clients (half of them stream)")
    ap.add_argument("--invalid-workers", type=int, default=2, help="threads sending invalid requests")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--workdir", type=pathlib.Path, default=None, help="keep/reuse the exported model here")
    args = ap.parse_args()
    started, m0 = time.monotonic(), machine()
    with serving_agent(args.model, args.workdir, "bench-invalid-",
                       extra=["--max-concurrent", "2", "--max-queue", "16"]) as (_, proc, port, ref):
        url = f"http://127.0.0.1:{port}"
        long_prompt = "The Kestrel K2 gateway forwards sensor readings. " * 1200  # ~10k tokens, < 1 MiB
        specs = kinds(long_prompt)
        rss_before = rss_mb(proc.popen.pid)
        stop = threading.Event()
        lock = threading.Lock()
        valid: list[tuple[float, int | str, bool]] = []  # (latency ms, status or error, streamed)
        invalid: dict[str, dict[str, int]] = {k: {} for k in specs}

        def valid_loop(i: int):
            stream = i % 2 == 1
            with httpx.Client(timeout=120) as client:
                while not stop.is_set():
                    t0 = time.monotonic()
                    body = {"messages": MSG, "max_tokens": args.max_tokens, "temperature": 0.7,
                            "stream": stream}
                    try:
                        if stream:
                            with client.stream("POST", url + CHAT, json=body) as r:
                                lines = [x for x in r.iter_lines() if x.startswith("data: ")]
                                st = r.status_code if (r.status_code != 200 or lines[-1] == "data: [DONE]") \
                                    else "incomplete stream"
                        else:
                            r = client.post(url + CHAT, json=body)
                            st = r.status_code if r.status_code != 200 or r.json()["choices"] else "no choices"
                    except Exception as e:  # noqa: BLE001 (recorded per request, never raised)
                        st = f"{type(e).__name__}: {str(e)[:120]}"
                    with lock:
                        valid.append(((time.monotonic() - t0) * 1000, st, stream))

        def invalid_loop(i: int):
            names = list(specs)
            n = i
            with httpx.Client(timeout=120) as client:
                while not stop.is_set():
                    kind = names[n % len(names)]
                    n += args.invalid_workers
                    try:
                        st = send_invalid(client, port, kind, specs[kind])
                        key = "no status (client hung up)" if st is None else str(st)
                    except Exception as e:  # noqa: BLE001 (recorded per request, never raised)
                        key = f"{type(e).__name__}"
                    with lock:
                        invalid[kind][key] = invalid[kind].get(key, 0) + 1

        threads = ([threading.Thread(target=valid_loop, args=(i,), daemon=True) for i in range(args.clients)]
                   + [threading.Thread(target=invalid_loop, args=(i,), daemon=True)
                      for i in range(args.invalid_workers)])
        print(f"serving {ref} on {url}: {args.clients} valid clients + {args.invalid_workers} invalid "
              f"senders for {args.seconds:.0f} s ({len(specs)} invalid kinds)", flush=True)
        for t in threads:
            t.start()
        rss_samples = [{"t_s": 0.0, **rss_before}]
        t_start = time.monotonic()
        while time.monotonic() - t_start < args.seconds:
            time.sleep(min(5.0, max(0.0, args.seconds - (time.monotonic() - t_start))))
            rss_samples.append({"t_s": round(time.monotonic() - t_start, 1), **rss_mb(proc.popen.pid)})
        stop.set()
        for t in threads:
            t.join(150)
        time.sleep(1.0)
        ready = httpx.get(url + "/readyz", timeout=10).status_code
        after = httpx.post(url + CHAT, json={"messages": MSG, "max_tokens": 4}, timeout=60).status_code
        metrics = httpx.get(url + "/metrics", timeout=10).text
        rss_after = rss_mb(proc.popen.pid)
        alive = proc.alive()
        log = proc.log_path.read_text(errors="replace")
    tracebacks = log.count("Traceback (most recent call last)")
    error_lines = [x for x in log.splitlines() if " ERROR" in x or "[ERROR]" in x]
    error_kinds: dict[str, int] = {}
    for x in error_lines:  # "... slmops.agent.http ERROR generation failed: ClientDisconnect: " -> the message
        msg = x.split(" ERROR ", 1)[-1][:80]
        error_kinds[msg] = error_kinds.get(msg, 0) + 1
    queue = [x for x in metrics.splitlines() if x.startswith("slmops_agent_queue_depth")]
    ok_lat = [lat for lat, st, _ in valid if st == 200]
    valid_codes: dict[str, int] = {}
    for _, st, _ in valid:
        valid_codes[str(st)] = valid_codes.get(str(st), 0) + 1
    rows, mismatches, fivexx = [], [], []
    for kind, counts in invalid.items():
        expected = specs[kind][3]
        exp_keys = {"no status (client hung up)" if e is None else str(e) for e in expected}
        wrong = {k: v for k, v in counts.items() if k not in exp_keys}
        rows.append({"kind": kind, "expected": sorted(exp_keys), "got": counts, "unexpected": wrong})
        if wrong:
            mismatches.append(kind)
        fivexx += [f"{kind}: {k} x{v}" for k, v in counts.items() if k.startswith("5")]
    fivexx += [f"valid: {k} x{v}" for k, v in valid_codes.items() if k.startswith("5")]
    valid_failed = sum(v for k, v in valid_codes.items() if k != "200")
    passed = not valid_failed and not fivexx and not mismatches and ready == 200 and after == 200 and alive
    res = {"bench": "invalid_under_load", "model": args.model, "ref": ref, "seconds": args.seconds,
           "valid_clients": args.clients, "invalid_workers": args.invalid_workers,
           "valid": {"requests": len(valid), "failed": valid_failed, "status": valid_codes,
                     "latency_ms": {"p50": pct(ok_lat, 50), "p95": pct(ok_lat, 95), "p99": pct(ok_lat, 99)}},
           "invalid": rows, "invalid_requests": sum(sum(r["got"].values()) for r in rows),
           "mismatched_kinds": mismatches, "server_errors_5xx": fivexx,
           "after": {"readyz": ready, "valid_request": after, "agent_alive": alive,
                     "queue_depth_metric": queue, "rss_before_mb": rss_before["rss_mb"],
                     "rss_after_mb": rss_after["rss_mb"], "threads_before_after": [rss_before["threads"],
                                                                                  rss_after["threads"]],
                     "fds_before_after": [rss_before["fds"], rss_after["fds"]]},
           "agent_log": {"tracebacks": tracebacks, "error_lines": len(error_lines),
                         "error_messages": error_kinds, "error_examples": error_lines[:5]},
           "rss_samples": rss_samples,
           "rss_slope_mb_per_min": linear_slope([x["t_s"] / 60 for x in rss_samples[1:]],
                                                [x["rss_mb"] for x in rss_samples[1:]]),
           "passed": passed}
    print(f"\nvalid: {len(valid)} requests, status {valid_codes}; p50/p95 {res['valid']['latency_ms']['p50'] or 0:.0f}"
          f" / {res['valid']['latency_ms']['p95'] or 0:.0f} ms")
    print("| invalid kind | expected | got |\n|---|---|---|")
    for r in rows:
        got = ", ".join(f"{k} x{v}" for k, v in sorted(r["got"].items()))
        print(f"| {r['kind']} | {', '.join(r['expected'])} | {got}{'  <-- UNEXPECTED' if r['unexpected'] else ''} |")
    print(f"5xx: {fivexx or 'none'}; after: /readyz {ready}, a valid request {after}, agent alive {alive}; "
          f"RSS {rss_before['rss_mb']:.1f} -> {rss_after['rss_mb']:.1f} MB; agent log: {tracebacks} tracebacks, "
          f"{len(error_lines)} ERROR lines")
    for msg, n in sorted(error_kinds.items(), key=lambda kv: -kv[1]):
        print(f"  agent ERROR x{n}: {msg}")
    print("PASSED" if passed else "FAILED")
    write_result(f"invalid-under-load-{args.model}", res, started, m0)
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
