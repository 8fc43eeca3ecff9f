"""Agent footprint: the size of an install of what the agent needs (a fresh virtual environment with
`pip install .[agent]`: the core dependencies + the `agent` extra, no torch/transformers/peft), and the
agent process's idle memory with no model, with the tiny model and with SmolLM2-135M int4 (and int8) loaded.

    .venv/bin/python bench/bench_agent_footprint.py                           # install size + idle RSS, all models
    .venv/bin/python bench/bench_agent_footprint.py --models none,tiny        # quick check (no SmolLM2 export)
    .venv/bin/python bench/bench_agent_footprint.py --skip-install            # idle RSS only

Install size: `du` of the fresh venv's site-packages after the install, minus the same folder right after
`python -m venv` (pip itself), with the largest packages listed; the install fails the bench if torch,
transformers or peft end up in it. Idle memory: one agent process per case (fresh, so cases do not inherit
each other's allocations), RSS/PSS/USS (psutil) as the median of --idle-s seconds of samples once it is
serving (or enrolled, for `none`), then again after --warm-requests requests and a short rest.
Writes bench/results/agent-footprint.json.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import ROOT, build_model, dir_mb, machine, rss_mb, start_agent_serving, write_result  # noqa: E402

FORBIDDEN = ("torch", "transformers", "peft")


def site_packages(venv: pathlib.Path) -> pathlib.Path:
    return next(venv.glob("lib/python*/site-packages"))


def du_mb(path: pathlib.Path) -> float:
    out = subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0]) / 1024


def install_size(tmp: pathlib.Path) -> dict:
    venv = tmp / "agent-venv"
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    sp = site_packages(venv)
    empty = du_mb(sp)
    baseline = {p.name for p in sp.iterdir()}  # pip (and setuptools on some Pythons): not the agent's
    # The packaged part of the tree only (what a wheel of this project holds), copied: the build writes into it.
    src = tmp / "src"
    src.mkdir()
    for f in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / f, src / f)
    for d in ("slmops", "control_plane", "edge_agent", "training"):
        shutil.copytree(ROOT / d, src / d, ignore=shutil.ignore_patterns("__pycache__"))
    r = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                        "--disable-pip-version-check", f"{src}[agent]"],
                       capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise SystemExit(f"pip install .[agent] failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    total = du_mb(sp)
    pkgs = {}
    for p in sp.iterdir():
        if p.name.endswith((".dist-info", ".pth")) or p.name == "__pycache__" or p.name in baseline:
            continue
        pkgs[p.name] = du_mb(p) if p.is_dir() else p.stat().st_size / 2**20
    freeze = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "freeze"], capture_output=True,
                            text=True, check=True).stdout.split()
    bad = [f for f in freeze if f.split("==")[0].lower() in FORBIDDEN]
    if bad:
        raise SystemExit(f"the agent install pulled in {bad}: the edge side must not need them")
    # The agent must start from this install alone: import its entry point.
    imp = subprocess.run([str(venv / "bin" / "python"), "-c",
                          "import edge_agent.agent, onnxruntime_genai; print('ok')"],
                         capture_output=True, text=True, check=False)
    top = sorted(pkgs.items(), key=lambda kv: -kv[1])[:12]
    return {"site_packages_mb": round(total, 1), "empty_venv_site_packages_mb": round(empty, 1),
            "agent_install_mb": round(total - empty, 1), "packages": len(freeze), "freeze": freeze,
            "largest": [{"name": n, "mb": round(mb, 1)} for n, mb in top],
            "agent_imports_ok": imp.returncode == 0 and "ok" in imp.stdout,
            "import_error": imp.stderr[-500:] if imp.returncode else "", "install_s": round(time.monotonic() - t0, 1)}


def idle_rss(pid: int, seconds: float) -> dict:
    samples = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        samples.append(rss_mb(pid))
        time.sleep(0.5)
    return {k: round(statistics.median(s[k] for s in samples), 1) for k in ("rss_mb", "pss_mb", "uss_mb")} | \
        {"threads": samples[-1]["threads"], "samples": len(samples)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="none,tiny,smollm2-int4,smollm2-int8")
    ap.add_argument("--idle-s", type=float, default=10.0)
    ap.add_argument("--warm-requests", type=int, default=5)
    ap.add_argument("--skip-install", action="store_true")
    ap.add_argument("--workdir", type=pathlib.Path, default=None, help="keep/reuse the exported models here")
    args = ap.parse_args()
    started, m0 = time.monotonic(), machine()
    from control_plane.procs import http_json
    from tests.conftest import Cluster

    res = {"bench": "agent_footprint", "install": None, "idle": []}
    with tempfile.TemporaryDirectory(prefix="bench-footprint-") as tmp:
        tmp = pathlib.Path(tmp)
        if not args.skip_install:
            print("installing .[agent] into a fresh venv ...", flush=True)
            res["install"] = install_size(tmp)
            i = res["install"]
            print(f"agent install: {i['agent_install_mb']:.1f} MB in site-packages ({i['packages']} packages; "
                  f"empty venv {i['empty_venv_site_packages_mb']:.1f} MB); imports ok: {i['agent_imports_ok']}")
            for p in i["largest"]:
                print(f"  {p['name']:28s} {p['mb']:7.1f} MB")
        work = args.workdir or tmp / "models"
        work.mkdir(parents=True, exist_ok=True)
        c = Cluster(tmp / "cluster")
        try:
            c.start_cp()
            for case in [m.strip() for m in args.models.split(",") if m.strip()]:
                name = f"agent-{case}"
                if case == "none":
                    p, port = c.start_agent(name, extra=["--probation", "0"])
                    c.wait_for(lambda n=name: any(d.name == n for d in c.admin.devices()), 60, f"{name} to enroll")
                    c.wait_for(lambda u=f"http://127.0.0.1:{port}/healthz": http_json(u, timeout=2)[0] == 200, 30,
                               "healthz")
                    size = 0.0
                else:
                    bundle = build_model(case, work)
                    size = dir_mb(bundle)
                    p, port, _ = start_agent_serving(c, bundle, case, name=name)
                time.sleep(2.0)
                row = {"model": case, "model_files_mb": round(size, 1), "idle": idle_rss(p.popen.pid, args.idle_s)}
                if case != "none":
                    for _ in range(args.warm_requests):
                        st, _ = c.chat(name, max_tokens=32)
                        assert st == 200, st
                    time.sleep(2.0)
                    row["after_requests"] = idle_rss(p.popen.pid, args.idle_s)
                res["idle"].append(row)
                a = row.get("after_requests", {})
                print(f"{case:14s} files {size:7.1f} MB  idle RSS {row['idle']['rss_mb']:7.1f} MB "
                      f"(USS {row['idle']['uss_mb']:.1f})"
                      + (f"  after {args.warm_requests} requests {a['rss_mb']:7.1f} MB" if a else ""), flush=True)
                p.stop()  # one agent at a time: the next case's numbers are not shared-cores-with-this-one
        finally:
            c.stop()
    res["python"] = os.path.realpath(sys.executable)
    write_result("agent-footprint", res, started, m0)


if __name__ == "__main__":
    main()
