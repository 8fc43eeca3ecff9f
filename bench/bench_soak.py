"""Soak: steady load on one real agent for N minutes; the agent's resident memory sampled all along, and a
trend verdict computed from the samples after warm-up (no growth trend once warm = the seed's "no leaks over
long runs"). Real control plane + agent processes on loopback; the clients are the official `openai` client,
half of them streaming.

    .venv/bin/python bench/bench_soak.py --model smollm2-int4 --minutes 10       # the checklist run
    .venv/bin/python bench/bench_soak.py --model tiny --minutes 1                # a quick check of the script

Every --sample-s seconds: RSS/PSS/USS of the agent process (psutil), threads, open fds, and the requests that
finished in that interval (count, failures, latency p50/p95/p99). Verdict, over the samples after --warmup-min:
least-squares slope of RSS in MB/min (whole post-warm-up part and its last half), max - min. "no growth trend"
when both slopes stay under --max-slope-mb-min; "levelled off" when only the last half does (the allocator
was still warming up after --warmup-min); "growth" when the last half grows. Writes bench/results/soak-MODEL.json.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import threading
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import linear_slope, machine, pct, rss_mb, serving_agent, write_result  # noqa: E402

QUESTIONS = ["What does error E17 mean on the Kestrel K2?", "How do I reset the Kestrel K2 to factory settings?",
             "Which power adapter does the Kestrel K2 need?", "Explain what an edge gateway does in a factory."]


class Load:
    """`clients` threads calling the agent back to back; every request recorded as (start, end, ok, error)."""

    def __init__(self, url: str, clients: int, max_tokens: int):
        import openai

        self.url, self.max_tokens = url, max_tokens
        self.records: list[tuple[float, float, bool, str]] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = []
        for i in range(clients):
            client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120)
            self.threads.append(threading.Thread(target=self._loop, args=(client, i), daemon=True))

    def _loop(self, client, i: int) -> None:
        n = 0
        while not self.stop.is_set():
            q = QUESTIONS[(i + n) % len(QUESTIONS)]
            stream = (i % 2 == 1)  # odd clients stream (SSE), even ones do not
            t0 = time.monotonic()
            ok, err = True, ""
            try:
                msgs = [{"role": "user", "content": q}]
                if stream:
                    finish = None  # a stream is whole when a chunk carries finish_reason (an answer may be empty)
                    for ch in client.chat.completions.create(model="", messages=msgs, max_tokens=self.max_tokens,
                                                             temperature=0.7, stream=True):
                        finish = (ch.choices[0].finish_reason if ch.choices else None) or finish
                    ok = finish is not None
                    err = "" if ok else "stream ended without finish_reason"
                else:
                    r = client.chat.completions.create(model="", messages=msgs, max_tokens=self.max_tokens,
                                                       temperature=0.7)
                    ok = bool(r.choices) and r.choices[0].message.content is not None
                    err = "" if ok else "no choices"
            except Exception as e:  # noqa: BLE001 (any failure counts; the soak records, it does not stop)
                ok, err = False, f"{type(e).__name__}: {str(e)[:200]}"
            with self.lock:
                self.records.append((t0, time.monotonic(), ok, err))
            n += 1

    def start(self):
        for t in self.threads:
            t.start()

    def close(self):
        self.stop.set()
        for t in self.threads:
            t.join(150)


def verdict(samples: list[dict], warmup_s: float, max_slope: float) -> dict:
    warm = [s for s in samples if s["t_s"] >= warmup_s]
    out = {"warmup_s": warmup_s, "samples_after_warmup": len(warm), "max_slope_mb_per_min": max_slope}
    if len(warm) < 6:
        return {**out, "verdict": "too short to judge (fewer than 6 samples after warm-up)"}
    xs = [s["t_s"] / 60 for s in warm]
    ys = [s["rss_mb"] for s in warm]
    half = warm[len(warm) // 2:]
    slope_all = linear_slope(xs, ys)
    slope_last = linear_slope([s["t_s"] / 60 for s in half], [s["rss_mb"] for s in half])
    total_req = sum(s["requests"] for s in warm[1:])
    growing = [name for name, v in (("post-warm-up", slope_all), ("last half", slope_last)) if v > max_slope]
    k = len(warm) // 3
    thirds = [linear_slope([s["t_s"] / 60 for s in part], [s["rss_mb"] for s in part])
              for part in (warm[:k], warm[k:2 * k], warm[2 * k:])] if k >= 2 else []
    slowing = len(thirds) == 3 and None not in thirds and thirds[2] < 0.5 * thirds[0]
    return {**out, "rss_first_mb": ys[0], "rss_last_mb": ys[-1], "rss_min_mb": min(ys), "rss_max_mb": max(ys),
            "rss_max_minus_min_mb": round(max(ys) - min(ys), 2),
            "rss_growth_kb_per_1000_requests": round(1000 * (ys[-1] - ys[0]) * 1000 / total_req, 2) if total_req else None,
            "slope_mb_per_min": round(slope_all, 4), "slope_last_half_mb_per_min": round(slope_last, 4),
            "threads_first_last": [warm[0]["threads"], warm[-1]["threads"]],
            "fds_first_last": [warm[0]["fds"], warm[-1]["fds"]],
            "slope_by_third_mb_per_min": [round(x, 4) for x in thirds if x is not None],
            "verdict": ("no growth trend" if not growing else
                        f"levelled off: RSS grew {ys[-1] - ys[0]:+.1f} MB after the warm-up, then stayed flat over "
                        f"the last half ({slope_last:+.2f} MB/min)" if growing == ["post-warm-up"] else
                        "growth: RSS slope above the threshold over the " + " and ".join(growing)
                        + ("; slowing down (last third under half the first): run longer to see if it levels off"
                           if slowing else ""))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny", help="tiny | smollm2-int4 | smollm2-int8")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--clients", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--sample-s", type=float, default=5.0)
    ap.add_argument("--warmup-min", type=float, default=None,
                    help="samples before this are not judged (default: 20%% of the run, at most 2 min)")
    ap.add_argument("--max-slope-mb-min", type=float, default=0.5,
                    help="RSS slope (MB/min) above which the verdict is 'growth'")
    ap.add_argument("--workdir", type=pathlib.Path, default=None, help="keep/reuse the exported model here")
    args = ap.parse_args()
    started, m0 = time.monotonic(), machine()
    import logging
    for noisy in ("httpx", "httpx2", "openai"):  # one INFO line per request otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    warmup_s = 60 * (args.warmup_min if args.warmup_min is not None else min(2.0, 0.2 * args.minutes))
    with serving_agent(args.model, args.workdir, "bench-soak-",
                       extra=["--max-concurrent", "2", "--max-queue", "16"]) as (_, proc, port, ref):
        pid = proc.popen.pid
        url = f"http://127.0.0.1:{port}"
        load = Load(url, args.clients, args.max_tokens)
        samples = [{"t_s": 0.0, **rss_mb(pid), "requests": 0, "failed": 0, "p50_ms": None, "p95_ms": None,
                    "p99_ms": None}]
        print(f"serving {ref} on {url}; {args.clients} clients for {args.minutes} min; agent pid {pid}, "
              f"RSS {samples[0]['rss_mb']:.1f} MB before load")
        t_start = time.monotonic()
        load.start()
        end = t_start + 60 * args.minutes
        seen = 0
        next_t = t_start
        while time.monotonic() < end:
            next_t += args.sample_s
            time.sleep(max(0.0, next_t - time.monotonic()))
            if not proc.alive():
                raise SystemExit(f"agent exited during the soak:\n{proc.log_tail()}")
            now = time.monotonic()
            with load.lock:
                new = load.records[seen:]
                seen = len(load.records)
            lat = [(e - s) * 1000 for s, e, ok, _ in new if ok]
            row = {"t_s": round(now - t_start, 2), **rss_mb(pid), "requests": len(new),
                   "failed": sum(1 for r in new if not r[2]),
                   "p50_ms": pct(lat, 50), "p95_ms": pct(lat, 95), "p99_ms": pct(lat, 99)}
            samples.append(row)
            if len(samples) % max(1, int(60 / args.sample_s)) == 1 or now >= end:
                print(f"  t={row['t_s']:7.1f}s RSS {row['rss_mb']:7.1f} MB  threads {row['threads']:3d}  "
                      f"fds {row['fds']:4d}  requests {seen:6d} (failed {sum(1 for r in load.records if not r[2])})"
                      f"  p95 {row['p95_ms'] or 0:.0f} ms", flush=True)
        load.close()
        after = rss_mb(pid)
    recs = load.records
    ok_lat = [(e - s) * 1000 for s, e, ok, _ in recs if ok]
    errors: dict[str, int] = {}
    for r in recs:
        if not r[2]:
            errors[r[3]] = errors.get(r[3], 0) + 1
    v = verdict(samples, warmup_s, args.max_slope_mb_min)
    res = {"bench": "soak", "model": args.model, "ref": ref, "minutes": args.minutes, "clients": args.clients,
           "max_tokens": args.max_tokens, "sample_s": args.sample_s,
           "requests": len(recs), "failed": sum(1 for r in recs if not r[2]), "errors": errors,
           "latency_ms": {"p50": pct(ok_lat, 50), "p95": pct(ok_lat, 95), "p99": pct(ok_lat, 99),
                          "max": max(ok_lat) if ok_lat else None},
           "requests_per_s": len(recs) / (60 * args.minutes), "rss_after_load_mb": after["rss_mb"],
           "trend": v, "samples": samples}
    print(f"\n{len(recs)} requests, {res['failed']} failed; p50/p95/p99 {res['latency_ms']['p50'] or 0:.0f} / "
          f"{res['latency_ms']['p95'] or 0:.0f} / {res['latency_ms']['p99'] or 0:.0f} ms")
    print(f"RSS after warm-up ({v['samples_after_warmup']} samples): "
          + (f"{v['rss_min_mb']:.1f}-{v['rss_max_mb']:.1f} MB (max-min {v['rss_max_minus_min_mb']:.1f}), slope "
             f"{v['slope_mb_per_min']:+.3f} MB/min (last half {v['slope_last_half_mb_per_min']:+.3f}); "
             if "slope_mb_per_min" in v else "") + f"verdict: {v['verdict']}")
    write_result(f"soak-{args.model}", res, started, m0)


if __name__ == "__main__":
    main()
