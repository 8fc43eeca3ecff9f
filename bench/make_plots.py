"""Plots for docs/BENCHMARKS.md from the bench scripts' JSON results (matplotlib, Agg, PNG):

    .venv/bin/python bench/make_plots.py [--results bench/results] [--out docs/img]

| plot | input (bench/results/) | produced by |
|---|---|---|
| serving-engines.png | serving.json | bench/bench_serving.py |
| swap-latency[-NAME].png | swap*.json (with `timeline`) | bench/bench_swap.py [--tiny] [--name] |
| soak-rss-MODEL.png | soak-MODEL.json | bench/bench_soak.py |
| accuracy-per-stage.png | demo.json | bench/collect_demo.py DEMO_WORKDIR |
| prompt-lengths-MODEL.png | prompt-lengths-MODEL.json | bench/bench_prompt_lengths.py |

A plot whose input is missing (or too old to hold what it needs) is skipped with a message saying which
command makes it. Exit status 0 either way; the summary line counts written and skipped plots.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


class Skip(Exception):
    pass


def load(results: pathlib.Path, name: str, how: str) -> dict:
    path = results / name
    if not path.exists():
        raise Skip(f"{name} not found in {results}; run {how}")
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise Skip(f"{name} is not valid JSON ({e})") from e


def footer(fig, doc: dict) -> None:
    cmd = doc.get("command")
    if cmd:
        fig.text(0.01, 0.005, cmd, fontsize=6, color="0.4", ha="left", va="bottom")


def plot_engines(plt, results, out):
    doc = load(results, "serving.json", "bench/bench_serving.py")
    rows = doc.get("engines") or []
    if not rows:
        raise Skip("serving.json has no engines")
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 1.3]})
    names = [r["engine"] for r in rows][::-1]
    tps = [r["decode_tok_s"] for r in rows][::-1]
    colors = ["tab:blue" if n.startswith("agent") else "tab:gray" for n in names]
    bars = a.barh(names, tps, color=colors)
    for bar, r in zip(bars, rows[::-1]):
        a.text(bar.get_width(), bar.get_y() + bar.get_height() / 2,
               f" {bar.get_width():.0f} tok/s, first token {r['first_token_ms']:.0f} ms", va="center", fontsize=8)
    a.set_xlabel("decode tokens/s (median)")
    a.set_xlim(0, max(tps) * 1.6)
    title = f"Decode speed per engine, SmolLM2-135M, {doc.get('tokens', '?')} greedy tokens"
    if doc.get("paired_ratio_median") is not None:  # bench_serving.py since its interleaved pairs
        title += f"\nagent HTTP int4 / onnxruntime-genai in-process, paired median {doc['paired_ratio_median']:.2f}"
    a.set_title(title, fontsize=10)
    conc = doc.get("concurrency") or []
    if conc:
        b.bar([str(r["clients"]) for r in conc], [r["total_tok_s"] for r in conc], color="tab:blue")
        b.set_xlabel("concurrent clients (agent HTTP, int4)")
        b.set_ylabel("total tokens/s")
        b.set_title("Through the agent, concurrent", fontsize=10)
    else:
        b.axis("off")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    footer(fig, doc)
    return save(fig, out / "serving-engines.png")


def plot_swap(plt, results, out, name: str):
    doc = load(results, name, "bench/bench_swap.py" + (" --tiny" if "tiny" in name else ""))
    tl = doc.get("timeline")
    if not tl:
        raise Skip(f"{name} has no per-request timeline (written since this change); re-run "
                   f"bench/bench_swap.py{' --tiny' if 'tiny' in name else ''}")
    fig, ax = plt.subplots(figsize=(10, 4))
    models = sorted({r[3] or "?" for r in tl})
    for i, m in enumerate(models):
        pts = [r for r in tl if (r[3] or "?") == m and r[2] == 200]
        ax.scatter([r[0] for r in pts], [r[1] for r in pts], s=6, label=f"answered by {m}", color=f"C{i}")
    bad = [r for r in tl if r[2] != 200]
    if bad:
        ax.scatter([r[0] for r in bad], [r[1] for r in bad], s=20, marker="x", color="red",
                   label=f"failed ({len(bad)})")
    ax.axvline(0, color="k", ls="--", lw=1)
    ax.axvline(doc["desired_to_serving_s"], color="k", ls=":", lw=1)
    ax.axvspan(0, doc["desired_to_serving_s"], color="orange", alpha=0.15,
               label=f"set_desired -> serving v2 ({doc['desired_to_serving_s']:.1f} s)")
    ax.set_yscale("log")
    ax.set_xlabel("request start, s relative to set_desired(v2)")
    ax.set_ylabel("request latency, ms (log)")
    ax.set_title(f"Latency during a hot swap: {doc['model']}, {doc['clients']} clients, {doc['requests']} "
                 f"requests, {doc['failed']} failed", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    footer(fig, doc)
    return save(fig, out / name.replace("swap", "swap-latency").replace(".json", ".png"))


def plot_soak(plt, results, out, path: pathlib.Path):
    doc = load(results, path.name, "bench/bench_soak.py")
    samples = doc.get("samples") or []
    if len(samples) < 2:
        raise Skip(f"{path.name} has fewer than 2 samples")
    t = [s["t_s"] / 60 for s in samples]
    fig, (a, b) = plt.subplots(2, 1, figsize=(10, 6), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    a.plot(t, [s["rss_mb"] for s in samples], label="RSS", color="tab:blue")
    if any(s.get("uss_mb") for s in samples):
        a.plot(t, [s["uss_mb"] for s in samples], label="USS", color="tab:blue", alpha=0.4, lw=0.8)
    tr = doc.get("trend", {})
    w = tr.get("warmup_s", 0) / 60
    a.axvspan(0, w, color="0.85", label="warm-up (not judged)")
    if "slope_mb_per_min" in tr:
        warm = [s for s in samples if s["t_s"] >= tr["warmup_s"]]
        xs = [s["t_s"] / 60 for s in warm]
        ys = [s["rss_mb"] for s in warm]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        k = tr["slope_mb_per_min"]
        a.plot([xs[0], xs[-1]], [my + k * (xs[0] - mx), my + k * (xs[-1] - mx)], "r--", lw=1,
               label=f"least-squares fit after warm-up: {k:+.2f} MB/min")
        half = warm[len(warm) // 2:]
        if "slope_last_half_mb_per_min" in tr and len(half) >= 2:
            hx = [s["t_s"] / 60 for s in half]
            hmx, hmy = sum(hx) / len(hx), sum(s["rss_mb"] for s in half) / len(half)
            k2 = tr["slope_last_half_mb_per_min"]
            a.plot([hx[0], hx[-1]], [hmy + k2 * (hx[0] - hmx), hmy + k2 * (hx[-1] - hmx)], "m:", lw=1.5,
                   label=f"fit over the last half: {k2:+.2f} MB/min")
    a.set_ylabel("agent memory, MB")
    a.set_title(f"Soak: {doc['model']}, {doc['clients']} clients, {doc['minutes']:g} min, {doc['requests']} requests, "
                f"{doc['failed']} failed\nverdict: {tr.get('verdict', '?')}", fontsize=9)
    a.legend(fontsize=8, loc="lower right")
    lat = [(x, s.get("p95_ms")) for x, s in zip(t, samples) if s.get("p95_ms") is not None]
    b.plot([x for x, _ in lat], [y for _, y in lat], color="tab:orange", label="p95 latency per interval")
    b.set_ylabel("p95 ms")
    b.set_xlabel("minutes")
    b2 = b.twinx()
    rate = [(x, s["requests"] / doc["sample_s"]) for x, s in zip(t[1:], samples[1:])]
    b2.plot([x for x, _ in rate], [y for _, y in rate], color="tab:green", lw=0.8, label="requests/s")
    b2.set_ylabel("requests/s")
    b.legend(fontsize=8, loc="upper left")
    b2.legend(fontsize=8, loc="upper right")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    footer(fig, doc)
    return save(fig, out / path.name.replace("soak-", "soak-rss-").replace(".json", ".png"))


def plot_accuracy(plt, results, out):
    doc = load(results, "demo.json", "the demo with --workdir DIR, then bench/collect_demo.py DIR")
    stages = doc.get("stages") or []
    if not stages:
        raise Skip("demo.json has no stages")
    fig, ax = plt.subplots(figsize=(9, 4))
    x = range(len(stages))
    fleet = doc.get("fleet") or {}
    through = {"base": fleet.get("acc_before"), "tuned": fleet.get("acc_after")}
    has_fleet = any(v is not None for v in through.values())
    w = 0.27 if has_fleet else 0.38
    off = w if has_fleet else w / 2
    a = ax.bar([i - off for i in x] if has_fleet else [i - w / 2 for i in x],
               [100 * s["fp32_accuracy"] for s in stages], w, color="tab:gray",
               label=f"fp32, transformers ({stages[0]['fp32_examples']} held-out questions)")
    b = ax.bar([i if has_fleet else i + w / 2 for i in x], [100 * s["shipped_accuracy"] for s in stages], w,
               color="tab:blue", label=f"as shipped by the gate ({stages[0]['gate_examples']} gate examples)")
    groups = [a, b]
    if has_fleet:
        idx = [i for i, s in enumerate(stages) if through.get(s.get("stage")) is not None]
        groups.append(ax.bar([i + off for i in idx], [100 * through[stages[i]["stage"]] for i in idx], w,
                             color="tab:green", label=f"through an agent's OpenAI API, in the fleet "
                                                      f"({fleet.get('questions', '?')} questions)"))
    for bars in groups:
        for bar in bars:
            ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 1, f"{bar.get_height():.1f}%",
                    ha="center", fontsize=8)
    ax.set_xticks(list(x))
    ax.set_xticklabels([f"{s['label']}\n{s['shipped_precision']}, {s['shipped_mb']:.0f} MB" for s in stages])
    ax.set_ylabel("held-out task accuracy, %")
    ax.set_ylim(0, 100)
    ax.set_title("Accuracy per stage of the main job (SmolLM2-135M)", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    footer(fig, doc)
    return save(fig, out / "accuracy-per-stage.png")


def plot_prompt_lengths(plt, results, out, path: pathlib.Path):
    doc = load(results, path.name, "bench/bench_prompt_lengths.py")
    rows = [r for r in doc.get("lengths") or [] if r.get("prompt_tokens")]
    if not rows:
        raise Skip(f"{path.name} has no measured lengths")
    from matplotlib.ticker import ScalarFormatter

    n = [r["prompt_tokens"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.plot(n, [r["first_token_ms"] for r in rows], "o-", label="first token")
    a.plot(n, [r["total_ms"] for r in rows], "s-", label=f"total ({doc['max_tokens']} max new tokens)")
    b.plot(n, [r["decode_tok_s"] for r in rows], "o-", color="tab:green")
    for ax in (a, b):
        ax.axvline(doc["agent_prompt_limit"], color="red", ls="--", lw=1,
                   label=f"prompt limit {doc['agent_prompt_limit']} (413 beyond)")
        ax.set_xlabel("prompt tokens")
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(ScalarFormatter())
    a.set_ylabel("ms (median)")
    a.legend(fontsize=8)
    b.set_ylabel("decode tokens/s (median)")
    b.set_ylim(bottom=0)
    b.legend(fontsize=8)
    fig.suptitle(f"Latency and decode speed vs prompt length: {doc['model']} through the agent HTTP API", fontsize=10)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    footer(fig, doc)
    return save(fig, out / path.name.replace(".json", ".png"))


def missing(message: str):
    raise Skip(message)


def save(fig, path: pathlib.Path) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=pathlib.Path, default=ROOT / "bench" / "results")
    ap.add_argument("--out", type=pathlib.Path, default=ROOT / "docs" / "img")
    args = ap.parse_args(argv)
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: .venv/bin/pip install matplotlib (it is in the dev extra)")
        return 1
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    jobs = [("serving-engines", lambda: plot_engines(plt, args.results, args.out)),
            ("accuracy-per-stage", lambda: plot_accuracy(plt, args.results, args.out))]
    swaps = sorted(args.results.glob("swap*.json"))
    soaks = sorted(args.results.glob("soak-*.json"))
    plens = sorted(args.results.glob("prompt-lengths-*.json"))
    jobs += [(p.stem, (lambda p=p: plot_swap(plt, args.results, args.out, p.name))) for p in swaps] or \
        [("swap-latency", lambda: missing("no swap*.json; run bench/bench_swap.py"))]
    jobs += [(p.stem, (lambda p=p: plot_soak(plt, args.results, args.out, p))) for p in soaks] or \
        [("soak-rss", lambda: missing("no soak-*.json; run bench/bench_soak.py"))]
    jobs += [(p.stem, (lambda p=p: plot_prompt_lengths(plt, args.results, args.out, p))) for p in plens] or \
        [("prompt-lengths", lambda: missing("no prompt-lengths-*.json; run bench/bench_prompt_lengths.py"))]
    wrote = skipped = 0
    for name, job in jobs:
        try:
            path = job()
            print(f"wrote   {path}")
            wrote += 1
        except Skip as e:
            print(f"skipped {name}: {e}")
            skipped += 1
        except (KeyError, TypeError, ValueError) as e:
            print(f"skipped {name}: its input lacks what the plot needs ({type(e).__name__}: {e})")
            skipped += 1
    print(f"{wrote} plots written to {args.out}, {skipped} skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
